"""Deformable stages (MODEL.RESNETS.DEFORM_*) on torchvision's deform_conv2d.

The other side of each equals sign is code this project did not write: detectron2's own
DeformBottleneckBlock and deformable ResNet (CPU forward, DCNv1, one offset group: what it can run
without its compiled ops), and for DCNv2 and several offset groups an independent reference
written here (bilinear sampling with ``grid_sample``, in float64), itself checked against
torchvision's op on small inputs. Then: training on the CPU (channels_last, bf16 autocast), the
zoo configs that use deformable stages or depth 152, counting, BN folding, export, bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, flat, randomize_norm_stats, tiny_cfg
from detectron2 import model_zoo
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock as D2DeformBottleneckBlock
from torch import nn
from torchvision.ops import deform_conv2d

from resnext_det import ResNeXtSpec, make_resnext
from resnext_det.complexity import backbone_complexity
from resnext_det.config import load_config
from resnext_det.deform import DeformBottleneckBlock, DeformConv2d, deformable_layers
from resnext_det.errors import ConfigError
from resnext_det.speed import (
    CPUTrainingSettings,
    apply_cpu_training,
    max_relative_error,
    optimize_for_inference,
)

CONFIGS = REPO / "configs"
DEFORM = [False, True, True, True]


# --- the independent reference ------------------------------------------------------------------


def reference_deform_conv2d(
    x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None
):
    """Deformable convolution from its definition (Dai et al. 2017; Zhu et al. 2019 with
    ``mask``): every kernel tap of every output position reads the input at its regular position
    plus a learned (dy, dx), bilinearly interpolated (zero outside the image) with
    ``grid_sample``, scaled by the mask, then an ordinary (grouped) product with the weights.
    Offsets are laid out per offset group, per tap (row-major), as (dy, dx) pairs; the mask per
    group and tap. Differentiable in everything through autograd."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    n, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    taps = kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    ho, wo = offset.shape[2], offset.shape[3]
    oy = torch.arange(ho, dtype=x.dtype).view(ho, 1) * sh - ph
    ox = torch.arange(wo, dtype=x.dtype).view(1, wo) * sw - pw
    cols = []
    per_group = c_in // offset_groups
    for g in range(offset_groups):
        xg = x[:, g * per_group : (g + 1) * per_group]
        samples = []
        for k in range(taps):
            i, j = divmod(k, kw)
            dy = offset[:, g * 2 * taps + 2 * k]
            dx = offset[:, g * 2 * taps + 2 * k + 1]
            py = oy + i * dh + dy  # (n, ho, wo), pixel units
            px = ox + j * dw + dx
            # align_corners=True: -1 and 1 are the centres of the first and last pixels.
            grid = torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)
            s = F.grid_sample(xg, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            if mask is not None:
                s = s * mask[:, g * taps + k].unsqueeze(1)
            samples.append(s)  # (n, per_group, ho, wo)
        cols.append(torch.stack(samples, dim=2))  # (n, per_group, taps, ho, wo)
    col = torch.cat(cols, dim=1)  # (n, c_in, taps, ho, wo)
    col = col.view(n, groups, c_per_group * taps, ho * wo)
    wmat = weight.view(groups, c_out // groups, c_per_group * taps)
    out = torch.einsum("gok,ngkp->ngop", wmat, col).reshape(n, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class ReferenceDeformConv(nn.Module):
    """detectron2's deformable conv layer interface (``conv2(x, offset[, mask])`` with ``norm``)
    on the reference above, to put inside detectron2's own DeformBottleneckBlock."""

    def __init__(self, d2_conv: nn.Module):
        super().__init__()
        self.weight = d2_conv.weight
        self.norm = d2_conv.norm
        self.stride, self.padding, self.dilation = d2_conv.stride, d2_conv.padding, d2_conv.dilation

    def forward(self, x, offset, mask=None):
        out = reference_deform_conv2d(
            x, offset, self.weight, None, self.stride, self.padding, self.dilation, mask
        )
        return self.norm(out) if self.norm is not None else out


def _inputs(n, c_in, c_out, groups, offset_groups, h, w, k=3, stride=1, pad=1, dil=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    x = torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, k, k, generator=g, dtype=torch.float64)
    weight /= math.sqrt(c_in // groups * k * k)
    # Offsets of a few pixels, never integers (bilinear sampling has kinks at integer positions,
    # where two implementations may pick different one-sided gradients); some taps land outside.
    offset = torch.randn(n, 2 * offset_groups * k * k, ho, wo, generator=g, dtype=torch.float64)
    offset = offset * 2.0 + 0.37
    mask = torch.rand(n, offset_groups * k * k, ho, wo, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    return x, offset, weight, bias, mask


def _grads(fn, tensors, cotangent):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*tensors)
    (out * cotangent.to(out.dtype)).sum().backward()
    return out.detach(), [t.grad for t in tensors]


@pytest.mark.parametrize("modulated", [False, True])
def test_reference_equals_torchvision_on_small_inputs(modulated):
    """The reference is right: float64, strides, padding, dilation, conv groups and offset
    groups, forward and every gradient, against torchvision's op."""
    x, offset, weight, bias, mask = _inputs(2, 8, 6, groups=2, offset_groups=4, h=9, w=7,
                                            stride=2, pad=2, dil=2)  # fmt: skip
    kw = dict(stride=2, padding=2, dilation=2)
    tv = lambda *t: deform_conv2d(*t[:4], **kw, mask=t[4] if modulated else None)  # noqa: E731
    ref = lambda *t: reference_deform_conv2d(  # noqa: E731
        t[0], t[1], t[2], t[3], **kw, mask=t[4] if modulated else None
    )
    cot = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    args = [x, offset, weight, bias, mask]
    out_tv, g_tv = _grads(tv, args, cot)
    out_ref, g_ref = _grads(ref, args, cot)
    assert max_relative_error(out_ref, out_tv) < 1e-10
    for name, a, b in zip(["input", "offset", "weight", "bias", "mask"], g_ref, g_tv):
        if name == "mask" and not modulated:
            continue
        assert max_relative_error(a, b) < 1e-9, name


# --- the layer and the block against the reference and detectron2 -----------------------------


@pytest.mark.parametrize("offset_groups", [1, 4])
def test_deform_conv_equals_reference_at_x101_width(offset_groups):
    """X-101-32x8d's res4 3x3 (1024 channels, 32 groups), DCNv2, float32 against the float64
    reference: forward and the gradients of input, offsets, mask and weights."""
    c = 1024
    x, offset, weight, _, mask = _inputs(1, c, c, groups=32, offset_groups=offset_groups, h=10,
                                         w=12, seed=offset_groups)  # fmt: skip
    conv = DeformConv2d(c, c, 3, padding=1, groups=32, bias=False, deformable_groups=offset_groups)
    with torch.no_grad():
        conv.weight.copy_(weight)
    cot = torch.randn(1, c, 10, 12, dtype=torch.float64)
    inputs = [t.float() for t in (x, offset, mask)]
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = conv(*leaves)
    (out * cot.float()).sum().backward()
    got_grads = [t.grad for t in leaves] + [conv.weight.grad]

    out_ref, ref_grads = _grads(
        lambda x, o, m, w: reference_deform_conv2d(x, o, w, None, 1, 1, 1, m),
        [x, offset, mask, weight],
        cot,
    )
    errors = {"forward": max_relative_error(out, out_ref)}
    for name, a, b in zip(["input", "offset", "mask", "weight"], got_grads, ref_grads):
        errors[name] = max_relative_error(a, b)
    print(f"DCNv2 at 1024 ch, {offset_groups} offset group(s): max relative errors {errors}")
    assert max(errors.values()) < 1e-4, errors


def _d2_state(block: nn.Module, seed: int) -> nn.Module:
    """Random weights everywhere, offsets included (detectron2 starts them at zero, which would
    make a deformable conv a plain one), and non-trivial norm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            scale = 0.05 if "offset" in name else 1.0 / math.sqrt(p[0].numel())
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return randomize_norm_stats(block, seed)


# res3's first block (stride 2, shortcut) and a res4 block of X-101-32x8d.
X101_BLOCKS = {
    "res3.0": dict(in_channels=256, out_channels=512, bottleneck_channels=512, stride=2),
    "res4.5": dict(in_channels=1024, out_channels=1024, bottleneck_channels=1024, stride=1),
}


@pytest.mark.parametrize("where", sorted(X101_BLOCKS))
def test_block_equals_detectron2s_dcnv1_at_x101_width(where):
    """Where detectron2 runs its own block (CPU, forward, DCNv1, one offset group): same weights
    in (loaded key for key), outputs equal within 1e-4 relative."""
    kw = dict(X101_BLOCKS[where], num_groups=32, norm="FrozenBN", stride_in_1x1=False)
    theirs = _d2_state(D2DeformBottleneckBlock(**kw), seed=3).eval()
    ours = DeformBottleneckBlock(**kw).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    size = 28 if kw["stride"] == 2 else 14
    x = torch.randn(2, kw["in_channels"], size, size)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    err = max_relative_error(a, b)
    print(f"X-101 {where} DCNv1 block vs detectron2's: max relative error {err:.2e}")
    assert err < 1e-4
    # detectron2's key order too (an optimizer state is saved by position).
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("offset_groups", [1, 4])
def test_dcnv2_block_forward_and_gradients_equal_reference(offset_groups):
    """detectron2's own DeformBottleneckBlock (its forward splits offsets and mask) with its
    deformable conv replaced by the float64 reference, against ours in float32: outputs and the
    gradients of the input and of every parameter (offset conv included)."""
    kw = dict(X101_BLOCKS["res3.0"], num_groups=32, norm="FrozenBN", stride_in_1x1=False,
              deform_modulated=True, deform_num_groups=offset_groups)  # fmt: skip
    theirs = _d2_state(D2DeformBottleneckBlock(**kw), seed=5)
    ours = DeformBottleneckBlock(**kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.conv2 = ReferenceDeformConv(theirs.conv2)
    theirs = theirs.double()
    x = torch.randn(1, 256, 20, 20)
    cot = torch.randn(1, 512, 10, 10)
    outs, grads = {}, {}
    for name, block, dtype in (("ours", ours, torch.float32), ("ref", theirs, torch.float64)):
        xi = x.detach().to(dtype).clone().requires_grad_(True)
        out = block(xi)
        (out * cot.to(dtype)).sum().backward()
        outs[name] = out.detach()
        grads[name] = {"input": xi.grad, **{k: p.grad for k, p in block.named_parameters()}}
    assert set(grads["ours"]) == set(grads["ref"])
    assert grads["ours"]["conv2_offset.weight"].abs().max() > 0
    errors = {"forward": max_relative_error(outs["ours"], outs["ref"])}
    errors.update({k: max_relative_error(grads["ours"][k], grads["ref"][k]) for k in grads["ref"]})
    worst = max(errors, key=errors.get)
    print(f"DCNv2 block, {offset_groups} offset group(s): forward {errors['forward']:.2e}, "
          f"worst gradient {worst} {errors[worst]:.2e}")  # fmt: skip
    assert max(errors.values()) < 1e-4, errors


def test_fresh_block_has_zero_offsets_and_is_the_plain_block():
    """Offsets start at zero, as detectron2's do: a new deformable block computes what
    detectron2's plain BottleneckBlock computes with the same weights."""
    kw = dict(X101_BLOCKS["res3.0"], num_groups=32, norm="FrozenBN", stride_in_1x1=False)
    block = DeformBottleneckBlock(**kw, deform_modulated=True, deform_num_groups=2).eval()
    assert not block.conv2_offset.weight.any() and not block.conv2_offset.bias.any()
    plain = BottleneckBlock(**kw).eval()
    plain.load_state_dict(
        {k: v for k, v in block.state_dict().items() if "offset" not in k}, strict=True
    )
    x = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        # the DCNv2 mask is sigmoid(0) = 0.5 at the start, as in detectron2
        block.conv2_offset.bias[2 * 9 * 2 :] = 20.0  # mask logits -> 1: same as no mask
        assert max_relative_error(block(x), plain(x)) < 1e-5


# --- the builders -----------------------------------------------------------------------------


D2_BUILDERS = {
    "build_resnext_backbone": "build_resnet_backbone",
    "build_resnext_fpn_backbone": "build_resnet_fpn_backbone",
    "build_resnext_retinanet_fpn_backbone": "build_retinanet_resnet_fpn_backbone",
}


def _deform_cfg(builder: str, modulated: bool, groups: int, **resnets):
    """A tiny-width deformable config; depth 50 unless given (detectron2 builds 50/101/152)."""
    resnets.setdefault("DEPTH", 50)
    cfg = tiny_cfg(DEFORM_ON_PER_STAGE=DEFORM, DEFORM_MODULATED=modulated,
                   DEFORM_NUM_GROUPS=groups, **resnets)  # fmt: skip
    cfg.MODEL.BACKBONE.NAME = builder
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if builder == "build_resnext_retinanet_fpn_backbone":
        cfg.MODEL.RESNETS.OUT_FEATURES = cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    return cfg


@pytest.mark.parametrize("builder", sorted(D2_BUILDERS))
@pytest.mark.parametrize("modulated,groups", [(False, 1), (True, 2)])
def test_every_builder_has_detectron2s_deformable_state_dict(builder, modulated, groups):
    cfg = _deform_cfg(builder, modulated, groups)
    ours = build_backbone(cfg)
    d2 = cfg.clone()
    d2.MODEL.BACKBONE.NAME = D2_BUILDERS[builder]
    theirs = build_backbone(d2)
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert a == b
    prefix = "bottom_up." if "fpn" in builder else ""
    offset = a[f"{prefix}res3.0.conv2_offset.weight"]
    assert offset[0] == (27 if modulated else 18) * groups
    assert f"{prefix}res2.0.conv2_offset.weight" not in a
    layers = deformable_layers(ours)
    assert len(layers) == 4 + 6 + 3  # depth 50: res3, res4 and res5
    assert all(name.endswith(".conv2") and "res2" not in name for name in layers)


def test_detectron2_deformable_backbone_loads_key_for_key_and_gives_its_outputs():
    """detectron2's own deformable ResNeXt-FPN (DCNv1, one group: what it runs on the CPU):
    its state dict loads strictly and the features are equal."""
    cfg = _deform_cfg("build_resnext_fpn_backbone", False, 1, NORM="FrozenBN")
    d2 = cfg.clone()
    d2.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    theirs = build_backbone(d2).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "conv2_offset" in name:
                p.normal_(0, 0.05)
    randomize_norm_stats(theirs, 7)
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert max_relative_error(ours(x), theirs(x)) < 1e-5


def test_depth_152_has_the_papers_blocks():
    spec = ResNeXtSpec(depth=152, cardinality=2, width_per_group=4, stem_out_channels=8,
                       res2_out_channels=16, deform_on_per_stage=DEFORM)  # fmt: skip
    net = make_resnext(spec)
    assert [len(getattr(net, s)) for s in ("res2", "res3", "res4", "res5")] == [3, 8, 36, 3]
    assert len(deformable_layers(net)) == 8 + 36 + 3


# --- training on the CPU ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from detectron2.data.datasets import load_coco_json

    from resnext_det.data import make_synthetic_coco

    ds = make_synthetic_coco(tmp_path_factory.mktemp("deform"), num_train=2, num_val=1, seed=0)
    return load_coco_json(str(ds.train_json), str(ds.train_image_root), "deform_train")


def _mapped(cfg, batch):
    from detectron2.data import DatasetMapper

    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(dict(r)) for r in batch]


def test_cpu_training_defaults_train_the_offsets_and_mask(batch):
    """CPU_TRAINING's defaults (channels_last, bf16 autocast) through the project's own training
    step: the deformable conv computes in fp32 inside autocast, the step is finite, and the
    offset convs (offsets and DCNv2 mask) get gradients and move."""
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from resnext_det.training.step import GuardedTrainer

    cfg = _deform_cfg("build_resnext_fpn_backbone", True, 2)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    model = build_model(cfg)
    apply_cpu_training(model, CPUTrainingSettings(channels_last=True, amp_dtype="bfloat16"))
    data = _mapped(cfg, batch)
    optimizer = build_optimizer(cfg, model)
    trainer = GuardedTrainer(model, iter([data]), optimizer, amp=True, device="cpu")
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if "offset" in k}
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()
    offsets = dict(model.named_parameters())
    for k in before:
        assert offsets[k].grad is not None and torch.isfinite(offsets[k].grad).all(), k
    bias = offsets["backbone.bottom_up.res4.0.conv2_offset.bias"].grad
    # the gradient reaches the offsets and the mask logits alike (the last third)
    assert bias[: 2 * 9 * 2].abs().max() > 0 and bias[2 * 9 * 2 :].abs().max() > 0
    moved = [
        k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])
    ]
    assert moved


