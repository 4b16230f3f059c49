"""site_outage: one of two sites is lost mid-day — what do agents see, and from what load is it not over?

The default scenario's fleet is split over two sites (``memphis`` and ``atlanta``, each half of
every pool) behind one router. On a weekday, ``atlanta`` goes down at 17:00 UTC for two hours
(the coding-agent peak): in-flight requests there fail back to their clients
(``replica_failed``), the surviving site takes all traffic, the gateway sheds (``529``) beyond
``SHED_OUTSTANDING`` outstanding requests per up replica, and clients retry by their policies
(Claude Code: 10 retries; the API SDK: 2; chat users regenerate once) with the SDKs' 600-s
timeout. Each run starts a whole day (``warmup_h``) before the measured
afternoon, which is left out. The same day without the outage, with the same seeds, is the baseline; every figure is
a paired difference. The load is swept (``LOADS`` × the default users).

Answers: the sessions lost (failed, or abandoned after errors), users hit and engaged
user-hours lost; goodput as a share of the offered load during and after the outage; and, over
the load sweep, the load at which the chance that the fleet does not recover (issue 19's
persistent collapse: goodput below 50 % of the offered load for 30+ min after the site returns)
passes 50 %, with its interval — and, for the runs that do not recover, what keeps them down
(the queue, retries or cache loss, each measured against the same seed's baseline).

The default scenario's shedding bound (192 outstanding per replica) is never reached here and
its clients wait out the queue: with it, half the fleet lost at the peak failed no session
(measured cold, before issue 19's change).

Measured at default size, warm (4 seeds, each run after a whole day of warm-up; ``agentsim
experiment site_outage --workers 2``): the outage loses 20 % (17–23 %), 27 % (24–29 %) and 28 %
(25–31 %) more of the sessions starting 16:00–19:00 than the same day without it, at 5,540 / 6,925
/ 8,310 users; goodput while the site is down is 0.50, 0.35 and 0.29 of the offered load; every
run recovers (the tipping load lies beyond 8,310 users). Measured cold (an hour of warm-up, before
issue 19's change), the same outage lost 1.7 %, 7.9 % and 16 %: an empty morning hid most of it.

Scale: ``scale`` multiplies the fleet and the users (default: the default scenario's 240 GPUs
and 5,540 users); ``FULL_SCALE`` = 4.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...util.errors import InputError
from ...util.stats import NONNEGATIVE, holds_for, mean_band, tipping_point
from . import (Report, tidy, check_args, default_scenario, main_for, md_table, paired, proportion, ratio, run_arms,
               save_figure, scale_system, seeds, simulate_one, stat)
from .window import WARMUP_H, warm_window, warmup_keywords, warmup_option, warmup_sentence
from .sensitivity import sensitivity as step_sensitivity, sensitivity_sentence, SENSITIVITY_OPTION

QUESTION = ("When a site is lost mid-day, how many agent sessions fail, how long does recovery take, and from what "
            "load does the fleet not recover?")
FULL_SCALE = 4.0
REPLICATIONS = 4            # 0/4 and 4/4 are the fewest runs whose Wilson intervals exclude 50 %
START_HOUR = 15
#: the origin of every time below: a Tuesday afternoon, after ``warmup_h`` (a whole day) of warm-up
#: that is simulated and discarded; the hour from the origin to the outage is its lead-in
ORIGIN = f"2026-06-02T{START_HOUR:02d}:00:00Z"
DURATION_S = 6 * 3600.0                  # measured from ORIGIN
OUTAGE = (2 * 3600.0, 4 * 3600.0)        # 17:00-19:00 UTC, the coding-agent peak
#: the load sweep: users as multiples of the default populations
LOADS = (1.0, 1.25, 1.5)   # 0.75x lost nothing to the outage (0 of 4 seeds) and cost a quarter of the runs
BIN_S = 900.0
AROUND = (OUTAGE[0] - 3600.0, OUTAGE[1])  # sessions starting in the hour before and during the outage
RECOVERED = 0.9
#: not recovering (issue 19's persistent collapse): goodput below this share of the offered load ...
COLLAPSE_SHARE = 0.5
#: ... in every bin of some stretch this long after the site returns
COLLAPSE_HOLD_S = 1800.0
#: the gateway sheds (529) beyond this many outstanding requests per up replica: about twice what a
#: replica runs at once at the peak (the default day's busiest 15 min: 6-18 running per replica, KV-bound
#: by the coders' long contexts) — the default scenario's 192 is never reached, so nothing is shed
SHED_OUTSTANDING = 16
#: every client's per-attempt timeout (the SDKs' and Claude Code's default)
TIMEOUT_S = 600.0
OUTAGE_UTC = f"{START_HOUR + OUTAGE[0] / 3600:.0f}:00–{START_HOUR + OUTAGE[1] / 3600:.0f}:00"


def scenario(scale: float, outage: bool, outage_s: tuple[float, float] = OUTAGE, load: float = 1.0,
             duration_s: float = DURATION_S, warmup_h: float = WARMUP_H) -> dict:
    """The two-site fleet, ``duration_s`` from ORIGIN after ``warmup_h`` hours of warm-up; ``outage_s``
    (from ORIGIN) the outage when ``outage``."""
    sc = default_scenario()
    sc.update(name="site_outage" if outage else "site_outage_baseline", sample_s=BIN_S,
              **warm_window(ORIGIN, duration_s, warmup_h))
    off = sc["warmup_s"]
    sc["policies"] = [dict(p, max_outstanding_per_replica=SHED_OUTSTANDING) if p["name"] == "overload_shedding" else p
                      for p in sc["policies"]]
    memphis = sc["sites"]["memphis"]
    sc["sites"] = {"memphis": memphis, "atlanta": dict(memphis)}
    pools = {}
    for name, p in sc["pools"].items():
        half = p["replicas"] / 2
        pools[f"{name}_mem"] = dict(p, replicas=math.ceil(half), site="memphis")
        pools[f"{name}_atl"] = dict(p, replicas=max(1, math.floor(half)), site="atlanta")
    sc["pools"] = pools
    sc = scale_system(sc, scale)
    for p in sc["populations"].values():          # the load factor multiplies the users only
        p["size"] = max(1, round(p["size"] * load))
        if p.get("kind") == "fleet":
            p["task_rate"] *= load
            p["workers"] = min(p["workers"], p["size"])
        p["timeout_s"] = TIMEOUT_S
    sc["outages"] = [{"target": "site:atlanta", "start_s": off + outage_s[0], "end_s": off + outage_s[1]}] \
        if outage else []
    return sc


def from_origin(res, off: float) -> tuple:
    """The run's requests, sessions and time series with times measured from ORIGIN (the run began
    ``off`` seconds before it): the warm-up's rows fall before 0 and out of every bin below."""
    df = res.requests.assign(arrival_s=res.requests["arrival_s"] - off, finish_s=res.requests["finish_s"] - off)
    ss = res.sessions
    if len(ss):
        ss = ss.assign(start_s=ss["start_s"] - off, end_s=ss["end_s"] - off)
    ts = res.timeseries
    if len(ts):
        ts = ts.assign(time_s=ts["time_s"] - off)
    return df, ss, ts


