"""COCO evaluation and backbone comparison: exact metrics, intervals over images and runs, reports.

``compare_results`` compares results files; ``compare_models`` builds detectors from configs,
runs them on the same images and compares them; both take one entry or a list of entries (one
per training run) per model. ``evaluate_results`` scores one results file. Numbers equal
pycocotools' ``COCOeval`` (bbox); see :mod:`resnext_det.evaluation.coco`.

(``compare_models`` imports detectron2's data pipeline inside the function, on use.)
"""

from __future__ import annotations

from ..weights.complete import PartialWeightsError, check_complete_weights
from .accumulate import MatchTable
from .bootstrap import MIN_RESAMPLES, BootstrapResult, paired_bootstrap, resample_weights
from .coco import (
    METRIC_KEYS,
    CocoGroundTruth,
    Detections,
    ResultsFormatError,
    load_ground_truth,
    load_results,
)
from .compare import compare_results
from .inference import compare_models
from .matching import match_detections
from .metrics import evaluate_results, summarize
from .report import OUTPUT_FILES, format_table, write_outputs

__all__ = [
    "METRIC_KEYS",
    "MIN_RESAMPLES",
    "OUTPUT_FILES",
    "BootstrapResult",
    "CocoGroundTruth",
    "Detections",
    "MatchTable",
    "PartialWeightsError",
    "ResultsFormatError",
    "check_complete_weights",
    "compare_models",
    "compare_results",
    "evaluate_results",
    "format_table",
    "load_ground_truth",
    "load_results",
    "match_detections",
    "paired_bootstrap",
    "resample_weights",
    "summarize",
    "write_outputs",
]