def test_bf16_autocast_stays_close_to_fp32():
    """Inside CPU bf16 autocast the deformable conv runs in fp32 (torchvision has no bf16 CPU
    kernel); the backbone's outputs stay at bf16's distance from fp32."""
    spec = ResNeXtSpec(depth=26, cardinality=4, width_per_group=8, deform_on_per_stage=DEFORM,
                       deform_modulated=True, deform_num_groups=2)  # fmt: skip
    net = _d2_state(make_resnext(spec), seed=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fp32 = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = net(x)
    assert max_relative_error({k: v.float() for k, v in bf16.items()}, fp32) < 5e-2


# --- counting, folding, export -----------------------------------------------------------------


def test_complexity_counts_offset_convs_and_sampling():
    plain = ResNeXtSpec(depth=50, cardinality=32, width_per_group=4)
    size = (224, 224)
    a = backbone_complexity(plain, size, classifier=False)
    for modulated, per_sample in ((False, 4), (True, 5)):
        spec = plain.replace(deform_on_per_stage=tuple(DEFORM), deform_modulated=modulated)
        b = backbone_complexity(spec, size, classifier=False)
        offsets = 27 if modulated else 18
        params = flops = sampling = 0
        for idx, blocks in enumerate((3, 4, 6, 3)):
            if not DEFORM[idx]:
                continue
            width = 128 * 2**idx
            res = 56 // 2**idx  # stride in the 3x3: every 3x3 of a stage outputs this size
            params += blocks * (offsets * width * 9 + offsets)
            flops += blocks * offsets * width * 9 * res * res
            # every sampled value: 4 bilinear multiply-adds, 5 with the mask
            sampling += blocks * width * 9 * res * res * per_sample
        assert b.params - a.params == params
        assert b.sampling_flops == sampling
        assert b.flops - a.flops == flops + sampling
    assert a.sampling_flops == 0


def test_optimize_for_inference_folds_bn_into_the_deformable_conv():
    spec = ResNeXtSpec(depth=26, cardinality=4, width_per_group=8, deform_on_per_stage=DEFORM,
                       deform_modulated=True, deform_num_groups=2)  # fmt: skip
    net = _d2_state(make_resnext(spec), seed=4).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = net(x)
        optimize_for_inference(net)
        after = net(x)
    conv = net.res4[0].conv2
    assert isinstance(conv, DeformConv2d) and conv.norm is None and conv.bias is not None
    assert max_relative_error(after, before) < 1e-4


def test_folding_into_the_deformable_conv_is_exact_in_float64():
    """The fold itself is exact (float64: 1e-10); what fp32 shows beyond rounding is the
    network's own sensitivity: random offsets amplify rounding through the stages (measured: a
    random X-50-2x4d with offsets as benchmarks/deform_bench.py makes them was 7e-4 from its own
    float64 outputs before any folding, while its fold was 1e-12 in float64)."""
    from resnext_det.speed import fold_batchnorm

    spec = ResNeXtSpec(depth=50, cardinality=2, width_per_group=4, deform_on_per_stage=DEFORM,
                       deform_modulated=True, deform_num_groups=2)  # fmt: skip
    net = _d2_state(make_resnext(spec), seed=6).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        after = fold_batchnorm(net)(x)
    assert net.res5[0].conv2.norm is None
    assert max_relative_error(after, before) < 1e-10


@pytest.fixture(scope="module")
def deform_ckpt(tmp_path_factory):
    cfg = _deform_cfg("build_resnext_fpn_backbone", True, 2, NORM="FrozenBN")
    model = build_model(cfg)
    _d2_state(model.backbone.bottom_up, seed=9)
    path = tmp_path_factory.mktemp("deform_export") / "model_final.pth"
    torch.save({"model": model.state_dict(), "iteration": 1}, path)
    return cfg, path, model


@pytest.mark.parametrize("out_name", ["bb.pth", "bb.safetensors"])
def test_detectron2_state_dict_export_carries_the_offset_convs(deform_ckpt, tmp_path, out_name):
    from resnext_det.export import export_backbone
    from resnext_det.weights import load_pretrained

    cfg, ckpt, model = deform_ckpt
    r = export_backbone(cfg, ckpt, "detectron2", tmp_path / out_name)
    assert r.metadata["architecture"]["deform_on_per_stage"] == DEFORM
    fresh = build_model(cfg)
    fresh.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.bottom_up")},
        strict=False,
    )
    load_pretrained(fresh, tmp_path / out_name)
    theirs, ours = model.backbone.bottom_up.state_dict(), fresh.backbone.bottom_up.state_dict()
    assert any("conv2_offset" in k for k in ours)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k


