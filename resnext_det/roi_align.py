"""RoIAlign on channels-last feature maps: torchvision's numbers at a fraction of its CPU time.

detectron2's ``ROIPooler`` calls torchvision's ``roi_align`` once per FPN level. On a CPU that
kernel reads NCHW: a channels-last map (what :func:`resnext_det.speed.optimize_for_inference`
makes) is first copied to NCHW, and each bilinear sample then reads four values from four
distant places of every channel's plane. Here each sample reads four rows of ``C`` contiguous
values from the ``(N*H*W, C)`` view of the map, and each output bin is the weighted sum of its
samples' rows: exactly ``torch.nn.functional.embedding_bag`` (``mode="sum"`` with
``per_sample_weights``), a vectorised, multi-threaded CPU kernel with a backward. The sample
positions and bilinear weights are torchvision's (``roi_align_kernel.cpp``: the same ``aligned``
offset, adaptive ``sampling_ratio``, border rules and count), computed for all boxes at once;
boxes are grouped by their sampling grid so that every bag of a group has the same size.

Same numbers: within 1e-6 of torchvision's kernel relative to the largest output in fp32
(``tests/test_roi_align.py``, forward and gradient). In bf16 the map stays bf16 (torchvision's
casts it to fp32 under autocast) and the boxes stay fp32 (detectron2's ``ROIAlign`` rounds them to
the map's dtype first: a few pixels at 1000 px). Time: ``benchmarks/roi_align_bench.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler
from torch import nn

__all__ = ["ChannelsLastROIAlign", "channels_last_roi_align", "roi_align_channels_last"]


def _axis_samples(
    start: torch.Tensor, bin_size: torch.Tensor, pooled: int, grid: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One axis of torchvision's sampling for G boxes with ``grid`` samples per bin.

    Returns ``(index, weight)``, each ``(G, pooled, grid, 2)``: the two neighbouring pixels of
    every sample along this axis and their linear weights (0 for a sample outside ``[-1, size]``).
    """
    p = torch.arange(pooled, dtype=start.dtype, device=start.device).view(1, -1, 1)
    i = torch.arange(grid, dtype=start.dtype, device=start.device).view(1, 1, -1)
    start, bin_size = start.view(-1, 1, 1), bin_size.view(-1, 1, 1)
    # torchvision: roi_start + p * bin_size + (i + .5f) * bin_size / grid, left to right
    c = (start + p * bin_size) + (i + 0.5) * bin_size / grid
    inside = (c >= -1.0) & (c <= size)
    c = c.clamp(min=0)
    low = c.long()  # c >= 0: truncation is floor
    at_end = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_end, low, low + 1)
    c = torch.where(at_end, low.to(c.dtype), c)
    inside = inside.to(c.dtype)
    frac = (c - low) * inside
    return torch.stack([low, high], -1), torch.stack([inside - frac, frac], -1)


