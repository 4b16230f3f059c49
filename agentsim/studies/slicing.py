"""Fleet scale by slicing (DESIGN §9): run the 1/N slices of a scenario and merge them.

A scenario with ``slice = {count = N, index = i}`` runs one slice: tenants hashed to slices,
every pool, stream and fleet population at its 1/N share (:func:`agentsim.run.build.sliced`). This
module runs all N slices — or a sample of K of them — on an executor and merges them into one
summary of the whole fleet, under the same keys as :meth:`agentsim.results.result.Result.summary`:

* **sums** (scaled by N/K when only K slices ran): ``requests``, ``completed``, ``outcomes``,
  ``output_tokens_per_s``, ``input_tokens_per_s``, ``requests_per_s``, ``goodput_rps``,
  ``preemptions``, ``energy_j``, ``cost_usd``, per pool ``gpus``, ``cost_usd``,
  ``preemptions``, ``mean_power_w``, ``facility_power_mean_w`` and ``facility_power_peak_w``
  (the peak of the summed per-interval series, not the sum of peaks; with a sample of slices its
  noise is scaled up too, so the peak is biased high: ``facility_power_peak_method``), ``sessions``,
  ``sessions_ended``, ``session_outcomes``, ``events``. A scaled count is a float estimate.
* **ratios of sums**: ``slo_attainment``, ``prefix_hit_rate``, ``joules_per_token``,
  ``usd_per_m_tokens``, ``usd_per_m_output_tokens``, ``session_failure_rate``,
  ``retries_per_call``, ``attempts_per_call``, ``events_per_request``; per pool
  ``busy_share`` weighted by replicas.
* **means** (``ttft_s``, ``tpot_s``, ``e2e_s``, ``queue_s``, ``session_duration_s``): exact,
  request-weighted (each slice's sum and count of finite values).
* **percentiles** (``*_p50_s``, ``*_p90_s``, ``*_p99_s``): by **pooling** the latency of every
  completed request of every slice (exact: the percentile of the union) while every slice has
  at most ``max_rows`` completed requests; beyond that a slice ships only its percentiles and
  the merge falls back to their **request-weighted average** (an approximation: the average of
  percentiles is not the percentile of the union). ``percentile_method`` says which was used.

Every slice runs with its own seed, :func:`slice_seed` (``seed`` itself when N = 1): with one
seed for all, every slice's Poisson streams would draw the same arrival times. Replication r
uses base seed ``seed + r``; a sample of K slices is drawn per replication from
``numpy.random.default_rng(seed + r)``, so the confidence interval over replications includes
the slice-to-slice variation.
"""
from __future__ import annotations

import math

import numpy as np

import pandas as pd

from ..results.result import PERCENTILES, Result, median_context, planner_units, pool_shape
from ..results.steady import warmup_check
from ..util.errors import InputError

#: a slice ships its latency arrays (for exact pooled percentiles) up to this many completed requests
MAX_POOLED_ROWS = 2_000_000
LATENCIES = ("ttft", "tpot", "e2e")
SPLIT = ("frontend", "queue", "prefill")   # the TTFT split: summed per slice, merged as means


def slice_seed(seed: int, count: int, index: int) -> int:
    """The seed of slice ``index`` of ``count`` for base seed ``seed`` (``seed`` when count = 1)."""
    if count == 1:
        return seed
    return int(np.random.SeedSequence([seed, count, index]).generate_state(1, dtype=np.uint32)[0])


