"""The sweep's variants: each C at the template's width, and Table 4's 2x-complexity models."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode
from detectron2.modeling.backbone.fpn import (
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..backbone import (
    build_resnext_backbone,
    build_resnext_fpn_backbone,
    build_resnext_retinanet_fpn_backbone,
)
from ..complexity import backbone_complexity
from ..errors import ConfigError
from ..spec import ARCHITECTURES, ResNeXtSpec, block_params

logger = logging.getLogger(__name__)

# The builders whose network is MODEL.RESNETS' ResNet/ResNeXt: this project's and detectron2's.
RESNET_BACKBONES = tuple(
    builder.__name__
    for builder in (
        build_resnext_backbone,
        build_resnext_fpn_backbone,
        build_resnext_retinanet_fpn_backbone,
        build_resnet_backbone,
        build_resnet_fpn_backbone,
        build_retinanet_resnet_fpn_backbone,
    )
)
# What each variant is. "cardinality": the equal-complexity curve (Table 3); the others are
# Table 4's three ways to twice the complexity of the ResNet: more blocks, a wider bottleneck,
# more paths (twice the C of the sweep's largest at its d, as the paper's 64x4d doubles 32x4d).
KINDS = {
    "cardinality": "equal complexity",
    "deeper": "2x complexity, deeper",
    "wider": "2x complexity, wider",
    "cardinality_2x": "2x complexity, 2x cardinality",
}
SETTINGS_FILE = "sweep_settings.json"
OUTPUT_FILES = ("sweep.json", "sweep.md", "sweep.png", "comparison.json", "comparison.md")
EVALUATION_DIR = "evaluation"  # in each cell: compare_models' files of that one run
# The complexity compared: stem + res2..res5 (what the template changes; the FPN and the heads
# are the same for every variant), as the paper counts it (conv parameters, multiply-adds), at
# the paper's 224x224 input.
COMPLEXITY_INPUT = (224, 224)
# How often a sweep training in a pool looks for finished cells to evaluate.
_POLL_SECONDS = 5.0
# The metrics the curve is drawn for (keys of compare_results' report).
METRICS = {"AP": "AP", "AP50": "AP@0.5"}


class SweepError(ConfigError):
    """A sweep's argument is not allowed; ``argument`` names it (``cardinalities``, ``runs``,
    ``out_dir``, ``seed``, ...), so that a command can name its own flag."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message

    def __reduce__(self):  # pickles with its two arguments (its args hold the joined message)
        return type(self), (self.argument, self.message)


@dataclass(frozen=True)
class SweepVariant:
    """One network of the sweep: its folder (and name in the comparison) is ``spec.name``."""

    kind: str  # a key of KINDS
    spec: ResNeXtSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> str:
        """``CxDd``, the paper's notation (``1x64d``, ``32x4d``)."""
        return f"{self.spec.cardinality}x{self.spec.width_per_group}d"

    @property
    def label(self) -> str:
        """How the report names it: ``C=4 (4x6d)``, ``deeper: R-50 (1x16d)``, ..."""
        if self.kind == "cardinality":
            return f"C={self.spec.cardinality} ({self.shape})"
        if self.kind == "cardinality_2x":
            return f"C={self.spec.cardinality} ({self.shape}, 2x)"
        return f"{self.kind}: R-{self.spec.depth} ({self.shape})"


@dataclass(frozen=True, eq=False)
class SweepPlan:
    """What a sweep trains and compares (see :func:`plan_sweep`)."""

    config: CfgNode  # the base config, frozen, OUTPUT_DIR = out_dir
    out_dir: Path
    cardinalities: tuple[int, ...]
    runs: int
    variants: tuple[SweepVariant, ...]  # the cardinalities ascending, then the 2x models
    test_set: str
    also_deeper: bool = False
    also_wider: bool = False
    config_file: str | None = None

    @property
    def baseline(self) -> SweepVariant:
        """The ResNet (C = 1): every variant is compared with it."""
        return self.variants[0]

    def variant_config(self, variant: SweepVariant) -> CfgNode:
        """The training config of ``variant``: the base config with its depth, C and d, into
        ``out_dir/<name>``; no evaluation at the end of training (:func:`evaluate_cell` does it)."""
        cfg = self.config.clone()
        cfg.defrost()
        r = cfg.MODEL.RESNETS
        r.DEPTH, r.NUM_GROUPS = variant.spec.depth, variant.spec.cardinality
        r.WIDTH_PER_GROUP = variant.spec.width_per_group
        cfg.OUTPUT_DIR = os.fspath(self.out_dir / variant.name)
        cfg.DATASETS.TEST = ()
        cfg.freeze()
        return cfg

    def run_dir(self, variant: SweepVariant, seed: int) -> Path:
        from ..training import seed_run_dir

        return seed_run_dir(self.out_dir / variant.name, seed)

    def cells(self) -> list[tuple[SweepVariant, int]]:
        """Every (variant, seed), seed-major: a sweep stopped part way has whole seeds done."""
        return [(v, k) for k in range(self.runs) for v in self.variants]

    def settings(self) -> dict[str, Any]:
        """What defines the cells (JSON): a second sweep into ``out_dir`` must match it."""
        config = yaml.safe_load(self.config.dump())
        config.pop("OUTPUT_DIR", None)
        for key in ("NUM_GROUPS", "WIDTH_PER_GROUP"):  # set per variant
            config["MODEL"]["RESNETS"].pop(key, None)
        return {
            "cardinalities": list(self.cardinalities),
            "runs": self.runs,
            "also_deeper": self.also_deeper,
            "also_wider": self.also_wider,
            "test_set": self.test_set,
            "variants": [{"name": v.name, "kind": v.kind} for v in self.variants],
            "config": config,
        }


