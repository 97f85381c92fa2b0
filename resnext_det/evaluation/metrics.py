"""COCOeval's ``summarize`` (the 12 numbers), per-category AP, the PR curve, one-file scoring."""

from __future__ import annotations

from typing import Any

import numpy as np

from .accumulate import MatchTable
from .coco import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    MAX_DETS,
    RECALL_THRESHOLDS,
    SUMMARY,
    CocoGroundTruth,
    Detections,
    PathLike,
    load_ground_truth,
    load_results,
)
from .matching import match_detections

__all__ = ["evaluate_results", "per_category_ap", "pr_curve", "summarize"]


def _mean_valid(s: np.ndarray) -> float:
    s = s[s > -1]
    return float(np.mean(s)) if s.size else float("nan")


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """COCOeval.summarize's 12 numbers from one accumulation (areas all/small/medium/large,
    max dets 1/10/100), on COCO's 0-100 scale; NaN where COCOeval prints -1."""
    areas, max_dets = list(AREA_RANGES), list(MAX_DETS)
    out = {}
    for key, is_ap, iou, area, md in SUMMARY:
        a, m = areas.index(area), max_dets.index(md)
        s = precision[..., a, m] if is_ap else recall[..., a, m]
        if iou is not None:
            s = s[np.flatnonzero(iou == IOU_THRESHOLDS)]
        out[key] = 100.0 * _mean_valid(s)
    return out


def per_category_ap(table: MatchTable, precision: np.ndarray) -> dict[str, float]:
    """AP per category (area all, 100 dets) on the 0-100 scale, as detectron2's COCOEvaluator
    reports it; NaN for a category without ground truth."""
    return {
        name: 100.0 * _mean_valid(precision[:, :, k, 0, -1])
        for k, name in enumerate(table.category_names)
    }


def pr_curve(precision: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Interpolated precision at each recall threshold, IoU ``iou``, area all, 100 dets, averaged
    over categories with ground truth (COCO's AP@iou is the mean of this curve)."""
    t = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))[0])
    p = precision[t, :, :, 0, -1]  # [R, K]
    valid = (p > -1).all(axis=0)
    if not valid.any():
        return np.full(len(RECALL_THRESHOLDS), np.nan)
    return p[:, valid].mean(axis=1)


def evaluate_results(
    gt: PathLike | dict | CocoGroundTruth, results: PathLike | list | Detections
) -> dict[str, Any]:
    """COCO box metrics of one results file.

    Args:
        gt: ground truth (path, dict or :class:`CocoGroundTruth`).
        results: COCO results (path, list or :class:`Detections`).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}``
        on the 0-100 scale (equal to pycocotools' ``COCOeval.stats`` x 100), plus
        ``"per_category_AP": {name: AP}`` and ``"pr_curve_50"`` (precision at 101 recall points).

    Example:
        >>> m = evaluate_results("instances_val.json", "detections.json")
        >>> m["AP"], m["AP50"]
    """
    gt = load_ground_truth(gt)
    dets = results if isinstance(results, Detections) else load_results(results, gt)
    table = match_detections(gt, dets)
    precision, recall = table.accumulate()
    out: dict[str, Any] = summarize(precision[0], recall[0])
    out["per_category_AP"] = per_category_ap(table, precision[0])
    out["pr_curve_50"] = pr_curve(precision[0]).tolist()
    return out
