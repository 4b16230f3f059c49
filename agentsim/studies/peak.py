"""A run's daily peak: the window of whole hours with the most arrivals, and a Result cut to it.

``peak_balance(res)`` answers issue 18's routing question for one run: at the peak, is every pool's
capacity utilisation within a band around the fleet's (no generation idle while another queues),
and what SLO attainment did the peak's requests get? The fleet's capacity utilisation is its
pools' served output tokens/s over their capacities summed (:mod:`.utilisation` defines both).
"""
from __future__ import annotations

import numpy as np

from ..results.result import Result
from .utilisation import capacity_utilisation


def peak_window(res: Result, hours: int = 3) -> tuple[float, float]:
    """(start, end) in seconds of the ``hours`` whole hours after warm-up with the most arrivals."""
    warm = float(res.meta.get("warmup_s", 0.0))
    end = float(res.meta.get("duration_s", 0.0))
    first = int(np.ceil(warm / 3600))
    last = int(end // 3600)                     # whole hours only
    if last - first < hours:
        return warm, end
    counts = np.histogram(res.requests["arrival_s"].to_numpy(), bins=np.arange(first, last + 1) * 3600.0)[0]
    sums = np.convolve(counts, np.ones(hours, int), mode="valid")
    h = first + int(np.argmax(sums))
    return h * 3600.0, (h + hours) * 3600.0


def window(res: Result, t0: float, t1: float) -> Result:
    """``res`` as if the run had measured only requests arriving in [t0, t1): its warm-up ends at
    t0 and its duration at t1 (samples in (t0, t1]; the pool table is the whole run's)."""
    df = res.requests
    ts = res.timeseries
    meta = {k: v for k, v in res.meta.items() if k != "capacity"}
    meta.update(warmup_s=t0, duration_s=t1)
    return Result(requests=df[(df["arrival_s"] >= t0) & (df["arrival_s"] < t1)],
                  timeseries=ts[(ts["time_s"] > t0) & (ts["time_s"] <= t1)] if len(ts) else ts,
                  pools=res.pools, meta=meta, sessions=res.sessions)


def peak_balance(res: Result, hours: int = 3, window_s: tuple[float, float] | None = None) -> dict:
    """At the peak (or in ``window_s``: compare two arms of a paired run over the same hours): the
    window, SLO attainment, the fleet's capacity utilisation and each pool's as a multiple of it
    (one max-load estimate per deployment, cached)."""
    t0, t1 = window_s if window_s is not None else peak_window(res, hours)
    w = window(res, t0, t1)
    cu = capacity_utilisation(w)
    served = sum(v["served_output_tokens_per_s"] for v in cu.values())
    carry = sum(v["capacity_output_tokens_per_s"] for v in cu.values())
    fleet = served / carry if carry > 0 else float("nan")
    return {"window_s": (t0, t1), "slo_attainment": w.summary()["slo_attainment"], "fleet_utilisation": fleet,
            "pool_ratio": {k: v["capacity_utilisation"] / fleet for k, v in cu.items()},
            "pool_utilisation": {k: v["capacity_utilisation"] for k, v in cu.items()}}