def measure(sc: dict, seed: int) -> dict:
    res = simulate_one(sc, seed)
    df, ss, ts = from_origin(res, sc["warmup_s"])
    duration_s = sc["duration_s"] - sc["warmup_s"]
    edges = np.arange(0.0, duration_s + BIN_S / 2, BIN_S)
    done = df[df["outcome"] == "completed"]
    ok = done[(done["ttft_s"] <= sc["slo_ttft_s"]) & ~(done["tpot_s"] > sc["slo_tpot_s"])]
    hist = lambda x: np.histogram(x, edges)[0].astype(float)  # noqa: E731
    bad = df[~df["outcome"].isin(["completed", "in_flight", "429_window", "429_spend_cap"])]
    ttft_p90 = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        x = done.loc[(done["arrival_s"] >= lo) & (done["arrival_s"] < hi), "ttft_s"]
        ttft_p90.append(float(np.percentile(x, 90)) if len(x) else math.nan)
    top = ss[ss["kind"] == "session"]
    around = top[(top["start_s"] >= AROUND[0]) & (top["start_s"] < AROUND[1])]
    ended = around[around["outcome"] != "in_flight"]
    by_pop = {}
    for prof, g in ended.groupby("profile", observed=True):
        gdone = g.loc[g["outcome"] == "completed", "duration_s"]
        by_pop[str(prof)] = {"failure_rate": float((g["outcome"] == "failed").mean()) if len(g) else math.nan,
                             "lost_rate": float(lost_sessions(g).mean()) if len(g) else math.nan,
                             "error_rate": float((g["failed_calls"] > 0).mean()) if len(g) else math.nan,
                             "abandon_rate": float((g["outcome"] == "abandoned").mean()) if len(g) else math.nan,
                             "ended": int(len(g)),
                             "duration_mean_s": float(gdone.mean()) if len(gdone) else math.nan,
                             "duration_p90_s": float(np.percentile(gdone, 90)) if len(gdone) else math.nan}
    cdone = ended.loc[ended["outcome"] == "completed", "duration_s"]
    lost = lost_sessions(ended)
    post = _post_outage(ts, df, duration_s)
    window = df[(df["finish_s"] >= OUTAGE[0]) & (df["finish_s"] < OUTAGE[1])]   # attempts that ended in it
    outcomes = {str(k): int(v) for k, v in window["outcome"].value_counts().items() if v}
    calls = window[window["attempt"] == 0]          # a call's first attempt
    return {
        "series": {"goodput_rps": hist(ok["finish_s"]) / BIN_S, "failed_rps": hist(bad["arrival_s"]) / BIN_S,
                   "attempts_rps": hist(df["arrival_s"]) / BIN_S, "ttft_p90_s": np.array(ttft_p90),
                   "calls_rps": hist(df.loc[df["attempt"] == 0, "arrival_s"]) / BIN_S,
                   "session_failures": hist(top.loc[top["outcome"] == "failed", "end_s"]),
                   "abandoned": hist(df.loc[df["outcome"] == "cancelled", "finish_s"])},
        "failure_rate": float((ended["outcome"] == "failed").mean()) if len(ended) else math.nan,
        "abandon_rate": float((ended["outcome"] == "abandoned").mean()) if len(ended) else math.nan,
        "lost_rate": float(lost.mean()) if len(ended) else math.nan,
        "error_rate": float((ended["failed_calls"] > 0).mean()) if len(ended) else math.nan,
        "sessions_lost": int(lost.sum()),
        "engaged_hours_lost": float(ended.loc[lost, "engaged_s"].sum()) / 3600,
        "engaged_hours": float(ended["engaged_s"].sum()) / 3600,
        "users_lost": int(ended.loc[lost, ["population", "user"]].drop_duplicates().shape[0]),
        "sessions_ended": int(len(ended)),
        "duration_mean_s": float(cdone.mean()) if len(cdone) else math.nan,
        "duration_p50_s": float(np.percentile(cdone, 50)) if len(cdone) else math.nan,
        "duration_p90_s": float(np.percentile(cdone, 90)) if len(cdone) else math.nan,
        "by_profile": by_pop,
        "outage_outcomes": outcomes,
        "outage_failed_share": float(window["outcome"].isin(["replica_failed", "529_overload", "timed_out"]).mean())
        if len(window) else math.nan,
        "outage_attempts_per_call": len(window) / len(calls) if len(calls) else math.nan,
        "goodput_outage_rps": float(((ok["finish_s"] >= OUTAGE[0]) & (ok["finish_s"] < OUTAGE[1])).sum())
        / (OUTAGE[1] - OUTAGE[0]),
        "post": post,
    }


