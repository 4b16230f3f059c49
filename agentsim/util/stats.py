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
* :func:`tipping_point` — where a probability rising with load passes a level, with the interval
  that inverts the Wilson intervals;
* :func:`mser5` — the warm-up to cut from a sampled series (MSER-5).

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


def mser5(series) -> int:
    """The warm-up to cut from a sampled output series, in samples: MSER-5 (White 1997; Law,
    *Simulation Modeling and Analysis*, §9.5.1).

    The series is averaged in batches of 5; for each truncation ``d`` (in batches, over the first
    half) MSER is the variance of the remaining batch means over their count squared — the squared
    half-width a confidence interval of what is left would have. The ``d`` that minimises it is
    where the initial transient stops paying for its bias; the answer is ``5 d`` samples. Fewer
    than 10 batches: 0 (too short to tell).
    """
    x = np.asarray(series, dtype=float)
    m = len(x) // 5
    if m < 10:
        return 0
    b = x[:m * 5].reshape(m, 5).mean(axis=1)
    # suffix sums give every tail's mean and sum of squares in one pass
    s1 = np.cumsum(b[::-1])[::-1]
    s2 = np.cumsum((b * b)[::-1])[::-1]
    d = np.arange(m // 2 + 1)
    k = m - d
    ss = s2[d] - s1[d] ** 2 / k          # sum of squared deviations of the tail
    return 5 * int(np.argmin(ss / (k * k)))


def holds_for(mask, n: int) -> bool:
    """Whether ``mask`` has ``n`` consecutive true values: a condition that lasts (e.g. goodput below
    half the offered load in every bin of a 30-minute stretch — a persistent collapse)."""
    run = 0
    for x in mask:
        run = run + 1 if x else 0
        if run >= n:
            return True
    return False


def tipping_point(xs, k, n, p: float = 0.5, level: float = LEVEL) -> tuple[float, float, float]:
    """Where a probability that rises with ``x`` passes ``p``, from ``k[i]`` events in ``n[i]`` runs
    at each increasing ``x[i]``: ``(estimate, low, high)``.

    The estimate is where the observed shares first reach ``p`` (linear interpolation between the
    two loads around it). The interval inverts the Wilson intervals: below ``low`` every load's
    share is significantly under ``p`` (its upper bound is below ``p``), above ``high`` significantly
    over it (its lower bound is above ``p``), each crossing interpolated the same way. A crossing
    beyond the swept range is ``inf`` (never reached) or ``-inf`` (already past at the first load).
    """
    xs = np.asarray(xs, dtype=float)
    iv = [proportion_interval(int(a), int(b), level) for a, b in zip(k, n)]
    share, low, high = (np.array([v[j] for v in iv]) for j in range(3))
    return _first_crossing(xs, share, p), _first_crossing(xs, high, p), _first_crossing(xs, low, p)


def _first_crossing(xs: np.ndarray, ys: np.ndarray, p: float) -> float:
    """The first ``x`` where ``ys`` reaches ``p``, interpolated; -inf if it starts there, inf if never."""
    at = np.nonzero(ys >= p)[0]
    if len(at) == 0:
        return math.inf
    i = int(at[0])
    if i == 0:
        return -math.inf
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(x0 + (p - y0) / (y1 - y0) * (x1 - x0))
