"""The paper's experiment as one job: error against cardinality at equal complexity.

Xie et al. (2017) hold a network's complexity fixed and trade the bottleneck width d for the
cardinality C (Table 2, Sec. 3.1: C = 1, 2, 4, 8, 32 -> d = 64, 40, 24, 14, 4 at ResNeXt-50), and
report that error falls as C rises (Table 3); at twice the complexity, more paths beat a deeper or
a wider ResNet (Table 4). :func:`run_sweep` makes that experiment on a detector:

1. :func:`plan_sweep`: for each C the template's width at the config's depth and widths
   (:meth:`ResNeXtSpec.replace` with ``width_per_group=0``; C = 1 is the ResNet), optionally the
   2x-complexity models of Table 4 (:data:`KINDS`);
2. :func:`train_cells`: N runs of each, differing only in SEED, all in one pool of workers
   (:func:`~resnext_det.training.train_runs`, seed-major so that a stopped sweep has whole seeds);
3. :func:`evaluate_cell`: each run on the config's test set
   (:func:`~resnext_det.evaluation.compare_models`: its results json and figures);
4. :func:`write_report`: every variant against C = 1 by
   :func:`~resnext_det.evaluation.compare_results` (intervals over test images and training runs),
   each interval at the Bonferroni confidence over the family of comparisons, so that all of them
   hold together at the nominal level; ``sweep.{json,md,png}`` written all or nothing.

Every step is resumable: a cell (one variant, one seed) is ``OUT/<variant>/seed_<k>/``, trained
once (a killed run resumes from its checkpoint) and evaluated once into its ``evaluation/``. One
cell can be run on its own (:func:`run_cell`, a job of a cluster array) and the report built from
whatever cells are done (:func:`write_report` lists the missing ones). ``OUT/sweep_settings.json``
records what defines the cells; a sweep with other settings is refused there, naming the
difference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode
from detectron2.modeling.backbone.fpn import (
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .backbone import (
    build_resnext_backbone,
    build_resnext_fpn_backbone,
    build_resnext_retinanet_fpn_backbone,
)
from .complexity import backbone_complexity
from .errors import ConfigError
from .evaluation.report import FINDING, IMAGES_ONLY
from .io import staged_files, write_json_atomic
from .reading import read_json_file
from .spec import ARCHITECTURES, ResNeXtSpec, block_params

__all__ = [
    "KINDS",
    "OUTPUT_FILES",
    "RESNET_BACKBONES",
    "SETTINGS_FILE",
    "SweepError",
    "SweepPlan",
    "SweepVariant",
    "cell_state",
    "claim_out_dir",
    "evaluate_cell",
    "load_settings",
    "plan_sweep",
    "run_cell",
    "run_sweep",
    "train_cells",
    "write_report",
]

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
        from .training import seed_run_dir

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
# ------------------------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _shown(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "(unset)"


def _differences(there: dict[str, Any], here: dict[str, Any]) -> list[str]:
    # Through JSON both ways: a tuple here is a list there.
    a, b = (_flat(json.loads(json.dumps(s))) for s in (there, here))
    a.pop("variants", None), b.pop("variants", None)  # follow from the rest
    return [
        f"{k.removeprefix('config.')} {_shown(a, k)} there, {_shown(b, k)} here"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def load_settings(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of the sweep in ``out_dir``, or None when it holds none."""
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    return read_json_file(path, "sweep settings file")


def claim_out_dir(plan: SweepPlan, *, create: bool = True) -> None:
    """Record the plan's settings in ``out_dir`` or check that the sweep there has the same.

    Args:
        create: write the settings when ``out_dir`` holds none; False (a report of cells that
            must exist already) refuses such a folder instead.

    Raises:
        SweepError: ``out_dir`` holds a sweep with other settings (the differences named), or
            no sweep at all and ``create`` is False.
    """
    here = plan.settings()
    path = plan.out_dir / SETTINGS_FILE
    there = load_settings(plan.out_dir)
    if there is None:
        if not create:
            raise SweepError("out_dir", f"{str(plan.out_dir)!r} holds no sweep (no {path.name})")
        write_json_atomic(path, here, indent=1)
        there = load_settings(plan.out_dir)  # another job may have written at the same time
    diff = _differences(there, here)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SweepError(
            "out_dir",
            f"{str(plan.out_dir)!r} holds a sweep with other settings ({path}): {shown}. "
            "Use another folder for this sweep, or the settings recorded there",
        )