@pytest.mark.parametrize("fpn,fold_bn", [(False, False), (True, True)])
def test_torchscript_export_works_and_is_checked_against_eager(deform_ckpt, tmp_path, fpn, fold_bn):
    from resnext_det.export import export_backbone

    cfg, ckpt, model = deform_ckpt
    out = tmp_path / "bb.ts"
    r = export_backbone(cfg, ckpt, "torchscript", out, fpn=fpn, fold_bn=fold_bn)
    assert r.metadata["verification"]["max_relative_error"] < 1e-4
    traced = torch.jit.load(str(out))
    x = torch.randn(1, 3, 64, 96)
    net = model.backbone if fpn else model.backbone.bottom_up
    with torch.no_grad():
        expected = net.eval()(x)
        got = traced(x)
    assert max_relative_error(list(got), [expected[k] for k in r.metadata["outputs"]]) < 1e-4


@pytest.mark.parametrize("format", ["onnx", "torchvision", "timm"])
def test_formats_without_deformable_convs_are_refused(deform_ckpt, tmp_path, format):
    from resnext_det.export import export_backbone

    cfg, ckpt, _ = deform_ckpt
    with pytest.raises(
        ValueError,
        match=rf"DEFORM_ON_PER_STAGE makes 13 convolutions of res3, res4, res5 deformable "
        rf"\(res3\.0\.conv2 \.\.\. res5\.2\.conv2\).* cannot be exported as {format}\. Export it "
        r"as torchscript .* or detectron2",
    ):
        export_backbone(cfg, ckpt, format, tmp_path / f"bb.{format}")
    assert list(tmp_path.iterdir()) == []


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(DEFORM_NUM_GROUPS=3),
         r"MODEL\.RESNETS\.DEFORM_NUM_GROUPS must divide the channels of every deformable 3x3 "
         r"conv; got 3, and res3's is 16, res4's is 32, res5's is 64"),
        (dict(DEFORM_NUM_GROUPS=0), r"MODEL\.RESNETS\.DEFORM_NUM_GROUPS must be a positive"),
        (dict(DEFORM_ON_PER_STAGE=[True, True]),
         r"MODEL\.RESNETS\.DEFORM_ON_PER_STAGE must be 4 booleans \(res2\.\.res5\); got "),
        (dict(DEFORM_MODULATED="yes"), r"MODEL\.RESNETS\.DEFORM_MODULATED must be True or False"),
    ],
)  # fmt: skip
def test_bad_deform_keys_name_the_key(changes, match):
    cfg = tiny_cfg(DEFORM_ON_PER_STAGE=DEFORM)
    for k, v in changes.items():
        setattr(cfg.MODEL.RESNETS, k, v)
    with pytest.raises(ConfigError, match=match):
        build_backbone(cfg)


