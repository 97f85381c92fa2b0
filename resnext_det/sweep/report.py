"""A sweep's report: each variant against C = 1 with family-wise intervals, written all or
nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..complexity import backbone_complexity
from ..io import staged_files
from ..reading import read_json_file
from .plan import (
    COMPLEXITY_INPUT,
    EVALUATION_DIR,
    METRICS,
    OUTPUT_FILES,
    SweepError,
    SweepPlan,
    SweepVariant,
    _check_int,
    cell_state,
)
from .render import _summary, render_markdown_sweep, render_png

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
    from ..data import register_from_config
    from ..evaluation import compare_results
    from ..evaluation.inference import dataset_ground_truth
    from ..evaluation.intervals import bonferroni_confidence
    from ..evaluation.report import render_json, render_markdown

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