def cell_state(plan: SweepPlan, variant: SweepVariant, seed: int) -> str:
    """``"evaluated"``, ``"trained"`` (its model_final.pth, no evaluation yet) or ``"todo"``."""
    run = plan.run_dir(variant, seed)
    if (run / EVALUATION_DIR / "comparison.json").is_file():
        return "evaluated"
    return "trained" if (run / "model_final.pth").is_file() else "todo"


def train_cells(
    plan: SweepPlan, cells: Sequence[tuple[SweepVariant, int]], *, parallel: int = 1
) -> list[tuple[SweepVariant, int]]:
    """Train the cells that have no ``model_final.pth`` yet (a killed one resumes from its
    checkpoint), ``parallel`` at once in one pool of one-thread workers
    (:func:`~resnext_det.training.train_runs`; 1: one after another in this process).

    Returns:
        the cells trained now (the others were done already).
    """
    from .training import train_runs

    todo = [(v, k) for v, k in cells if cell_state(plan, v, k) == "todo"]
    if not todo:
        return []
    logger.info(
        f"sweep: training {len(todo)} of {len(cells)} cells, {min(parallel, len(todo))} at a "
        f"time: {[f'{v.name}/seed_{k}' for v, k in todo]}"
    )
    train_runs([(plan.variant_config(v), k) for v, k in todo], parallel=parallel)
    return todo


def evaluate_cell(
    plan: SweepPlan,
    variant: SweepVariant,
    seed: int,
    *,
    inference: Any = None,
    progress: bool = True,
) -> Path:
    """Evaluate the trained cell on the test set, once, into ``<run>/evaluation/``
    (:func:`~resnext_det.evaluation.compare_models` of this one run, with the
    :class:`~resnext_det.speed.InferenceSettings` ``inference``: its results json, AP, ...).

    Returns:
        the evaluation's ``comparison.json``.
    """
    from .data import register_from_config
    from .evaluation import compare_models
    from .training import seed_run_config

    out = plan.run_dir(variant, seed) / EVALUATION_DIR
    if cell_state(plan, variant, seed) == "evaluated":
        return out / "comparison.json"
    weights = plan.run_dir(variant, seed) / "model_final.pth"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the cell {variant.name}/seed_{seed} is not trained")
    register_from_config(plan.config)
    cfg = seed_run_config(plan.variant_config(variant), seed)
    compare_models(
        {variant.name: (cfg, weights)},
        plan.test_set,
        out,
        bootstrap=0,
        gallery=0,
        device=cfg.MODEL.DEVICE,
        inference=inference,
        progress=progress,
    )
    return out / "comparison.json"


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------


def _cell_figures(plan: SweepPlan, variant: SweepVariant, seed: int) -> dict[str, Any]:
    out = plan.run_dir(variant, seed) / EVALUATION_DIR
    report = read_json_file(out / "comparison.json", "cell evaluation")
    m = report["models"][variant.name]
    return {
        "seed": seed,
        **{k: m[k] for k in METRICS},
        "weights": os.fspath(plan.run_dir(variant, seed) / "model_final.pth"),
        "results": os.fspath(out / Path(m["results_file"]).name),
    }


def _complexity(plan: SweepPlan) -> dict[str, dict[str, float]]:
    counts = {
        v.name: backbone_complexity(v.spec, COMPLEXITY_INPUT, classifier=False)
        for v in plan.variants
    }
    base = counts[plan.baseline.name]
    return {
        name: {
            "params": c.params,
            "gflops": c.gflops,
            "params_vs_baseline": c.params / base.params - 1.0,
            "gflops_vs_baseline": c.flops / base.flops - 1.0,
        }
        for name, c in counts.items()
    }


