"""The comparison's intervals, measured: coverage on simulated detectors whose truth is known.

Small synthetic sets (one category, 40 images) keep each simulated comparison to a few tens of
milliseconds; tools/coverage_sim.py runs the larger settings recorded in docs/statistics.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.simulate import Setting, per_model_coverage, simulate

from resnext_det.evaluation.intervals import bc_interval, mover, t_cdf, t_quantile

# Run-to-run noise larger than image noise, as in the demo (three runs of one command gave
# ΔAP +4.2, -3.1 and -3.9 with images-only intervals about +-3 wide).
SMALL = Setting(num_images=40, num_categories=1, max_objects=6, run_sd=0.06, image_sd=0.15)


@pytest.fixture(scope="module")
def equal():
    return simulate(SMALL, 200, seed=11)


def test_equal_detectors_interval_covers_zero(equal):
    """200 comparisons of two detectors of equal true quality, 3 runs each: the 95% interval of
    the difference contains the true difference (0) in at least 90% of them."""
    assert equal["repetitions"] == 200 and equal["setting"]["runs"] == (3, 3)
    assert equal["methods"]["runs_and_images"]["coverage_of_0"] >= 0.90


def test_images_only_interval_under_covers(equal):
    """On the same simulations, an interval over test images only (what a comparison reports
    without runs) misses the truth far more often than 5%: the reason runs are needed."""
    assert equal["methods"]["images_only"]["coverage_of_0"] < 0.80
    assert equal["methods"]["images_only_one_run"]["coverage_of_0"] < 0.80
    # The calibrated interval is wider than the images-only one for a reason: it covers.
    assert (
        equal["methods"]["runs_and_images"]["coverage_of_0"]
        > equal["methods"]["images_only"]["coverage_of_0"] + 0.1
    )


def test_clearly_better_detector_is_found():
    """A detector better by a clear margin in every run: the interval excludes 0 in most
    comparisons (power), with runs and images both covered."""
    better = simulate(Setting(**{**SMALL.__dict__, "margin": 0.3}), 40, seed=12)
    assert better["every_run_better"] >= 0.9  # the setting is what the test claims
    assert better["methods"]["runs_and_images"]["found_better"] >= 0.6
    assert better["mean_delta"] > 0


def test_per_model_bias_corrected_interval_covers():
    """One model's AP interval: the percentile bootstrap sits above the point estimate; the
    bias-corrected interval covers the AP of the same detector on a large set."""
    r = per_model_coverage(100, seed=13, num_images=40, population_images=1500)
    assert r["median_bootstrap_shift"] > 0  # the percentile interval's bias
    assert r["coverage"]["bias_corrected"] >= 0.85
    assert r["coverage"]["bias_corrected"] >= r["coverage"]["percentile"]


# ------------------------------------------------------------------------------------------
# The interval arithmetic, against reference values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p,df,ref",
    [  # Student's t tables (Fisher & Yates; any statistics textbook)
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 10, 2.2281),
        (0.95, 3, 2.3534),
        (0.025, 5, -2.5706),
        (0.975, math.inf, 1.95996),
    ],
)
def test_t_quantile_matches_tables(p, df, ref):
    assert t_quantile(p, df) == pytest.approx(ref, abs=1e-4)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


def test_t_cdf_matches_a_simulation():
    rng = np.random.default_rng(0)
    df = 2.5  # not whole: Satterthwaite gives such
    x = rng.standard_t(df, size=400_000)
    for q in (-3.0, -1.0, 0.5, 2.0):
        assert t_cdf(q, df) == pytest.approx(np.mean(x <= q), abs=3e-3)


def test_bc_interval_corrects_a_shifted_bootstrap():
    """A bootstrap distribution centred 1 above the estimate: the percentile interval would sit
    above it; the bias-corrected one is moved down to straddle it."""
    rng = np.random.default_rng(0)
    samples = rng.normal(11.0, 1.0, 20_000)
    lo, hi = bc_interval(samples, 10.0, 0.95)
    assert lo < 10.0 < hi
    assert (lo + hi) / 2 == pytest.approx(9.0, abs=0.1)  # shifted by twice the bias
    assert bc_interval(samples, 11.0, 0.95) == pytest.approx(
        list(np.percentile(samples, [2.5, 97.5])), abs=0.05
    )
    assert bc_interval(np.zeros(50), 0.0, 0.95) == [0.0, 0.0]


def test_mover_adds_in_quadrature():
    assert mover(10.0, [7.0, 14.0], 4.0) == pytest.approx([5.0, 10.0 + math.hypot(4, 4)])
    assert mover(10.0, [7.0, 14.0], 0.0) == pytest.approx([7.0, 14.0])
