"""What a run returns: flat tables as DataFrames, a summary, and atomic save/load.

``Result.requests`` has one row per request (outcome in the shared vocabulary, timestamps, token
counts by source, derived latencies, a ``warmup`` flag for the rows ``summary()`` leaves out);
``Result.timeseries`` one row per pool per sampling interval; ``Result.pools`` one row per pool
with energy and cost. ``summary()`` gives the headline figures under the same names as
``agentsim estimate``'s JSON. Missing values are NaN everywhere (ids with no value included:
see :data:`MISSING_IDS`), never -1.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..util.errors import InputError
from ..provider.limits import prices
from ..util.jsonout import dumps, jsonable
from ..serving.request import OUTCOMES, REJECTIONS, TRIGGERS
from ..workload.sessions import SESSION_OUTCOMES
from .models import model_summaries
from .metrics import Recorder
from .steady import warmup_check

PERCENTILES = (50, 90, 99)
#: the outcomes a gateway policy returns
#: per-pool summary keys that come from :meth:`Result.capacity_utilisation` once it has run
CAPACITY_KEYS = ("capacity_utilisation", "batch_occupancy", "kv_occupancy", "served_output_tokens_per_s",
                 "capacity_output_tokens_per_s", "max_load_tpot_s", "max_load_batch")


#: integer id columns where the engine writes -1 for "none": the tables hold NaN there instead
#: (requests: not part of a logical call, no session/user/tenant — stream traffic —, never placed
#: on a replica; sessions: a top-level session has no parent). One convention: missing is NaN.
MISSING_IDS = ("call_id", "session", "user", "tenant", "replica")


def _missing_as_nan(df: pd.DataFrame, columns) -> None:
    """Replace the engine's -1 sentinels by NaN in ``columns`` (which become float64)."""
    for c in columns:
        if c in df:
            a = df[c].to_numpy()
            df[c] = np.where(a < 0, np.nan, a.astype(np.float64))