def lost_sessions(ended: pd.DataFrame) -> pd.Series:
    """Sessions the outage costs their users: ended ``failed`` or ``abandoned`` (a chat user who
    regenerates once, still gets an error and leaves is ``abandoned``: the profile's ``on_give_up =
    end_session``)."""
    return ended["outcome"].isin(["failed", "abandoned"])


#: what can keep goodput down after the site returns, as measured after it does (see _post_outage)
MECHANISMS = {"queue": "requests queued at the replicas", "retries": "attempts per call",
              "cache_loss": "prefix-cache miss rate (uncached share of input tokens)"}


def _post_outage(ts, df, duration_s: float) -> dict:
    """After the site returns: the mean queue over the sampled intervals, attempts per call, and the
    cache miss rate — the three mechanisms that can keep a run from recovering."""
    q = ts[ts["time_s"] > OUTAGE[1]].groupby("time_s", observed=True)["queued"].sum()
    after = df[(df["arrival_s"] >= OUTAGE[1]) & (df["arrival_s"] < duration_s)]
    calls = int((after["attempt"] == 0).sum())
    done = after[after["outcome"] == "completed"]
    tokens = float(done["input_tokens"].sum())
    cached = float(done["cached_gpu_tokens"].sum() + done["cached_host_tokens"].sum())
    return {"queue": float(q.mean()) if len(q) else math.nan,
            "retries": len(after) / calls if calls else math.nan,
            "cache_loss": 1 - cached / tokens if tokens else math.nan}


def recovery_min(out_series: np.ndarray, base_series: np.ndarray) -> float:
    """Minutes after the site returns until goodput per bin is back to >= 90 % of the baseline's
    for the rest of the run (nan if it never is)."""
    first = int(round(OUTAGE[1] / BIN_S))
    ok = out_series[first:] >= RECOVERED * base_series[first:]
    for i in range(len(ok)):
        if ok[i:].all():
            return float((i + 1) * BIN_S / 60) if i > 0 or not ok.all() else BIN_S / 60
    return math.nan


def not_recovered(goodput: np.ndarray, offered: np.ndarray) -> bool:
    """Issue 19's persistent collapse after the site returns: goodput below ``COLLAPSE_SHARE`` of the
    offered load in every bin of some ``COLLAPSE_HOLD_S`` stretch after the outage ends. The offered
    load per bin is the rate of first attempts of the same seed's day without the outage: what the
    users ask for while they are served (in a collapse they back off and ask for less)."""
    first = int(round(OUTAGE[1] / BIN_S))
    need = int(round(COLLAPSE_HOLD_S / BIN_S))
    return holds_for(goodput[first:] < COLLAPSE_SHARE * offered[first:], need)


def share_of_offered(run: dict, base: dict, lo: float, hi: float) -> float:
    """Goodput of ``run`` over [lo, hi) as a share of the offered load (``base``'s first attempts)."""
    i, j = int(round(lo / BIN_S)), int(round(hi / BIN_S))
    offered = float(np.sum(base["series"]["calls_rps"][i:j]))
    return float(np.sum(run["series"]["goodput_rps"][i:j])) / offered if offered else math.nan


METRICS = (("lost_rate", "sessions lost (failed or abandoned), share", 3),
           ("error_rate", "sessions that saw a failed call, share", 3),
           ("sessions_lost", "sessions lost", 3), ("users_lost", "users who lost a session", 3),
           ("engaged_hours_lost", "engaged user-hours in lost sessions", 3),
           ("failure_rate", "session failure rate", 3), ("abandon_rate", "session abandon rate (all profiles; only chat users abandon)", 3),
           ("duration_mean_s", "session time, mean (s)", 3), ("duration_p50_s", "session time, p50 (s)", 3),
           ("duration_p90_s", "session time, p90 (s)", 3),
           ("goodput_outage_rps", "goodput during the outage (req/s)", 3),
           ("outage_failed_share", "failed attempts during the outage (share)", 3),
           ("outage_attempts_per_call", "attempts per call during the outage", 3))