def slice_indices(count: int, sample: int | None, seed: int) -> list[int]:
    """Which slices run: all of them, or ``sample`` of them drawn with ``default_rng(seed)``."""
    if sample is None or sample >= count:
        return list(range(count))
    if sample < 1:
        raise InputError(f"slice sample must be >= 1, got {sample}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, size=sample, replace=False))


def rounding_notes(scenario, count: int) -> list[str]:
    """Where N slices do not add up to the fleet: a pool (or concurrency, fleet size) not divisible by N
    is rounded per slice (at least 1), so the merged fleet is N x that share, not the original."""
    notes = []
    for k, p in scenario.pools.items():   # a slice holds whole replicas, however many GPUs each spans
        if p.replicas % count:
            share = max(1, round(p.replicas / count))
            gpus = p.tp * p.pp * p.dp_attention
            notes.append(f"pools.{k}.replicas = {p.replicas} is not a multiple of {count} slices: each slice runs "
                         f"{share} whole replica(s) of {gpus} GPUs, so the merged fleet has {count * share} "
                         f"replicas ({count * share * gpus} GPUs, not {p.replicas * gpus})")
    parts = [(f"streams.{k}.concurrency", s.concurrency) for k, s in scenario.streams.items()]
    parts += [(f"populations.{k}.size", p.size) for k, p in scenario.populations.items() if p.kind == "fleet"]
    for path, x in parts:
        if x and x % count:
            notes.append(f"{path} = {x} is not a multiple of {count} slices: the merged fleet has "
                         f"{count * max(1, round(x / count))}")
    return notes


# -- one slice's mergeable record -----------------------------------------------------------------
def slice_record(res: Result, max_rows: int = MAX_POOLED_ROWS) -> tuple[dict, dict[str, np.ndarray]]:
    """What the merge needs of one slice: JSON-able sums, and latency arrays (or none if too big).

    Mirrors :meth:`Result.summary` term by term, so merging one slice gives its summary back.
    """
    df = res.requests
    warm = res.meta.get("warmup_s", 0.0)
    df = df[df["arrival_s"] >= warm]
    done = df[df["outcome"] == "completed"]
    end = res.meta.get("duration_s", 0.0)
    if len(done):
        end = min(end, float(np.nanmax(df["finish_s"].to_numpy())))
    span = max(end - warm, 1e-12)
    ok = done[(done["ttft_s"] <= res.meta.get("slo_ttft_s", math.inf))
              & ~(done["tpot_s"] > res.meta.get("slo_tpot_s", math.inf))]
    everything = res.finished_in_window()   # energy and cost are the measured window's
    pools = res.window_pools()
    in_tokens = float(done["input_tokens"].sum())
    rec: dict = {
        "requests": int(len(df)), "completed": int(len(done)),
        "outcomes": {str(o): int(n) for o, n in df["outcome"].value_counts().items() if n},
        "output_tokens_per_s": float(done["output_tokens"].sum()) / span, "input_tokens_per_s": in_tokens / span,
        "requests_per_s": len(done) / span, "goodput_rps": len(ok) / span, "ok": int(len(ok)),
        "in_tokens": in_tokens,
        "cached_tokens": float(done["cached_gpu_tokens"].sum() + done["cached_host_tokens"].sum()),
        "preemptions": int(df["preemptions"].sum()),
        "energy_j": float(pools["facility_energy_j"].sum()) if len(pools) else 0.0,
        "cost_usd": float(pools["cost_usd"].sum()) if len(pools) else 0.0,
        "all_out_tokens": float(everything["output_tokens"].sum()),
        "all_in_tokens": float(everything["input_tokens"].sum()),
        "all_requests": int(len(res.requests)),
        "events": int(res.meta.get("events", -1)), "sim_wall_s": float(res.meta.get("sim_wall_s", math.nan)),
        "duration_s": float(res.meta.get("duration_s", 1.0)), "window_s": res.window_span_s(), "warm_s": float(warm),
        "end_s": float(end),
        "warmup": warmup_check(res.meta, res.timeseries),
    }
    rec["pools"] = {r["pool"]: {"replicas": int(r["replicas"]), "busy": float(r["busy_frac"]) * int(r["replicas"]),
                                "gpus": int(r["gpus"]), "cost_usd": float(r["cost_usd"]),
                                "preemptions": int(r["preemptions"]), "energy_j": float(r["energy_j"]),
                                "support": r.get("support"), "shape": pool_shape(r, median_context(done))}
                    for r in pools.to_dict("records")}
    if len(res.timeseries):
        ts = res.timeseries
        by_t = ts[ts["time_s"] > warm].groupby("time_s", observed=True)["facility_power_w"].sum()
        rec["power"] = {"t": [float(t) for t in by_t.index], "w": [float(w) for w in by_t.to_numpy()]}
    arrays: dict[str, np.ndarray] = {}
    pooled = len(done) <= max_rows
    rec["lat"] = {}
    for name in LATENCIES + SPLIT:
        x = done[f"{name}_s"].to_numpy(dtype=float)
        x = x[np.isfinite(x)] if name not in SPLIT else x[~np.isnan(x)]
        rec["lat"][name] = {"n": int(len(x)), "sum": float(x.sum())}
        if name not in SPLIT:
            rec["lat"][name] |= {f"p{p}": float(np.percentile(x, p)) if len(x) else math.nan for p in PERCENTILES}
        if pooled and name not in SPLIT:
            arrays[name] = x
    rec["sessions"] = _session_record(res, arrays if pooled else None)
    rec["pooled"] = pooled
    return rec, arrays


def _session_record(res: Result, arrays: dict | None) -> dict | None:
    ss = res.sessions
    if not len(ss):
        if not res.meta.get("populations"):
            return None
        return {"sessions": 0, "sessions_ended": 0, "session_outcomes": {}, "failed": 0, "done_n": 0,
                "done_sum": 0.0, "p50": math.nan, "p90": math.nan, "calls": 0.0, "retries": 0.0, "attempts": 0.0,
                "engaged_h": 0.0, "users": 0}
    top = ss[(ss["kind"] == "session") & (ss["start_s"] >= res.meta.get("warmup_s", 0.0))]
    ended = top[top["outcome"] != "in_flight"]
    done = ended[ended["outcome"] == "completed"]["duration_s"].to_numpy(dtype=float)
    if arrays is not None:
        arrays["session_duration"] = done
    return {"sessions": int(len(top)), "sessions_ended": int(len(ended)),
            "session_outcomes": {str(o): int(n) for o, n in top["outcome"].value_counts().items() if n},
            "failed": int((ended["outcome"] == "failed").sum()), "done_n": int(len(done)),
            "done_sum": float(done.sum()),
            "p50": float(np.percentile(done, 50)) if len(done) else math.nan,
            "p90": float(np.percentile(done, 90)) if len(done) else math.nan,
            "calls": float(ss["calls"].sum() + ss["failed_calls"].sum()), "retries": float(ss["retries"].sum()),
            "attempts": float(ss["attempts"].sum()), "engaged_h": float(top["engaged_s"].sum()) / 3600,
            "users": int(top["user"].nunique())}


# -- merging ----------------------------------------------------------------------------------------
def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _weighted(values: list[float], weights: list[float]) -> float:
    w = np.asarray(weights, float)
    v = np.asarray(values, float)
    keep = (w > 0) & ~np.isnan(v)
    return float((v[keep] * w[keep]).sum() / w[keep].sum()) if keep.any() else math.nan


def _shape(per_slice: list[dict]) -> dict:
    """A pool's shape over slices: the same parallelism and KV in each, KV contexts averaged."""
    if not per_slice or not per_slice[0]:
        return {}
    return {**per_slice[0], "kv_contexts": float(np.mean([s["kv_contexts"] for s in per_slice]))}


def merge(records: list[tuple[dict, dict]], count: int | None = None) -> dict:
    """One fleet summary from slice records (``(record, arrays)`` pairs of :func:`slice_record`).

    ``count`` is the number of slices the fleet was cut into (default: as many as given); with
    fewer records than that, additive figures are scaled by ``count / len(records)``.
    """
    if not records:
        raise ValueError("merge needs at least one slice record")
    recs = [r for r, _ in records]
    k = len(recs)
    n = k if count is None else count
    f = n / k
    scale = (lambda x: x) if f == 1 else (lambda x: x * f)  # noqa: E731
    tot = lambda key: sum(r[key] for r in recs)  # noqa: E731
    pooled = all(r["pooled"] for r in recs)
    out: dict = {"requests": scale(tot("requests")), "completed": scale(tot("completed"))}
    out["outcomes"] = _summed_counts([r["outcomes"] for r in recs], scale)
    out.update(_merge_latencies(records, pooled))
    for part in SPLIT:   # the TTFT split's means (older records lack frontend/prefill)
        q = [r["lat"][part] for r in recs if part in r["lat"]]
        out[f"{part}_s"] = _div(sum(x["sum"] for x in q), sum(x["n"] for x in q))
    for key in ("output_tokens_per_s", "input_tokens_per_s", "requests_per_s", "goodput_rps"):
        out[key] = scale(tot(key))
    out["slo_attainment"] = _div(tot("ok"), tot("requests"))
    out["prefix_hit_rate"] = _div(tot("cached_tokens"), tot("in_tokens"))
    out["preemptions"] = scale(tot("preemptions"))
    energy, cost, all_out = tot("energy_j"), tot("cost_usd"), tot("all_out_tokens")
    out["energy_j"] = scale(energy)
    out["joules_per_token"] = _div(energy, all_out)
    out["cost_usd"] = scale(cost)
    out["usd_per_m_tokens"] = _div(cost, all_out + tot("all_in_tokens")) * 1e6
    out["usd_per_m_output_tokens"] = _div(cost, all_out) * 1e6
    out["pools"] = _merge_pools(recs, scale)
    out.update(_merge_power(recs, scale, f))
    sess = [r["sessions"] for r in recs if r.get("sessions") is not None]
    if sess:
        out.update(_merge_sessions(sess, [a.get("session_duration") for _, a in records], pooled, scale))
    out.update(_merge_planner(recs, out, scale))
    out.update(_merge_warmup(recs))
    out["sim_wall_s"] = tot("sim_wall_s")
    out["events"] = scale(tot("events"))
    out["events_per_request"] = _div(tot("events"), tot("all_requests"))
    out["slices"] = n
    out["slices_run"] = k
    out["percentile_method"] = "pooled" if pooled else "averaged"
    return out


def _merge_planner(recs: list[dict], out: dict, scale) -> dict:
    """Planner's units of the merged fleet: :func:`planner_units` over the slices' summed power."""
    series: dict[float, float] = {}
    for r in recs:
        for t, w in zip(r.get("power", {}).get("t", []), r.get("power", {}).get("w", [])):
            series[t] = series.get(t, 0.0) + w
    ts = pd.DataFrame({"time_s": list(series), "facility_power_w": [scale(w) for w in series.values()]})
    end = max(r.get("end_s", r["duration_s"]) for r in recs)
    return planner_units(out, ts, recs[0].get("warm_s", 0.0), end, recs[0].get("window_s", recs[0]["duration_s"]))


def _merge_warmup(recs: list[dict]) -> dict:
    """The steady-state check over slices: the longest warm-up any slice asks for."""
    checks = [r["warmup"] for r in recs if "warmup" in r]
    if not checks:
        return {}
    need = max(c["warmup_needed_s"] for c in checks)
    return {"warmup_s": checks[0]["warmup_s"], "warmup_needed_s": need, "warmup_rule": checks[0]["warmup_rule"],
            "steady_state": checks[0]["warmup_s"] >= need}


def _merge_latencies(records: list[tuple[dict, dict]], pooled: bool) -> dict:
    """Mean and percentiles of each latency: from the pooled arrays when every slice kept them,
    else the slices' percentiles weighted by their counts."""
    recs = [r for r, _ in records]
    out: dict = {}
    for name in LATENCIES:
        lat = [r["lat"][name] for r in recs]
        nn = sum(x["n"] for x in lat)
        if pooled:
            x = np.concatenate([a[name] for _, a in records])
            out[f"{name}_s"] = float(x.mean()) if len(x) else math.nan
            for p in PERCENTILES:
                out[f"{name}_p{p}_s"] = float(np.percentile(x, p)) if len(x) else math.nan
        else:
            out[f"{name}_s"] = _div(sum(x["sum"] for x in lat), nn)
            for p in PERCENTILES:
                out[f"{name}_p{p}_s"] = _weighted([x[f"p{p}"] for x in lat], [x["n"] for x in lat])
    return out


def _merge_pools(recs: list[dict], scale) -> dict:
    """Per pool: busy share over all its replicas, and its power, GPUs, cost and preemptions scaled."""
    pools: dict[str, dict] = {}
    support: dict[str, str | None] = {}      # a pool's step-model label is the same in every slice
    shapes: dict[str, list[dict]] = {}       # and its parallelism and KV; KV contexts: the slices' mean
    for r in recs:
        for name, p in r["pools"].items():
            acc = pools.setdefault(name, {"replicas": 0, "busy": 0.0, "gpus": 0, "cost_usd": 0.0,
                                          "preemptions": 0, "energy_j": 0.0})
            for key in acc:
                acc[key] += p[key]
            support[name] = p.get("support")
            shapes.setdefault(name, []).append(p.get("shape", {}))
    duration = max(recs[0].get("window_s", recs[0]["duration_s"]), 1e-12)
    return {name: {"busy_share": _div(p["busy"], p["replicas"]),
                   "mean_power_w": scale(p["energy_j"]) / duration, "gpus": scale(p["gpus"]),
                   "cost_usd": scale(p["cost_usd"]), "preemptions": scale(p["preemptions"]),
                   "support": support[name], **_shape(shapes[name])}
            for name, p in pools.items()}


def _merge_power(recs: list[dict], scale, f: float) -> dict:
    """The fleet's facility power: the slices' series summed per sample time, scaled (none
    when no slice sampled power)."""
    if not any("power" in r for r in recs):
        return {}
    out: dict = {}
    series: dict[float, float] = {}
    for r in recs:
        for t, w in zip(r.get("power", {}).get("t", []), r.get("power", {}).get("w", [])):
            series[t] = series.get(t, 0.0) + w
    w = np.asarray([series[t] for t in sorted(series)])
    out["facility_power_mean_w"] = scale(float(w.mean()))
    out["facility_power_peak_w"] = scale(float(w.max()))
    # K of N slices: the scaled sum carries sqrt(N/K) times the fleet's relative noise, so its
    # maximum overstates the fleet's peak (the mean is unbiased); say so rather than hide it
    out["facility_power_peak_method"] = "summed" if f == 1 else "scaled sample (biased high)"
    return out


def _summed_counts(counts: list[dict], scale) -> dict:
    """Counts by name (outcomes) summed over the slices and scaled, the most frequent first."""
    total: dict[str, float] = {}
    for c in counts:
        for name, k in c.items():
            total[name] = total.get(name, 0) + k
    return {name: scale(k) for name, k in sorted(total.items(), key=lambda kv: -kv[1])}


def _merge_sessions(sess: list[dict], arrays: list, pooled: bool, scale) -> dict:
    tot = lambda key: sum(s[key] for s in sess)  # noqa: E731
    out: dict = {"sessions": scale(tot("sessions")), "sessions_ended": scale(tot("sessions_ended"))}
    out["session_outcomes"] = _summed_counts([s["session_outcomes"] for s in sess], scale)
    out["session_failure_rate"] = _div(tot("failed"), tot("sessions_ended"))
    out["session_duration_s"] = _div(tot("done_sum"), tot("done_n"))
    if pooled and all(a is not None for a in arrays):
        x = np.concatenate(arrays) if arrays else np.empty(0)
        out["session_duration_s"] = float(x.mean()) if len(x) else math.nan
        out["session_duration_p50_s"] = float(np.percentile(x, 50)) if len(x) else math.nan
        out["session_duration_p90_s"] = float(np.percentile(x, 90)) if len(x) else math.nan
    else:
        w = [s["done_n"] for s in sess]
        out["session_duration_p50_s"] = _weighted([s["p50"] for s in sess], w)
        out["session_duration_p90_s"] = _weighted([s["p90"] for s in sess], w)
    out["retries_per_call"] = _div(tot("retries"), tot("calls"))
    out["attempts_per_call"] = _div(tot("attempts"), tot("calls"))
    out["engaged_user_hours"] = scale(sum(s.get("engaged_h", 0.0) for s in sess))
    out["users"] = scale(sum(s.get("users", 0) for s in sess))
    return out
