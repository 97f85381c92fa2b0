"""Compare detectors on the same images: COCO metrics, deltas to a baseline, honest intervals.

The paper's claim (Table 6) is a comparison at equal complexity: ResNeXt beats ResNet on COCO in
AP@0.5 and AP. :func:`compare_results` makes that comparison for any number of models, each with
one or several training runs, and says whether each difference is larger than the noise of the
test images *and* of training (see :mod:`resnext_det.evaluation.bootstrap` for the method).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from tqdm import tqdm

from ..io import check_output_location, file_name_for
from .bootstrap import BOOTSTRAP_METRICS, IMAGES_ONLY_METHOD, METHOD, paired_bootstrap
from .coco import (
    METRIC_KEYS,
    CocoGroundTruth,
    Detections,
    ResultsFormatError,
    load_ground_truth,
    load_results,
)
from .gallery import image_paths, render_gallery
from .matching import match_detections
from .metrics import per_category_ap, pr_curve, summarize
from .report import check_model_names, check_out_dir, output_names, write_outputs

__all__ = [
    "PARTIAL_RUN_FRACTION",
    "as_runs",
    "check_distinct_runs",
    "check_partial_runs",
    "compare_results",
    "results_digest",
]

logger = logging.getLogger(__name__)

ResultsLike = Union[str, os.PathLike, list, Detections]
# A results file with detections on at most this share of the images another file covers (or,
# alone, of the ground truth's images) is taken for a partial run (a --max-images debug run, a
# crashed inference), not for a model that found nothing there.
PARTIAL_RUN_FRACTION = 0.5


def as_runs(name: str, value: Any) -> list:
    """One model's entry as a list of runs: a single entry (a path, a :class:`Detections`, a
    list of detection dicts) is one run; a list or tuple of such entries is one per run."""
    if isinstance(value, (list, tuple)) and value and not all(isinstance(v, dict) for v in value):
        runs = list(value)
        if any(isinstance(v, dict) for v in runs):
            raise ValueError(
                f"model {name!r}: mixes detection dicts and runs; give one results list or a "
                "list of runs (paths, lists of detections)"
            )
        return runs
    return [value]


def results_digest(d: Detections) -> str:
    """sha256 of a run's detections (images, categories, boxes, scores, in a fixed order): the
    same results read from two files, or under two names, have the same digest."""
    import hashlib

    bbox = np.asarray(d.bbox, dtype=np.float64).reshape(-1, 4)
    order = np.lexsort((*bbox.T[::-1], d.score, d.category, d.image))
    h = hashlib.sha256()
    for array, dtype in ((d.image, np.int64), (d.category, np.int64), (bbox, np.float64),
                         (d.score, np.float64)):  # fmt: skip
        h.update(np.ascontiguousarray(np.asarray(array)[order], dtype=dtype).tobytes())
    return h.hexdigest()


def check_distinct_runs(runs: dict[str, Sequence[Any]], digest: Any, what: str) -> None:
    """Refuse a model whose runs include the same content twice (``digest(run)`` equal): it
    would count as two training runs with no difference between them (between-run SD 0).
    ``digest`` returns None for a run that cannot tell (empty results: untrained runs all
    detect nothing).

    Raises:
        ValueError: naming the model, both runs and the digest.
    """
    for name, values in runs.items():
        seen: dict[str, int] = {}
        for i, value in enumerate(values):
            key = digest(value)
            if key is None:
                continue
            if key in seen:
                raise ValueError(
                    f"model {name!r}: runs {seen[key]} and {i} are {what} (sha256 {key[:16]}...): "
                    "the same run given twice would count as two training runs; give each run once"
                )
            seen[key] = i


def check_partial_runs(
    dets: dict[str, list[Detections]], gt: CocoGroundTruth, fraction: float = PARTIAL_RUN_FRACTION
) -> None:
    """Raise if a results file looks like a partial run.

    detectron2's ``coco_instances_results.json`` has no entry for an image where the model
    detected nothing, so complete files from honest runs often cover different image sets; they
    are scored as pycocotools scores them (an image without detections counts, with none). What
    is refused is a file whose images are at most ``fraction`` of what another file covers (or,
    alone, of the ground truth's images).
    """
    files = [(name, d) for name, runs in dets.items() for d in runs]
    counts = {id(d): len(d.image_set) for _, d in files}
    ref_name, ref = max(files, key=lambda f: counts[id(f[1])])
    reference = counts[id(ref)] if len(files) > 1 else gt.num_images
    for _, d in files:
        n = counts[id(d)]
        if reference and n <= fraction * reference:
            ids = gt.image_ids
            seen = ref.image_set if len(files) > 1 else np.arange(len(ids))
            missing = np.setdiff1d(seen, d.image_set)
            against = (
                f"{ref.source} has detections on {reference} images"
                if len(files) > 1
                else f"the ground truth {gt.source} has {reference} images"
            )
            raise ResultsFormatError(
                f"results files cover different image sets: {against}, {d.source} on {n} "
                f"({100.0 * n / max(reference, 1):.0f}%; e.g. no detection on image ids "
                f"{ids[missing[:5]].tolist()}). A file with detections on at most "
                f"{fraction:.0%} of the images is taken for a partial run (--max-images, a "
                "crashed inference). Run the model on every image, or, if the file is complete "
                "and the model really detected nothing there, pass allow_missing_images=True "
                "(--allow-missing-images) to score those images as misses."
            )


def _input_paths(gt: Any, results: dict[str, Any], images: Any) -> list[str | os.PathLike]:
    """The files and folders a comparison reads: ``out_dir`` may not overlap them."""
    given = [gt, images] + [r for name, v in results.items() for r in as_runs(name, v)]
    return [p for p in given if isinstance(p, (str, os.PathLike))]


def _safe(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _run_figures(table, dets: Detections) -> dict[str, Any]:
    precision, recall = table.accumulate()
    m: dict[str, Any] = dict(summarize(precision[0], recall[0]))
    m["per_category_AP"] = per_category_ap(table, precision[0])
    m["pr_curve_50"] = [_safe(v) for v in pr_curve(precision[0])]
    m["num_detections"] = len(dets)
    m["results_file"] = dets.source
    return m


def _nanmean(values: list) -> float:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _sd(values: list) -> float | None:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(np.std(arr, ddof=1)) if arr.size >= 2 else None


def _model_figures(per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """A model's figures: the mean over its runs, each run's figures and the between-run SD."""
    m: dict[str, Any] = {k: _nanmean([r[k] for r in per_run]) for k in METRIC_KEYS}
    cats = per_run[0]["per_category_AP"]
    m["per_category_AP"] = {c: _nanmean([r["per_category_AP"][c] for r in per_run]) for c in cats}
    curves = np.array([[np.nan if v is None else v for v in r["pr_curve_50"]] for r in per_run])
    with warnings.catch_warnings():  # a recall point no run reaches: all-NaN column
        warnings.simplefilter("ignore", RuntimeWarning)
        m["pr_curve_50"] = [_safe(v) for v in np.nanmean(curves, axis=0)]
    m["num_detections"] = int(round(np.mean([r["num_detections"] for r in per_run])))
    m["results_file"] = per_run[0]["results_file"] if len(per_run) == 1 else None
    m["runs"] = len(per_run)
    m["mean"] = {k: m[k] for k in METRIC_KEYS}
    m["between_run_sd"] = {k: _sd([r[k] for r in per_run]) for k in METRIC_KEYS}
    m["per_run"] = [
        {k: r[k] for k in (*METRIC_KEYS, "num_detections", "results_file")} for r in per_run
    ]
    return m


def compare_results(
    gt: str | os.PathLike | dict | CocoGroundTruth,
    results: dict[str, ResultsLike | Sequence[ResultsLike]],
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
    images: str | os.PathLike | dict[int, str | os.PathLike] | None = None,
    gallery: int = 8,
    gallery_threshold: float = 0.5,
    progress: bool = True,
) -> dict[str, Any]:
    """COCO box metrics of several detectors on the same ground truth, with deltas and intervals.

    Args:
        gt: COCO ground truth (json path, dict or :class:`CocoGroundTruth`).
        results: model name -> COCO results (json path, list of detections, :class:`Detections`),
            or a list of those, one per training run of the model. Models may have different
            numbers of runs.
        baseline: the model the deltas are taken against (default: the first).
        bootstrap: number of paired bootstrap resamples of the images; 0 turns it off.
        seed: bootstrap seed.
        confidence: interval coverage.
        out_dir: if given, write comparison.{md,json,csv,png} there (all or nothing).
        model_info: model name -> extra figures to report (``backbone_params``,
            ``backbone_gflops``, ``flops_input_size``, ``seconds_per_image``, ``config``, ...).
        allow_missing_images: skip the partial-run check (:func:`check_partial_runs`); images
            without detections are scored as misses either way, as pycocotools scores them.
        extra_files: more JSON files to write into ``out_dir`` with the report (name -> object).
        extra_report: more top-level entries for the report (e.g. the data set name).
        images: the folder the ground truth's ``file_name`` are relative to (or image id ->
            path). With ``out_dir``, the report gets a gallery (:mod:`.gallery`): for each model
            against the baseline, the ``gallery`` images where their per-image true positives
            differ most, drawn with both models' boxes (score >= ``gallery_threshold``) and the
            ground truth, as ``out_dir/gallery/*.png`` listed in comparison.md.
        gallery: pictures per model at most; 0: no gallery.
        gallery_threshold: the score a detection needs to be drawn and counted there.
        progress: tqdm bars.

    Returns:
        The report: ``{"baseline", "ground_truth", "num_images", "num_categories", "bootstrap",
        "models": {name: {"AP", "AP50", ..., "ARl" (means over runs), "runs", "per_run",
        "mean", "between_run_sd", "per_category_AP", "pr_curve_50", "delta", "ci",
        "ci_image", "delta_ci", "delta_ci_image", "delta_p", "delta_significant",
        "delta_calibrated", "delta_covers", ...}}, "gallery": [...] (with ``images``)}``, every
        figure on COCO's 0-100 scale.
        ``delta_significant`` says the interval excludes 0; only where ``delta_calibrated``
        (both models have >= 2 runs) does it cover training runs.

    Raises:
        FileNotFoundError, ResultsFormatError: a missing or malformed file (nothing is written).
        NotADirectoryError, PermissionError: ``out_dir`` cannot be written (checked first).
        OutputLocationError: ``out_dir`` is, contains or lies inside an input file or folder.

    Example:
        >>> r = compare_results("val.json", {"R50": ["r_s0.json", "r_s1.json", "r_s2.json"],
        ...                                  "X50": ["x_s0.json", "x_s1.json", "x_s2.json"]})
        >>> r["models"]["X50"]["delta"]["AP"], r["models"]["X50"]["delta_ci"]["AP"]
    """
    if not results:
        raise ValueError("compare_results needs at least one model's results")
    names = list(results)
    baseline = names[0] if baseline is None else baseline
    if baseline not in results:
        raise ValueError(f"baseline {baseline!r} is not one of the models {names}")
    if isinstance(gallery, bool) or not isinstance(gallery, int) or gallery < 0:
        raise ValueError(f"gallery must be a number of pictures >= 0; got {gallery!r}")
    if not 0.0 <= gallery_threshold <= 1.0:
        raise ValueError(f"gallery_threshold must be a score in [0, 1]; got {gallery_threshold!r}")
    check_model_names(names)
    check_out_dir(out_dir)
    if out_dir is not None:
        check_output_location(out_dir, _input_paths(gt, results, images), what="out_dir")
    gt = load_ground_truth(gt)
    dets: dict[str, list[Detections]] = {}
    for name, value in results.items():
        runs = as_runs(name, value)
        dets[name] = [
            r
            if isinstance(r, Detections)
            else load_results(
                r, gt, name=f"<results of {name}" + (f", run {i}>" if len(runs) > 1 else ">")
            )
            for i, r in enumerate(runs)
        ]
    check_distinct_runs(dets, lambda d: results_digest(d) if len(d) else None, "identical results")
    if not allow_missing_images:
        check_partial_runs(dets, gt)
    tables, models = {}, {}
    for name in tqdm(names, desc="evaluate", disable=not progress, leave=False):
        tables[name] = [match_detections(gt, d) for d in dets[name]]
        per_run = [_run_figures(t, d) for t, d in zip(tables[name], dets[name])]
        m = _model_figures(per_run)
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
            m["ci"] = {k: e.interval for k, e in bs.models[name].items()}
            m["ci_image"] = {k: e.image_interval for k, e in bs.models[name].items()}
            m["ci_covers"] = (
                f"{gt.num_images} test images and {m['runs']} training runs"
                if m["runs"] >= 2
                else f"{gt.num_images} test images only (1 training run)"
            )
            m["delta_ci"] = {k: e.interval for k, e in bs.deltas[name].items()}
            m["delta_ci_image"] = {k: e.image_interval for k, e in bs.deltas[name].items()}
            m["delta_run_sd"] = {k: e.run_sd for k, e in bs.deltas[name].items()}
            m["delta_p"] = bs.delta_p_values[name]
            m["delta_significant"] = {k: bs.significant(name, k) for k in BOOTSTRAP_METRICS}
            m["delta_calibrated"] = bs.calibrated(name)
            m["delta_covers"] = bs.covers(name)
            m["delta_method"] = METHOD if bs.calibrated(name) else IMAGES_ONLY_METHOD
        boot_info = {
            "resamples": bootstrap,
            "seed": seed,
            "confidence": confidence,
            "metrics": list(BOOTSTRAP_METRICS),
            "seconds": bs.seconds,
            "calibrated": all(bs.calibrated(n) for n in names if n != baseline),
            "method": METHOD
            if any(bs.calibrated(n) for n in names if n != baseline)
            else IMAGES_ONLY_METHOD,
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
    pictures: dict[str, bytes] = {}
    if out_dir is not None and images is not None and gallery and len(names) > 1:
        paths = image_paths(gt, images)
        report["gallery"] = []
        for name in names:
            if name == baseline:
                continue
            prefix = file_name_for(name)  # injective: "X/1" -> "X%2F1", "X_1" -> "X_1"
            pair = {n: list(zip(dets[n], tables[n])) for n in (baseline, name)}
            entry, drawn = render_gallery(
                gt,
                paths,
                pair,
                top=gallery,
                score_threshold=gallery_threshold,
                file_prefix=prefix,
                progress=progress,
            )
            report["gallery"].append(entry)
            pictures.update(drawn)
    if out_dir is not None:
        names_out = output_names(extra_files, pictures)
        report["outputs"] = [str(Path(out_dir) / f) for f in names_out]
        write_outputs(report, out_dir, extra_files, pictures)
    return report