def population_users(sc: dict) -> int:
    """The users (and fleet workers' seats) of a scenario: the planner's unit of load."""
    return int(sum(p["size"] for p in sc["populations"].values()))


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None,
        workers: int | None = None, *, address: str | None = None, loads=LOADS, duration_s: float = DURATION_S,
        warmup_h: float = WARMUP_H, sensitivity: bool = False) -> dict:
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("site_outage", QUESTION)
    ss = seeds(seed, R)
    loads = tuple(sorted(float(x) for x in loads))
    cells = [(L, o) for L in loads for o in (False, True)]
    if duration_s < OUTAGE[1] + COLLAPSE_HOLD_S + BIN_S:
        raise InputError(f"duration_s must leave time after the outage (>= {OUTAGE[1] + COLLAPSE_HOLD_S + BIN_S:g} s), "
                         f"got {duration_s}")
    warm_window(ORIGIN, duration_s, warmup_h)          # hours >= 0 or an error
    arms = {(L, o): scenario(scale, o, load=L, duration_s=duration_s, warmup_h=warmup_h) for L, o in cells}
    by = run_arms(measure, arms, ss, workers, address, label="site_outage")
    for L in loads:     # the recovery verdict of each outage run against its own seed's day without it
        for b, h in zip(by[(L, False)], by[(L, True)]):
            h["not_recovered"] = not_recovered(h["series"]["goodput_rps"], b["series"]["calls_rps"])
            h["outage_share_of_offered"] = share_of_offered(h, b, *OUTAGE)
            h["post_share_of_offered"] = share_of_offered(h, b, OUTAGE[1], duration_s)
            b["outage_share_of_offered"] = share_of_offered(b, b, *OUTAGE)
    rep.runs = tidy(by, ss, lambda k: {"load": k[0], "outage": k[1], "users": population_users(arms[k])})
    metrics: dict = {}
    details = []
    for L in loads:
        base, hit = by[(L, False)], by[(L, True)]
        M, rows, prof_rows, oc_rows = _load_metrics(base, hit)
        M["users"] = population_users(arms[(L, True)])
        M["not_recovered"] = _not_recovered(base, hit)
        metrics[f"{L:g}x"] = M
        details.append((f"Results at {L:g}× the default load ({M['users']:,} users)", [
            _load_answer(L, M, hit, R, duration_s), "",
            f"Sessions starting {AROUND[0] / 3600 + START_HOUR:.0f}:00–{AROUND[1] / 3600 + START_HOUR:.0f}:00 UTC "
            f"(the hour before and the outage), {R} paired replications, 95 % intervals.", ""]
            + md_table(["metric", "baseline (no outage)", f"site lost {OUTAGE_UTC} UTC", "change"], rows)
            + ["By session profile:", ""]
            + md_table(["profile", "failure rate, baseline", "failure rate, outage", "mean time (s), baseline",
                        "mean time (s), outage"], prof_rows)
            + ["Attempts that ended during the outage window, by outcome (mean per replication):", ""]
            + md_table(["outcome", "baseline", "outage"], oc_rows)))
    k = [metrics[f"{L:g}x"]["not_recovered"]["count"] for L in loads]
    est, lo, hi = tipping_point(loads, k, [R] * len(loads), 0.5)
    tipping = {"loads": list(loads), "users": [metrics[f"{L:g}x"]["users"] for L in loads], "not_recovered": k,
               "runs": [R] * len(loads), "tipping_load": {"estimate": est, "ci_low": lo, "ci_high": hi},
               "tipping_users": {"estimate": _users_at(est, loads, metrics), "ci_low": _users_at(lo, loads, metrics),
                                 "ci_high": _users_at(hi, loads, metrics)}}
    L0 = loads[0]
    sens = step_sensitivity(measure, {(L0, False): arms[(L0, False)], (L0, True): arms[(L0, True)]}, by, ss,
                            lambda b: {f"sessions lost at {L0:g}× (paired change)": paired(
                                [r["lost_rate"] for r in b[(L0, False)]], [r["lost_rate"] for r in b[(L0, True)]]).mean},
                            out, workers=workers, address=address, label="site_outage") if sensitivity else None
    rep.answer = _answer(metrics, loads, tipping, R, duration_s) + sensitivity_sentence(sens, lambda v: f"{v:+.3f}")
    rep.section("The load sweep", _sweep_lines(metrics, loads, tipping, R))
    _assumptions(rep, duration_s, warmup_h)
    for title, lines in details:
        rep.section(title, lines)
    _method(rep, arms[cells[1]], scale, duration_s, warmup_h)     # the first load with the outage
    for path, caption in _figures(out, by, loads, metrics):
        rep.figure(path, caption)
    rep.results = {"metrics": metrics, "tipping": tipping, "replications": R, "seeds": ss, "warmup_h": warmup_h,
                   "steady_state": warmup_h >= 24.0, "sensitivity": sens}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "loads": list(loads), "outage_utc": OUTAGE_UTC,
                    "window_start_utc": ORIGIN, "duration_s": duration_s, "warmup_h": warmup_h,
                    "shed_outstanding_per_replica": SHED_OUTSTANDING, "client_timeout_s": TIMEOUT_S,
                    "runs": len(arms) * R}
    return rep.write(out, time.perf_counter() - t0)


def _users_at(x: float, loads, metrics: dict) -> float:
    """A load multiple as users (interpolated between the swept loads' user counts)."""
    if not math.isfinite(x):
        return x
    return float(np.interp(x, loads, [metrics[f"{L:g}x"]["users"] for L in loads]))


def _not_recovered(base: list[dict], hit: list[dict]) -> dict:
    """At one load: how many outage runs did not recover (Wilson interval), their goodput as a share of
    the offered load, and what keeps them down (:func:`mechanism` over those runs only)."""
    idx = [i for i, h in enumerate(hit) if h["not_recovered"]]
    share, low, high = proportion(len(idx), len(hit))
    out = {"count": len(idx), "of": len(hit), "share": share, "ci_low": low, "ci_high": high,
           "outage_share_of_offered": stat([h["outage_share_of_offered"] for h in hit]),
           "baseline_outage_share_of_offered": stat([b["outage_share_of_offered"] for b in base]),
           "post_share_of_offered": stat([h["post_share_of_offered"] for h in hit]), "mechanism": None}
    if idx:
        post = {m: [hit[i]["post"][m] / base[i]["post"][m] if base[i]["post"][m] else math.nan for i in idx]
                for m in MECHANISMS}
        out["mechanism_ratios"] = {m: stat(v) for m, v in post.items()}
        out["mechanism"] = _strongest(out["mechanism_ratios"])
    return out


def _strongest(ratios: dict) -> str | None:
    """The mechanism most raised over the baseline after the site returns: among those whose paired
    ratio's interval lies above 1 (with one run: whose ratio is above 1.1), the largest mean ratio."""
    up = {k: v for k, v in ratios.items()
          if (v.n >= 2 and math.isfinite(v.low) and v.low > 1) or (v.n == 1 and v.mean > 1.1)}
    return max(up, key=lambda k: up[k].mean) if up else None