def _check_int(argument: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepError(argument, f"must be an integer >= {minimum}; got {value!r}")
    return value


def _check_cardinalities(cardinalities: Sequence[int]) -> tuple[int, ...]:
    values = list(cardinalities)
    if len(values) < 2:
        raise SweepError("cardinalities", f"give C = 1 and at least one more; got {values}")
    for c in values:
        _check_int("cardinalities", c)
    twice = sorted({c for c in values if values.count(c) > 1})
    if twice:
        raise SweepError(
            "cardinalities", f"{', '.join(map(str, twice))} given twice; give each C once"
        )
    if 1 not in values:
        raise SweepError(
            "cardinalities",
            f"must include 1 (the ResNet every other C is compared with); got {values}",
        )
    return tuple(sorted(values))


def _template(base: ResNeXtSpec, cardinality: int) -> ResNeXtSpec:
    """The template's network of ``cardinality`` at the depth and widths of ``base`` (the
    template's ResNet), refused where its width rounds to 0 (a block of d = 1 already further
    from the ResNet's than no block at all)."""
    try:
        spec = base.replace(cardinality=cardinality, width_per_group=0)
    except ValueError as exc:  # e.g. GroupNorm(32) needs C*d divisible by 32
        raise SweepError("cardinalities", f"C = {cardinality}: {exc}") from None
    channels = spec.res2_out_channels
    target = block_params(1, base.width_per_group, channels)
    got = block_params(cardinality, spec.width_per_group, channels)
    if abs(got - target) >= target:
        largest = math.ceil(2 * target / block_params(1, 1, channels)) - 1
        raise SweepError(
            "cardinalities",
            f"C = {cardinality}: the template's width rounds to 0 at "
            f"MODEL.RESNETS.RES2_OUT_CHANNELS {channels} (d = 1 already gives a res2 block of "
            f"{got} parameters, {got / target:.1f}x the ResNet block's {target}); C can be at "
            f"most {largest} at these widths",
        )
    return spec


def _deeper(resnet: ResNeXtSpec) -> ResNeXtSpec:
    """The ResNet of the depth whose GFLOPs are closest to twice ``resnet``'s (log scale; the
    paper's ResNet-200 beside ResNet-101, ResNet-101 beside ResNet-50)."""
    deeper = [d for d in ARCHITECTURES if d > resnet.depth]
    if not deeper:
        raise SweepError(
            "also_deeper",
            f"no depth in {sorted(ARCHITECTURES)} is deeper than MODEL.RESNETS.DEPTH "
            f"{resnet.depth}",
        )
    flops = backbone_complexity(resnet, COMPLEXITY_INPUT, classifier=False).flops
    ratios = {
        d: backbone_complexity(resnet.replace(depth=d), COMPLEXITY_INPUT, classifier=False).flops
        / flops
        for d in deeper
    }
    return resnet.replace(depth=min(deeper, key=lambda d: abs(math.log2(ratios[d]) - 1.0)))


def _wider(resnet: ResNeXtSpec) -> ResNeXtSpec:
    """The ResNet whose res2 block has twice the parameters of ``resnet``'s (the paper's
    "ResNet-101, wider", 1x100d; the closest integer is 99). Ties go to the smaller width, as in
    :func:`~resnext_det.spec.equal_complexity_width`."""
    channels = resnet.res2_out_channels
    target = 2 * block_params(1, resnet.width_per_group, channels)
    width = min(
        range(1, channels + 1), key=lambda d: (abs(block_params(1, d, channels) - target), d)
    )
    return resnet.replace(width_per_group=width)


def plan_sweep(
    cfg: CfgNode,
    out_dir: str | os.PathLike,
    cardinalities: Sequence[int],
    runs: int,
    *,
    also_deeper: bool = False,
    also_wider: bool = False,
    config_file: str | None = None,
) -> SweepPlan:
    """The variants, cells and folders of a sweep; nothing is built, trained or written.

    Args:
        cfg: a detector config whose backbone is a ResNet/ResNeXt (:data:`RESNET_BACKBONES`); its
            depth, stem and res2 widths set the template, its schedule every run, its one
            ``DATASETS.TEST`` entry the test set; its own C and d are not used.
        out_dir: the sweep's folder.
        cardinalities: distinct positive integers, 1 among them (the baseline).
        runs: training runs per variant (seeds 0..runs-1); 1 is allowed, and the report then
            says that run-to-run variation is unmeasured.
        also_deeper, also_wider: add Table 4's 2x-complexity ResNets (deeper: the depth with
            twice the GFLOPs; wider: the width with twice res2's parameters); either also adds
            the 2x-cardinality network (twice the largest C at its d) they are measured against.
        config_file: where ``cfg`` came from, for the report.

    Raises:
        SweepError: an argument that cannot make a sweep, naming it, the value and what is
            allowed (a C whose width rounds to 0 or that the norm cannot divide, a C given
            twice, no C = 1, runs < 1, a backbone that is not a ResNet/ResNeXt, no single test
            set, two variants that would share a folder).

    Example:
        >>> plan = plan_sweep(load_config("configs/demo/faster_rcnn_R_demo.yaml"), "out",
        ...                   [1, 4, 8], 3)
        >>> [(v.name, v.shape) for v in plan.variants]
        [('R-26', '1x16d'), ('X-26-4x6d', '4x6d'), ('X-26-8x3d', '8x3d')]
    """
    runs = _check_int("runs", runs)
    cardinalities = _check_cardinalities(cardinalities)
    name = cfg.MODEL.BACKBONE.NAME
    if name not in RESNET_BACKBONES:
        raise SweepError(
            "config",
            f"MODEL.BACKBONE.NAME must be a ResNet/ResNeXt builder ({', '.join(RESNET_BACKBONES)})"
            f" for a cardinality sweep; got {name!r}",
        )
    tests = list(cfg.DATASETS.TEST)
    if len(tests) != 1:
        raise SweepError(
            "config",
            f"DATASETS.TEST must name the one test set every model is evaluated on; got {tests}",
        )
    # The template's inputs are the depth and widths; the config's own C and d play no part
    # (a ResNeXt config makes the same sweep as its ResNet twin).
    resnet_cfg = cfg.clone()
    resnet_cfg.defrost()
    resnet_cfg.MODEL.RESNETS.NUM_GROUPS, resnet_cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 1, 0
    base = ResNeXtSpec.from_config(resnet_cfg)
    variants = [SweepVariant("cardinality", _template(base, c)) for c in cardinalities]
    resnet = variants[0].spec
    if also_deeper:
        variants.append(SweepVariant("deeper", _deeper(resnet)))
    if also_wider:
        variants.append(SweepVariant("wider", _wider(resnet)))
    if also_deeper or also_wider:
        top = variants[len(cardinalities) - 1].spec
        try:
            double = top.replace(cardinality=2 * top.cardinality)
        except ValueError as exc:
            raise SweepError("cardinalities", f"C = {2 * top.cardinality} (2x): {exc}") from None
        variants.append(SweepVariant("cardinality_2x", double))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SweepError("cardinalities", f"two variants would share one folder: {names}")
    run_cfg = cfg.clone()
    run_cfg.defrost()
    run_cfg.OUTPUT_DIR = os.fspath(out_dir)
    run_cfg.freeze()
    return SweepPlan(
        config=run_cfg,
        out_dir=Path(out_dir),
        cardinalities=cardinalities,
        runs=runs,
        variants=tuple(variants),
        test_set=tests[0],
        also_deeper=also_deeper,
        also_wider=also_wider,
        config_file=config_file,
    )


# ------------------------------------------------------------------------------------------
# The folder: settings, cells


def cell_state(plan: SweepPlan, variant: SweepVariant, seed: int) -> str:
    """``"evaluated"``, ``"trained"`` (its model_final.pth, no evaluation yet) or ``"todo"``."""
    run = plan.run_dir(variant, seed)
    if (run / EVALUATION_DIR / "comparison.json").is_file():
        return "evaluated"
    return "trained" if (run / "model_final.pth").is_file() else "todo"