def test_frozen_deformable_stage_is_refused():
    cfg = tiny_cfg(DEFORM_ON_PER_STAGE=[True, True, False, False])
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    with pytest.raises(
        ConfigError,
        match=r"MODEL\.RESNETS\.DEFORM_ON_PER_STAGE \[True, True, False, False\] makes res2 "
        r"deformable, but MODEL\.BACKBONE\.FREEZE_AT 2 freezes it: .*at most 1",
    ):
        build_backbone(cfg)
    cfg.MODEL.BACKBONE.FREEZE_AT = 1
    assert deformable_layers(build_backbone(cfg))


@pytest.mark.parametrize("form", ["aggregated", "concat"])
def test_path_form_with_deformable_stages_is_refused(form):
    cfg = tiny_cfg(DEFORM_ON_PER_STAGE=DEFORM, DEFORM_MODULATED=True)
    cfg.MODEL.RESNEXT.BLOCK_FORM = form
    with pytest.raises(
        ConfigError,
        match=rf"MODEL\.RESNETS\.DEFORM_ON_PER_STAGE \[False, True, True, True\] with "
        rf"MODEL\.RESNETS\.DEFORM_MODULATED True needs MODEL\.RESNEXT\.BLOCK_FORM 'grouped'; "
        rf"got '{form}'",
    ):
        build_backbone(cfg)