def _variant_entry(
    variant: SweepVariant, runs: list[dict], cx: dict, m: dict | None, baseline: bool
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": variant.name,
        "kind": variant.kind,
        "label": variant.label,
        "depth": variant.spec.depth,
        "cardinality": variant.spec.cardinality,
        "width_per_group": variant.spec.width_per_group,
        **cx,
        "runs": [{k: r[k] for k in ("seed", *METRICS, "weights")} for r in runs],
    }
    if m is None:  # no run done yet
        entry.update({k: None for k in METRICS}, ci=None, between_run_sd=None, delta=None)
        return entry
    entry.update({k: m[k] for k in METRICS})
    entry["ci"] = {k: m.get("ci", {}).get(k) for k in METRICS}
    entry["between_run_sd"] = {k: m["between_run_sd"][k] for k in METRICS}
    if baseline:
        entry["delta"] = None
        return entry
    entry["delta"] = {
        k: {
            "value": m["delta"][k],
            "low": m["delta_ci"][k][0],
            "high": m["delta_ci"][k][1],
            "excludes_0": m["delta_significant"][k],
            "p": m["delta_p"][k],
        }
        for k in METRICS
    }
    entry["delta_covers"] = m["delta_covers"]
    entry["run_to_run_measured"] = m["delta_calibrated"]
    return entry