def _latency_stats(name: str, x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    out = {f"{name}_s": float(x.mean()) if len(x) else math.nan}
    for p in PERCENTILES:
        out[f"{name}_p{p}_s"] = float(np.percentile(x, p)) if len(x) else math.nan
    return out


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Add the latency columns every analysis wants (NaN where a timestamp is missing)."""
    return _derive_inplace(df.copy())


def _derive_inplace(df: pd.DataFrame) -> pd.DataFrame:
    # TTFT split: front end (arrival -> ready: HTTP, tokenise), queue (ready -> admitted), prefill
    # (admitted -> first token: the prompt's steps, shared with the batch); the three add up to ttft_s
    df["frontend_s"] = df["ready_s"] - df["arrival_s"]
    df["queue_s"] = df["admitted_s"] - df["ready_s"]
    df["prefill_s"] = df["first_token_s"] - df["admitted_s"]
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["e2e_s"] = df["finish_s"] - df["arrival_s"]
    decode = (df["output_tokens"] - 1).where(df["output_tokens"] > 1)
    df["tpot_s"] = (df["finish_s"] - df["first_token_s"]) / decode
    df.loc[df["outcome"] != "completed", ["e2e_s", "tpot_s"]] = np.nan
    return df


@dataclass(frozen=True)
class RunRecords:
    """What a finished run hands the results layer: its recorders' columns, a cluster report and
    the names the coded columns refer to. Nothing of the Simulation itself."""

    recorder: Recorder                   # one row per request (columns() gathered once, in from_records)
    samples: dict                        # the sampler's columns (empty without sampling)
    sessions: dict                       # the session recorder's columns (empty without populations)
    pool_report: list                    # one row per pool (Cluster.report)
    pool_sites: dict                     # pool name -> site, in pool order
    profiles: dict                       # population name -> profile, in population order
    streams: list                        # stream names in stream order
    warmup_s: float
    meta: dict
    handoff: dict | None = None          # disaggregated runs: request id -> (decode replica, transfer s, bytes)


def _request_table(rec: RunRecords) -> pd.DataFrame:
    """The recorder's columns as the requests table, in request_id order, with its derived columns."""
    codes = {"outcome": list(OUTCOMES), "pool": list(rec.pool_sites), "trigger": list(TRIGGERS),
             "population": list(rec.profiles) or ["-"], "stream": rec.streams or ["-"]}
    # one gather per column in request_id order, coded columns straight to categoricals: the
    # table is built once (the recorder's arrays + one copy at the peak, not five)
    cols = rec.recorder.columns()
    order = np.argsort(cols["request_id"], kind="stable")
    data = {}
    for c in list(cols):
        a = cols.pop(c)
        if c == "stream" and not rec.streams:
            data[c] = pd.Categorical.from_codes(np.zeros(len(a), np.int8), categories=["-"])
        elif c in codes:
            data[c] = pd.Categorical.from_codes(a[order], categories=codes[c])
        else:
            data[c] = a[order]
    del order
    df = pd.DataFrame(data, copy=False)
    del data
    df["site"] = df["pool"].map(rec.pool_sites).astype("category")
    _missing_as_nan(df, MISSING_IDS)
    if rec.handoff is not None:
        _handoff_columns(df, rec.handoff, list(rec.pool_sites), rec.recorder.pool_of_replica)
    df["warmup"] = df["arrival_s"].to_numpy() < rec.warmup_s
    return _derive_inplace(df)


def _handoff_columns(df: pd.DataFrame, records: dict, pool_names: list[str], pool_of_replica: list[int]) -> None:
    """Disaggregated runs only: each request's decode replica and pool, and its KV transfer's
    seconds and bytes (NaN for requests that never reached a transfer)."""
    rid = df["request_id"].to_numpy()
    n = len(rid)
    dec, secs, nbytes = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    if records and n:
        keys = np.fromiter(records.keys(), np.int64, len(records))
        vals = np.array(list(records.values()), dtype=np.float64).reshape(-1, 3)
        pos = np.searchsorted(rid, keys)      # the table is in request_id order
        ok = (pos < n) & (rid[np.minimum(pos, n - 1)] == keys)
        dec[pos[ok]], secs[pos[ok]], nbytes[pos[ok]] = vals[ok, 0], vals[ok, 1], vals[ok, 2]
    codes = np.where(np.isnan(dec), -1, np.take(pool_of_replica, np.nan_to_num(dec).astype(np.int64)))
    df["decode_pool"] = pd.Categorical.from_codes(codes, categories=pool_names)
    df["decode_replica"] = dec
    df["kv_transfer_s"] = secs
    df["kv_transfer_bytes"] = nbytes


def _session_table(rec: RunRecords) -> pd.DataFrame:
    """The session recorder's columns as the sessions table (empty without populations)."""
    sessions = pd.DataFrame(rec.sessions)
    if len(sessions):
        sessions["outcome"] = pd.Categorical.from_codes(sessions["outcome"].to_numpy(),
                                                        categories=list(SESSION_OUTCOMES))
        sessions["population"] = pd.Categorical.from_codes(sessions["population"].to_numpy(),
                                                           categories=list(rec.profiles) or ["-"])
        sessions["kind"] = np.where(sessions["kind"].to_numpy() == 1, "subagent", "session")
        sessions["profile"] = sessions["population"].map(rec.profiles).astype("category")
        sessions["duration_s"] = sessions["end_s"] - sessions["start_s"]
        _missing_as_nan(sessions, ("parent_id",))
        sessions = sessions.sort_values("session_id", kind="stable").reset_index(drop=True)
    return sessions


HOURS_PER_MONTH = 730.0    # 365 x 24 / 12


def planner_units(summary: dict, timeseries: pd.DataFrame, warm_s: float, end_s: float, cost_span_s: float) -> dict:
    """The figures a capacity planner plans in, over the measured window ``[warm_s, end_s]``:
    the facility's mean MW there, output tokens per second per MW, and, for agent populations,
    energy (kWh) and cost per engaged user-hour, engaged users per MW, and the fleet's cost per
    active user-month (its hourly cost over a 730-hour month, shared by the users who ran sessions
    in the window: set it beside the plan's monthly price). Engaged hours are those of the sessions
    that started in the window; ``summary["cost_usd"]`` is the cost of ``cost_span_s`` seconds."""
    out: dict = {}
    if not len(timeseries):
        return out
    window = timeseries[timeseries["time_s"] > warm_s]
    by_t = window.groupby("time_s", observed=True)["facility_power_w"].sum()
    if not len(by_t):
        return out
    mw = float(by_t.mean()) / 1e6
    out["facility_mw_mean"] = mw
    out["output_tokens_per_s_per_mw"] = summary["output_tokens_per_s"] / mw if mw > 0 else math.nan
    hours = summary.get("engaged_user_hours", math.nan)
    if hours == hours and hours > 0:
        window_h = max(end_s - warm_s, 1e-12) / 3600
        out["energy_per_engaged_hour_kwh"] = mw * 1e3 * window_h / hours
        out["engaged_users_per_mw"] = hours / window_h / mw if mw > 0 else math.nan
        out["usd_per_engaged_hour"] = summary["cost_usd"] * (window_h * 3600 / max(cost_span_s, 1e-12)) / hours
    users = summary.get("users", 0)
    if users:
        out["usd_per_user_month"] = summary["cost_usd"] / (max(cost_span_s, 1e-12) / 3600) * HOURS_PER_MONTH / users
    return out


def window_pools(pools: pd.DataFrame, timeseries: pd.DataFrame, warm_s: float, duration_s: float) -> pd.DataFrame:
    """The pool table over the measured window ``(warm_s, duration_s]`` instead of the whole run, so a
    warm run's busy share, energy and cost leave its warm-up out: busy share and energy from the
    sampled series (each sample covers the time since the pool's previous one; a sample straddling
    ``warm_s`` counts for its part after it), cost prorated to the window. The run's own table when
    there is no warm-up or no series."""
    if warm_s <= 0 or not len(timeseries) or not len(pools):
        return pools
    out = pools.copy()
    span = max(duration_s - warm_s, 1e-12)
    names = timeseries["pool"].astype(str).to_numpy()
    t_all = timeseries["time_s"].to_numpy(dtype=float)
    busy_all = timeseries["busy_frac"].to_numpy(dtype=float)
    power_all = timeseries["power_w"].to_numpy(dtype=float)
    for i, row in zip(out.index, pools.to_dict("records")):
        sel = names == row["pool"]
        t = t_all[sel]
        before = np.concatenate(([0.0], t[:-1]))
        dt = np.clip(t - np.maximum(before, warm_s), 0.0, None)
        energy = float(np.sum(power_all[sel] * dt))     # not np.dot: BLAS sums differ with its threads
        out.at[i, "busy_frac"] = float(np.sum(busy_all[sel] * dt)) / span
        out.at[i, "energy_j"] = energy
        out.at[i, "facility_energy_j"] = energy * (row["facility_energy_j"] / row["energy_j"] if row["energy_j"] else 1.0)
        out.at[i, "cost_usd"] = row["cost_usd"] * span / max(duration_s, 1e-12)
    return out


def _root(sid: int, parent: dict, top: dict) -> int:
    """The top-level session a sub-agent session belongs to."""
    while not top.get(sid, True):
        sid = int(parent[sid])
    return sid


def median_context(done: pd.DataFrame) -> float:
    """The median completed request's input tokens: the context an agent call carries."""
    return float(np.median(done["input_tokens"].to_numpy())) if len(done) else math.nan


def pool_shape(r: dict, median_ctx: float) -> dict:
    """A pool's parallelism and KV capacity per replica, in tokens and in contexts of the median
    request (how many such calls one replica holds at once; issue 16)."""
    return {"parallelism": r.get("parallelism", f"tp{r['tp']}pp{r['pp']}"),
            "kv_capacity_tokens": int(r["kv_capacity_tokens"]),
            "kv_contexts": r["kv_capacity_tokens"] / median_ctx if median_ctx > 0 else math.nan}


@dataclass
class Result:
    requests: pd.DataFrame
    timeseries: pd.DataFrame
    pools: pd.DataFrame
    meta: dict = field(default_factory=dict)
    sessions: pd.DataFrame = field(default_factory=pd.DataFrame)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_records(cls, rec: RunRecords) -> "Result":
        """The tables of a finished run (the run layer gathers ``rec``; this layer never sees the run)."""
        df = _request_table(rec)
        ts = pd.DataFrame(rec.samples)
        if len(ts):
            ts["pool"] = pd.Categorical.from_codes(ts["pool"].astype(int).to_numpy(), categories=list(rec.pool_sites))
        return cls(requests=df, timeseries=ts, pools=pd.DataFrame(rec.pool_report), meta=rec.meta,
                   sessions=_session_table(rec))

    # -- summary -------------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Headline figures (after warm-up). Keys are documented in the README; each pool's
        capacity utilisation and occupancies appear once :meth:`capacity_utilisation` has run."""
        df = self.requests
        warm = self.meta.get("warmup_s", 0.0)
        df = df[df["arrival_s"] >= warm]
        done = df[df["outcome"] == "completed"]
        end = self.meta.get("duration_s", 0.0)
        if len(done):
            end = min(end, float(np.nanmax(df["finish_s"].to_numpy()))) if len(df) else end
        span = max(end - warm, 1e-12)
        out: dict = {"requests": int(len(df)), "completed": int(len(done))}
        out["outcomes"] = {o: int(n) for o, n in df["outcome"].value_counts().items() if n}
        for name in ("ttft", "tpot", "e2e"):
            out.update(_latency_stats(name, done[f"{name}_s"].to_numpy()))
        for part in ("frontend_s", "queue_s", "prefill_s"):   # the mean TTFT split
            out[part] = float(done[part].mean()) if len(done) else math.nan
        if "kv_transfer_s" in done:                           # disaggregated runs only
            out.update(_latency_stats("kv_transfer", done["kv_transfer_s"].to_numpy()))
        out_tokens = float(done["output_tokens"].sum())
        in_tokens = float(done["input_tokens"].sum())
        out["output_tokens_per_s"] = out_tokens / span
        out["input_tokens_per_s"] = in_tokens / span
        out["requests_per_s"] = len(done) / span
        ok = done[(done["ttft_s"] <= self.meta.get("slo_ttft_s", math.inf))
                  & ~(done["tpot_s"] > self.meta.get("slo_tpot_s", math.inf))]
        out["goodput_rps"] = len(ok) / span
        out["slo_attainment"] = len(ok) / len(df) if len(df) else math.nan
        out["prefix_hit_rate"] = float((done["cached_gpu_tokens"].sum() + done["cached_host_tokens"].sum())
                                       / in_tokens) if in_tokens else math.nan
        out["preemptions"] = int(df["preemptions"].sum())
        # energy, cost and busy share over the measured window (the whole run when there is no warm-up),
        # set against the tokens of the requests that finished in it
        pools = self.window_pools()
        energy = float(pools["facility_energy_j"].sum()) if len(pools) else 0.0
        cost = float(pools["cost_usd"].sum()) if len(pools) else 0.0
        ended = self.finished_in_window()
        all_out = float(ended["output_tokens"].sum())
        out["energy_j"] = energy
        out["joules_per_token"] = energy / all_out if all_out else math.nan
        out["cost_usd"] = cost
        all_tokens = all_out + float(ended["input_tokens"].sum())
        out["usd_per_m_tokens"] = cost / all_tokens * 1e6 if all_tokens else math.nan
        out["usd_per_m_output_tokens"] = cost / all_out * 1e6 if all_out else math.nan
        cap = self.meta.get("capacity", {})
        median_ctx = median_context(done)
        window_s = self.window_span_s()
        out["pools"] = {r["pool"]: {"busy_share": r["busy_frac"], "mean_power_w": r["energy_j"] / window_s,
                                    "gpus": int(r["gpus"]), "cost_usd": r["cost_usd"],
            "preemptions": int(r["preemptions"]), "support": r.get("support"), **pool_shape(r, median_ctx),
            **{k: cap[r["pool"]][k] for k in CAPACITY_KEYS if k in cap.get(r["pool"], {})}}
            for r in pools.to_dict("records")}
        if len(self.timeseries):
            ts = self.timeseries
            ts = ts[ts["time_s"] > warm]
            by_t = ts.groupby("time_s", observed=True)["facility_power_w"].sum()
            out["facility_power_mean_w"] = float(by_t.mean())
            out["facility_power_peak_w"] = float(by_t.max())
        if len(pools) and pools["model"].nunique() > 1:     # a model mix: per-model figures (results/models.py)
            out["models"] = model_summaries(self.requests, pools, warm, span, self.meta.get("slo_ttft_s", math.inf),
                                            self.meta.get("slo_tpot_s", math.inf))
        out.update(self.session_summary())
        out.update(planner_units(out, self.timeseries, warm, end, window_s))
        out.update(warmup_check(self.meta, self.timeseries))
        out["sim_wall_s"] = float(self.meta.get("sim_wall_s", math.nan))
        out["events"] = int(self.meta.get("events", -1))
        out["events_per_request"] = out["events"] / len(self.requests) if len(self.requests) else math.nan
        return out

    def window_pools(self) -> pd.DataFrame:
        """The pool table over the measured window (after warm-up): :func:`window_pools`."""
        return window_pools(self.pools, self.timeseries, float(self.meta.get("warmup_s", 0.0)),
                            float(self.meta.get("duration_s", 0.0)))

    def window_span_s(self) -> float:
        """The seconds :meth:`window_pools` covers: after the warm-up when there is one and a sampled
        series to read it from, else the whole run."""
        warm, duration = float(self.meta.get("warmup_s", 0.0)), float(self.meta.get("duration_s", 0.0))
        return max(duration - warm, 1e-12) if warm > 0 and len(self.timeseries) else max(duration, 1e-12)

    def finished_in_window(self) -> pd.DataFrame:
        """Completed requests that finished after the warm-up: what the window's energy and cost bought."""
        rq, warm = self.requests, float(self.meta.get("warmup_s", 0.0))
        done = rq["outcome"] == "completed"
        return rq[done & (rq["finish_s"] > warm)] if warm > 0 else rq[done]

    def capacity_utilisation(self) -> dict[str, dict]:
        """Per pool: capacity utilisation, batch and KV occupancy and busy share, as computed by
        :func:`agentsim.capacity_utilisation` (a study: one max-load estimate per deployment; the
        run's command and the report compute it). A run it was never computed for says so."""
        if "capacity" not in self.meta:
            raise ValueError("capacity utilisation was not computed for this run: "
                             "agentsim.capacity_utilisation(result) computes it (one max-load estimate per deployment)")
        return self.meta["capacity"]

    def __repr__(self) -> str:
        """A few lines: what was run and what came out (the tables are attributes)."""
        sc = self.meta.get("scenario", {})
        rq = self.requests
        done = int((rq["outcome"] == "completed").sum()) if len(rq) else 0
        pools = ", ".join(f"{r['pool']} ({r['replicas']}x {r['gpu']} {r['model']})"
                          for r in self.pools.to_dict("records")) if len(self.pools) else "-"
        return (f"<Result {sc.get('name', '?')!r} seed={self.meta.get('seed')} "
                f"duration={self.meta.get('duration_s', 0):g} s warmup={self.meta.get('warmup_s', 0):g} s>\n"
                f"  requests: {len(rq):,} rows ({done:,} completed); sessions: {len(self.sessions):,} rows; "
                f"timeseries: {len(self.timeseries):,} rows\n"
                f"  pools: {pools}\n"
                f"  .summary() for the headline figures; .requests / .sessions / .timeseries / .pools are DataFrames")

    def rejections(self, by="tenant", interval_s: float | None = None) -> pd.DataFrame:
        """Rejected requests counted by outcome (columns) per ``by`` (a column name or a list:
        tenant, population, user, …) and, with ``interval_s``, per arrival-time bin (index level
        ``time_s`` = bin start). ``by=None`` and no interval: one row of totals."""
        df = self.requests
        rej = df[df["outcome"].isin(REJECTIONS)]
        keys = [] if by is None else ([by] if isinstance(by, str) else list(by))
        if interval_s:
            rej = rej.assign(time_s=np.floor(rej["arrival_s"].to_numpy() / interval_s) * interval_s)
            keys.append("time_s")
        if not keys:
            return rej["outcome"].value_counts().reindex(list(REJECTIONS), fill_value=0).to_frame().T
        out = rej.groupby(keys + ["outcome"], observed=True, dropna=False).size().unstack("outcome", fill_value=0)
        return out.reindex(columns=list(REJECTIONS), fill_value=0).astype(int)

    def session_summary(self) -> dict:
        """Session-level figures: completion time, failure rate, retries per call (top-level sessions)."""
        ss = self.sessions
        if not len(ss):
            if not self.meta.get("populations"):
                return {}
            ss = pd.DataFrame({c: pd.Series(dtype=float) for c in ("kind", "start_s", "outcome", "duration_s",
                                                                    "calls", "failed_calls", "retries", "attempts")})
        top = ss[(ss["kind"] == "session") & (ss["start_s"] >= self.meta.get("warmup_s", 0.0))]
        ended = top[top["outcome"] != "in_flight"]
        out = {"sessions": int(len(top)), "sessions_ended": int(len(ended))}
        out["session_outcomes"] = {o: int(n) for o, n in top["outcome"].value_counts().items() if n}
        out["session_failure_rate"] = float((ended["outcome"] == "failed").mean()) if len(ended) else math.nan
        done = ended[ended["outcome"] == "completed"]["duration_s"].to_numpy()
        out["session_duration_s"] = float(done.mean()) if len(done) else math.nan
        out["session_duration_p50_s"] = float(np.percentile(done, 50)) if len(done) else math.nan
        out["session_duration_p90_s"] = float(np.percentile(done, 90)) if len(done) else math.nan
        calls = float(ss["calls"].sum() + ss["failed_calls"].sum())
        out["retries_per_call"] = float(ss["retries"].sum()) / calls if calls else math.nan
        out["attempts_per_call"] = float(ss["attempts"].sum()) / calls if calls else math.nan
        out["engaged_user_hours"] = float(top["engaged_s"].sum()) / 3600 if "engaged_s" in top else math.nan
        out["users"] = int(top["user"].nunique()) if "user" in top else 0
        return out

    def session_costs(self, price_list: str = "opus", ended_only: bool = True) -> pd.Series:
        """List-price cost (USD) of each top-level session with its sub-agents, by ``session_id``.

        Tokens are the sessions' own counts (every attempt's input, cached and output tokens);
        uncached input is priced as cache writes (agents cache their prompts), as the plans' usage
        meter does. ``ended_only`` leaves out sessions still running at the end (censored)."""
        ss = self.sessions
        if not len(ss):
            return pd.Series(dtype=float, name="usd")
        p = prices(price_list)
        usd = ((ss["input_tokens"] - ss["cached_tokens"]) * p.cache_write + ss["cached_tokens"] * p.cache_read
               + ss["output_tokens"] * p.output) / 1e6
        top = ss["kind"] == "session"
        root = ss["session_id"].where(top, ss["parent_id"])
        # sub-agents of sub-agents: follow parents up to a top-level session
        parent = dict(zip(ss["session_id"], ss["parent_id"]))
        kind = dict(zip(ss["session_id"], top))
        root = [r if kind.get(r, True) else _root(r, parent, kind) for r in root.astype("int64")]
        by_root = usd.groupby(np.asarray(root)).sum()
        keep = ss.loc[top & ((ss["outcome"] != "in_flight") if ended_only else True), "session_id"]
        return by_root.reindex(keep.to_numpy()).rename("usd")

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write Parquet tables, summary.json and manifest.json atomically into ``out_dir``.

        Files go to a temporary folder beside ``out_dir`` first and are moved in one by one with
        ``os.replace``; an interrupted save leaves no half-written file behind. An existing
        non-empty ``out_dir`` is refused (nothing is silently overwritten) unless ``overwrite``.
        """
        from .. import __version__  # local: agentsim.__version__ reads the package metadata (~10 ms) on first use
        out = Path(out_dir)
        if not overwrite and out.is_dir() and any(out.iterdir()):
            raise InputError(f"output directory {out}: not empty; pass overwrite=True to replace its result files")
        try:
            out.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".agentsim-", dir=out))
        except OSError as e:
            raise InputError(f"output directory {out}: not writable ({e.strerror})") from None
        try:
            self.requests.to_parquet(tmp / "requests.parquet", index=False)
            self.timeseries.to_parquet(tmp / "timeseries.parquet", index=False)
            self.pools.to_parquet(tmp / "pools.parquet", index=False)
            self.sessions.to_parquet(tmp / "sessions.parquet", index=False)
            (tmp / "summary.json").write_text(dumps(self.summary()))
            manifest = {"agentsim_version": __version__, **{k: v for k, v in self.meta.items()}}
            (tmp / "manifest.json").write_text(dumps(manifest))
            moved = []
            try:
                # manifest.json last: a directory with a manifest holds a complete result
                for f in sorted(tmp.iterdir(), key=lambda f: (f.name == "manifest.json", f.name)):
                    os.replace(f, out / f.name)
                    moved.append(out / f.name)
            except BaseException:
                for m in moved:
                    m.unlink(missing_ok=True)
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> "Result":
        d = Path(out_dir)
        try:
            meta = json.loads((d / "manifest.json").read_text())
            req = pd.read_parquet(d / "requests.parquet")
            ts = pd.read_parquet(d / "timeseries.parquet")
            pools = pd.read_parquet(d / "pools.parquet")
            sessions = pd.read_parquet(d / "sessions.parquet") if (d / "sessions.parquet").exists() else pd.DataFrame()
        except FileNotFoundError as e:
            raise InputError(f"result directory {d}: missing {Path(e.filename).name} (not an agentsim run?)") from None
        return cls(requests=req, timeseries=ts, pools=pools, meta=meta, sessions=sessions)


def _jsonable(o):
    """Kept for callers: see :func:`agentsim.util.jsonout.jsonable`."""
    return jsonable(o)
