"""Coverage of the comparison's intervals, measured on detectors whose truth is known.

Each simulated comparison draws a fresh test set (``synthetic_ground_truth``) and gives every
image a difficulty shared by all detectors (image-level noise common to models). A detector is a
quality; each of its training runs adds run-level noise to it (``run_sd``), and each run's
detections are drawn independently (image-level noise that differs between runs). Two detectors
of equal quality have a true difference of exactly 0 (same process); a better one is better in
expectation by construction. Intervals are computed as ``compare_results`` computes them
(:func:`resnext_det.evaluation.paired_bootstrap`), and three alternatives are scored on the same
simulations: the images-only interval of the run means, the images-only interval of one run per
model (what a one-run comparison reports) and a naive two-level percentile bootstrap (runs
resampled within each model, images shared).

:func:`simulate_family` does the same for several equal detectors compared with one baseline (the
sweep's cardinalities against C = 1): how often every interval of the family holds 0, each at the
plain confidence and at the Bonferroni one.

Used by ``tests/test_coverage.py``, ``tests/test_sweep.py`` (few repetitions) and
``tools/coverage_sim.py`` (the figures in docs/statistics.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from resnext_det.evaluation import load_ground_truth, load_results, match_detections
from resnext_det.evaluation.bootstrap import paired_bootstrap
from resnext_det.evaluation.intervals import bc_interval, bonferroni_confidence

from .synthetic_results import synthetic_detections, synthetic_ground_truth


@dataclass(frozen=True)
class Setting:
    """One simulated experiment."""

    num_images: int = 80
    runs: tuple[int, int] = (3, 3)  # baseline, other
    quality: float = 0.55  # the baseline's
    margin: float = 0.0  # added to the other detector's quality (0: equal detectors)
    run_sd: float = 0.06  # run-to-run noise of a run's quality
    image_sd: float = 0.15  # SD of the per-image difficulty shared by every detector
    resamples: int = 200
    confidence: float = 0.95
    num_categories: int = 3
    max_objects: int = 6


def _runs(gt: dict, quality: float, n: int, setting: Setting, rng, offsets) -> list[list[dict]]:
    out = []
    for _ in range(n):
        q = quality + rng.normal(0.0, setting.run_sd)
        out.append(
            synthetic_detections(
                gt,
                seed=int(rng.integers(2**31)),
                quality=float(np.clip(q, 0.05, 0.95)),
                random_per_image=3,
                image_offset=offsets,
            )
        )
    return out


def _contains(interval, value: float) -> bool:
    return bool(interval[0] <= value <= interval[1])


def _finds(interval) -> bool:
    """The interval says the other detector is better (excludes 0 on the positive side)."""
    return bool(interval[0] > 0)


def _naive_two_level(res, rng, confidence: float) -> list[float]:
    """Percentile interval of a bootstrap that resamples runs within each model and images
    shared across all runs (the textbook two-level bootstrap)."""
    means = []
    for name in ("base", "other"):
        s = np.stack([r["AP"] for r in res.run_samples[name]])  # [R, B]
        R, B = s.shape
        pick = rng.integers(0, R, size=(B, R))
        means.append(s[pick, np.arange(B)[:, None]].mean(axis=1))
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(means[1] - means[0], [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def _test_set(setting, rng: np.random.Generator):
    """One simulated test set: its ground truth, each image's difficulty offset, and the loaded
    ground truth (the random draws in the order both simulations have always made them)."""
    gt = synthetic_ground_truth(
        setting.num_images,
        num_categories=setting.num_categories,
        max_objects=setting.max_objects,
        seed=int(rng.integers(2**31)),
    )
    offsets = {im["id"]: float(rng.normal(0.0, setting.image_sd)) for im in gt["images"]}
    return gt, offsets, load_ground_truth(gt)


def simulate(setting: Setting, repetitions: int, seed: int = 0) -> dict:
    """Run ``repetitions`` simulated comparisons of ``setting``; AP (0-100), baseline "base".

    Returns:
        ``{"setting", "repetitions", "true_delta_is_zero", "seconds", "methods": {method:
        {"coverage_of_0" or "found_better": share}}, "mean_delta", "mean_half_width"}``.
    """
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    hits = {k: [] for k in ("runs_and_images", "images_only", "images_only_one_run", "naive")}
    deltas, widths, separated = [], [], []
    for _ in range(repetitions):
        gt, offsets, g = _test_set(setting, rng)
        tables = {}
        for name, quality, n in (
            ("base", setting.quality, setting.runs[0]),
            ("other", setting.quality + setting.margin, setting.runs[1]),
        ):
            tables[name] = [
                match_detections(g, load_results(r, g))
                for r in _runs(gt, quality, n, setting, rng, offsets)
            ]
        res = paired_bootstrap(
            tables,
            baseline="base",
            resamples=setting.resamples,
            seed=int(rng.integers(2**31)),
            confidence=setting.confidence,
            progress=False,
            p_values=False,
        )
        est = res.deltas["other"]["AP"]
        one = res.run_values["other"]["AP"][0] - res.run_values["base"]["AP"][0]
        one_samples = res.run_samples["other"][0]["AP"] - res.run_samples["base"][0]["AP"]
        intervals = {
            "runs_and_images": est.interval,
            "images_only": est.image_interval,
            "images_only_one_run": bc_interval(one_samples, one, setting.confidence),
            "naive": _naive_two_level(res, rng, setting.confidence),
        }
        for k, iv in intervals.items():
            hits[k].append(_contains(iv, 0.0) if setting.margin == 0 else _finds(iv))
        separated.append(
            bool(res.run_values["other"]["AP"].min() > res.run_values["base"]["AP"].max())
        )
        deltas.append(est.value)
        widths.append((est.interval[1] - est.interval[0]) / 2)
    key = "coverage_of_0" if setting.margin == 0 else "found_better"
    return {
        "setting": setting.__dict__,
        "repetitions": repetitions,
        "seconds": time.perf_counter() - start,
        "methods": {k: {key: float(np.mean(v))} for k, v in hits.items()},
        "mean_delta": float(np.mean(deltas)),
        "sd_delta": float(np.std(deltas, ddof=1)) if len(deltas) > 1 else None,
        "mean_half_width": float(np.mean(widths)),
        "every_run_better": float(np.mean(separated)),
    }


def simulate_family(setting: Setting, others: int, repetitions: int, seed: int = 0) -> dict:
    """Family-wise coverage: ``others`` detectors of the baseline's quality, each compared with the
    baseline (``setting.runs``: baseline's runs, each other's), as the sweep compares every C with
    C = 1. Every true difference is 0; the family is covered when every interval holds 0.

    Each comparison is bootstrapped twice on the same resamples: at ``setting.confidence`` per
    interval (uncorrected) and at :func:`bonferroni_confidence` over ``others`` (what the sweep
    reports).

    Returns:
        ``{"setting", "others", "repetitions", "seconds", "confidence": {"uncorrected",
        "bonferroni"}, "family_coverage": {"uncorrected", "bonferroni"}, "interval_coverage":
        {...}}``: the share of comparisons where all intervals hold 0, and the share of single
        intervals that do.
    """
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    levels = {
        "uncorrected": setting.confidence,
        "bonferroni": bonferroni_confidence(setting.confidence, others),
    }
    family = {k: [] for k in levels}
    single = {k: [] for k in levels}
    names = [f"other{i}" for i in range(others)]
    for _ in range(repetitions):
        gt, offsets, g = _test_set(setting, rng)
        tables = {
            name: [
                match_detections(g, load_results(r, g))
                for r in _runs(gt, setting.quality, n, setting, rng, offsets)
            ]
            for name, n in (("base", setting.runs[0]), *((o, setting.runs[1]) for o in names))
        }
        boot_seed = int(rng.integers(2**31))
        for key, confidence in levels.items():
            res = paired_bootstrap(
                tables,
                baseline="base",
                resamples=setting.resamples,
                seed=boot_seed,
                confidence=confidence,
                progress=False,
                p_values=False,
            )
            held = [_contains(res.deltas[o]["AP"].interval, 0.0) for o in names]
            family[key].append(all(held))
            single[key].extend(held)
    return {
        "setting": setting.__dict__,
        "others": others,
        "repetitions": repetitions,
        "seconds": time.perf_counter() - start,
        "confidence": levels,
        "family_coverage": {k: float(np.mean(v)) for k, v in family.items()},
        "interval_coverage": {k: float(np.mean(v)) for k, v in single.items()},
    }


def per_model_coverage(
    repetitions: int,
    *,
    seed: int = 0,
    num_images: int = 80,
    quality: float = 0.55,
    image_sd: float = 0.15,
    resamples: int = 200,
    population_images: int = 3000,
) -> dict:
    """Coverage of one model's AP interval (one run, no run noise): the plain percentile
    bootstrap against the bias-corrected one, for the AP of the same detector on a large set
    (``population_images``) standing in for the population."""
    rng = np.random.default_rng(seed)
    setting = Setting(num_images=num_images, quality=quality, image_sd=image_sd, run_sd=0.0)

    def one_eval(n: int):
        gt = synthetic_ground_truth(
            n,
            num_categories=setting.num_categories,
            max_objects=setting.max_objects,
            seed=int(rng.integers(2**31)),
        )
        offsets = {im["id"]: float(rng.normal(0.0, image_sd)) for im in gt["images"]}
        g = load_ground_truth(gt)
        (res,) = _runs(gt, quality, 1, setting, rng, offsets)
        return match_detections(g, load_results(res, g))

    start = time.perf_counter()
    truth = float(
        one_eval(population_images).ap_from_weights(
            np.ones((1, population_images), dtype=np.int32)
        )["AP"][0]
    )
    hit = {"percentile": [], "bias_corrected": []}
    above = []
    for _ in range(repetitions):
        table = one_eval(num_images)
        res = paired_bootstrap(
            {"m": table},
            baseline="m",
            resamples=resamples,
            seed=int(rng.integers(2**31)),
            progress=False,
            p_values=False,
        )
        samples = res.samples["m"]["AP"]
        value = float(res.run_values["m"]["AP"][0])
        pct = np.percentile(samples, [2.5, 97.5])
        hit["percentile"].append(bool(pct[0] <= truth <= pct[1]))
        hit["bias_corrected"].append(_contains(res.models["m"]["AP"].interval, truth))
        above.append(float(np.median(samples) - value))
    return {
        "repetitions": repetitions,
        "num_images": num_images,
        "population_images": population_images,
        "population_AP": truth,
        "median_bootstrap_shift": float(np.mean(above)),
        "coverage": {k: float(np.mean(v)) for k, v in hit.items()},
        "seconds": time.perf_counter() - start,
    }


def benchmark_bootstrap(
    num_images: int = 5000, resamples: int = 1000, *, detections_per_image: int = 80, seed: int = 0
) -> dict[str, float]:
    """Time matching, accumulation and the paired bootstrap of two models on synthetic COCO-like
    data (80 categories, ~7 objects and ~100 detections per image).

    Returns:
        seconds per stage and the data's size.
    """
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