def test_lists_from_configs_become_tuples():
    spec = ResNeXtSpec(deform_on_per_stage=[False, True, True, True])
    assert spec.deform_on_per_stage == (False, True, True, True)
    assert spec == ResNeXtSpec(deform_on_per_stage=(False, True, True, True))
    assert spec.deformable_stages == ("res3", "res4", "res5")


# --- the zoo's configs ------------------------------------------------------------------------


X101 = {
    "MODEL.RESNETS.NUM_GROUPS": 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.DEPTH": 101,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.PIXEL_STD": [57.375, 57.120, 58.395],
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl",
}
R101 = {
    "MODEL.RESNETS.DEPTH": 101,
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
}
DCONV_3X = "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5.yaml"
# ours -> (detectron2's zoo file, changes that make it this model)
ZOO = {
    "cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": (
        "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml", {}),
    "keypoint_rcnn_X_101_32x8d_FPN_3x": (
        "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml", {}),
    "keypoint_rcnn_R_101_FPN_3x": ("COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml", {}),
    "lvis_v0.5/mask_rcnn_X_101_32x8d_FPN_1x": (
        "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml", {}),
    "lvis_v0.5/mask_rcnn_R_101_FPN_1x": (
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml", {}),
    "lvis_v1/mask_rcnn_X_101_32x8d_FPN_1x": (
        "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml", {}),
    "lvis_v1/mask_rcnn_R_101_FPN_1x": (
        "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml", {}),
    "mask_rcnn_X_101_32x8d_FPN_3x_dconv_c3-c5": (DCONV_3X, X101),
    "mask_rcnn_R_101_FPN_3x_dconv_c3-c5": (DCONV_3X, R101),
}  # fmt: skip


def zoo_cfg(name: str, changes: dict, opts=()):
    cfg = load_config(model_zoo.get_config_file(name), list(opts))  # detectron2's own: trusted
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


@pytest.mark.parametrize("name", sorted(ZOO))
def test_config_is_detectron2s_zoo_config(name):
    """Every key as detectron2's zoo file sets it (weights names included), but the builder."""
    zoo_name, changes = ZOO[name]
    ours = flat(load_config(CONFIGS / f"{name}.yaml"))
    zoo = flat(zoo_cfg(zoo_name, changes))
    assert ours["MODEL.BACKBONE.NAME"] == "build_resnext_fpn_backbone"
    assert zoo["MODEL.BACKBONE.NAME"] == "build_resnet_fpn_backbone"
    differ = {
        k: (ours[k], zoo[k])
        for k in ours
        if k != "MODEL.BACKBONE.NAME" and str(ours[k]) != str(zoo[k])
    }
    assert not differ


@pytest.mark.parametrize("name", sorted(ZOO))
def test_config_builds_detectron2s_model(name):
    """The whole detector from our config has every key and shape of the one detectron2's
    built-in builders make from its zoo file, so the zoo's trained checkpoints load."""
    zoo_name, changes = ZOO[name]
    ours = load_config(CONFIGS / f"{name}.yaml", ["MODEL.DEVICE", "meta"])
    theirs = zoo_cfg(zoo_name, {**changes, "MODEL.DEVICE": "meta"})
    with torch.device("meta"):
        a = {k: tuple(v.shape) for k, v in build_model(ours).state_dict().items()}
        b = {k: tuple(v.shape) for k, v in build_model(theirs).state_dict().items()}
    assert a == b
    assert any("conv2_offset" in k for k in a) == ("dconv" in name)
    assert any(k.startswith("roi_heads.keypoint_head") for k in a) == ("keypoint" in name)


TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RESNETS.NUM_GROUPS", 2, "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.CONV_DIM", 32,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 16,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (32,),
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 128, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16, "INPUT.MASK_FORMAT", "bitmask",
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64, "INPUT.CROP.ENABLED", False,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice", "SOLVER.BASE_LR", 0.001,
]  # fmt: skip


