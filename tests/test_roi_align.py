"""RoIAlign on channels-last maps (resnext_det.roi_align) gives torchvision's kernel's numbers."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import REPO
from detectron2.layers import ROIAlign
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from resnext_det.config import load_config
from resnext_det.roi_align import (
    ChannelsLastROIAlign,
    channels_last_roi_align,
    roi_align_channels_last,
)
from resnext_det.speed import optimize_for_inference

# Boxes inside, across the border, outside, degenerate (zero and negative size), sub-pixel, in
# both images of a batch of two.
ROIS = torch.tensor([
    [0, -20.0, -20.0, 5.0, 5.0],
    [1, 3.0, 4.0, 3.0, 4.0],
    [1, 10.0, 2.0, 80.0, 60.0],
    [0, 100.0, 100.0, 120.0, 130.0],
    [1, -5.0, 3.0, 2.0, 9.5],
    [0, 0.2, 0.3, 16.9, 12.9],
    [1, 7.0, 9.0, 5.0, 6.0],
    [0, 1.1, 2.2, 1.6, 2.4],
])  # fmt: skip


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize(
    "aligned, sampling_ratio, scale, output_size",
    list(itertools.product([True, False], [0, 1, 2, 3], [1.0, 0.5, 0.25], [(5, 4), 7])),
)
def test_equals_torchvision(aligned, sampling_ratio, scale, output_size):
    x = torch.randn(2, 8, 13, 17, generator=torch.Generator().manual_seed(0))
    expected = roi_align(x, ROIS, output_size, scale, sampling_ratio, aligned)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = roi_align_channels_last(
            x.contiguous(memory_format=layout), ROIS, output_size, scale, sampling_ratio, aligned
        )
        assert got.shape == expected.shape
        assert relative_error(got, expected) < 1e-6


def test_gradient_equals_torchvision():
    x = torch.randn(2, 8, 13, 17, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = roi_align_channels_last(
        ours.to(memory_format=torch.channels_last), ROIS.double(), 7, 0.5, 0, True
    )
    b = roi_align(theirs, ROIS.double(), 7, 0.5, 0, True)
    assert relative_error(a, b) < 1e-12
    g = torch.randn(b.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a.backward(g)
    b.backward(g)
    assert relative_error(ours.grad, theirs.grad) < 1e-12


def fpn_level_and_proposals(stride: int, num: int = 300):
    """One FPN level of an 800x1216 image (256 channels) and proposals of sizes that go to it."""
    g = torch.Generator().manual_seed(stride)
    x = torch.randn(1, 256, 800 // stride, 1216 // stride, generator=g)
    size = stride * 14 * torch.empty(num).uniform_(0.7, 1.4, generator=g)
    cx, cy = torch.rand(num, generator=g) * 1216, torch.rand(num, generator=g) * 800
    aspect = torch.empty(num).uniform_(0.5, 2.0, generator=g).sqrt()
    rois = torch.stack([
        torch.zeros(num), cx - size * aspect / 2, cy - size / aspect / 2,
        cx + size * aspect / 2, cy + size / aspect / 2,
    ], 1)  # fmt: skip
    return x, rois


@pytest.mark.parametrize("stride", [4, 16])
def test_equals_torchvision_on_a_photo_sized_fpn_level(stride):
    x, rois = fpn_level_and_proposals(stride)
    expected = roi_align(x, rois, 7, 1 / stride, 0, True)
    got = roi_align_channels_last(
        x.to(memory_format=torch.channels_last), rois, 7, 1 / stride, 0, True
    )
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, expected) < 1e-6


def test_bf16_keeps_the_map_in_bf16_and_the_boxes_in_fp32():
    x, rois = fpn_level_and_proposals(4)
    rois[:, 1:] += 1000.0  # far from the origin: bf16 spaces representable values 8 px apart
    x = torch.nn.functional.pad(x, (250, 0, 250, 0))  # the map moves with them
    expected = roi_align(x, rois, 7, 0.25, 0, True)
    got = roi_align_channels_last(
        x.bfloat16().to(memory_format=torch.channels_last), rois, 7, 0.25, 0, True
    )
    assert got.dtype == torch.bfloat16
    assert relative_error(got, expected) < 2**-7  # the map's and the output's bf16 rounding
    # detectron2's ROIAlign rounds the boxes to the map's dtype first: far off at 1000 px.
    rounded = roi_align(x, rois.bfloat16().float(), 7, 0.25, 0, True)
    assert relative_error(rounded, expected) > 0.5


def test_no_boxes():
    x = torch.randn(1, 8, 9, 9)
    assert roi_align_channels_last(x, ROIS[:0], 7, 1.0, 0, True).shape == (0, 8, 7, 7)


def test_every_pooler_of_a_detector_is_swapped_and_pools_the_same():
    cfg = load_config(
        REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml", ["MODEL.MASK_ON", "True"]
    )
    model = build_model(cfg).eval()
    poolers = [m for m in model.modules() if isinstance(m, ROIPooler)]
    assert len(poolers) == 2  # box and mask heads
    features = [
        torch.randn(2, 16, 64 // s, 96 // s, generator=torch.Generator().manual_seed(s))
        for s in (4, 8, 16, 32)
    ]
    boxes = [Boxes(ROIS[ROIS[:, 0] == i, 1:] * 3) for i in (0, 1)]
    before = [p(features, boxes) for p in poolers]
    levels = sum(len(p.level_poolers) for p in poolers)
    assert channels_last_roi_align(model) == levels
    assert channels_last_roi_align(model) == 0  # idempotent
    assert all(type(q) is ChannelsLastROIAlign for p in poolers for q in p.level_poolers)
    cl = [f.to(memory_format=torch.channels_last) for f in features]
    for p, b in zip(poolers, before):
        assert relative_error(p(cl, boxes), b) < 1e-6
    # optimize_for_inference does it (and leaves other pooler types alone).
    fresh = build_model(cfg)
    fresh.roi_heads.box_pooler.level_poolers[0] = torch.nn.Identity()
    optimize_for_inference(fresh)
    kinds = [type(q) for p in fresh.modules() if isinstance(p, ROIPooler) for q in p.level_poolers]
    assert kinds.count(torch.nn.Identity) == 1 and kinds.count(ROIAlign) == 0


def test_bf16_training_gradient_is_summed_in_fp32():
    """Hundreds of overlapping training proposals add into the same pixels of the map's
    gradient: summed in bf16 that loses ~4%; the op pools in fp32 when a gradient is wanted, as
    torchvision's kernel does under autocast, and is as close to the fp32 gradient as it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 64, 80, generator=g)
    boxes = torch.tensor([[40.0, 40.0, 200.0, 160.0]]) + torch.randn(500, 4, generator=g) * 8
    rois = torch.cat([torch.zeros(500, 1), boxes], 1)
    grad_out = torch.randn(500, 64, 7, 7, generator=g)
    fp32 = x.clone().requires_grad_()
    roi_align(fp32, rois, 7, 0.25, 0, True).backward(grad_out)
    theirs = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        roi_align(theirs, rois, 7, 0.25, 0, True).backward(grad_out.bfloat16())
    ours = x.bfloat16().to(memory_format=torch.channels_last).requires_grad_()
    out = roi_align_channels_last(ours, rois, 7, 0.25, 0, True)
    assert out.dtype == torch.bfloat16
    out.backward(grad_out.bfloat16())
    assert ours.grad.dtype == torch.bfloat16
    assert relative_error(ours.grad, fp32.grad) <= 1.5 * relative_error(theirs.grad, fp32.grad)
    assert relative_error(ours.grad, fp32.grad) < 1e-2


def test_large_grids_are_pooled_a_few_boxes_at_a_time(monkeypatch):
    """Boxes whose sampling grids are large are pooled in chunks that keep the index and weight
    tensors bounded (here: a few hundred entries), with the same numbers."""
    import resnext_det.roi_align as module

    monkeypatch.setattr(module, "_MAX_ENTRIES", 700)
    x = torch.randn(2, 8, 40, 50, generator=torch.Generator().manual_seed(3))
    rois = torch.tensor([[i % 2, 0.0, 0.0, 49.0 - i, 39.0 - i] for i in range(6)])
    got = roi_align_channels_last(x.to(memory_format=torch.channels_last), rois, 3, 1.0, 0, True)
    assert relative_error(got, roi_align(x, rois, 3, 1.0, 0, True)) < 1e-6
