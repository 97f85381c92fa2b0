"""bf16 against fp32 on a trained detector: COCO box AP of the same weights evaluated both ways.

The demo's short schedule (:func:`resnext_det.demo.run_demo`, ``schedule="short"``: minutes on a
CPU) trains the R and X demo detectors on the generated data set; each is then evaluated on its
val split by ``--eval-only``'s own function (:func:`resnext_det.training.evaluate`), once with the
fp32-equal settings and once with bf16 autocast (``MODEL.RESNEXT.INFERENCE_AMP_DTYPE``). The
target: |AP(bf16) - AP(fp32)| <= 0.5 (``docs/benchmarks.md``, "End to end").
:func:`bf16_accuracy_of_runs` does the same for runs already trained (a folder holding a run's
``config.yaml`` and ``model_final.pth``, e.g. a sweep's cells on real photos), on a named test
set. ``tools/bf16_accuracy.py`` is the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["AP_TOLERANCE", "bf16_accuracy", "bf16_accuracy_of_runs", "bf16_accuracy_markdown"]

AP_TOLERANCE = 0.5


def bf16_accuracy(out_dir: str | os.PathLike, *, seed: int = 0, schedule: str = "short") -> dict:
    """Train (or reuse, if ``out_dir`` has them) the demo's short-schedule runs, evaluate each in
    fp32 and bf16; returns ``{model: {"fp32": bbox metrics, "bfloat16": ..., "ap_difference"}}``
    and ``native_bf16``. ``schedule="smoke"`` checks the script in seconds (an untrained model:
    its APs mean nothing)."""
    from resnext_det.demo import DEMO_MODELS, demo_config, run_demo
    from resnext_det.speed import native_bf16
    from resnext_det.training import seed_run_config

    out = Path(out_dir)
    result = run_demo(out / "demo", schedule=schedule, runs=1, seed=seed)
    report: dict = {"native_bf16": native_bf16(), "schedule": schedule, "models": {}}
    for i, (name, config_file) in enumerate(DEMO_MODELS.items(), 1):
        run = seed_run_config(
            demo_config(config_file, out / "demo" / f"model_{i}", schedule=schedule), 0
        )
        cfg = run.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = str(result.runs[name][0])
        cfg.DATASETS.TEST = ("synthetic_val",)
        report["models"][name] = _fp32_and_bf16(cfg, out / "eval" / f"model_{i}")
    return report


def _fp32_and_bf16(cfg, out: Path) -> dict:
    """``cfg``'s weights evaluated by ``--eval-only``'s function in fp32 and in bf16."""
    from resnext_det.speed import InferenceSettings
    from resnext_det.training import evaluate

    metrics = {}
    for dtype in ("", "bfloat16"):
        cfg.OUTPUT_DIR = str(out / (dtype or "float32"))
        results = evaluate(cfg, inference=InferenceSettings(amp_dtype=dtype))
        metrics[dtype or "float32"] = dict(results["bbox"])
    diff = metrics["bfloat16"]["AP"] - metrics["float32"]["AP"]
    return {
        **metrics,
        "weights": cfg.MODEL.WEIGHTS,
        "ap_difference": diff,
        "within_tolerance": abs(diff) <= AP_TOLERANCE,
    }


def bf16_accuracy_of_runs(
    runs: list[str | os.PathLike], dataset: str, out_dir: str | os.PathLike
) -> dict:
    """Each trained run (a folder with ``config.yaml`` and ``model_final.pth``; its
    ``DATASETS.COCO_REGISTER`` registered) evaluated on ``dataset`` in fp32 and in bf16; the
    report of :func:`bf16_accuracy` (``schedule``: "trained runs")."""
    from resnext_det.config import load_config
    from resnext_det.data import register_from_config
    from resnext_det.io import file_name_for
    from resnext_det.speed import native_bf16

    report: dict = {"native_bf16": native_bf16(), "schedule": "trained runs", "models": {}}
    for run in map(Path, runs):
        cfg = load_config(run / "config.yaml")
        register_from_config(cfg)
        cfg.MODEL.WEIGHTS = str(run / "model_final.pth")
        cfg.DATASETS.TEST = (dataset,)
        name = f"{run.parent.name}/{run.name}"
        report["models"][name] = _fp32_and_bf16(cfg, Path(out_dir) / "eval" / file_name_for(name))
    return report


def bf16_accuracy_markdown(report: dict) -> str:
    lines = [
        "| model | AP fp32 | AP bf16 | bf16 - fp32 | AP50 fp32 | AP50 bf16 | within 0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        f, b = r["float32"], r["bfloat16"]
        lines.append(
            f"| {name} | {f['AP']:.2f} | {b['AP']:.2f} | {r['ap_difference']:+.2f} | "
            f"{f['AP50']:.2f} | {b['AP50']:.2f} | {r['within_tolerance']} |"
        )
    diffs = [r["ap_difference"] for r in report["models"].values()]
    lines.append("")
    lines.append(
        f"bf16 - fp32 AP over {len(diffs)} models: mean {sum(diffs) / len(diffs):+.2f}, largest "
        f"|difference| {max(map(abs, diffs)):.2f}; within {AP_TOLERANCE}: "
        f"{sum(abs(d) <= AP_TOLERANCE for d in diffs)} of {len(diffs)}."
    )
    lines.append(f"Models: {report['schedule']}; native bf16 on this CPU: {report['native_bf16']}")
    return "\n".join(lines) + "\n"