def _keypoints(batch):
    """The synthetic boxes as persons with 17 visible keypoints inside them (keypoint heads)."""
    out = []
    for record in batch:
        record = dict(record)
        anns = []
        for ann in record["annotations"]:
            x, y, w, h = ann["bbox"]
            g = torch.Generator().manual_seed(len(anns))
            pts = torch.rand(17, 2, generator=g) * torch.tensor([w, h]) + torch.tensor([x, y])
            kps = torch.cat([pts, torch.full((17, 1), 2.0)], dim=1).flatten().tolist()
            anns.append({**ann, "category_id": 0, "keypoints": kps})
        record["annotations"] = anns
        out.append(record)
    return out


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if "152" in n else n for n in sorted(ZOO)],
)
def test_config_takes_a_cpu_training_step(name, batch):
    """The config's own depth, heads and deformable stages at tiny widths: one step of the
    detector on the CPU, finite, moving the backbone (and its offset convs) and the heads."""
    from detectron2.data import MetadataCatalog
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    cfg = load_config(CONFIGS / f"{name}.yaml", TINY)
    if cfg.MODEL.KEYPOINT_ON:
        batch = _keypoints(batch)
        names = [f"k{i}" for i in range(17)]
        MetadataCatalog.get("deform_kp").set(keypoint_names=names, keypoint_flip_map=[])
        cfg.DATASETS.TRAIN = ("deform_kp",)
    data = _mapped(cfg, batch)
    model = build_model(cfg).train()
    optimizer = build_optimizer(cfg, model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with EventStorage():
        losses = model(data)
    total = sum(losses.values())
    assert torch.isfinite(total)
    if cfg.MODEL.KEYPOINT_ON:
        assert "loss_keypoint" in losses
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.bottom_up.res5") for k in changed)
    assert any(k.startswith("roi_heads.") for k in changed)
    if "dconv" in name:
        assert any("conv2_offset" in k for k in changed)


def test_x152_weights_name_resolves_to_detectrons_file(tmp_path, monkeypatch):
    """The X-152 config names its ImageNet file as the zoo does (catalog://...), and the
    project's weights path resolves it through detectron2's ModelCatalog to Detectron's file."""
    from detectron2.checkpoint.catalog import ModelCatalog

    from resnext_det.weights.hub import resolve_weights_path

    cfg = load_config(CONFIGS / "cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml")
    assert cfg.MODEL.WEIGHTS == "catalog://ImageNetPretrained/FAIR/X-152-32x8d-IN5k"
    assert ModelCatalog.get(cfg.MODEL.WEIGHTS[len("catalog://") :]) == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/25093814/X-152-32x8d-IN5k.pkl"
    )
    # Served from a local folder instead of the network: the path is the one the catalog makes.
    monkeypatch.setattr(ModelCatalog, "S3_C2_DETECTRON_PREFIX", str(tmp_path))
    local = tmp_path / "ImageNetPretrained" / "25093814" / "X-152-32x8d-IN5k.pkl"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"")
    assert resolve_weights_path(cfg.MODEL.WEIGHTS) == str(local)