def _tipping_text(tipping: dict) -> str:
    """The tipping load in users with its interval; ends outside the sweep said so."""
    tl, tu, us = tipping["tipping_load"], tipping["tipping_users"], tipping["users"]

    def at(x: float, v: float) -> str:
        if x == -math.inf:
            return f"below {us[0]:,} users (the sweep's first load)"
        if x == math.inf:
            return f"beyond {us[-1]:,} users (the sweep's last load)"
        return f"{v:,.0f} users ({x:.2f}×)"
    return f"{at(tl['estimate'], tu['estimate'])}; 95 % interval {at(tl['ci_low'], tu['ci_low'])} to " \
           f"{at(tl['ci_high'], tu['ci_high'])}"


def _answer(metrics: dict, loads, tipping: dict, R: int, duration_s: float) -> str:
    """The opening paragraph in planner's units: users, sessions and engaged user-hours lost, goodput as
    a share of offered load, the load from which the fleet does not recover, and why."""
    L0 = 1.0 if 1.0 in loads else loads[0]
    M = metrics[f"{L0:g}x"]
    lost, eh, ul = M["sessions_lost"], M["engaged_hours_lost"], M["users_lost"]
    nr = M["not_recovered"]
    tip = f"the chance that the fleet does not recover passes 50 % at {_tipping_text(tipping)}"
    mech = [f"{L:g}× {MECHANISMS_SHORT.get(metrics[f'{L:g}x']['not_recovered']['mechanism'], 'none significant')}"
            for L in loads if metrics[f"{L:g}x"]["not_recovered"]["count"]]
    return (
        f"Losing one of the two sites ({OUTAGE_UTC} UTC, the coding peak) with {M['users']:,} users: of the sessions "
        f"that start in the hour before or during the outage, {M['lost_rate']['outage'].fmt(2)} are lost — failed, "
        f"or abandoned after errors — against {M['lost_rate']['baseline'].fmt(2)} on the same day without it "
        f"(paired change {M['lost_rate']['change'].fmt(2)}); that is {lost['change'].fmt(3)} more lost sessions, "
        f"{ul['change'].fmt(3)} more users hit and {eh['change'].fmt(3)} more engaged user-hours in lost sessions "
        f"per outage like this. While the site is down, goodput (SLO-met completions) is "
        f"{nr['outage_share_of_offered'].fmt(2)} of the offered load (without the outage "
        f"{nr['baseline_outage_share_of_offered'].fmt(2)}); in the {(duration_s - OUTAGE[1]) / 3600:g} h after the "
        f"site returns it is {nr['post_share_of_offered'].fmt(2)}. Across the sweep, the outage loses "
        + ", ".join(f"{metrics[f'{L:g}x']['lost_rate']['change'].fmt(2)} of the sessions at "
                    f"{metrics[f'{L:g}x']['users']:,} users" for L in loads)
        + " (paired changes; goodput during the outage "
        + ", ".join(f"{metrics[f'{L:g}x']['not_recovered']['outage_share_of_offered'].mean:.2f}" for L in loads)
        + f" of offered), and {tip}; a run does not recover "
        f"when goodput stays below {COLLAPSE_SHARE:.0%} of the offered load for {COLLAPSE_HOLD_S / 60:.0f}+ min after "
        "the site returns. "
        + (f"What keeps the runs that do not recover down, by load: {'; '.join(mech)}." if mech else
           f"Every run recovers; after the site returns, at {metrics[f'{loads[-1]:g}x']['users']:,} users, "
           + ", ".join(f"{MECHANISMS[m]} is {v['ratio'].fmt(2)}× the baseline's"
                       for m, v in metrics[f"{loads[-1]:g}x"]["post_outage"].items()) + " (paired)."))


#: the mechanisms in a few words, for the answer
MECHANISMS_SHORT = {"queue": "the queue at the replicas", "retries": "retries (attempts per call)",
                    "cache_loss": "cache loss (re-prefilled prompts)", None: "none significant"}


def _sweep_lines(metrics: dict, loads, tipping: dict, R: int) -> list[str]:
    """The table the answer rests on: per load, the damage and the recovery."""
    rows = []
    for L in loads:
        M = metrics[f"{L:g}x"]
        nr = M["not_recovered"]
        rows.append([f"{L:g}× ({M['users']:,})", M["lost_rate"]["baseline"].fmt(2), M["lost_rate"]["outage"].fmt(2),
                     M["lost_rate"]["change"].fmt(2), M["engaged_hours_lost"]["change"].fmt(3),
                     nr["outage_share_of_offered"].fmt(2), nr["post_share_of_offered"].fmt(2),
                     f"{nr['count']}/{nr['of']} ({nr['ci_low']:.0%}–{nr['ci_high']:.0%})",
                     MECHANISMS_SHORT.get(nr["mechanism"], "-") if nr["count"] else "-"])
    return ([f"Per load ({R} paired replications; 95 % intervals: Student-t for means and paired changes, Wilson for "
            "the share of runs that do not recover). Sessions: those starting in the hour before or during the "
            "outage. Offered load: the same seed's rate of first attempts on the day without the outage. Not "
            f"recovered: goodput below {COLLAPSE_SHARE:.0%} of the offered load in every 15-min bin of a "
            f"{COLLAPSE_HOLD_S / 60:.0f}-min stretch after the site returns; the mechanism is the one most raised over "
            "the same seed's baseline after the site returns (paired ratio's interval above 1) in those runs.", ""]
            + md_table(["load (users)", "sessions lost, no outage", "sessions lost, outage", "paired change",
                        "engaged user-hours lost (change)", "goodput / offered, outage", "goodput / offered, after",
                        "not recovered (Wilson 95 %)", "what keeps it down"], rows)
            + [f"Tipping load (the chance of not recovering passes 50 %): {_tipping_text(tipping)}.", ""])


