"""The embedded default: the whole job on a generated data set, with no download.

1. generate the deterministic shapes set (:func:`resnext_det.data.make_synthetic_coco`);
2. train a ResNet-FPN and a ResNeXt-FPN Faster R-CNN of equal complexity (``configs/demo/``: the
   same network but for C and d, d from the paper's template) from scratch on the CPU, several
   runs of each that differ only in SEED (:func:`resnext_det.training.train_runs`: the runs of
   both models in one pool, one thread per run, as many runs at once as the machine has cores);
3. evaluate every run on the val split and compare the models (AP, AP@0.5, ..., with intervals
   that cover both the test images and the training runs, params, GFLOPs and time per image:
   :func:`resnext_det.evaluation.compare_models`): one run per model cannot tell a real
   difference from a lucky run, which is why the demo trains several;
4. export the ResNeXt backbone of its first run (detectron2 safetensors for ``MODEL.WEIGHTS``,
   and ONNX).

``make demo`` runs it; ``schedule="short"`` is the same pipeline on a smaller set and schedule
that still learns (about a minute, for tests and a first look), ``"smoke"`` every step with a few
iterations (seconds, nothing learned).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from .config import load_config
from .model_zoo import get_config_file

__all__ = ["DEMO_MODELS", "DemoResult", "demo_config", "run_demo"]

logger = logging.getLogger(__name__)

# The package data of an installed resnext-det, or configs/demo in a checkout.
CONFIGS = Path(get_config_file("demo/Base-demo.yaml")).parent
# name -> config; the first is the baseline. Equal complexity: see the two yaml files.
DEMO_MODELS = {
    "R-26 (1x16d)": CONFIGS / "faster_rcnn_R_demo.yaml",
    "X-26 (4x6d)": CONFIGS / "faster_rcnn_X_demo.yaml",
}
# Shorter schedules than the configs' ("full"): the data set's size, the schedule, the bootstrap.
# "short": long enough that every run learns (tests/test_demo.py asserts it); "smoke": every step
# of the pipeline in seconds.
SCHEDULES: dict[str, dict[str, int]] = {
    "short": {"num_train": 128, "num_val": 32, "max_iter": 250, "ims_per_batch": 8},
    "smoke": {"num_train": 8, "num_val": 4, "max_iter": 3, "ims_per_batch": 2},
}
SHORT_BOOTSTRAP = 200
# Training runs per model: 3 is the fewest whose between-run spread means something (the
# comparison's run term has n-1 degrees of freedom per model); docs/statistics.md.
RUNS = 3


@dataclass
class DemoResult:
    out_dir: Path
    comparison: dict[str, Any]
    exports: list[Path]
    train_seconds: float  # all runs of all models, wall clock
    runs: dict[str, list[Path]]  # model name -> each run's model_final.pth


def demo_config(config_file: Path, out_dir: Path, *, schedule: str = "full") -> CfgNode:
    """The demo config of one model, writing to ``out_dir``, with a schedule of
    :data:`SCHEDULES` (``full``: the config's own)."""
    cfg = load_config(config_file)
    cfg.OUTPUT_DIR = str(out_dir)
    # The comparison evaluates both models on the val split (with intervals); an evaluation at
    # the end of training would only repeat it.
    cfg.DATASETS.TEST = ()
    if schedule != "full":
        s = SCHEDULES[schedule]
        cfg.SOLVER.MAX_ITER = s["max_iter"]
        cfg.SOLVER.STEPS = tuple(sorted({s["max_iter"] * 3 // 4, s["max_iter"] * 9 // 10}))
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, s["max_iter"] // 3)
        cfg.SOLVER.IMS_PER_BATCH = s["ims_per_batch"]
        cfg.SOLVER.CHECKPOINT_PERIOD = s["max_iter"]
    cfg.freeze()
    return cfg


def run_demo(
    out_dir: str | Path = "output/demo",
    *,
    schedule: str = "full",
    seed: int = 0,
    runs: int = RUNS,
    parallel: int | None = None,
) -> DemoResult:
    """Run the whole job; every output lands under ``out_dir``.

    Args:
        out_dir: data, per-model training output (``model_<i>/seed_<k>/``), ``comparison/`` and
            ``export/``. Run again, finished runs are skipped and killed ones resumed.
        schedule: ``full`` (the configs' schedules, minutes per run on a CPU), ``short`` or
            ``smoke`` (:data:`SCHEDULES`).
        seed: the data set's seed.
        runs: training runs per model (seeds ``0..runs-1``).
        parallel: runs trained at once, one thread each; default: the machine's cores.
    """
    if schedule != "full" and schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {['full', *SCHEDULES]}; got {schedule!r}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer; got {runs!r}")
    from .data import make_synthetic_coco
    from .evaluation import compare_models
    from .export import export_backbone
    from .training import seed_run_config, train_runs

    out = Path(out_dir)

    short = SCHEDULES.get(schedule, {})
    sizes = {k: short[k] for k in ("num_train", "num_val") if k in short}
    data = make_synthetic_coco(out / "data", seed=seed, **sizes)
    data.register("synthetic")
    logger.info(f"demo data set: {data.train_json}, {data.val_json}")

    configs = {
        name: demo_config(config_file, out / f"model_{i}", schedule=schedule)
        for i, (name, config_file) in enumerate(DEMO_MODELS.items(), 1)
    }
    jobs = [(cfg, k) for k in range(runs) for cfg in configs.values()]  # R and X alternate
    workers = parallel or max(1, min(os.cpu_count() or 1, len(jobs)))
    logger.info(f"training {runs} runs of each of {list(configs)}, {workers} at a time")
    start = time.perf_counter()
    finals = dict(zip(((id(cfg), k) for cfg, k in jobs), train_runs(jobs, parallel=workers)))
    train_seconds = time.perf_counter() - start
    models = {
        name: [(seed_run_config(cfg, k), finals[id(cfg), k]) for k in range(runs)]
        for name, cfg in configs.items()
    }
    comparison = compare_models(
        models,
        "synthetic_val",
        out / "comparison",
        bootstrap=SHORT_BOOTSTRAP if short else 1000,
    )

    cfg_x, weights_x = models[list(models)[-1]][0]
    exports = [
        export_backbone(
            cfg_x, weights_x, "detectron2", out / "export" / "backbone.safetensors", fpn=True
        ).path,
        export_backbone(
            cfg_x, weights_x, "onnx", out / "export" / "backbone_fpn.onnx", fpn=True, fold_bn=True
        ).path,
    ]
    runs_by_model = {name: [path for _, path in pairs] for name, pairs in models.items()}
    return DemoResult(out, comparison, exports, train_seconds, runs_by_model)
