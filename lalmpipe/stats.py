"""The statistics lalmpipe's figures rest on: pure functions over numbers, the standard
library's where it has them."""
from __future__ import annotations

import math
import statistics
from typing import Sequence


def r6(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks: statistics.quantiles'
    "inclusive" method, for any q, not only whole percents."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1), as llama-bench gives it; None below two values."""
    return statistics.stdev(values) if len(values) > 1 else None


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than two distinct xs)."""
    try:
        return statistics.linear_regression(xs, ys).slope
    except statistics.StatisticsError:
        return None