def _assumptions(rep: Report, duration_s: float, warmup_h: float) -> None:
    ref = "workloads-policies.md"
    rep.assume(warmup_sentence(warmup_h, f"{ORIGIN[:10]} (a Tuesday) {START_HOUR}:00–"
                                         f"{START_HOUR + duration_s / 3600:.0f}:00 UTC"),
               "issue 19 (steady state); agentsim.results.steady")
    rep.assume(f"The gateway sheds (529) beyond {SHED_OUTSTANDING} outstanding requests per up replica (about twice "
               "what a replica runs at once at the default day's peak; the default scenario's 192 is never reached)",
               f"[A] {ref} §3.5 (Stripe's concurrency limiter, e.g. 20 in flight; fleet-usage shedding) and §6.4 "
               "(shedding → 529 without retry-after); running per replica measured on the default day, 17:00–19:00")
    rep.assume(f"Every client gives up on an attempt after {TIMEOUT_S:.0f} s", f"[P] {ref} §4.1 (SDK DEFAULT_TIMEOUT "
               "600 s); the profiles' timeout_s")
    rep.assume("Retries: coding agents 10 (Claude Code), API agents and chat the SDK's 2; then coding and API agents "
               "re-run the step up to 3 times (30 s full jitter), API agents re-queue the task once; chat users "
               "regenerate once, then leave", f"[P] {ref} §4.1, §4.2, §6.6; [A] §6.2 task-level retry, §6.3")
    rep.assume("Chat users abandon a request with no first token after 20 s with probability 0.3", f"[A] {ref} §6.3")
    rep.assume("Lower API tiers are shed first (class headroom 1.0 / 0.9 / 0.8 / 0.7 of the bound)",
               "overload_shedding's class_headroom default")
    rep.assume(f"Not recovering: goodput < {COLLAPSE_SHARE:.0%} of the offered load for ≥ {COLLAPSE_HOLD_S / 60:.0f} "
               "min after the site returns", "issue 19 (persistent collapse); Bronson et al. HotOS'21 "
               f"({ref} §4.5)")
    rep.assume("Traffic: the default populations and their diurnal profiles (weekday, 15:00–21:00 UTC), times the "
               "load factor", f"the default scenario; {ref} §5.1 (azure2024 profiles)")


def _load_metrics(base: list[dict], hit: list[dict]) -> tuple[dict, list, list, list]:
    """One load's figures without (``base``) and with (``hit``) the outage, paired by seed; and the
    rows of its three tables (metrics, by profile, outcomes during the outage)."""
    M: dict = {}
    rows = []
    for key, label, d in METRICS:
        a, b = [r[key] for r in base], [r[key] for r in hit]
        M[key] = {"baseline": stat(a), "outage": stat(b), "change": paired(a, b), "ratio": ratio(a, b)}
        rows.append([label, stat(a).fmt(d), stat(b).fmt(d), paired(a, b).fmt(d)])
    recs = [recovery_min(h["series"]["goodput_rps"], b["series"]["goodput_rps"]) for b, h in zip(base, hit)]
    M["recovery_min"] = stat(recs)
    M["post_outage"] = {k: {"baseline": stat([r["post"][k] for r in base]), "outage": stat([r["post"][k] for r in hit]),
                            "ratio": ratio([r["post"][k] for r in base], [r["post"][k] for r in hit])}
                        for k in MECHANISMS}
    M["recovery_never"] = sum(1 for x in recs if math.isnan(x))
    profs = sorted({p for r in base + hit for p in r["by_profile"]})
    prof_rows = []
    for p in profs:
        a = [r["by_profile"].get(p, {}).get("failure_rate", math.nan) for r in base]
        b = [r["by_profile"].get(p, {}).get("failure_rate", math.nan) for r in hit]
        da = [r["by_profile"].get(p, {}).get("duration_mean_s", math.nan) for r in base]
        db = [r["by_profile"].get(p, {}).get("duration_mean_s", math.nan) for r in hit]
        M[f"failure_rate.{p}"] = {"baseline": stat(a), "outage": stat(b), "change": paired(a, b)}
        M[f"duration_mean_s.{p}"] = {"baseline": stat(da), "outage": stat(db), "change": paired(da, db)}
        prof_rows.append([p, stat(a).fmt(3), stat(b).fmt(3), stat(da).fmt(3), stat(db).fmt(3)])
    outcomes = sorted({o for r in base + hit for o in r["outage_outcomes"]})
    oc_rows = [[o, stat([r["outage_outcomes"].get(o, 0) for r in base]).fmt(3),
                stat([r["outage_outcomes"].get(o, 0) for r in hit]).fmt(3)] for o in outcomes]
    chat = "chat_user"
    M[f"abandon_rate.{chat}"] = {k: stat([r["by_profile"].get(chat, {}).get("abandon_rate", math.nan) for r in runs])
                                 for k, runs in (("baseline", base), ("outage", hit))}
    return M, rows, prof_rows, oc_rows


def mechanism(M: dict) -> str | None:
    """The mechanism that most outlasts the outage: of those whose paired ratio (outage / baseline,
    after the site returns) is significantly above 1, the largest; None if none is."""
    up = {k: v["ratio"] for k, v in M["post_outage"].items() if math.isfinite(v["ratio"].low) and v["ratio"].low > 1}
    return max(up, key=lambda k: up[k].mean) if up else None


def _mechanism_text(M: dict) -> str:
    k = mechanism(M)
    figures = ", ".join(f"{MECHANISMS[m]} {v['ratio'].fmt(3)}× the baseline's" for m, v in M["post_outage"].items())
    if k is None:
        return f" After the site returns no mechanism stays significantly above the baseline ({figures})."
    return (f" What outlasts the outage: {MECHANISMS[k]} (after the site returns, paired: {figures}).")


