"""Compare detectors on the same images: COCO metrics, deltas to a baseline, paired intervals.

The paper's claim (Table 6) is a comparison at equal complexity: ResNeXt beats ResNet on COCO in
AP@0.5 and AP. :func:`compare_results` makes that comparison for any number of results files and
says, with a paired bootstrap over images, whether each difference is larger than the noise of the
evaluation set.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
from tqdm import tqdm

from .bootstrap import BOOTSTRAP_METRICS, paired_bootstrap
from .coco import (
    METRIC_KEYS,
    CocoGroundTruth,
    Detections,
    ResultsFormatError,
    load_ground_truth,
    load_results,
    match_detections,
    per_category_ap,
    pr_curve,
    summarize,
)
from .report import write_outputs

__all__ = ["compare_results", "check_same_images"]

logger = logging.getLogger(__name__)

ResultsLike = Union[str, os.PathLike, list, Detections]


def check_same_images(dets: dict[str, Detections], gt: CocoGroundTruth) -> None:
    """Raise if the results files have detections on different sets of images.

    Two files from runs over different images (a ``--max-images`` debug run against a full one)
    would otherwise be compared on the full ground truth, and the partial run would lose.
    """
    if len(dets) < 2:
        return
    sets = {name: set(d.image_set.tolist()) for name, d in dets.items()}
    (ref_name, ref), *others = sets.items()
    for name, s in others:
        if s != ref:
            only_ref, only_s = sorted(ref - s), sorted(s - ref)
            ids = gt.image_ids
            raise ResultsFormatError(
                f"results files cover different image sets: {dets[ref_name].source} has "
                f"detections on {len(ref)} images, {dets[name].source} on {len(s)}; "
                f"{len(only_ref)} images only in the first (e.g. ids "
                f"{ids[only_ref[:5]].tolist()}), "
                f"{len(only_s)} only in the second (e.g. ids {ids[only_s[:5]].tolist()}). Run both "
                "models on the same images, or pass allow_missing_images=True "
                "(--allow-missing-images) if a model really detected nothing on some images."
            )


def _safe(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def compare_results(
    gt: str | os.PathLike | dict | CocoGroundTruth,
    results: dict[str, ResultsLike],
    *,
    baseline: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    out_dir: str | os.PathLike | None = None,
    model_info: dict[str, dict[str, Any]] | None = None,
    allow_missing_images: bool = False,
    extra_files: dict[str, Any] | None = None,
    extra_report: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO box metrics of several detectors on the same ground truth, with deltas and intervals.

    Args:
        gt: COCO ground truth (json path, dict or :class:`CocoGroundTruth`).
        results: model name -> COCO results (json path or list of detections).
        baseline: the model the deltas are taken against (default: the first).
        bootstrap: number of paired bootstrap resamples of the images; 0 turns it off.
        seed: bootstrap seed.
        confidence: interval coverage.
        out_dir: if given, write comparison.{md,json,csv,png} there (all or nothing).
        model_info: model name -> extra figures to report (``backbone_params``,
            ``backbone_gflops``, ``flops_input_size``, ``seconds_per_image``, ``config``, ...).
        allow_missing_images: accept results files with detections on different image sets.
        extra_files: more JSON files to write into ``out_dir`` with the report (name -> object).
        extra_report: more top-level entries for the report (e.g. the data set name).
        progress: tqdm bars.

    Returns:
        The report: ``{"baseline", "ground_truth", "num_images", "num_categories", "bootstrap",
        "models": {name: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
        "ARs", "ARm", "ARl", "per_category_AP", "pr_curve_50", "delta", "ci", "delta_ci",
        "delta_p", "delta_significant", ...}}}``, every figure on COCO's 0-100 scale.

    Raises:
        FileNotFoundError, ResultsFormatError: a missing or malformed file (nothing is written).
    """
    if not results:
        raise ValueError("compare_results needs at least one model's results")
    names = list(results)
    baseline = names[0] if baseline is None else baseline
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not one of the models {names}")
    gt = load_ground_truth(gt)
    dets = {
        name: r if isinstance(r, Detections) else load_results(r, gt, name=f"<results of {name}>")
        for name, r in results.items()
    }
    if not allow_missing_images:
        check_same_images(dets, gt)
    tables, models = {}, {}
    for name in tqdm(names, desc="evaluate", disable=not progress, leave=False):
        tables[name] = match_detections(gt, dets[name])
        precision, recall = tables[name].accumulate()
        m: dict[str, Any] = dict(summarize(precision[0], recall[0]))
        m["per_category_AP"] = per_category_ap(tables[name], precision[0])
        m["pr_curve_50"] = [_safe(v) for v in pr_curve(precision[0])]
        m["num_detections"] = len(dets[name])
        m["results_file"] = dets[name].source
        m.update((model_info or {}).get(name, {}))
        models[name] = m
    base = models[baseline]
    for m in models.values():
        m["delta"] = {k: m[k] - base[k] for k in METRIC_KEYS}
        m["delta_per_category_AP"] = {
            c: v - base["per_category_AP"][c] for c, v in m["per_category_AP"].items()
        }
    boot_info = None
    if bootstrap:
        bs = paired_bootstrap(
            tables,
            baseline=baseline,
            resamples=bootstrap,
            seed=seed,
            confidence=confidence,
            progress=progress,
        )
        for name, m in models.items():
            m["ci"] = bs.intervals[name]
            m["delta_ci"] = bs.delta_intervals[name]
            m["delta_p"] = bs.delta_p_values[name]
            m["delta_significant"] = {k: bs.significant(name, k) for k in BOOTSTRAP_METRICS}
        boot_info = {
            "resamples": bootstrap,
            "seed": seed,
            "confidence": confidence,
            "metrics": list(BOOTSTRAP_METRICS),
            "seconds": bs.seconds,
            "method": "paired percentile bootstrap over images",
        }
    report = {
        "baseline": baseline,
        "ground_truth": gt.source,
        "num_images": gt.num_images,
        "num_categories": len(gt.category_ids),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "bootstrap": boot_info,
        "models": models,
        **(extra_report or {}),
    }
    if out_dir is not None:
        report["outputs"] = [
            str(Path(out_dir) / f)
            for f in (
                "comparison.md",
                "comparison.json",
                "comparison.csv",
                "comparison.png",
                *(extra_files or {}),
            )
        ]
        write_outputs(report, out_dir, extra_files)
    return report
