"""How sure a figure is: intervals for shares, a fitted memory curve, and tests of whether two
runs differ. Pure functions over counts and samples (scipy's distributions and tests, numpy's
random generator with a fixed seed: the same input always gives the same output)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import optimize, stats

# a difference is called real below this p-value
ALPHA = 0.05
# the bootstrap of the memory curve: resamples, and its seed
RESAMPLES = 400
SEED = 20261206


def wilson(recalled: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of a share recalled of n (None without any)."""
    if n == 0:
        return None
    ci = stats.binomtest(recalled, n).proportion_ci(confidence_level=level, method="wilson")
    return round(float(ci.low), 4), round(float(ci.high), 4)


def share_difference(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    """Fisher's exact test of two shares given as (recalled, n): the two-sided p-value."""
    if a[1] == 0 or b[1] == 0:
        return None
    table = [[a[0], a[1] - a[0]], [b[0], b[1] - b[0]]]
    return float(stats.fisher_exact(table).pvalue)


def sample_difference(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The Mann-Whitney U test of two samples (speeds at the same depths): the two-sided p-value."""
    if len(a) < 2 or len(b) < 2:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def verdict(p_value: float | None, n: Sequence[int]) -> str:
    """A comparison's finding in words."""
    sizes = ", ".join(str(x) for x in n)
    if p_value is None:
        return f"too few samples to compare (n = {sizes})"
    if p_value < ALPHA:
        return f"differs (p = {p_value:.3g})"
    return f"no difference detectable with these samples (n = {sizes}; p = {p_value:.2g})"


def slope_interval(xs: Sequence[float], ys: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The interval of a least-squares slope (Student's t on its standard error)."""
    if len(xs) < 3 or len(set(xs)) < 2:
        return None
    fit = stats.linregress(xs, ys)
    t = stats.t.ppf(0.5 + level / 2, len(xs) - 2)
    return float(fit.slope - t * fit.stderr), float(fit.slope + t * fit.stderr)


# ---- the memory curve: recall against the distance to the fact, fitted ----

def _crossing(d: np.ndarray, y: np.ndarray, level: float) -> float:
    """The distance at which recall, fitted as never rising with distance (isotonic
    regression), falls below `level`, between the last probe above it and the first below:
    +inf if it never does within the distances measured, -inf if it starts below."""
    order = np.argsort(d, kind="stable")
    d, y = d[order], y[order]
    fit = optimize.isotonic_regression(y, increasing=False).x
    below = np.nonzero(fit < level)[0]
    if len(below) == 0:
        return math.inf
    i = int(below[0])
    if i == 0:
        return -math.inf
    return float((d[i - 1] + d[i]) / 2)


def memory_curve(distances: Sequence[float | None], recalled: Sequence[bool]) -> dict:
    """Recall against distance in tokens, fitted as a curve that never rises with distance
    (isotonic regression: no shape assumed, so a model that remembers everything up to a
    point and nothing after is fitted as the step it is), and the distances at which it
    falls below 90 % and 50 %, each with a 95 % bootstrap interval over the probes (seeded).
    A distance the data cannot give (recall never fell that low within the distances
    measured, or started below it) is None, and so is an interval's end the resamples
    cannot bound."""
    pts = [(d, bool(r)) for d, r in zip(distances, recalled) if d is not None and d > 0]
    out: dict = {"probes": len(pts)}
    for level in (90, 50):
        out[f"distance_{level}_tokens"], out[f"distance_{level}_ci95"] = None, None
    if len(pts) < 5:
        return out
    d = np.array([p[0] for p in pts], dtype=float)
    y = np.array([p[1] for p in pts], dtype=float)
    rng = np.random.default_rng(SEED)
    samples = [rng.integers(0, len(pts), len(pts)) for _ in range(RESAMPLES)]
    for level in (90, 50):
        point = _crossing(d, y, level / 100)
        if not math.isfinite(point):
            continue
        out[f"distance_{level}_tokens"] = round(point)
        ends = [_crossing(d[i], y[i], level / 100) for i in samples]
        # order statistics: an end may be infinite (a resample that never fell that low)
        low, high = np.percentile(ends, 2.5, method="lower"), np.percentile(ends, 97.5, method="higher")
        out[f"distance_{level}_ci95"] = [round(float(low)) if math.isfinite(low) else None,
                                         round(float(high)) if math.isfinite(high) else None]
    return out