def _load_answer(L: float, M: dict, hit: list[dict], R: int, sc_duration: float) -> str:
    """The answer at one load: session failures and times, the outage window, and recovery."""
    fr, du = M["failure_rate"], M["duration_mean_s"]
    rec, never, ab = M["recovery_min"], M["recovery_never"], M["abandon_rate.chat_user"]
    ended = sum(r["sessions_ended"] for r in hit)
    fails = (f"no agent session fails (0 of {ended:,} ended sessions over {R} replications, as without the "
             f"outage: clients wait out the queue instead of failing)" if fr["outage"].mean == 0
             and fr["baseline"].mean == 0 else
             f"sessions fail at {fr['outage'].fmt(3)} (baseline {fr['baseline'].fmt(3)}; paired change "
             f"{fr['change'].fmt(3)})")
    return (
        f"At {L:g}× the default load, of the sessions that start in the hour before or during the outage "
        f"{fails}; chat users give up on {ab['outage'].fmt(3)} of their conversations (baseline "
        f"{ab['baseline'].fmt(3)}); "
        f"sessions take {du['outage'].fmt(3, 's')} on average (baseline {du['baseline'].fmt(3, 's')}; p90 "
        f"{M['duration_p90_s']['baseline'].fmt(3, 's')} → {M['duration_p90_s']['outage'].fmt(3, 's')}). While "
        f"the site is down, {M['outage_failed_share']['outage'].fmt(3)} of attempts fail (replica failure, 529 "
        f"or timeout), calls take {M['outage_attempts_per_call']['outage'].fmt(3)} attempts and goodput falls from "
        f"{M['goodput_outage_rps']['baseline'].fmt(3, 'req/s')} to "
        f"{M['goodput_outage_rps']['outage'].fmt(3, 'req/s')}. "
        + (f"Goodput is back within {100 - RECOVERED * 100:.0f} % of the baseline {rec.fmt(2, 'min')} after "
           "the site returns (15-min bins)." if never == 0 else
           f"Goodput does not come back within {100 - RECOVERED * 100:.0f} % of the baseline by the end of the "
           f"run ({(sc_duration - OUTAGE[1]) / 3600:g} h after the site returns) in any replication."
           if never == R else
           f"Goodput is back within {100 - RECOVERED * 100:.0f} % of the baseline after {rec.fmt(2, 'min')} "
           f"in {R - never} of {R} replications and not by the end of the run in {never}.")
        + (_mechanism_text(M) if never else ""))


def _method(rep: Report, sc0: dict, scale: float, duration_s: float, warmup_h: float) -> None:
    """The method section (the fleet as the outage scenario ``sc0`` has it)."""
    fleet = ", ".join(f"{k} {v['replicas']}" for k, v in sc0["pools"].items())
    rep.section("Method", [
        f"- Fleet: the default scenario's pools split over two sites ({fleet} replicas), one session-affinity "
        f"router across both; scaled ×{scale:g}.",
        f"- Traffic: the default populations (coding agents, API agents, chat) times the load factor, weekday "
        f"{START_HOUR}:00–{START_HOUR + duration_s / 3600:.0f}:00 UTC (a Tuesday), after {warmup_h:g} h of warm-up "
        "that is discarded (the diurnal load is never stationary: a whole period fills sessions, caches, queues and "
        "five-hour windows). Site `atlanta` is "
        f"down {OUTAGE_UTC} UTC; its in-flight requests fail (`replica_failed`) and its sessions lose their cached "
        f"prefixes. The gateway sheds (529) beyond {SHED_OUTSTANDING} outstanding requests per up replica; clients "
        f"give up on an attempt after {TIMEOUT_S:.0f} s.",
        f"- Recovery: the first 15-min bin after the site returns from which goodput stays >= {RECOVERED:.0%} of "
        "the baseline's in the same bin, in minutes after the site returns.",
        "- Failure rate = sessions ending `failed` / sessions ended (in-flight at the end excluded); abandon rate = "
        "chat users who gave up waiting. Outcomes during the outage count the attempts that ended in it "
        "(in-flight failures included).",
        "- Same seeds with and without the outage: differences are paired."])


def _figures(out: Path, by, loads, metrics) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_recovery(out, loads, metrics),
            _figure_timeline(out, by, loads),
            _figure_sessions(out, by, loads)]


