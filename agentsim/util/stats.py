"""Confidence intervals, in one place, each clipped to the range its quantity can take.

Every interval agentsim reports (``ResultSet.summary``, sweeps, capacity searches, validation,
the experiments' tables and bands) comes from here, so that a count's interval never goes below
0, a share's never leaves [0, 1] and a latency's is never negative:

* :func:`mean_interval` — mean of independent replications, Student-t interval;
* :func:`mean_band` — the same, column-wise (a time series over replications);
* :func:`proportion_interval` — a share k/n, Wilson score interval (valid at k = 0 and k = n);
* :func:`percentile_interval` — a percentile of one sample, distribution-free order-statistic
  interval (binomial ranks), so a single run's p99 gets an honest interval;
* :func:`paired_difference` — mean of per-replication differences b − a over common random
  numbers (the same seeds on both sides), Student-t interval.

:func:`summary_range` maps a summary key to its valid range. Intervals return ``(estimate, low,
high)``; with too little data the bounds are NaN (never a made-up width). scipy is imported
inside the functions: ``import agentsim`` stays cheap.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95
NONNEGATIVE = (0.0, math.inf)
UNIT = (0.0, 1.0)
ANY = (-math.inf, math.inf)

#: summary keys that are shares (their intervals live in [0, 1])
PROPORTIONS = frozenset({"slo_attainment", "prefix_hit_rate", "session_failure_rate", "busy_share", "down_share",
                         "kv_occupancy", "batch_occupancy", "recovered_share"})


def summary_range(key: str) -> tuple[float, float]:
    """The valid range of a summary figure named ``key`` (dotted paths allowed: the last part counts).

    Shares are in [0, 1]; every other figure agentsim summarises (counts, rates, latencies, energy,
    cost, power, capacity utilisation, which may exceed 1 under overload) is >= 0.
    """
    last = key.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
    if last in PROPORTIONS or last.endswith(("_share", "_fraction", "_frac")):
        return UNIT
    return NONNEGATIVE


def clip(estimate: float, low: float, high: float, valid: tuple[float, float] = ANY) -> tuple[float, float, float]:
    """``(estimate, low, high)`` with both bounds moved into ``valid`` (NaN bounds stay NaN)."""
    lo_v, hi_v = valid
    if not math.isnan(low):
        low = min(max(low, lo_v), hi_v)
    if not math.isnan(high):
        high = min(max(high, lo_v), hi_v)
    return estimate, low, high


def _finite(values) -> np.ndarray:
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float).ravel()
    return x[np.isfinite(x)]


def t_halfwidth(sd: float | np.ndarray, n: int, level: float = LEVEL):
    """Half-width of the Student-t interval of a mean of ``n`` values with standard deviation ``sd``."""
    from scipy import stats  # local: scipy.stats costs ~600 ms; import agentsim and estimate load none of it
    return stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def mean_interval(values, level: float = LEVEL, valid: tuple[float, float] = ANY) -> tuple[float, float, float]:
    """Mean of independent replications and its Student-t interval, clipped to ``valid``.

    None, NaN and inf values are dropped; one value gives NaN bounds, none a NaN mean.
    """
    x = _finite(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    h = float(t_halfwidth(x.std(ddof=1), len(x), level))
    return clip(m, m - h, m + h, valid)


def mean_band(x, level: float = LEVEL, valid: tuple[float, float] = ANY, nan_policy: str = "propagate"):
    """Column-wise mean and Student-t band of a (replications x points) array, clipped to ``valid``.

    With one replication the band collapses onto the mean (there is nothing to spread).
    ``nan_policy="omit"`` ignores NaN cells (nanmean/nanstd with the full replication count).
    """
    x = np.asarray(x, dtype=float)
    mean, std = (np.nanmean, np.nanstd) if nan_policy == "omit" else (np.mean, np.std)
    m = mean(x, axis=0)
    if len(x) < 2:
        return m, m.copy(), m.copy()
    h = t_halfwidth(std(x, axis=0, ddof=1), len(x), level)
    return m, np.clip(m - h, *valid), np.clip(m + h, *valid)


def proportion_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """A share ``k / n`` and its Wilson score interval (inside [0, 1] by construction)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    from scipy import stats  # local: scipy.stats costs ~600 ms; import agentsim and estimate load none of it
    z = float(stats.norm.ppf((1 + level) / 2))
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exactly 0 at k = 0 and 1 at k = n (rounding would leave 1e-18 above the share itself)
    low, high = (0.0 if k == 0 else min(c - h, p)), (1.0 if k == n else max(c + h, p))
    return clip(p, low, high, UNIT)


def percentile_interval(values, q: float, level: float = LEVEL,
                        valid: tuple[float, float] = ANY) -> tuple[float, float, float]:
    """The ``q``-th percentile of one sample (numpy's linear interpolation, as in ``summary()``) and
    a distribution-free interval between two order statistics.

    The number of values below the true percentile is Binomial(n, q/100); the bounds are the order
    statistics at that distribution's (1 ∓ level)/2 quantiles. NaN bounds when the sample is too
    small for the level (e.g. a p99 from fewer than ~300 values has no upper order statistic).
    """
    x = np.sort(_finite(values))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    est = float(np.percentile(x, q))
    from scipy import stats  # local: scipy.stats costs ~600 ms; import agentsim and estimate load none of it
    alpha = 1 - level
    lo_rank = int(stats.binom.ppf(alpha / 2, n, q / 100))        # 1-based rank of the lower bound
    hi_rank = int(stats.binom.ppf(1 - alpha / 2, n, q / 100)) + 1
    # widened to hold the interpolated estimate (tiny samples: the order statistic can pass it)
    low = min(float(x[lo_rank - 1]), est) if lo_rank >= 1 else math.nan
    high = max(float(x[hi_rank - 1]), est) if hi_rank <= n else math.nan
    return clip(est, low, high, valid)


def paired_difference(a, b, level: float = LEVEL, valid: tuple[float, float] = ANY) -> tuple[float, float, float]:
    """Mean of ``b[i] − a[i]`` over paired replications (common random numbers: replication i of
    both sides ran with the same seed, so the pair differs by the treatment, not by the draws)."""
    return mean_interval([y - x for x, y in zip(a, b)], level, valid)
