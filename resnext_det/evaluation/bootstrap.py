"""Is the AP difference between two detectors real? Intervals over test images and training runs.

Two things make a measured AP difference noisy: the choice of test images, and the training run
(weights init, data order; on small networks this is often larger than the effect sought). The
method, chosen for its measured coverage (docs/statistics.md, ``tools/coverage_sim.py``):

1. **Images: paired bootstrap.** Every resample draws the test images with replacement (an
   image drawn k times counts k times) and re-accumulates *every run of every model* on that same
   multiset, so image-to-image variation that hits all models alike cancels in a difference.
   Matching is done once per run; a resample only re-accumulates. The image interval of a
   statistic (a model's run mean, a difference of run means) is the **bias-corrected**
   percentile interval (:func:`~resnext_det.evaluation.intervals.bc_interval`): resampling images
   shifts AP, so the plain percentile interval sits above the point estimate.
2. **Runs: a variance component with Student's t.** The between-run variance of a model's AP on
   the fixed test set holds the pure run-to-run variance plus the part of the image noise that
   differs between runs (which step 1 already counts); the latter is measured from the bootstrap
   (variance of a run's deviation from its model's run mean) and subtracted. The run term of a
   difference is ``sum(sigma_run^2 / runs)`` over the two models, with Welch-Satterthwaite degrees
   of freedom, scaled by Student's t. With 3 runs per model a bootstrap over runs cannot stand in
   for this: it sees only 10 distinct resamples of 3 runs, shrinks their variance by 2/3 and has
   no t tails; measured, it under-covers (docs/statistics.md).
3. **Together:** the image interval and the run half-width combine by MOVER (Zou & Donner 2008),
   which keeps the bootstrap's asymmetry.

A model with one run has no measurable run-to-run variation: its intervals cover test images
only, and the result says so (``calibrated`` False) instead of claiming more.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from .accumulate import MatchTable
from .intervals import bc_interval, mover, t_quantile, welch_satterthwaite

__all__ = [
    "BOOTSTRAP_METRICS",
    "MIN_RESAMPLES",
    "BootstrapResult",
    "paired_bootstrap",
    "resample_weights",
]

logger = logging.getLogger(__name__)

BOOTSTRAP_METRICS = ("AP", "AP50", "AP75")
# Below this the 2.5th/97.5th percentiles rest on a handful of resamples, and the intervals can
# exclude their own point estimate (with 1 resample they always do).
MIN_RESAMPLES = 200
METHOD = (
    "paired bootstrap over test images (bias-corrected; the same resamples for every run of "
    "every model), combined (MOVER) with a Student-t term for the between-run variance "
    "(Welch-Satterthwaite df)"
)
IMAGES_ONLY_METHOD = "paired bootstrap over test images (bias-corrected)"


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


@dataclass
class Estimate:
    """One statistic (a model's run mean or a difference of run means) and its intervals."""

    value: float
    interval: list[float]  # images and runs where runs were measured, else images only
    image_interval: list[float]
    run_sd: float  # the run-to-run SD component used (0 when unmeasured)
    df: float  # degrees of freedom of the run term (inf when there is none)
    calibrated: bool  # run-to-run variation measured (>= 2 runs on each side)


@dataclass
class BootstrapResult:
    """Intervals per model and for each model's difference to the baseline (0-100 scale)."""

    resamples: int
    seed: int
    confidence: float
    baseline: str
    seconds: float
    num_images: int
    runs: dict[str, int]
    samples: dict[str, dict[str, np.ndarray]] = field(repr=False)  # run mean per resample
    run_samples: dict[str, list[dict[str, np.ndarray]]] = field(repr=False, default_factory=dict)
    run_values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # [R] full set
    models: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    deltas: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    delta_p_values: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def intervals(self) -> dict[str, dict[str, list[float]]]:
        return {n: {k: e.interval for k, e in m.items()} for n, m in self.models.items()}

    @property
    def delta_intervals(self) -> dict[str, dict[str, list[float]]]:
        return {n: {k: e.interval for k, e in m.items()} for n, m in self.deltas.items()}

    def significant(self, name: str, metric: str = "AP") -> bool:
        """Whether the interval of ``name``'s difference to the baseline excludes 0."""
        lo, hi = self.deltas[name][metric].interval
        return bool(lo > 0 or hi < 0)

    def calibrated(self, name: str) -> bool:
        """Whether ``name``'s difference covers training runs (>= 2 runs of it and the baseline)."""
        return self.runs[name] >= 2 and self.runs[self.baseline] >= 2

    def covers(self, name: str) -> str:
        """What the interval of ``name``'s difference covers, in words."""
        r, rb = self.runs[name], self.runs[self.baseline]
        if name == self.baseline:
            return f"{self.num_images} test images and {r} training run{'s' * (r != 1)}"
        if self.calibrated(name):
            return f"{self.num_images} test images and {r} vs {rb} training runs"
        return (
            f"{self.num_images} test images only ({r} vs {rb} training run"
            f"{'s' * (max(r, rb) != 1)}: run-to-run variation unmeasured)"
        )


def _run_component(runs: np.ndarray, boot: np.ndarray) -> tuple[float, float]:
    """Variance of a model's run mean that the image bootstrap does not already count, and its df.

    Args:
        runs: [R] each run's value on the full test set.
        boot: [R, B] each run's value on the bootstrap resamples.

    Returns:
        (sigma_run^2 / R, R - 1); (0, inf) for one run.
    """
    R = len(runs)
    if R < 2:
        return 0.0, math.inf
    between = float(np.var(runs, ddof=1))
    # Image noise that differs between runs: Var(Y_r* - mean*) = sigma_v^2 (1 - 1/R).
    dev = boot - np.nanmean(boot, axis=0, keepdims=True)
    per_run = float(np.nanmean(np.nanvar(dev, axis=1, ddof=1))) * R / (R - 1)
    return max(between - per_run, 0.0) / R, float(R - 1)


def _estimate(
    value: float,
    samples: np.ndarray,
    components: list[tuple[float, float]],
    confidence: float,
    calibrated: bool,
) -> Estimate:
    image = bc_interval(samples, value, confidence)
    run_var = sum(v for v, _ in components)
    df = welch_satterthwaite(components) if run_var > 0 else math.inf
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(run_var) if run_var > 0 else 0.0
    interval = mover(value, image, half) if calibrated else image
    return Estimate(value, interval, image, math.sqrt(run_var), df, calibrated)


def _p_value(value, samples, components, calibrated, confidence_steps: int = 40) -> float:
    """Two-sided p of "no difference": the largest 1 - confidence whose interval still holds 0."""
    if not np.isfinite(value):
        return float("nan")
    s = samples[~np.isnan(samples)]
    if value == 0 and s.size and np.all(s == 0):
        return 1.0

    def excludes(conf: float) -> bool:
        lo, hi = _estimate(value, samples, components, conf, calibrated).interval
        return lo > 0 or hi < 0

    lo, hi = 1e-6, 1.0 - 1e-6  # confidence levels
    if excludes(hi):
        return 1.0 - hi
    if not excludes(lo):
        return 1.0
    for _ in range(confidence_steps):
        mid = 0.5 * (lo + hi)
        if excludes(mid):
            lo = mid
        else:
            hi = mid
    return float(1.0 - 0.5 * (lo + hi))


def _as_runs(name: str, tables: MatchTable | Sequence[MatchTable]) -> list[MatchTable]:
    runs = [tables] if isinstance(tables, MatchTable) else list(tables)
    if not runs or not all(isinstance(t, MatchTable) for t in runs):
        raise ValueError(f"model {name!r}: expected a MatchTable or a list of them (one per run)")
    return runs


def paired_bootstrap(
    tables: dict[str, MatchTable | Sequence[MatchTable]],
    *,
    baseline: str,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    progress: bool = True,
    max_chunk_elements: int = 4_000_000,
    p_values: bool = True,
) -> BootstrapResult:
    """Intervals of AP, AP50 and AP75 per model and per difference to ``baseline``.

    Args:
        tables: model name -> its :class:`MatchTable`, or a list of them (one per training run),
            all from the same ground truth.
        baseline: the name the differences are taken against.
        resamples: number of resamples of the image set (fewer than :data:`MIN_RESAMPLES` warns).
        seed: seed of the resampling; same seed, same intervals.
        confidence: coverage of the intervals.
        progress: show a tqdm bar.
        max_chunk_elements: bound on resamples x detections handled at once (memory).
        p_values: also compute two-sided p-values (inverting the interval; a few ms each).

    Returns:
        :class:`BootstrapResult`; see the module docstring for what its intervals cover.
    """
    runs = {name: _as_runs(name, t) for name, t in tables.items()}
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the models {sorted(runs)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if resamples < MIN_RESAMPLES:
        logger.warning(
            "%d bootstrap resamples: intervals from fewer than %d are unreliable (they can "
            "exclude their own point estimate)",
            resamples,
            MIN_RESAMPLES,
        )
    num_images = {t.num_images for r in runs.values() for t in r}
    if len(num_images) != 1:
        raise ValueError(f"models were evaluated on different image sets (sizes {num_images})")
    n_img = num_images.pop()
    start = time.perf_counter()
    W = resample_weights(n_img, resamples, seed)
    ones = np.ones((1, n_img), dtype=np.int32)
    full: dict[str, np.ndarray] = {}  # [R, metric]
    boot: dict[str, dict[str, np.ndarray]] = {}  # metric -> [R, B]
    run_samples: dict[str, list[dict[str, np.ndarray]]] = {}
    total = resamples * sum(len(r) for r in runs.values())
    with tqdm(
        total=total, desc="bootstrap", unit="resample", disable=not progress, leave=False
    ) as bar:
        for name, model_runs in runs.items():
            run_samples[name] = []
            points = []
            for table in model_runs:
                inputs = table.bootstrap_inputs()
                largest = max((len(a[0]) for a in inputs), default=1)
                chunk = int(max(1, min(resamples, max_chunk_elements // max(largest, 1))))
                parts = []
                for s in range(0, resamples, chunk):
                    w = W[s : s + chunk]
                    if s == 0:  # the full set rides along with the first chunk (one pass)
                        w = np.concatenate([ones, w])
                    parts.append(table.ap_from_weights(w, inputs))
                    bar.update(min(chunk, resamples - s))
                joined = {m: np.concatenate([p[m] for p in parts]) for m in BOOTSTRAP_METRICS}
                points.append([float(joined[m][0]) for m in BOOTSTRAP_METRICS])
                run_samples[name].append({m: v[1:] for m, v in joined.items()})
            full[name] = np.array(points)
            boot[name] = {
                m: np.stack([rs[m] for rs in run_samples[name]]) for m in BOOTSTRAP_METRICS
            }
    samples = {n: {m: b[m].mean(axis=0) for m in BOOTSTRAP_METRICS} for n, b in boot.items()}
    result = BootstrapResult(
        resamples=resamples,
        seed=seed,
        confidence=confidence,
        baseline=baseline,
        seconds=0.0,
        num_images=n_img,
        runs={n: len(r) for n, r in runs.items()},
        samples=samples,
        run_samples=run_samples,
        run_values={n: {m: full[n][:, i] for i, m in enumerate(BOOTSTRAP_METRICS)} for n in runs},
    )
    comp = {
        n: {m: _run_component(full[n][:, i], boot[n][m]) for i, m in enumerate(BOOTSTRAP_METRICS)}
        for n in runs
    }
    for name in runs:
        result.models[name], result.deltas[name], result.delta_p_values[name] = {}, {}, {}
        own = result.runs[name] >= 2
        both = result.calibrated(name)
        for i, m in enumerate(BOOTSTRAP_METRICS):
            value = float(full[name][:, i].mean())
            result.models[name][m] = _estimate(
                value, samples[name][m], [comp[name][m]], confidence, own
            )
            d = value - float(full[baseline][:, i].mean())
            ds = samples[name][m] - samples[baseline][m]
            parts = [comp[name][m], comp[baseline][m]] if name != baseline else []
            result.deltas[name][m] = _estimate(d, ds, parts, confidence, both)
            result.delta_p_values[name][m] = (
                _p_value(d, ds, parts, both) if p_values else float("nan")
            )
    result.seconds = time.perf_counter() - start
    return result