def _figure_recovery(out: Path, loads, metrics) -> tuple:
    """Figure ``recovery``: per load (users), sessions lost with and without the outage, goodput as a share
    of the offered load during and after it, and the share of runs that do not recover."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    users = [metrics[f"{L:g}x"]["users"] for L in loads]
    rows = []

    def band(ax, key, getter, label, color, **kw):
        st = [getter(metrics[f"{L:g}x"]) for L in loads]
        m = np.array([x.mean for x in st])
        lo = np.array([x.low if math.isfinite(x.low) else x.mean for x in st])
        hi = np.array([x.high if math.isfinite(x.high) else x.mean for x in st])
        ax.errorbar(users, m, yerr=[m - lo, hi - m], marker="o", capsize=3, color=color, label=label, **kw)
        rows.extend({"panel": key, "series": label, "load": L, "users": u, "value": a, "ci_low": b, "ci_high": c}
                    for L, u, a, b, c in zip(loads, users, m, lo, hi))

    band(axes[0], "sessions_lost", lambda M: M["lost_rate"]["baseline"], "no outage", "grey")
    band(axes[0], "sessions_lost", lambda M: M["lost_rate"]["outage"], "site lost", "tab:red")
    axes[0].set_title("sessions lost (failed or abandoned)", fontsize=10)
    band(axes[1], "goodput_share", lambda M: M["not_recovered"]["baseline_outage_share_of_offered"],
         "no outage, 17-19 UTC", "grey")
    band(axes[1], "goodput_share", lambda M: M["not_recovered"]["outage_share_of_offered"], "site lost, during",
         "tab:red")
    band(axes[1], "goodput_share", lambda M: M["not_recovered"]["post_share_of_offered"], "site lost, after",
         "tab:orange", ls="--")
    axes[1].axhline(COLLAPSE_SHARE, color="black", ls=":", lw=1)
    axes[1].set_title("goodput / offered load", fontsize=10)
    nr = [metrics[f"{L:g}x"]["not_recovered"] for L in loads]
    share = np.array([x["share"] for x in nr])
    axes[2].errorbar(users, share, yerr=[share - [x["ci_low"] for x in nr], [x["ci_high"] for x in nr] - share],
                     marker="s", capsize=3, color="tab:purple")
    rows.extend({"panel": "not_recovered", "series": "share of runs", "load": L, "users": u, "value": x["share"],
                 "ci_low": x["ci_low"], "ci_high": x["ci_high"]} for L, u, x in zip(loads, users, nr))
    axes[2].axhline(0.5, color="grey", ls=":")
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_title(f"runs not recovering (goodput < {COLLAPSE_SHARE:.0%} of offered for "
                      f"{COLLAPSE_HOLD_S / 60:.0f}+ min after)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("users")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Site lost {OUTAGE_UTC} UTC: damage and recovery by load (95 % intervals)")
    fig.tight_layout()
    return (save_figure(fig, out, "recovery", pd.DataFrame(rows)),
            "Sessions lost, goodput as a share of the offered load during and after the outage, and the share of "
            "runs that do not recover, by users.")


def _figure_timeline(out: Path, by, loads) -> tuple:
    """Figure ``timeline``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    first = by[(loads[0], False)]
    n = len(first[0]["series"]["goodput_rps"])
    t = START_HOUR + (np.arange(n) + 1) * BIN_S / 3600
    panels = (("goodput_rps", "goodput (SLO-met completions / s)"),
              ("failed_rps", "failed attempts / s (529, replica failure, timeout)"),
              ("ttft_p90_s", "TTFT p90 (s), by arrival"),
              ("abandoned", "requests abandoned by chat users per 15 min"))
    fig, axes = plt.subplots(len(panels), len(loads), figsize=(7 * len(loads), 3.2 * len(panels)), sharex=True,
                             squeeze=False)
    rows = []
    for j, L in enumerate(loads):
        for i, (key, title) in enumerate(panels):
            ax = axes[i][j]
            for label, runs, color in (("baseline", by[(L, False)], "grey"), ("site lost", by[(L, True)], "tab:red")):
                x = np.array([r["series"][key] for r in runs], float)
                m, lo, hi = mean_band(x, valid=NONNEGATIVE, nan_policy="omit")
                h = hi - m if len(x) > 1 else np.zeros_like(m)
                ax.step(t, m, where="pre", color=color, label=label)
                ax.fill_between(t, np.maximum(lo, m / 10) if key == "ttft_p90_s" else lo, hi, step="pre",
                                color=color, alpha=0.15, lw=0)
                rows += [{"load": L, "series": key, "variant": label, "hour_utc": a, "mean": b, "ci_half": c}
                         for a, b, c in zip(t, m, h)]
            ax.axvspan(START_HOUR + OUTAGE[0] / 3600, START_HOUR + OUTAGE[1] / 3600, color="red", alpha=0.1,
                       label="atlanta down")
            if key == "ttft_p90_s":
                ax.set_yscale("log")
            ax.set_title(f"{title} — {L:g}× load", fontsize=10)
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=8)
        axes[-1][j].set_xlabel("hour (UTC)")
    fig.suptitle(f"Site outage {OUTAGE_UTC} UTC vs the same day without it (mean, 95 % CI band)")
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    return (save_figure(fig, out, "timeline", pd.DataFrame(rows)),
            "Goodput, failed attempts, TTFT p90 and chat abandonments per 15 min, with and without the outage, "
            "per load.")


def _figure_sessions(out: Path, by, loads) -> tuple:
    """Figure ``sessions``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(len(loads), 2, figsize=(12, 4.2 * len(loads)), squeeze=False)
    rows = []
    for k, L in enumerate(loads):
        runs_all = by[(L, False)] + by[(L, True)]
        profs = sorted({p for r in runs_all for p in r["by_profile"]})
        for ax, key, title in ((axes[k][0], "lost_rate", "sessions failed or abandoned"),
                               (axes[k][1], "duration_mean_s", "mean session time (s)")):
            for j, (label, runs, color) in enumerate((("baseline", by[(L, False)], "grey"),
                                                      ("site lost", by[(L, True)], "tab:red"))):
                for i, p in enumerate(profs):
                    s = stat([r["by_profile"].get(p, {}).get(key, math.nan) for r in runs])
                    err = s.mean - s.low if math.isfinite(s.low) else 0
                    ax.bar(i + (j - 0.5) * 0.38, s.mean, 0.38, yerr=err, capsize=3, color=color,
                           label=label if i == 0 else None)
                    rows.append({"load": L, "metric": key, "variant": label, "profile": p, "mean": s.mean,
                                 "ci_low": s.low, "ci_high": s.high})
            ax.set_xticks(range(len(profs)), [p.replace("_", "\n") for p in profs], fontsize=9)
            ax.set_title(f"{title} — {L:g}× load, sessions starting {START_HOUR + AROUND[0] / 3600:.0f}–"
                         f"{START_HOUR + AROUND[1] / 3600:.0f} UTC", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return (save_figure(fig, out, "sessions", pd.DataFrame(rows)),
            "Share of sessions that failed or were abandoned, and completion time, by profile (95 % CI).")


#: this experiment's own command-line option: the warm-up (``agentsim experiment site_outage --warmup-hours H``)
OPTIONS = (warmup_option(), SENSITIVITY_OPTION)


def run_keywords(o: dict) -> dict:
    """run()'s keywords from the parsed :data:`OPTIONS`."""
    return {**warmup_keywords(o), "sensitivity": bool(o.get("sensitivity"))}


main = main_for(__name__)


if __name__ == "__main__":
    main()
