"""Capacity utilisation: how much of what a pool can carry it is carrying — defined here, once.

**Capacity utilisation** of a pool = served load / the load the pool can carry, where

* *served load* is the output tokens per second of the pool's completed requests that arrived
  after warm-up (the same requests and span as ``summary()``'s ``output_tokens_per_s``);
* *the load it can carry* is the saturation output rate of one replica of the pool's deployment
  (GPU, model, tp, pp, precision and engine settings), measured by ``agentsim estimate --max-load``
  with the pool's mean request shape — mean prompt tokens, of which the mean cached prefix is
  already in the replica's KV (attended by the chunk's attention but not recomputed), and mean
  output tokens of those completed requests — and
  the batch capped at what the KV cache holds at the pool's mean *context* (input + output
  tokens, cached part included: an agent's long cached context takes KV space even though it is
  not recomputed), and lowered further while the max-load run's mean time per output token
  exceeds the run's TPOT SLO (:func:`slo_batch`) — the load the pool carries *at the SLO*; times
  the replicas up on average (replicas x (1 − down share)). The TTFT SLO cannot be applied to a
  max-load run (every request waits from t = 0 there).

Values near 1 mean the pool runs at its saturation throughput (queues grow and latency SLOs
usually break before that; ``max_load_tpot_s`` and ``max_load_batch`` say at what TPOT and batch
the ceiling was measured); above 1 means the mean shape understates what the pool really serves.
Read it with **KV occupancy** (mean share of the pool's KV cache in use) and **batch occupancy**
(mean running requests / ``max_batch``), which say which limit binds. **Busy share** (the share of time a replica is executing a step, what
used to be shown as "utilisation") is kept beside it: a replica with one request in its batch
is busy, so busy share reads near 1 at modest loads and says little about headroom.

Each deployment and shape (rounded to 2 significant digits) is estimated once per process and
cached; a run's result keeps the figures in ``meta["capacity"]``.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache

from ..util.errors import InputError
from .estimate import estimate


def _round2(x: float) -> int:
    """A token count to 2 significant digits (at least 1): neighbouring runs share a cache entry."""
    if not math.isfinite(x) or x < 1:
        return 1
    e = max(int(math.floor(math.log10(x))) - 1, 0)
    return max(1, int(round(x / 10 ** e) * 10 ** e))


@lru_cache(maxsize=256)
def max_load(gpu: str, model: str, tp: int, pp: int, precision: str, engine_json: str, catalog: tuple,
             input_tokens: int, output_tokens: int, cached_tokens: int = 0, ep: int = 1, dp: int = 1) -> dict:
    """One replica's saturation figures from ``estimate --max-load`` (cached per deployment and shape)."""
    shape = {"ep": ep, "dp_attention": dp} if ep > 1 or dp > 1 else {}
    out = estimate(model=model, gpu=gpu, tp=tp, pp=pp, precision=precision, input_tokens=input_tokens,
                   output_tokens=output_tokens, cached_tokens=cached_tokens, max_load=True, engine=json.loads(engine_json),
                   catalog=list(catalog), **shape)
    return {"output_tokens_per_s": float(out["saturation_output_tokens_per_s"]),
            "requests_per_s": float(out["saturation_rps"]), "tpot_s": float(out["tpot_s"])}


def slo_batch(deployment: tuple, engine: dict, catalog: tuple, shape_in: int, shape_out: int, batch: int,
              slo_tpot_s: float | None, shape_cached: int = 0) -> tuple[int, dict]:
    """The largest batch cap (<= ``batch``) whose max-load mean TPOT meets the TPOT SLO, and that
    max-load run's figures: the load a replica carries *at the SLO*. Bisection over the cap (a
    bigger batch decodes more slowly per token); at most ~log2(batch) cached estimates.

    The TTFT SLO is not applied: at max load every request is queued from t = 0 by construction.
    When even a batch of 1 misses the TPOT SLO, batch 1 is returned (its TPOT says so).
    """
    base, shape = deployment[:5], deployment[5:]     # (gpu, model, tp, pp, precision) [+ (ep, dp)]

    def run(b: int) -> dict:
        return max_load(*base, json.dumps({**engine, "max_batch": b}, sort_keys=True), catalog,
                        shape_in, shape_out, shape_cached, *shape)
    hi_run = run(batch)
    if slo_tpot_s is None or not math.isfinite(slo_tpot_s) or hi_run["tpot_s"] <= slo_tpot_s or batch <= 1:
        return batch, hi_run
    lo, hi = 1, batch
    lo_run = run(1)
    if lo_run["tpot_s"] > slo_tpot_s:
        return 1, lo_run
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = run(mid)
        if m["tpot_s"] <= slo_tpot_s:
            lo, lo_run = mid, m
        else:
            hi = mid
    return lo, lo_run