def write_report(
    plan: SweepPlan,
    *,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare every variant with done cells against C = 1 and write ``out_dir/sweep.{json,md,
    png}`` (and the comparison's own ``comparison.{json,md}``), all or nothing.

    The family is the variants compared with C = 1; each interval is at the Bonferroni confidence
    (:func:`~resnext_det.evaluation.intervals.bonferroni_confidence`) so that all of them hold
    their true differences together with probability ``confidence`` (per metric). Cells not
    evaluated yet are left out and listed (``missing``); a variant with no cell done is shown
    without figures.

    Returns:
        the report (what ``sweep.json`` holds).

    Raises:
        SweepError: no cell of C = 1 is done (nothing to compare with).
    """
    from .data import register_from_config
    from .evaluation import compare_results
    from .evaluation.inference import dataset_ground_truth
    from .evaluation.intervals import bonferroni_confidence
    from .evaluation.report import render_json, render_markdown

    _check_int("bootstrap", bootstrap)
    done: dict[str, list[dict]] = {v.name: [] for v in plan.variants}
    missing = []
    for v, k in plan.cells():
        state = cell_state(plan, v, k)
        if state == "evaluated":
            done[v.name].append(_cell_figures(plan, v, k))
        else:
            missing.append(
                {"variant": v.name, "seed": k, "state": state, "folder": str(plan.run_dir(v, k))}
            )
    if not done[plan.baseline.name]:
        raise SweepError(
            "out_dir",
            f"no run of the ResNet ({plan.baseline.name}, C = 1) is done in "
            f"{str(plan.out_dir)!r}: nothing to compare with. Missing cells: "
            + ", ".join(f"{m['variant']}/seed_{m['seed']}" for m in missing),
        )
    compared = [v for v in plan.variants if done[v.name]]
    family = len(compared) - 1
    level = bonferroni_confidence(confidence, family) if family else confidence
    register_from_config(plan.config)
    test_set, gt, _, _ = dataset_ground_truth(plan.test_set)
    comparison = compare_results(
        gt,
        {v.name: [r["results"] for r in done[v.name]] for v in compared},
        baseline=plan.baseline.name,
        bootstrap=bootstrap,
        seed=seed,
        confidence=level,
        allow_missing_images=True,  # each run was evaluated on every image
        extra_report={"dataset": test_set},
        progress=progress,
    )
    cx = _complexity(plan)
    variants = [
        _variant_entry(
            v,
            done[v.name],
            cx[v.name],
            comparison["models"].get(v.name),
            baseline=v is plan.baseline,
        )
        for v in plan.variants
    ]
    report: dict[str, Any] = {
        "config_file": plan.config_file,
        "out_dir": str(plan.out_dir),
        "test_set": plan.test_set,
        "num_images": comparison["num_images"],
        "baseline": plan.baseline.name,
        "template": {
            "depth": plan.baseline.spec.depth,
            "stem_out_channels": plan.baseline.spec.stem_out_channels,
            "res2_out_channels": plan.baseline.spec.res2_out_channels,
            "resnet_width": plan.baseline.spec.width_per_group,
        },
        "cardinalities": list(plan.cardinalities),
        "runs_planned": plan.runs,
        "complexity_counted": (
            f"stem and res2..res5 (the FPN, heads and classifier are the same for every "
            f"variant and not counted): conv parameters and multiply-adds at "
            f"{COMPLEXITY_INPUT[0]}x{COMPLEXITY_INPUT[1]}, as the paper counts them"
        ),
        "confidence": confidence,
        "familywise": {
            "method": "Bonferroni",
            "comparisons": family,
            "interval_confidence": level,
            "family": "the differences from C = 1, of AP and of AP@0.5 each on its own",
        },
        "bootstrap": comparison["bootstrap"],
        "run_to_run_measured": all(
            v.get("run_to_run_measured", True) for v in variants if v["delta"] is not None
        ),
        "variants": variants,
        "missing": missing,
        "complete": not missing,
    }
    report["summary"] = _summary(report)
    paths = [plan.out_dir / name for name in OUTPUT_FILES]
    writers = {
        "sweep.json": lambda p: p.write_text(render_json(report) + "\n", encoding="utf-8"),
        "sweep.md": lambda p: p.write_text(render_markdown_sweep(report) + "\n", encoding="utf-8"),
        "sweep.png": lambda p: render_png(report, p),
        "comparison.json": lambda p: p.write_text(render_json(comparison) + "\n", "utf-8"),
        "comparison.md": lambda p: p.write_text(render_markdown(comparison) + "\n", "utf-8"),
    }
    with staged_files(paths) as temps:
        for name, tmp in zip(OUTPUT_FILES, temps):
            writers[name](tmp)
    report["outputs"] = [str(p) for p in paths]
    return report


# ------------------------------------------------------------------------------------------
# Words and pictures
# ------------------------------------------------------------------------------------------


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _comparisons(n: int) -> str:
    return f"{n} comparison{'s' * (n != 1)}"


def _delta_text(d: dict) -> str:
    return f"{_f(d['value'], True)} [{_f(d['low'], True)}, {_f(d['high'], True)}]"


def _summary(report: dict[str, Any]) -> dict[str, list[str]]:
    """What the curve shows and what it does not, in sentences (the md's words)."""
    variants = [v for v in report["variants"] if v["delta"] is not None]
    curve = [v for v in report["variants"] if v["kind"] == "cardinality" and v["AP"] is not None]
    level = report["familywise"]["interval_confidence"]
    shows, not_shown = [], []
    for key, label in METRICS.items():
        up = [v for v in variants if v["delta"][key]["excludes_0"] and v["delta"][key]["low"] > 0]
        down = [
            v for v in variants if v["delta"][key]["excludes_0"] and v["delta"][key]["high"] < 0
        ]
        if not up and not down:
            shows.append(
                f"{label}: no variant differs measurably from the ResNet (C = 1); every "
                f"difference's {100 * level:.1f}% interval holds 0."
            )
        for group, word in ((up, "higher"), (down, "lower")):
            if group:
                shows.append(
                    f"{label}: {word} than the ResNet for "
                    + ", ".join(
                        f"{v['label']} ({_delta_text(v['delta'][key])}"
                        + ("" if v["run_to_run_measured"] else "; test images only: no finding")
                        + ")"
                        for v in group
                    )
                    + "."
                )
        means = [v[key] for v in curve]
        if len(means) >= 3:
            steps = [b - a for a, b in zip(means, means[1:])]
            shape = (
                "rise at every step of C"
                if all(s > 0 for s in steps)
                else "fall at every step of C"
                if all(s < 0 for s in steps)
                else "do not move one way as C rises"
            )
            shows.append(
                f"{label} means by C: "
                + ", ".join(f"{v['cardinality']}: {_f(v[key])}" for v in curve)
                + f"; they {shape}."
            )
    cx = [v for v in report["variants"] if v["kind"] == "cardinality"][1:]
    worst = max(cx, key=lambda v: abs(v["params_vs_baseline"]))
    shows.append(
        "Equal complexity within the template's rounding of d to an integer: parameters "
        + ", ".join(f"C={v['cardinality']} {100 * v['params_vs_baseline']:+.1f}%" for v in cx)
        + ", GFLOPs "
        + ", ".join(f"C={v['cardinality']} {100 * v['gflops_vs_baseline']:+.1f}%" for v in cx)
        + f" against the ResNet's (furthest: {worst['label']})."
    )
    not_shown.append(
        "A shape of the means (rising, falling) whose intervals hold 0 is what the noise of "
        "training runs and test images alone produces: it is not evidence for or against the "
        "paper's curve."
    )
    if not report["run_to_run_measured"]:
        not_shown.append(
            "Run-to-run variation is unmeasured (one training run on at least one side): the "
            "intervals cover the test images only, and a difference that excludes 0 is not a "
            "finding; train 3 or more runs per variant."
        )
    not_shown.append(
        f"Anything beyond this data set ({report['test_set']}, {report['num_images']} images), "
        "this schedule and these widths: the paper's gains are at ImageNet/COCO scale and "
        "ResNeXt-50/101 widths, where d >= 4 for every C it tests."
    )
    not_shown.append(
        "Speed: equal parameters and multiply-adds are not equal time; grouped convolutions run "
        "fewer multiply-adds per second than dense ones."
    )
    if any(v["kind"] != "cardinality" for v in report["variants"]):
        not_shown.append(
            "Which 2x-complexity model beats which: each is compared with the ResNet, not with "
            "the others; overlapping intervals do not make them equal."
        )
    if report["missing"]:
        not_shown.append(
            f"The {len(report['missing'])} missing cells: "
            + ", ".join(f"{m['variant']}/seed_{m['seed']}" for m in report["missing"])
            + " (the report covers the cells done)."
        )
    return {"shows": shows, "does_not_show": not_shown}


def _mark(delta: dict, variant: dict) -> str:
    """The comparison's marks (:mod:`resnext_det.evaluation.report`): a finding, or an
    images-only interval that excludes 0."""
    if not delta["excludes_0"]:
        return ""
    return f" {FINDING if variant['run_to_run_measured'] else IMAGES_ONLY}"


def render_markdown_sweep(report: dict[str, Any]) -> str:
    """``sweep.md``: the settings, one row per variant, and the summary in words."""
    fw = report["familywise"]
    boot = report["bootstrap"] or {}
    lines = [
        "# Cardinality sweep at equal complexity",
        "",
        f"Config: `{report['config_file']}`; template: depth {report['template']['depth']}, "
        f"res2 {report['template']['res2_out_channels']} channels, ResNet width "
        f"d = {report['template']['resnet_width']}. Test set `{report['test_set']}` "
        f"({report['num_images']} images); {report['runs_planned']} training runs planned per "
        f"variant. Intervals: {boot.get('method', '-')}, {boot.get('resamples', '-')} "
        f"resamples; each interval at {100 * fw['interval_confidence']:.2f}% ({fw['method']} "
        f"over {_comparisons(fw['comparisons'])} with C = 1), so that {fw['family']} hold "
        f"together at {100 * report['confidence']:.0f}%. "
        f"Complexity: {report['complexity_counted']}.",
        "",
        "| variant | C | d | params (M) | GFLOPs | vs C=1 params / GFLOPs | runs (AP@0.5 each) "
        "| AP | AP@0.5 | ΔAP | ΔAP@0.5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        each = ", ".join(_f(r["AP50"]) for r in v["runs"]) or "none done"
        ci = v["ci"] or {}
        cells = [
            f"{v['label']}" + (" (baseline)" if v["name"] == report["baseline"] else ""),
            str(v["cardinality"]),
            str(v["width_per_group"]),
            f"{v['params'] / 1e6:.3f}",
            f"{v['gflops']:.3f}",
            f"{100 * v['params_vs_baseline']:+.1f}% / {100 * v['gflops_vs_baseline']:+.1f}%",
            f"{len(v['runs'])}: {each}",
        ]
        for k in METRICS:
            iv = ci.get(k) or [None, None]
            cells.append(f"{_f(v[k])} [{_f(iv[0])}, {_f(iv[1])}]" if v[k] is not None else "-")
        for k in METRICS:
            d = (v["delta"] or {}).get(k)
            cells.append(_delta_text(d) + _mark(d, v) if d else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "AP and AP@0.5 on COCO's 0-100 scale, means over runs with their intervals; Δ: the "
        f"difference from the ResNet (C = 1); `{FINDING}`: its interval excludes 0; "
        f"`{IMAGES_ONLY}`: it excludes 0 but covers the test images only (one run on a side), "
        "which is no finding. Every run's weights and figures are in sweep.json; per-category AP "
        "in comparison.md.",
        "",
        "## What the curve shows",
        "",
        *(f"- {s}" for s in report["summary"]["shows"]),
        "",
        "## What it does not show",
        "",
        *(f"- {s}" for s in report["summary"]["does_not_show"]),
    ]
    if report["missing"]:
        lines += ["", "## Missing cells", ""]
        lines += [f"- {m['variant']} seed {m['seed']}: {m['state']}" for m in report["missing"]]
    return "\n".join(lines)


def render_png(report: dict[str, Any], path: str | os.PathLike) -> None:
    """AP and AP@0.5 against C (log axis; every run a dot, each variant's mean with its
    interval, the 2x-complexity models beside), the differences from C = 1 with the family's
    intervals, and params / GFLOPs per variant relative to C = 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    curve = [v for v in variants if v["kind"] == "cardinality"]
    # The 2x ResNets have C = 1 too: nudge them apart from the baseline on the log axis.
    nudge = {"deeper": 0.8, "wider": 1.25}
    xs = {v["name"]: v["cardinality"] * nudge.get(v["kind"], 1.0) for v in variants}
    style = {  # kind -> marker, colour
        "cardinality": ("o", "tab:blue"),
        "deeper": ("s", "tab:orange"),
        "wider": ("D", "tab:green"),
        "cardinality_2x": ("^", "tab:red"),
    }
    widths = {v["cardinality"]: f"{v['width_per_group']}d" for v in curve}
    ticks = sorted({v["cardinality"] for v in variants})
    labels = [f"{c}\n({widths[c]})" if c in widths else str(c) for c in ticks]
    level = 100 * report["familywise"]["interval_confidence"]
    fw = report["familywise"]

    def c_axis(ax) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
        ax.set_xlim(min(xs.values()) / 1.6, max(xs.values()) * 1.6)
        ax.set_xlabel("cardinality C (width d)")
        ax.grid(alpha=0.3)

    def interval(value: float, low: float | None, high: float | None) -> Any:
        if low is None or high is None:
            return None
        return [[max(value - low, 0.0)], [max(high - value, 0.0)]]

    plt.rcParams.update({"font.size": 11})
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), dpi=100)
    for ax, (key, label) in zip(axes[0], METRICS.items()):
        for v in variants:
            marker, color = style[v["kind"]]
            x = xs[v["name"]]
            pts = [r[key] for r in v["runs"] if r[key] is not None]
            ax.scatter(
                [x / 1.05] * len(pts), pts, s=24, color=color, alpha=0.5, marker=marker, lw=0,
                label="each run" if v is variants[0] else None,
            )  # fmt: skip
            if v[key] is None:
                continue
            iv = (v["ci"] or {}).get(key) or [None, None]
            kind = "mean, interval" if v["kind"] == "cardinality" else KINDS[v["kind"]]
            named = v is variants[0] or v["kind"] != "cardinality"
            ax.errorbar(
                x * 1.05, v[key], yerr=interval(v[key], *iv), fmt=marker, color=color, ms=8,
                capsize=4, lw=1.5, label=kind if named else None,
            )  # fmt: skip
        means = [(xs[v["name"]] * 1.05, v[key]) for v in curve if v[key] is not None]
        ax.plot(*zip(*means), color="tab:blue", lw=1.2, alpha=0.6)
        c_axis(ax)
        ax.set_ylabel(f"{label} (0-100)")
        ax.set_title(f"{label} against C at equal complexity ({level:.1f}% intervals)")
        ax.legend(fontsize=9, loc="best")
    ax = axes[1][0]
    compared = [v for v in variants if v["delta"] is not None]
    for i, (key, label) in enumerate(METRICS.items()):
        color = ("tab:purple", "tab:cyan")[i]
        for v in compared:
            d = v["delta"][key]
            ax.errorbar(
                xs[v["name"]] * (0.95, 1.05)[i], d["value"],
                yerr=interval(d["value"], d["low"], d["high"]), fmt=style[v["kind"]][0],
                color=color, ms=7, capsize=4, lw=1.5,
                label=f"Δ{label}" if v is compared[0] else None,
            )  # fmt: skip
    ax.axhline(0, color="black", lw=1)
    c_axis(ax)
    ax.set_ylabel("difference from C = 1 (0-100)")
    ax.set_title(
        f"Difference from C = 1: {level:.1f}% intervals\n({fw['method']} over "
        f"{_comparisons(fw['comparisons'])}: all hold together at "
        f"{100 * report['confidence']:.0f}%)",
        fontsize=11,
    )
    if compared:
        ax.legend(fontsize=9)
    ax = axes[1][1]
    pos = list(range(len(variants)))
    for j, (key, unit, color) in enumerate(
        (("params", "parameters", "tab:gray"), ("gflops", "GFLOPs", "tab:olive"))
    ):
        rel = [1.0 + v[f"{key}_vs_baseline"] for v in variants]
        bars = ax.bar([p + (j - 0.5) * 0.38 for p in pos], rel, 0.38, color=color, label=unit)
        for bar, v in zip(bars, variants):
            ax.annotate(
                f"{100 * v[f'{key}_vs_baseline']:+.0f}%",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8,
            )  # fmt: skip
    ticks_x = [f"{v['label']}\n{v['params'] / 1e6:.3g}M, {v['gflops']:.3g} GF" for v in variants]
    ax.axhline(1.0, color="black", lw=1)
    tilt = 15 if len(variants) > 4 else 0
    ax.set_xticks(pos, ticks_x, rotation=tilt, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel("relative to C = 1")
    ax.set_ylim(0, max(1.0 + v["params_vs_baseline"] for v in variants) * 1.3 + 0.1)
    ax.set_title(
        f"Complexity: stem + res2..res5 at {COMPLEXITY_INPUT[0]}x{COMPLEXITY_INPUT[1]}\n"
        "(equal within the template's rounding of d)",
        fontsize=11,
    )
    ax.legend(fontsize=9, loc="upper left")
    runs = sorted({len(v["runs"]) for v in variants})
    fig.suptitle(
        f"Cardinality sweep, depth {report['template']['depth']}: {report['test_set']} "
        f"({report['num_images']} images), {'/'.join(map(str, runs))} training "
        f"run{'s' * (runs != [1])} per variant"
        + (f", {len(report['missing'])} cells missing" if report["missing"] else "")
        + ("" if report["run_to_run_measured"] else "\n(run-to-run variation unmeasured: "
           "intervals over the test images only)"),
        fontsize=13,
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# The whole job, or one cell
# ------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    report: dict[str, Any]
    trained: list[tuple[str, int]] = field(default_factory=list)  # (variant, seed) trained now
    evaluated: list[tuple[str, int]] = field(default_factory=list)  # evaluated now


def run_sweep(
    plan: SweepPlan,
    *,
    parallel: int | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    inference: Any = None,
    progress: bool = True,
) -> SweepResult:
    """Train what is not trained, evaluate what is not evaluated, write the report.

    Args:
        plan: from :func:`plan_sweep`; its folder is claimed first (:func:`claim_out_dir`).
        parallel: runs at once, one thread each, in one pool (default: the machine's cores);
            1: one after another in this process (whose threads are the caller's). With a
            pool, a thread of this process evaluates finished cells while the last runs train.
        bootstrap, confidence: the comparison's resamples and family-wise confidence.
        inference: how the runs are evaluated (:func:`evaluate_cell`).

    Returns:
        the report and the cells trained and evaluated by this call (a re-run of a finished
        sweep trains and evaluates nothing).
    """
    claim_out_dir(plan)
    cells = plan.cells()
    workers = parallel or max(1, min(os.cpu_count() or 1, len(cells)))
    evaluated: list[tuple[str, int]] = []

    def evaluate_trained(stop: threading.Event | None = None) -> None:
        for v, k in cells:
            if stop is not None and stop.is_set():
                return
            if cell_state(plan, v, k) == "trained":
                evaluate_cell(plan, v, k, inference=inference, progress=progress)
                evaluated.append((v.name, k))

    if workers == 1:
        trained = train_cells(plan, cells, parallel=1)
    else:
        trained = _train_evaluating_the_tail(plan, cells, workers, evaluate_trained)
    evaluate_trained()
    report = write_report(plan, bootstrap=bootstrap, confidence=confidence, progress=progress)
    return SweepResult(report, [(v.name, k) for v, k in trained], evaluated)


def _train_evaluating_the_tail(
    plan: SweepPlan,
    cells: list[tuple[SweepVariant, int]],
    workers: int,
    evaluate_trained: Callable[[threading.Event], None],
) -> list[tuple[SweepVariant, int]]:
    """:func:`train_cells` in a pool of ``workers``, in this thread (where ``train_runs`` handles
    SIGINT/SIGTERM), while a second thread evaluates the finished cells once fewer runs are left
    than workers: a core is idle then (the sweep's tail), and the evaluations need not wait for
    the last run."""
    todo = [(v, k) for v, k in cells if cell_state(plan, v, k) == "todo"]
    stop = threading.Event()
    failures: list[BaseException] = []

    def evaluator() -> None:
        try:
            while not stop.wait(_POLL_SECONDS):
                if sum(cell_state(plan, v, k) == "todo" for v, k in todo) < workers:
                    evaluate_trained(stop)
        except Exception as exc:  # raised in the caller's thread once training is over
            failures.append(exc)

    thread = threading.Thread(target=evaluator, name="sweep-evaluation", daemon=True)
    thread.start()
    try:
        trained = train_cells(plan, cells, parallel=workers)
    finally:
        stop.set()
        thread.join()
    if failures:
        raise failures[0]
    return trained


def run_cell(
    plan: SweepPlan,
    variant: SweepVariant,
    seed: int,
    *,
    inference: Any = None,
    progress: bool = True,
) -> Path:
    """Train (or resume, or skip) and evaluate one cell in this process: one job of a cluster
    array into the sweep's folder; ``write_report`` later gathers whatever cells are done.

    Returns:
        the cell's evaluation ``comparison.json``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < plan.runs:
        raise SweepError(
            "seed", f"must be one of the sweep's seeds 0..{plan.runs - 1}; got {seed!r}"
        )
    claim_out_dir(plan)
    train_cells(plan, [(variant, seed)], parallel=1)
    return evaluate_cell(plan, variant, seed, inference=inference, progress=progress)