def roi_align_channels_last(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """torchvision's ``roi_align(input, rois, ...)``, computed on ``input``'s channels-last view.

    Args:
        input: ``(N, C, H, W)`` feature map; channels-last memory avoids a copy.
        rois: ``(K, 5)`` boxes ``(batch index, x0, y0, x1, y1)`` in input-image coordinates.
        output_size, spatial_scale, sampling_ratio, aligned: as torchvision's ``roi_align``.

    Returns:
        ``(K, C, out_h, out_w)`` in ``input``'s dtype, channels-last in memory.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, channels, height, width = input.shape
    k = rois.shape[0]
    out = input.new_empty((k, out_h, out_w, channels))
    if k == 0 or input.numel() == 0:
        return out.zero_().permute(0, 3, 1, 2)
    # Coordinates in fp32 at least (fp64 for fp64 maps), as torchvision's kernel computes them.
    ctype = torch.promote_types(input.dtype, torch.float32)
    r = rois.detach().to(ctype)
    offset = 0.5 if aligned else 0.0
    x0 = r[:, 1] * spatial_scale - offset
    y0 = r[:, 2] * spatial_scale - offset
    roi_w = (r[:, 3] * spatial_scale - offset) - x0
    roi_h = (r[:, 4] * spatial_scale - offset) - y0
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:  # a grid <= 0 takes no sample: the bin stays 0, as in torchvision
        grid_h = torch.ceil(roi_h / out_h).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / out_w).long().clamp(min=0)
    batch_offset = r[:, 0].long() * (height * width)
    table = input.permute(0, 2, 3, 1).reshape(n * height * width, channels)
    if torch.is_grad_enabled() and input.requires_grad and table.dtype != ctype:
        # The backward adds every sample's share into the map's gradient: in bf16 that sum
        # loses ~4% where hundreds of training proposals overlap. Pool in fp32 (as torchvision's
        # kernel does under autocast), so the gradient is summed in fp32 and cast once.
        table = table.to(ctype)

    key = grid_h * (int(grid_w.max()) + 1) + grid_w
    for value in torch.unique(key).tolist():
        group = torch.nonzero(key == value).squeeze(1)
        gh, gw = int(grid_h[group[0]]), int(grid_w[group[0]])
        if gh == 0 or gw == 0:
            out[group] = 0
            continue
        # A few boxes at a time where their grids are large (a box of the whole image on a
        # fine map), so that the index and weight tensors stay under _MAX_ENTRIES.
        for sel in group.split(max(1, _MAX_ENTRIES // (out_h * out_w * gh * gw * 4))):
            _pool(out, sel, table, y0, x0, bin_h, bin_w, batch_offset, gh, gw, height, width)
    return out.permute(0, 3, 1, 2)


# The most (index, weight) pairs built at once: 4M, 48 MiB of int64 indices and fp32 weights.
_MAX_ENTRIES = 1 << 22


def _pool(out, sel, table, y0, x0, bin_h, bin_w, batch_offset, gh, gw, height, width) -> None:
    """Pool the boxes ``sel`` (all with sampling grid ``gh`` x ``gw``) into ``out[sel]``."""
    _, out_h, out_w, channels = out.shape
    yi, yw = _axis_samples(y0[sel], bin_h[sel], out_h, gh, height)
    xi, xw = _axis_samples(x0[sel], bin_w[sel], out_w, gw, width)
    # (G, out_h, out_w, gh, gw, 2 rows, 2 columns): the four corners of every sample
    index = (
        batch_offset[sel].view(-1, 1, 1, 1, 1, 1, 1)
        + (yi * width).view(-1, out_h, 1, gh, 1, 2, 1)
        + xi.view(-1, 1, out_w, 1, gw, 1, 2)
    )
    yw = yw / (gh * gw)  # torchvision divides the bin's sum by its sample count
    weight = yw.view(-1, out_h, 1, gh, 1, 2, 1) * xw.view(-1, 1, out_w, 1, gw, 1, 2)
    bag = gh * gw * 4
    pooled = F.embedding_bag(
        index.reshape(-1, bag),
        table,
        mode="sum",
        per_sample_weights=weight.reshape(-1, bag).to(table.dtype),
    )
    out[sel] = pooled.view(-1, out_h, out_w, channels).to(out.dtype)


class ChannelsLastROIAlign(ROIAlign):
    """detectron2's ``ROIAlign`` computed by :func:`roi_align_channels_last` on a CPU (torchvision's
    kernel elsewhere, and for quantized maps). Same constructor and attributes."""

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or input.is_quantized:
            return super().forward(input, rois)
        assert rois.dim() == 2 and rois.size(1) == 5
        return roi_align_channels_last(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )


def channels_last_roi_align(module: nn.Module) -> int:
    """Make every ``ROIPooler`` inside ``module`` pool with :class:`ChannelsLastROIAlign` instead
    of detectron2's ``ROIAlign``; in place, idempotent; returns how many level poolers changed.
    Other pooler types (``ROIPool``, ``ROIAlignRotated``) are left alone."""
    changed = 0
    for m in module.modules():
        if isinstance(m, ROIPooler):
            for i, p in enumerate(m.level_poolers):
                if type(p) is ROIAlign:
                    m.level_poolers[i] = ChannelsLastROIAlign(
                        p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned
                    )
                    changed += 1
    return changed
