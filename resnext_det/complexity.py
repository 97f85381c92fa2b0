"""The paper's complexity template (Sec. 3.1, Table 2) and parameter/FLOP counting.

Counting follows the paper: parameters are those of the convolutions and the classifier (norm
scales and biases are not counted; with ``FrozenBN`` they are buffers anyway), and one
multiply-add is one FLOP (fvcore's convention).

Deformable stages (``MODEL.RESNETS.DEFORM_ON_PER_STAGE``) count their offset convolutions
(``conv2_offset``: ordinary convs, parameters and multiply-adds), the deformable convolution's
multiply-adds as those of the 3x3 conv it replaces, and its bilinear sampling: 4 multiply-adds per
sampled value (one per neighbouring pixel), 5 with the DCNv2 mask (``Complexity.sampling_flops``;
included in ``flops``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from .backbone import make_resnext
from .spec import ResNeXtSpec, block_params, equal_complexity_width

__all__ = [
    "block_params",
    "equal_complexity_width",
    "Complexity",
    "count_complexity",
    "backbone_complexity",
    "PAPER_CARDINALITIES",
]

# Table 2 of the paper: cardinalities at ResNet-50's budget (bottleneck widths 64, 40, 24, 14, 4).
PAPER_CARDINALITIES = (1, 2, 4, 8, 32)


@dataclass(frozen=True)
class Complexity:
    params: int  # conv + linear parameters, as the paper counts them
    flops: int  # multiply-adds, fvcore's count (with the deformable sampling)
    input_size: tuple[int, int]
    sampling_flops: int = 0  # of ``flops``: the bilinear sampling of deformable convolutions

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def _counted_params(model: nn.Module) -> int:
    layers = (nn.Conv2d, nn.Linear)
    return sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, layers)
        for p in m.parameters(recurse=False)
    )


# Operators whose multiply-adds are counted (fvcore's names; the deform_* ones are ours).
_COUNTED = ("conv", "linear", "addmm", "matmul", "deform_conv", "deform_sampling")


def deform_conv_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore handle for ``torchvision::deform_conv2d``: the convolution's multiply-adds
    (``deform_conv``, as a plain conv of the same shape) and the bilinear sampling
    (``deform_sampling``: every input value a tap reads is interpolated from 4 pixels, and scaled
    by the mask in DCNv2)."""
    # torchvision::deform_conv2d(input, weight, offset, mask, bias, stride_h, stride_w, pad_h,
    # pad_w, dilation_h, dilation_w, groups, offset_groups, use_mask)
    x, w = get_shape(inputs[0]), get_shape(inputs[1])
    out = get_shape(outputs[0])
    use_mask = bool(inputs[13].toIValue())
    n, c_in = x[0], x[1]
    c_out, c_per_group, kh, kw = w
    positions = n * out[2] * out[3]
    conv = positions * c_out * c_per_group * kh * kw
    sampled = positions * c_in * kh * kw
    return Counter({"deform_conv": conv, "deform_sampling": sampled * (5 if use_mask else 4)})


def count_complexity(model: nn.Module, input_size: tuple[int, int]) -> Complexity:
    """Parameters and FLOPs of ``model`` on one 3 x H x W image (the model is not changed)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image = torch.zeros(1, 3, *input_size)
            analysis = FlopCountAnalysis(model, image)
            analysis.set_op_handle("torchvision::deform_conv2d", deform_conv_flop_jit)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # Norms, ReLUs, pooling and additions are not multiply-adds: the paper counts convs/fc.
            by_operator = analysis.by_operator()
            flops = sum(v for k, v in by_operator.items() if k in _COUNTED)
    finally:
        model.train(was_training)
    return Complexity(
        _counted_params(model),
        int(flops),
        tuple(input_size),
        sampling_flops=int(by_operator.get("deform_sampling", 0)),
    )


def backbone_complexity(
    spec: ResNeXtSpec, input_size: tuple[int, int] = (224, 224), *, classifier: bool = True
) -> Complexity:
    """Complexity of ``spec``'s network: with a 1000-way fc at ImageNet shape (the paper's
    numbers), or res2..res5 alone at a detection shape (``classifier=False``)."""
    model = make_resnext(
        spec.replace(block_form="grouped", norm="FrozenBN"),
        num_classes=1000 if classifier else None,
    )
    return count_complexity(model, input_size)


def complexity_rows(
    specs: dict[str, ResNeXtSpec], detection_size: tuple[int, int] = (800, 1333)
) -> list[dict[str, object]]:
    """One row per named spec: params/GFLOPs at ImageNet shape (with fc, the paper's numbers) and
    of res2..res5 at ``detection_size``."""
    rows = []
    for name, spec in specs.items():
        imagenet = backbone_complexity(spec, (224, 224), classifier=True)
        detection = backbone_complexity(spec, detection_size, classifier=False)
        rows.append(
            {
                "model": name,
                "depth": spec.depth,
                "C": spec.cardinality,
                "d": spec.width_per_group,
                "params_M (224, fc)": round(imagenet.mparams, 2),
                "GFLOPs (224, fc)": round(imagenet.gflops, 2),
                "params_M (backbone)": round(detection.mparams, 2),
                f"GFLOPs ({detection_size[0]}x{detection_size[1]})": round(detection.gflops, 1),
            }
        )
    return rows


def equal_complexity_sweep(
    depth: int = 50, cardinalities: tuple[int, ...] = PAPER_CARDINALITIES, **spec_fields
) -> dict[str, ResNeXtSpec]:
    """The paper's Table 2: for each C, the width d that keeps the ResNet's complexity."""
    specs = {}
    for c in cardinalities:
        spec = ResNeXtSpec.template(depth=depth, cardinality=c, **spec_fields)
        specs[f"{c}x{spec.width_per_group}d"] = spec
    return specs
