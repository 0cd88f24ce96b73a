"""Bootstrap confidence intervals for per-shape scores: of a mean, and of a paired difference.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): draw ``resamples`` samples of the n
values with replacement, take each one's mean, and report the ``(1 - confidence) / 2`` and
``(1 + confidence) / 2`` quantiles of those means (numpy's default linear interpolation).

Paired: when two methods are scored on the same shapes, the interval of the mean difference
is the bootstrap of the per-shape differences a_i - b_i (the shapes are resampled, each
keeping both of its scores), so the variation between shapes, which both methods share,
cancels. Seeded: the same values and seed always give the same interval.

Written here rather than calling ``scipy.stats.bootstrap``: scipy refuses a single observation,
and the benchmark must still report a method scored on one shape (a degenerate interval).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BOOTSTRAP_CONVENTION = ("percentile bootstrap over shapes: {resamples} resamples with replacement (numpy "
                        "default_rng({seed})), the {low:g} and {high:g} quantiles of the resampled means; paired "
                        "differences resample shapes, each keeping both methods' scores")


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap confidence interval [low, high]; n values behind it."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside [low, high] (a difference 'significant' at this level)."""
        return not self.low <= value <= self.high

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def convention(resamples: int = 10000, seed: int = 0, confidence: float = 0.95) -> str:
    """The sentence that states how the intervals were computed (for result files)."""
    return BOOTSTRAP_CONVENTION.format(resamples=resamples, seed=seed, low=(1 - confidence) / 2,
                                       high=(1 + confidence) / 2)


def _values(x: Any, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-shape scores, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or infinite values; drop or replace them first")
    return v


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from default_rng(seed): the draws behind every interval."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_mean_ci(values: Any, *, confidence: float = 0.95, resamples: int = 10000, seed: int = 0) -> Interval:
    """The mean of ``values`` (n,) and its percentile-bootstrap interval at ``confidence``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    v = _values(values, "values")
    means = v[resample_indices(len(v), resamples, seed)].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(v.mean()), float(low), float(high), len(v), confidence)


def paired_bootstrap_ci(a: Any, b: Any, *, confidence: float = 0.95, resamples: int = 10000, seed: int = 0) -> Interval:
    """Mean of a - b over paired per-shape scores a, b (n,) and its percentile-bootstrap interval."""
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same shapes, got {len(a)} and {len(b)}")
    return bootstrap_mean_ci(a - b, confidence=confidence, resamples=resamples, seed=seed)
