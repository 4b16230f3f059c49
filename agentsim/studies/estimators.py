"""Estimators for checking a simulation against queueing theory from its request records.

Batch means (a long run cut into consecutive batches whose means are nearly independent), a ratio
of sums with the batch interval, the number in system seen by each arrival, and the time spent at
each occupancy. Intervals are the Student-t ones of :mod:`agentsim.util.stats`.
"""
from __future__ import annotations

import numpy as np

from ..util.stats import mean_interval

#: confidence level and number of batches of the validation's intervals
LEVEL = 0.99
BATCHES = 30


def t_interval(batch_values, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval of (approximately) independent values."""
    return mean_interval(batch_values, level)


def batch_means(values, k: int = BATCHES, level: float = LEVEL) -> tuple[float, float, float]:
    """Point estimate (the grand mean) and the batch-means t-interval of a sequence of
    observations in time order, cut into ``k`` consecutive batches of equal size."""
    x = np.asarray(values, dtype=float)
    n = len(x) // k * k
    if n < 2 * k:
        raise ValueError(f"{len(x)} observations are too few for {k} batches")
    b = x[:n].reshape(k, -1).mean(axis=1)
    _, lo, hi = t_interval(b, level)
    m = float(x[:n].mean())
    return m, m - (hi - lo) / 2, m + (hi - lo) / 2


def ratio_batch_means(num, den, k: int = BATCHES, level: float = LEVEL) -> tuple[float, float, float]:
    """Σnum/Σden with a batch-means interval of the per-batch ratios (batches given as arrays)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    r = num / den
    _, lo, hi = t_interval(r, level)
    m = float(num.sum() / den.sum())
    return m, m - (hi - lo) / 2, m + (hi - lo) / 2


def number_seen_at_arrival(arrival, finish) -> np.ndarray:
    """N(aᵢ−): requests in the system just before each arrival (itself excluded; a request that
    finishes exactly at aᵢ has left)."""
    a = np.asarray(arrival, float)
    f = np.asarray(finish, float)
    f = np.where(np.isnan(f), np.inf, f)
    sa, sf = np.sort(a), np.sort(f)
    return np.searchsorted(sa, a, side="left") - np.searchsorted(sf, a, side="right")


def occupancy(arrival, finish, edges, kmax: int) -> np.ndarray:
    """Time spent with N = 0, 1, ..., kmax and with N > kmax (the last column) in each interval
    [edges[j], edges[j+1]), where N(t) = #{i: aᵢ <= t < fᵢ} (an unfinished request: fᵢ = ∞).

    Returns an array of shape (len(edges) − 1, kmax + 2) of durations.
    """
    a = np.asarray(arrival, float)
    f = np.asarray(finish, float)
    f = np.where(np.isnan(f), np.inf, f)
    times = np.concatenate([a, f])
    delta = np.concatenate([np.ones(len(a)), -np.ones(len(f))])
    order = np.lexsort((delta, times))          # at a tie, departures (−1) first
    t, d = times[order], delta[order]
    n_after = np.cumsum(d)
    seg_start = np.concatenate([[-np.inf], t])
    seg_end = np.concatenate([t, [np.inf]])
    seg_n = np.concatenate([[0], n_after]).astype(int)
    seg_n = np.minimum(seg_n, kmax + 1)
    edges = np.asarray(edges, float)
    out = np.zeros((len(edges) - 1, kmax + 2))
    for j in range(len(edges) - 1):
        lo, hi = edges[j], edges[j + 1]
        i0 = np.searchsorted(seg_end, lo, side="right")
        i1 = np.searchsorted(seg_start, hi, side="left")
        s = np.clip(seg_start[i0:i1], lo, hi)
        e = np.clip(seg_end[i0:i1], lo, hi)
        np.add.at(out[j], seg_n[i0:i1], e - s)
    return out
