"""COCO evaluation and backbone comparison: exact metrics, paired bootstrap, reports.

``compare_results`` compares results files; ``compare_models`` builds detectors from configs,
runs them on the same images and compares them; ``evaluate_results`` scores one results file.
Numbers equal pycocotools' ``COCOeval`` (bbox); see :mod:`resnext_det.evaluation.coco`.
"""

from __future__ import annotations

from .bootstrap import BootstrapResult, paired_bootstrap, resample_weights
from .coco import (
    METRIC_KEYS,
    CocoGroundTruth,
    Detections,
    MatchTable,
    ResultsFormatError,
    evaluate_results,
    load_ground_truth,
    load_results,
    match_detections,
)
from .compare import compare_results
from .report import OUTPUT_FILES, format_table, write_outputs


def compare_models(*args, **kwargs):
    """See :func:`resnext_det.evaluation.inference.compare_models` (imported on use: it needs
    torch and detectron2's data pipeline, which results-only comparisons do not)."""
    from .inference import compare_models as _compare_models

    return _compare_models(*args, **kwargs)


__all__ = [
    "METRIC_KEYS",
    "OUTPUT_FILES",
    "BootstrapResult",
    "CocoGroundTruth",
    "Detections",
    "MatchTable",
    "ResultsFormatError",
    "compare_models",
    "compare_results",
    "evaluate_results",
    "format_table",
    "load_ground_truth",
    "load_results",
    "match_detections",
    "paired_bootstrap",
    "resample_weights",
    "write_outputs",
]