def capacity_utilisation(res) -> dict[str, dict]:
    """Per pool: capacity utilisation and what it is made of (see the module docstring).

    Computed once and kept in ``res.meta["capacity"]``, so ``summary()``, ``save`` and the report
    carry it from then on. A ResultSet gets it for every replication (returned: the first one's).
    It is a study, not a property of the run: it runs one max-load estimate per deployment.
    """
    if hasattr(res, "results"):                       # a ResultSet: every replication alike
        return [capacity_utilisation(r) for r in res.results][0]
    if "capacity" not in res.meta:
        res.meta["capacity"] = _compute(res)
    return res.meta["capacity"]


def _served_by_role(done, name: str, role: str) -> float:
    """Output tokens a disaggregated pool produced: the first token of each request it prefilled,
    the rest of each request it decoded."""
    if role == "prefill":
        return float((done["pool"] == name).sum())
    return float((done.loc[done["decode_pool"] == name, "output_tokens"] - 1).sum())


def _compute(res) -> dict[str, dict]:
    sc = res.meta.get("scenario", {})
    warm = float(res.meta.get("warmup_s", 0.0))
    df = res.requests
    done = df[(df["outcome"] == "completed") & (df["arrival_s"] >= warm)]
    end = float(res.meta.get("duration_s", 0.0))
    if len(done):
        end = min(end, float(done["finish_s"].max()))
    span = max(end - warm, 1e-12)
    ts = res.timeseries
    out = {}
    for p in res.window_pools().to_dict("records"):     # busy share over the measured window
        name = p["pool"]
        mine = done[done["pool"] == name]
        served = float(mine["output_tokens"].sum()) / span
        row = {"served_output_tokens_per_s": served, "busy_share": float(p["busy_frac"]),
               "batch_occupancy": math.nan, "kv_occupancy": math.nan,
               "capacity_output_tokens_per_s": math.nan, "capacity_utilisation": math.nan,
               "max_load_tpot_s": math.nan, "max_load_batch": math.nan, "shape_prefill_tokens": math.nan,
               "shape_output_tokens": math.nan, "shape_context_tokens": math.nan}
        if len(ts):
            t = ts[(ts["pool"] == name) & (ts["time_s"] > warm)]
            if len(t):
                row["batch_occupancy"] = float((t["running"] / (p["max_batch"] * p["replicas"])).mean())
                row["kv_occupancy"] = float(t["kv_used_frac"].mean())
        if p.get("role") in ("prefill", "decode"):   # a mixed max-load estimate does not describe it: NaN
            row["served_output_tokens_per_s"] = _served_by_role(done, name, p["role"]) / span
            out[name] = row
            continue
        if not len(mine):
            row["capacity_utilisation"] = 0.0        # served nothing: 0 of whatever it could carry
        else:
            pool_cfg = sc.get("pools", {}).get(name, {})
            engine = {**sc.get("engine", {}), **pool_cfg.get("engine", {})}
            # the mean prompt with its mean cached prefix: the prefix is not recomputed, but a chunk's
            # attention runs over it (the bulk of an agent call's prefill on the measured step model)
            shape_in = _round2(float(mine["input_tokens"].mean()))
            cached = float((mine["input_tokens"] - mine["prefill_tokens"]).clip(lower=0).mean())
            shape_cached = min(_round2(cached), shape_in - 1) if cached >= 1 and shape_in > 1 else 0
            shape_out = _round2(float(mine["output_tokens"].mean()))
            # the batch the KV cache allows at the pool's mean context (cached part included)
            context = _round2(float((mine["input_tokens"] + mine["output_tokens"]).mean()))
            kv_batch = max(1, int(p["kv_capacity_tokens"]) // context)
            deployment = (str(p["gpu"]), str(p["model"]), int(p["tp"]), int(p["pp"]), str(p["precision"]),
                          int(p.get("ep", 1) or 1), int(p.get("dp_attention", 1) or 1))
            try:
                batch, ml = slo_batch(deployment, engine, tuple(sc.get("catalog", ())), shape_in, shape_out,
                                      min(int(p["max_batch"]), kv_batch), res.meta.get("slo_tpot_s"), shape_cached)
            except InputError:       # e.g. a catalog file no longer where the run found it
                out[name] = row
                continue
            carry = ml["output_tokens_per_s"] * int(p["replicas"]) * (1 - float(p["down_frac"]))
            row.update(capacity_output_tokens_per_s=carry, max_load_tpot_s=ml["tpot_s"],
                       max_load_batch=batch, shape_context_tokens=context,
                       capacity_utilisation=served / carry if carry > 0 else math.nan,
                       shape_prefill_tokens=shape_in - shape_cached, shape_input_tokens=shape_in,
                       shape_cached_tokens=shape_cached, shape_output_tokens=shape_out)
        out[name] = row
    return out
