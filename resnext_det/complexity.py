"""The paper's complexity template (Sec. 3.1, Table 2) and parameter/FLOP counting.

Counting follows the paper: parameters are those of the convolutions and the classifier (norm
scales and biases are not counted; with ``FrozenBN`` they are buffers anyway), and one
multiply-add is one FLOP (fvcore's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fvcore.nn import FlopCountAnalysis
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
    flops: int  # multiply-adds, fvcore's count
    input_size: tuple[int, int]

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


def count_complexity(model: nn.Module, input_size: tuple[int, int]) -> Complexity:
    """Parameters and FLOPs of ``model`` on one 3 x H x W image (the model is not changed)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            image = torch.zeros(1, 3, *input_size)
            analysis = FlopCountAnalysis(model, image)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # Norms, ReLUs, pooling and additions are not multiply-adds: the paper counts convs/fc.
            flops = sum(
                v
                for k, v in analysis.by_operator().items()
                if k in ("conv", "linear", "addmm", "matmul")
            )
    finally:
        model.train(was_training)
    return Complexity(_counted_params(model), int(flops), tuple(input_size))


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
