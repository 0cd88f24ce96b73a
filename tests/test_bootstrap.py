"""Bootstrap intervals: a naive loop reference, degenerate and analytic cases, coverage, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pvd.metrics.bootstrap import bootstrap_mean_ci, convention, paired_bootstrap_ci, resample_indices


def naive_percentile_ci(values, confidence, resamples, seed):
    """One resample at a time from the same draws, the quantiles by sorting and interpolating by hand."""
    values = list(map(float, values))
    n = len(values)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = sorted(sum(values[j] for j in row) / n for row in draws)

    def quantile(q):  # numpy's default ("linear"): position q (R - 1) between order statistics
        pos = q * (len(means) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(means) - 1)
        return means[lo] + (pos - lo) * (means[hi] - means[lo])

    alpha = (1 - confidence) / 2
    return sum(values) / n, quantile(alpha), quantile(1 - alpha)


@pytest.mark.parametrize("n,confidence,seed", [(1, 0.95, 0), (7, 0.9, 3), (30, 0.95, 1), (12, 0.5, 9)])
def test_matches_a_naive_loop(n, confidence, seed):
    values = np.random.default_rng(100 + n).normal(size=n)
    got = bootstrap_mean_ci(values, confidence=confidence, resamples=500, seed=seed)
    mean, low, high = naive_percentile_ci(values, confidence, 500, seed)
    assert got.n == n and got.confidence == confidence
    assert got.mean == pytest.approx(mean, abs=1e-12)
    assert got.low == pytest.approx(low, abs=1e-12) and got.high == pytest.approx(high, abs=1e-12)


def test_constant_differences_give_a_zero_width_interval():
    a = np.array([0.3, 1.2, -4.0, 7.5, 0.0, 2.25])
    ci = paired_bootstrap_ci(a + 0.5, a, resamples=2000, seed=4)
    assert ci.mean == pytest.approx(0.5) and ci.low == pytest.approx(0.5) and ci.high == pytest.approx(0.5)
    assert ci.excludes(0.0) and not ci.excludes(0.5)
    same = paired_bootstrap_ci(a, a)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes(0.0)


def test_paired_is_the_bootstrap_of_the_differences_and_cancels_shared_variation():
    rng = np.random.default_rng(0)
    shared = rng.normal(scale=10.0, size=40)  # per-shape difficulty, common to both methods
    a = shared + 1.0 + rng.normal(scale=0.1, size=40)
    b = shared
    paired = paired_bootstrap_ci(a, b, seed=2)
    direct = bootstrap_mean_ci(a - b, seed=2)
    assert paired == direct
    assert paired.excludes(0.0) and paired.high - paired.low < 0.2
    # Unpaired intervals of the two means overlap completely: the shared spread swamps the gap.
    ia, ib = bootstrap_mean_ci(a, seed=2), bootstrap_mean_ci(b, seed=3)
    assert ia.low < ib.high


def test_width_follows_the_standard_error():
    # For a large normal sample the percentile interval approaches mean +- 1.96 s / sqrt(n).
    x = np.random.default_rng(5).normal(loc=2.0, scale=3.0, size=400)
    ci = bootstrap_mean_ci(x, resamples=20000, seed=1)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert ci.high - ci.low == pytest.approx(2 * half, rel=0.05)
    assert (ci.low + ci.high) / 2 == pytest.approx(x.mean(), abs=0.05 * half)


def test_coverage_on_normal_samples_is_about_the_nominal_level():
    rng = np.random.default_rng(11)
    trials, covered = 300, 0
    for k in range(trials):
        x = rng.normal(loc=1.0, size=40)
        ci = bootstrap_mean_ci(x, resamples=1000, seed=k)
        covered += ci.low <= 1.0 <= ci.high
    # The percentile interval undercovers a little at n = 40 (about 93-94%); 300 trials add
    # a binomial spread of about 1.3 points.
    assert 0.89 <= covered / trials <= 0.98


def test_seeded_and_deterministic():
    x = np.random.default_rng(1).normal(size=25)
    assert bootstrap_mean_ci(x, seed=7) == bootstrap_mean_ci(x, seed=7)
    assert bootstrap_mean_ci(x, seed=7) != bootstrap_mean_ci(x, seed=8)
    assert resample_indices(5, 3, 0).shape == (3, 5)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]], [1.0, float("inf")]])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        bootstrap_mean_ci(bad)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="same shapes"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci([1.0], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_mean_ci([1.0], resamples=0)


def test_convention_states_the_method():
    text = convention(1000, 3, 0.9)
    assert "1000 resamples" in text and "default_rng(3)" in text and "0.05" in text and "0.95" in text
