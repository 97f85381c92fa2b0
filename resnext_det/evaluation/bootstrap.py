"""Paired bootstrap over images: is the AP difference between two detectors real?

Every resample draws the set's images with replacement (an image drawn k times counts k times) and
recomputes every model's AP, AP50 and AP75 on that same multiset, so the differences are paired:
image-to-image variation that hits both models alike cancels, and the interval of the difference is
much narrower than the two intervals side by side suggest. Matching is done once per model
(:func:`~resnext_det.evaluation.coco.match_detections`); a resample only re-accumulates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .coco import MatchTable

__all__ = ["BOOTSTRAP_METRICS", "BootstrapResult", "paired_bootstrap", "resample_weights"]

BOOTSTRAP_METRICS = ("AP", "AP50", "AP75")


def resample_weights(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, num_images] int32 counts: how often each image is drawn in each resample.

    All draws come from one ``numpy.random.default_rng(seed)`` call, so the same seed gives the
    same resamples however they are later chunked.
    """
    if resamples < 1 or num_images < 1:
        raise ValueError(
            f"a bootstrap needs at least one resample and one image; got resamples={resamples}, "
            f"images={num_images}"
        )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_images, size=(resamples, num_images))
    draws += np.arange(resamples)[:, None] * num_images
    counts = np.bincount(draws.ravel(), minlength=resamples * num_images)
    return counts.reshape(resamples, num_images).astype(np.int32)


def _interval(samples: np.ndarray, confidence: float) -> list[float]:
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def _p_value(delta: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference": twice the smaller tail beyond 0."""
    delta = delta[~np.isnan(delta)]
    if delta.size == 0:
        return float("nan")
    if np.all(delta == 0):
        return 1.0
    return float(min(1.0, 2.0 * min(np.mean(delta <= 0), np.mean(delta >= 0))))


@dataclass
class BootstrapResult:
    """Percentile intervals per model and for each model's difference to the baseline."""

    resamples: int
    seed: int
    confidence: float
    baseline: str
    seconds: float
    samples: dict[str, dict[str, np.ndarray]] = field(repr=False)
    intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    delta_intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    delta_p_values: dict[str, dict[str, float]] = field(default_factory=dict)

    def significant(self, name: str, metric: str = "AP") -> bool:
        """Whether the interval of ``name``'s difference to the baseline excludes 0."""
        lo, hi = self.delta_intervals[name][metric]
        return bool(lo > 0 or hi < 0)


def paired_bootstrap(
    tables: dict[str, MatchTable],
    *,
    baseline: str,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    progress: bool = True,
    max_chunk_elements: int = 4_000_000,
) -> BootstrapResult:
    """Paired bootstrap of AP, AP50 and AP75 for models evaluated on the same images.

    Args:
        tables: model name -> its :class:`MatchTable` (all from the same ground truth).
        baseline: the name the differences are taken against.
        resamples: number of resamples of the image set.
        seed: seed of the resampling; same seed, same intervals.
        confidence: coverage of the percentile intervals (0.95 -> 2.5th to 97.5th percentile).
        progress: show a tqdm bar.
        max_chunk_elements: bound on resamples x detections handled at once (memory).

    Returns:
        :class:`BootstrapResult` with 0-100 scale intervals.
    """
    if baseline not in tables:
        raise ValueError(f"baseline {baseline!r} is not one of the models {sorted(tables)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    num_images = {t.num_images for t in tables.values()}
    if len(num_images) != 1:
        raise ValueError(f"models were evaluated on different image sets (sizes {num_images})")
    start = time.perf_counter()
    W = resample_weights(num_images.pop(), resamples, seed)
    samples: dict[str, dict[str, np.ndarray]] = {}
    with tqdm(
        total=resamples * len(tables),
        desc="bootstrap",
        unit="resample",
        disable=not progress,
        leave=False,
    ) as bar:
        for name, table in tables.items():
            inputs = table.bootstrap_inputs()
            largest = max((len(a[0]) for a in inputs), default=1)
            chunk = int(max(1, min(resamples, max_chunk_elements // max(largest, 1))))
            parts = []
            for s in range(0, resamples, chunk):
                parts.append(table.ap_from_weights(W[s : s + chunk], inputs))
                bar.update(len(W[s : s + chunk]))
            samples[name] = {m: np.concatenate([p[m] for p in parts]) for m in BOOTSTRAP_METRICS}
    result = BootstrapResult(
        resamples, seed, confidence, baseline, time.perf_counter() - start, samples
    )
    base = samples[baseline]
    for name, s in samples.items():
        result.intervals[name] = {m: _interval(s[m], confidence) for m in BOOTSTRAP_METRICS}
        delta = {m: s[m] - base[m] for m in BOOTSTRAP_METRICS}
        result.delta_intervals[name] = {m: _interval(d, confidence) for m, d in delta.items()}
        result.delta_p_values[name] = {m: _p_value(d) for m, d in delta.items()}
    return result


def benchmark_bootstrap(
    num_images: int = 5000, resamples: int = 1000, *, detections_per_image: int = 80, seed: int = 0
) -> dict[str, float]:
    """Time matching, accumulation and the paired bootstrap of two models on synthetic COCO-like
    data (80 categories, ~7 objects and ~100 detections per image).

    Returns:
        seconds per stage and the data's size.
    """
    from .coco import load_ground_truth, load_results, match_detections
    from .synthetic import synthetic_detections, synthetic_ground_truth

    start = time.perf_counter()
    gt = synthetic_ground_truth(num_images, num_categories=80, max_objects=14, seed=seed)
    res = [
        synthetic_detections(gt, seed=seed + s, quality=q, random_per_image=detections_per_image)
        for s, q in ((1, 0.6), (2, 0.7))
    ]
    out = {
        "images": num_images,
        "resamples": resamples,
        "ground_truth": len(gt["annotations"]),
        "detections_per_model": len(res[0]),
        "generate_s": time.perf_counter() - start,
    }
    g = load_ground_truth(gt)
    start = time.perf_counter()
    dets = [load_results(r, g) for r in res]
    out["load_s"] = (time.perf_counter() - start) / 2
    start = time.perf_counter()
    tables = {f"m{i}": match_detections(g, d) for i, d in enumerate(dets)}
    out["match_s"] = (time.perf_counter() - start) / 2
    start = time.perf_counter()
    tables["m0"].accumulate()
    out["accumulate_all_metrics_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cpu = time.process_time()
    paired_bootstrap(tables, baseline="m0", resamples=resamples, seed=seed, progress=False)
    out["bootstrap_two_models_s"] = time.perf_counter() - start
    out["bootstrap_two_models_cpu_s"] = time.process_time() - cpu
    return out
