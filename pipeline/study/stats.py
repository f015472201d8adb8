"""Bootstrap confidence intervals over items: means, ratios of sums, paired differences.

Every function resamples items with replacement from a fixed seed, so the same items and seed give
the same interval, and two configs scored on the same items share the resampled index sets.
Missing values (NaN) are dropped first; a paired statistic drops an item missing on either side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval over n items."""

    value: float
    low: float
    high: float
    n: int

    def format(self, fmt: str = "{:.3f}") -> str:
        if self.n == 0 or np.isnan(self.value):
            return "-"
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


EMPTY = Estimate(float("nan"), float("nan"), float("nan"), 0)


def _indices(n: int, samples: int, seed: int) -> np.ndarray:
    """[samples, n] item indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def _check(samples: int, confidence: float) -> None:
    if samples < 1:
        raise ValueError(f"bootstrap samples must be at least 1, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_mean(values, samples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """Mean over items with a percentile interval."""
    _check(samples, confidence)
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return EMPTY
    means = x[_indices(x.size, samples, seed)].mean(axis=1)
    return Estimate(float(x.mean()), *_interval(means, confidence), x.size)


def bootstrap_ratio(numerator, denominator, samples: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> Estimate:
    """sum(numerator) / sum(denominator) over items, items resampled in pairs: a token-weighted mean
    (applied sparsity x tokens over tokens), or quality retained (method's over dense's, same items)."""
    _check(samples, confidence)
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if num.shape != den.shape:
        raise ValueError(f"numerator and denominator differ in shape: {num.shape} vs {den.shape}")
    keep = ~(np.isnan(num) | np.isnan(den))
    num, den = num[keep], den[keep]
    if num.size == 0 or den.sum() == 0:
        return EMPTY
    index = _indices(num.size, samples, seed)
    sums = den[index].sum(axis=1)
    ratios = num[index].sum(axis=1) / np.where(sums == 0, np.nan, sums)
    ratios = ratios[~np.isnan(ratios)]
    return Estimate(float(num.sum() / den.sum()), *_interval(ratios, confidence), num.size)


def paired_difference(a, b, samples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """Mean of a - b over items scored by both (a[i] and b[i] are the same item)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values differ in shape: {x.shape} vs {y.shape}")
    return bootstrap_mean(x - y, samples, seed, confidence)


def paired_ratio_difference(numerator_a, denominator_a, numerator_b, denominator_b, samples: int = 2000,
                            seed: int = 0, confidence: float = 0.95) -> Estimate:
    """sum(numerator_a) / sum(denominator_a) - sum(numerator_b) / sum(denominator_b) over items scored
    by both sides, each item resampled with both its sides: the difference of two configs' executed
    FLOPs over dense, paired by item."""
    _check(samples, confidence)
    sides = [np.asarray(v, dtype=float) for v in (numerator_a, denominator_a, numerator_b, denominator_b)]
    if len({v.shape for v in sides}) != 1:
        raise ValueError(f"paired ratios differ in shape: {[v.shape for v in sides]}")
    keep = ~np.any([np.isnan(v) for v in sides], axis=0)
    na, da, nb, db = (v[keep] for v in sides)
    if na.size == 0 or da.sum() == 0 or db.sum() == 0:
        return EMPTY
    index = _indices(na.size, samples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = na[index].sum(axis=1) / da[index].sum(axis=1) - nb[index].sum(axis=1) / db[index].sum(axis=1)
    draws = draws[np.isfinite(draws)]
    return Estimate(float(na.sum() / da.sum() - nb.sum() / db.sum()), *_interval(draws, confidence), na.size)