def test_imagenet_weights_load_into_deformable_stages_leaving_offsets_at_zero(tmp_path):
    """An ImageNet file has no offset convs: it loads into a deformable backbone (as detectron2's
    zoo configs start), the offsets stay at zero and are reported missing, nothing else is."""
    from resnext_det.weights import load_pretrained
    from resnext_det.weights.torchvision import detectron2_to_torchvision

    plain = _deform_cfg("build_resnext_fpn_backbone", False, 1)
    plain.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False] * 4
    source = randomize_norm_stats(build_backbone(plain).bottom_up, 3)
    torch.save(detectron2_to_torchvision(source.state_dict()), tmp_path / "imagenet.pth")
    model = build_model(_deform_cfg("build_resnext_fpn_backbone", True, 2))
    report = load_pretrained(model, tmp_path / "imagenet.pth")
    bottom_up = model.backbone.bottom_up
    for k, v in source.state_dict().items():
        assert torch.equal(bottom_up.state_dict()[k], v), k
    offsets = [k for k in report.missing if "bottom_up" in k]
    assert offsets and all(".conv2_offset." in k for k in offsets)
    assert not any(bottom_up.state_dict()[k[len("backbone.bottom_up.") :]].any() for k in offsets)


LAZY_TWINS = [
    "keypoint_rcnn_X_101_32x8d_FPN_3x",
    "keypoint_rcnn_R_101_FPN_3x",
    "mask_rcnn_X_101_32x8d_FPN_3x_dconv_c3-c5",
    "mask_rcnn_R_101_FPN_3x_dconv_c3-c5",
]


@pytest.mark.parametrize("name", LAZY_TWINS)
def test_lazy_config_builds_its_yacs_twins_model(name):
    """configs/lazy/NAME.py (on detectron2's own lazy bases) is the model of configs/NAME.yaml:
    every key and shape, the same weights name, pixel std, stride placement and schedule."""
    from detectron2.config import instantiate

    from resnext_det import model_zoo

    lazy = model_zoo.get_config(f"lazy/{name}.py")
    yacs = load_config(CONFIGS / f"{name}.yaml", ["MODEL.DEVICE", "meta"])
    with torch.device("meta"):
        a = {k: tuple(v.shape) for k, v in instantiate(lazy.model).state_dict().items()}
        b = {k: tuple(v.shape) for k, v in build_model(yacs).state_dict().items()}
    assert a == b
    assert lazy.train.init_checkpoint == yacs.MODEL.WEIGHTS
    assert list(lazy.model.pixel_std) == list(yacs.MODEL.PIXEL_STD)
    assert lazy.model.backbone.bottom_up.spec.stride_in_1x1 == yacs.MODEL.RESNETS.STRIDE_IN_1X1
    assert lazy.train.max_iter == yacs.SOLVER.MAX_ITER
