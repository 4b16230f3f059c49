"""retry_storm: a saturated cluster, a capacity loss, and whether goodput comes back.

A fleet of autonomous API agents (open arrivals, ~40-step tasks) runs on two pools of
DeepSeek-V3 on 8×H200 at a steady load the full fleet serves comfortably. At 90 min pool ``b``
(37.5 % of the replicas) fails for 10, 30 or 60 minutes — the trigger — and comes back. The
question is what goodput (requests completed within the TTFT and TPOT SLOs, per second) does
during and, above all, after the trigger, under four client retry policies: the SDK default
(2 retries), Claude Code's watchdog (retry forever), the AWS SDK's retry quota and Google
SRE's client-side adaptive throttle (both budgeted). The gateway sheds load (``529``) beyond
8 outstanding requests per replica, as a provider would.

A control run at the same load without the trigger shows the state is stable; so if goodput
stays low after the pool is back, the failure is metastable (Bronson et al., HotOS'21): the
trigger is gone and something else sustains the overload. The experiment measures two
candidates: retry amplification (attempts per call) and work amplification (prefill tokens per
completed request — a session whose pinned prefix expired or was evicted while it queued or
backed off pays its whole context again).

The tipping point: per client policy and trigger length, the load (users) at which the chance
of a persistent collapse (goodput below 50 % of the offered load for 30+ min after the trigger
ends) passes 50 %, with the interval that inverts the Wilson intervals of the collapse shares
(``SWEEP``: the full load sweep at 30 min, three loads at 10 and 60 min).

The default load, 240 users, is where the control stays up: at the earlier default of 400 users
three of five control runs fell below 80 % without any trigger. Measured at default size (4
replications): the SDK's tipping load is 256 users after a 30-min loss (95 % interval 194–287),
and every policy tips between 240 and 312 users after a 10-, 30- or 60-min loss.

Scale: ``scale`` multiplies the replicas and the users (default 16 replicas, 240 users);
``FULL_SCALE`` = 4 (64 replicas, 1,600 users).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...util.stats import NONNEGATIVE, holds_for, mean_band, tipping_point
from . import (Report, tidy, check_args, main_for, md_table, paired, proportion, ratio, run_arms, save_figure, seeds,
               simulate_one, stat)
from .window import mser5_sentence, mser5_warmup_s
from .sensitivity import sensitivity as step_sensitivity, sensitivity_sentence, SENSITIVITY_OPTION

QUESTION = ("On a saturated cluster, when does goodput collapse under SDK, watchdog and budgeted retry policies, "
            "and does it stay collapsed after the trigger (a capacity loss) is removed?")
FULL_SCALE = 4.0
REPLICATIONS = 4            # 0/4 and 4/4 are the fewest runs whose Wilson intervals exclude 50 %
POLICIES = ("anthropic_sdk", "claude_code_watchdog", "aws_full_jitter", "sre_adaptive_throttle")
LABELS = {"anthropic_sdk": "SDK (2 retries)", "claude_code_watchdog": "watchdog (retry forever)",
          "aws_full_jitter": "AWS retry quota", "sre_adaptive_throttle": "SRE adaptive throttle",
          "control": "no trigger (control)"}
TRIGGERS_MIN = (10, 30, 60)
DURATION_S = 4 * 3600.0
TRIGGER_AT_S = 5400.0
BIN_S = 300.0
BASELINE = (3600.0, 5400.0)              # the 30 min before the trigger
POST = (DURATION_S - 3600.0, DURATION_S)  # the last hour
RECOVERED = 0.8                          # post-trigger goodput >= 80 % of baseline
USERS = 240                              # the default population (load 1)
#: the tipping-point sweep: users as multiples of the default population, per trigger length. The
#: full sweep at 30 min (where the first sweep put the SDK's tipping load, 1.10x); three loads at 10
#: and 60 min, placed where a shorter trigger needs more load and a longer one less to tip the cluster
#: (load 1 is in every sweep: those runs are also the results table's cells)
SWEEP = {10: (1.0, 1.3, 1.6), 30: (0.8, 1.0, 1.2, 1.4), 60: (0.7, 1.0, 1.3)}
LOADS = SWEEP[30]                        # a trigger length without its own sweep uses these
#: a persistent collapse: goodput below this share of the offered load ...
COLLAPSE_SHARE = 0.5
#: ... in every bin of some stretch this long after the trigger ends
COLLAPSE_HOLD_S = 1800.0


def users(scale: float, load: float = 1.0) -> int:
    return max(1, round(USERS * scale * load))


def scenario(scale: float, policy: str, outage_min: float, load: float = 1.0) -> dict:
    a, b = max(1, round(10 * scale)), max(1, round(6 * scale))
    sc = {
        "name": "retry_storm",
        "description": "API agents on two H200 pools; pool b fails for a while; does goodput come back?",
        "duration_s": DURATION_S, "warmup_s": 1800.0, "sample_s": BIN_S, "seed": 1,
        "slo_ttft_s": 5.0, "slo_tpot_s": 0.15,
        # API serving: prefixes pinned for the 5-min cache TTL, no host KV tier (an evicted prefix is recomputed)
        "engine": {"retention": "pin_session", "prefix_ttl_s": 300.0, "host_kv_gb": 0.0},
        "sites": {"dc": {"pue": 1.2}},
        "pools": {name: {"gpu": "H200", "model": "DeepSeek-V3", "precision": "fp8", "tp": 8, "replicas": n,
                         "site": "dc"} for name, n in (("a", a), ("b", b))},
        "router": {"policy": "session_affinity"},
        "policies": [{"name": "overload_shedding", "max_outstanding_per_replica": 8}],
        "populations": {"agents": {"profile": "autonomous_api_agent", "size": users(scale, load),
                                   "arrival": "flat", "retry_policy": policy}},
    }
    if outage_min > 0:
        sc["outages"] = [{"target": "pool:b", "start_s": TRIGGER_AT_S, "end_s": TRIGGER_AT_S + 60 * outage_min}]
    return sc


def measure(sc: dict, seed: int) -> dict:
    """Run one scenario; per-bin series and the window figures (small, picklable)."""
    res = simulate_one(sc, seed)
    df = res.requests
    edges = np.arange(0.0, DURATION_S + BIN_S / 2, BIN_S)
    done = df[df["outcome"] == "completed"]
    ok = done[(done["ttft_s"] <= sc["slo_ttft_s"]) & ~(done["tpot_s"] > sc["slo_tpot_s"])]
    hist = lambda x, w=None: np.histogram(x, edges, weights=w)[0].astype(float)  # noqa: E731
    series = {
        "goodput_rps": hist(ok["finish_s"]) / BIN_S,
        "throughput_rps": hist(done["finish_s"]) / BIN_S,
        "attempts_rps": hist(df["arrival_s"]) / BIN_S,
        "calls_rps": hist(df.loc[df["attempt"] == 0, "arrival_s"]) / BIN_S,
        "shed_rps": hist(df.loc[df["outcome"] == "529_overload", "arrival_s"]) / BIN_S,
        "prefill_tok_s": hist(done["finish_s"], done["prefill_tokens"]) / BIN_S,
    }

    def window(lo, hi):
        d = done[(done["finish_s"] >= lo) & (done["finish_s"] < hi)]
        a = df[(df["arrival_s"] >= lo) & (df["arrival_s"] < hi)]
        calls = a[a["attempt"] == 0]
        span = hi - lo
        return {"goodput_rps": float(((d["ttft_s"] <= sc["slo_ttft_s"]) & ~(d["tpot_s"] > sc["slo_tpot_s"])).sum()) / span,
                "throughput_rps": len(d) / span,
                "attempts_per_call": len(a) / len(calls) if len(calls) else math.nan,
                "calls_rps": len(calls) / span,
                "prefill_per_request": float(d["prefill_tokens"].mean()) if len(d) else math.nan,
                "prefix_hit_rate": float((d["cached_gpu_tokens"].sum() + d["cached_host_tokens"].sum())
                                         / d["input_tokens"].sum()) if len(d) else math.nan,
                "ttft_p90_s": float(np.percentile(d["ttft_s"], 90)) if len(d) else math.nan}
    ss = res.sessions
    top = ss[(ss["kind"] == "session") & (ss["start_s"] >= TRIGGER_AT_S)] if len(ss) else ss
    ended = top[top["outcome"] != "in_flight"] if len(top) else top
    base = window(*BASELINE)
    end = max([o["end_s"] for o in sc.get("outages", [])], default=TRIGGER_AT_S)
    return {"series": series, "baseline": base, "post": window(*POST),
            "persistent_collapse": persistent_collapse(series["goodput_rps"], base["calls_rps"], end),
            "sessions_failed_after_trigger": float((ended["outcome"] == "failed").mean()) if len(ended) else math.nan,
            "warmup_needed_s": mser5_warmup_s(done["finish_s"], TRIGGER_AT_S),
            "sim_wall_s": res.meta.get("sim_wall_s")}


def persistent_collapse(goodput: np.ndarray, offered_rps: float, trigger_end_s: float) -> bool:
    """Goodput below ``COLLAPSE_SHARE`` of the offered load in every bin of some ``COLLAPSE_HOLD_S``
    stretch after the trigger ends. The offered load is the pre-trigger rate of first attempts: what
    the population asks for while it is served (during a collapse it backs off and asks for less)."""
    first = int(math.ceil(trigger_end_s / BIN_S))
    need = int(round(COLLAPSE_HOLD_S / BIN_S))
    return holds_for(goodput[first:] < COLLAPSE_SHARE * offered_rps, need)


def collapse_time_min(series: np.ndarray, baseline: float, outage_min: float) -> float:
    """Minutes from the trigger to the first 5-min bin below half the baseline goodput (nan: never)."""
    start = int(TRIGGER_AT_S // BIN_S)
    below = np.nonzero(series[start:] < 0.5 * baseline)[0]
    return float((below[0] + 1) * BIN_S / 60) if len(below) else math.nan


def sweep_loads(triggers, loads=None) -> dict:
    """Each trigger length's loads (sorted, always with load 1): ``loads`` as given — one tuple for
    every trigger, or ``{trigger: loads}`` — else :data:`SWEEP` (or :data:`LOADS` for a trigger it lacks)."""
    out = {}
    for d in triggers:
        ls = loads.get(d, LOADS) if isinstance(loads, dict) else (loads if loads is not None else SWEEP.get(d, LOADS))
        out[d] = tuple(sorted(set(float(x) for x in ls) | {1.0}))
    return out


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None, workers: int | None = None,
        *, address: str | None = None, policies=POLICIES, triggers=TRIGGERS_MIN, loads=None,
        sensitivity: bool = False) -> dict:
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("retry_storm", QUESTION)
    ss = seeds(seed, R)
    sweep = sweep_loads(triggers, loads)
    # every policy x trigger length x load of that trigger's sweep, and the control at load 1
    arms = {("control", 0, 1.0): scenario(scale, policies[0], 0)}
    arms.update({(p, d, L): scenario(scale, p, d, L) for d in triggers for p in policies for L in sweep[d]})
    by = run_arms(measure, arms, ss, workers, address, label="retry_storm")
    tipping = _tipping(by, policies, sweep, scale)
    rep.runs = tidy(by, ss, lambda k: {"policy": k[0], "trigger_min": k[1], "load": k[2], "users": users(scale, k[2])})
    cells = [("control", 0)] + [(p, d) for d in triggers for p in policies]
    table, metrics = [], {}
    for (p, d) in cells:
        key = f"{p}@{d}min" if d else "control"
        metrics[key] = _cell_metrics(p, d, by[(p, d, 1.0)])
        table.append(_table_row(metrics[key]))
    # paired comparisons against the SDK at the longest trigger
    dmax = max(triggers)
    comps = {p: paired([r["post"]["goodput_rps"] for r in by[(policies[0], dmax, 1.0)]],
                       [r["post"]["goodput_rps"] for r in by[(p, dmax, 1.0)]]) for p in policies[1:]}
    head = {(policies[0], dmax, L): arms[(policies[0], dmax, L)] for L in sweep[dmax]}
    sens = step_sensitivity(measure, head, by, ss, lambda b: {
        f"{policies[0]} tipping load, {dmax}-min trigger (× the base load)": tipping_point(
            list(sweep[dmax]), [sum(bool(r["persistent_collapse"]) for r in b[k]) for k in head],
            [len(b[k]) for k in head], 0.5)[0]}, out, workers=workers, address=address,
        label="retry_storm") if sensitivity else None
    rep.answer = _tipping_answer(tipping, metrics, policies, triggers, scale) + sensitivity_sentence(
        sens, lambda v: f"{v:.3g}")
    rep.section("Tipping points: the load at which a persistent collapse becomes likely", _tipping_lines(tipping, R, scale))
    _assumptions(rep)
    needed = {f"load {L:g}": max(r["warmup_needed_s"] for k, runs in by.items() if k[2] == L for r in runs)
              for L in sorted({k[2] for k in by})}
    rep.assume(mser5_sentence(needed, BASELINE[0], "before the trigger") + " The baseline figures are read from "
               f"{BASELINE[0] / 60:.0f} min to the trigger", "agentsim.results.steady; White 1997 (MSER-5)")
    _sections(rep, table, comps, R, scale, triggers, _answer(metrics, policies, triggers, R))
    t_min = (np.arange(len(by[("control", 0, 1.0)][0]["series"]["goodput_rps"])) + 1) * BIN_S / 60
    main = {(p, d): by[(p, d, 1.0)] for p, d in cells}
    for path, caption in _figures(out, main, policies, triggers, t_min, metrics) + [_figure_tipping(out, tipping, scale)]:
        rep.figure(path, caption)
    rep.results = {"metrics": metrics, "paired_vs_sdk": comps, "tipping": tipping, "replications": R, "seeds": ss,
                   "sensitivity": sens, "warmup_s": BASELINE[0], "warmup_needed_s": needed,
                   "steady_state": all(v <= BASELINE[0] for v in needed.values())}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "policies": list(policies),
                    "triggers_min": list(triggers), "replicas": max(1, round(10 * scale)) + max(1, round(6 * scale)),
                    "users": users(scale), "tipping_loads": {f"{d}min": list(v) for d, v in sweep.items()},
                    "runs": len(arms) * R}
    return rep.write(out, time.perf_counter() - t0)


def _tipping(by: dict, policies, sweep: dict, scale: float) -> dict:
    """Per policy and trigger length: persistent collapses k of n at each load, and the load where
    their chance passes 50 % with its interval (``tipping_point``: the Wilson intervals inverted)."""
    out: dict = {}
    for p in policies:
        out[p] = {}
        for d, loads in sweep.items():
            runs = [by[(p, d, L)] for L in loads]
            k = [sum(bool(r["persistent_collapse"]) for r in rs) for rs in runs]
            n = [len(rs) for rs in runs]
            est, lo, hi = tipping_point(loads, k, n, 0.5)
            out[p][f"{d}min"] = {
                "trigger_min": d, "loads": list(loads), "users": [users(scale, L) for L in loads], "collapsed": k,
                "runs": n, "share": [proportion(a, b) for a, b in zip(k, n)],
                "post_share_of_offered": [stat([r["post"]["goodput_rps"] / r["baseline"]["calls_rps"]
                                                if r["baseline"]["calls_rps"] else math.nan for r in rs])
                                          for rs in runs],
                "tipping_load": {"estimate": est, "ci_low": lo, "ci_high": hi},
                "tipping_users": {"estimate": _users_at(est, scale), "ci_low": _users_at(lo, scale),
                                  "ci_high": _users_at(hi, scale)}}
    return out


def _users_at(x: float, scale: float) -> float:
    return x if not math.isfinite(x) else USERS * scale * x


def _load_text(x: float, scale: float) -> str:
    if x == math.inf:
        return "beyond the sweep"
    if x == -math.inf:
        return "below the sweep"
    return f"{users(scale, x):,} users ({x:.2f}×)"


def _interval_text(t: dict, scale: float) -> str:
    tl = t["tipping_load"]
    if tl["estimate"] == math.inf and tl["ci_low"] == math.inf:
        return f"none up to {_load_text(t['loads'][-1], scale)}"
    if tl["estimate"] == -math.inf:
        return f"at or below {_load_text(t['loads'][0], scale)}"
    return (f"{_load_text(tl['estimate'], scale)}, 95 % interval {_load_text(tl['ci_low'], scale)} to "
            f"{_load_text(tl['ci_high'], scale)}")


def _tipping_answer(tipping: dict, metrics: dict, policies, triggers, scale: float) -> str:
    """The opening paragraph, in planner's units: users at the tipping point per policy and trigger
    length, and goodput as a share of what the population asks for."""
    sdk = tipping[policies[0]]
    parts = [f"With {users(scale):,} API-agent users on {max(1, round(10 * scale)) + max(1, round(6 * scale))} "
             f"replicas, losing 37.5 % of the replicas tips the cluster into a persistent collapse (goodput below "
             f"{COLLAPSE_SHARE:.0%} of the offered load for {COLLAPSE_HOLD_S / 60:.0f}+ min after the replicas are back) "
             "more often than not above these loads, with the SDK's 2 retries: "
             + "; ".join(f"{d}-min loss {_interval_text(sdk[f'{d}min'], scale)}" for d in triggers) + "."]
    others = []
    for p in policies[1:]:
        others.append(f"{LABELS[p]} " + ", ".join(f"{_interval_text(tipping[p][f'{d}min'], scale).split(',')[0]} "
                                                   f"({d} min)" for d in triggers))
    if others:
        parts.append("Other client policies: " + "; ".join(others) + " (intervals in the table below).")
    d = max(triggers)
    t = sdk[f"{d}min"]
    i1 = t["loads"].index(1.0)
    parts.append(f"At the default {users(scale):,} users, goodput in the last hour after a {d}-min loss is "
                 f"{t['post_share_of_offered'][i1].fmt(2)} of the offered load (SDK; the control without a trigger "
                 f"{metrics['control']['post_share_of_offered'].fmt(2)}).")
    return " ".join(parts)


def _tipping_lines(tipping: dict, R: int, scale: float) -> list[str]:
    rows = []
    for p, by_d in tipping.items():
        for key, t in by_d.items():
            cells = "; ".join(f"{u:,}: {k}/{n}" for u, k, n in zip(t["users"], t["collapsed"], t["runs"]))
            rows.append([LABELS[p], t["trigger_min"], cells, _interval_text(t, scale),
                         f"{t['post_share_of_offered'][t['loads'].index(1.0)].fmt(2)}"])
    return [f"Persistent collapses out of {R} replications at each load (users: collapsed/runs). A collapse is "
            f"persistent when goodput stays below {COLLAPSE_SHARE:.0%} of the pre-trigger rate of first attempts (the "
            f"offered load) in every 5-min bin of a {COLLAPSE_HOLD_S / 60:.0f}-min stretch after the trigger ends. The "
            "tipping load is where the observed share first reaches 50 % (interpolated between loads); its 95 % "
            "interval runs from where the Wilson upper bound reaches 50 % to where the lower bound does. The last "
            f"column is last-hour goodput as a share of the offered load at the default {users(scale):,} users "
            "(mean, 95 % t-interval).", ""] + md_table(
        ["policy", "trigger (min)", "collapses by users", "tipping load (95 % interval)",
         f"goodput / offered at {users(scale):,} users"], rows)


def _assumptions(rep: Report) -> None:
    """What the answer rests on, each with its source."""
    ref = "workloads-policies.md"
    rep.assume("The gateway sheds (529) beyond 8 outstanding requests per replica", f"[A] {ref} §3.5 (Stripe's "
               "concurrency limiter caps in-flight requests, e.g. 20; fleet-usage shedding) and §6.4 (shedding → 529)")
    rep.assume("Client retry policies: SDK 2 retries, 0.5·2^n s capped at 8 s; watchdog retries 429/529 forever; AWS "
               "retry quota; SRE adaptive throttle (K = 2, 120 s)", f"[P] {ref} §4.1–§4.4, presets §6.6")
    rep.assume("Agents: ~40 steps per task (LN(40, 0.8)), 8k-token system prompt; after the client gives up, the step "
               "is re-run up to 3 times (full jitter, 30 s base), then the task once", f"{ref} §6.2 ([A] task-level retry)")
    rep.assume("Prompt-cache TTL 5 min, no host KV tier: a prefix that expires while a call backs off is re-prefilled",
               f"[P] {ref} §6.2 (API default TTL) and §7 note 3")
    rep.assume("Client timeout 600 s per attempt", f"[P] {ref} §4.1 (SDK DEFAULT_TIMEOUT)")
    rep.assume(f"Persistent collapse: goodput < {COLLAPSE_SHARE:.0%} of the offered load for ≥ "
               f"{COLLAPSE_HOLD_S / 60:.0f} min after the trigger ends; offered load = the pre-trigger rate of first "
               "attempts", "issue 19 (definition); metastable failures, Bronson et al. HotOS'21 (" + ref + " §4.5)")
    rep.assume("SLO: TTFT ≤ 5 s and TPOT ≤ 0.15 s", "the default scenario's slo_ttft_s / slo_tpot_s")


def _cell_metrics(p: str, d: int, runs: list[dict]) -> dict:
    """One cell's figures over its replications: goodput before and after, recovery, collapse, retries."""
    base = [r["baseline"]["goodput_rps"] for r in runs]
    post = [r["post"]["goodput_rps"] for r in runs]
    times = [collapse_time_min(r["series"]["goodput_rps"], r["baseline"]["goodput_rps"], d) for r in runs]
    stuck = sum(1 for b, q in zip(base, post) if not (b > 0 and q / b >= RECOVERED))
    return {"policy": p, "trigger_min": d, "baseline_goodput_rps": stat(base), "post_goodput_rps": stat(post),
            "post_over_baseline": ratio(base, post), "recovered_share": 1 - stuck / len(runs),
            "post_share_of_offered": ratio([r["baseline"]["calls_rps"] for r in runs], post),
            "collapsed": {"count": stuck, "of": len(runs), "share": proportion(stuck, len(runs))[0],
                          "ci_low": proportion(stuck, len(runs))[1], "ci_high": proportion(stuck, len(runs))[2]},
            "dropped_below_half": sum(1 for x in times if math.isfinite(x)),
            "collapse_after_min": stat(times),
            "attempts_per_call_post": stat([r["post"]["attempts_per_call"] for r in runs]),
            "attempts_per_call_baseline": stat([r["baseline"]["attempts_per_call"] for r in runs]),
            "prefill_per_request_post": stat([r["post"]["prefill_per_request"] for r in runs]),
            "prefill_per_request_baseline": stat([r["baseline"]["prefill_per_request"] for r in runs]),
            "prefix_hit_rate_post": stat([r["post"]["prefix_hit_rate"] for r in runs]),
            "ttft_p90_post_s": stat([r["post"]["ttft_p90_s"] for r in runs]),
            "session_failure_rate_after_trigger": stat([r["sessions_failed_after_trigger"] for r in runs])}


def _table_row(m: dict) -> list:
    """The results table's row of one cell."""
    p, c = m["policy"], m["collapsed"]
    return [LABELS[p] if p != "control" else LABELS["control"], m["trigger_min"] or "-",
            m["baseline_goodput_rps"].fmt(3), m["post_goodput_rps"].fmt(3), m["post_over_baseline"].fmt(2),
            f"{c['count']}/{c['of']} ({c['ci_low']:.0%}–{c['ci_high']:.0%})",
            m["attempts_per_call_post"].fmt(3), m["prefill_per_request_post"].fmt(3),
            m["session_failure_rate_after_trigger"].fmt(2)]


def _answer(metrics: dict, policies, triggers, R: int) -> str:
    """The answer: stable without a trigger, what each trigger leaves behind, and what sustains it."""
    control, dmax = metrics["control"], max(triggers)

    def stuck_text(m) -> str:
        c = m["collapsed"]
        return f"{c['count']}/{c['of']} stay collapsed"

    parts = [f"Without a trigger the load is stable: last-hour goodput is {control['post_over_baseline'].fmt(2)} × the "
             f"pre-trigger level ({control['baseline_goodput_rps'].fmt(3, 'req/s')}), "
             f"{control['collapsed']['count']}/{control['collapsed']['of']} replications below 80 %."]
    for d in triggers:
        ms = {p: metrics[f"{p}@{d}min"] for p in policies}
        k = ms[policies[0]]["dropped_below_half"]
        col = ms[policies[0]]["collapse_after_min"]
        when = (f"goodput falls below half the baseline in {k}/{R} replications, {col.fmt(2)} min into the outage"
                if k else "goodput never falls below half the baseline")
        parts.append(f"After a {d}-min loss of 37.5 % of the replicas ({when}, SDK), the last hour runs at "
                     + "; ".join(f"{LABELS[p]} {ms[p]['post_over_baseline'].fmt(2)} × baseline ({stuck_text(ms[p])})"
                                 for p in policies) + ".")
    total = {p: metrics[f"{p}@{dmax}min"]["collapsed"]["count"] for p in policies}
    short = sum(metrics[f"{p}@{min(triggers)}min"]["collapsed"]["count"] for p in policies)
    if any(total.values()) and control["collapsed"]["count"] == 0:
        parts.append(f"With the {dmax}-min trigger the failure is metastable in {sum(total.values())} of "
                     f"{R * len(policies)} runs: goodput is still below {RECOVERED:.0%} of its pre-trigger level "
                     f"{(POST[0] - TRIGGER_AT_S) / 60 - dmax:.0f}+ min after the pool is back, at a load the control "
                     "serves without trouble"
                     + (f", while after the {min(triggers)}-min trigger no run stays collapsed — the trigger's size "
                        "decides whether the cluster tips over" if short == 0 and len(triggers) > 1 else "")
                     + ". " + "Policies by post-trigger goodput: " + ", ".join(
                         f"{LABELS[p]} {metrics[f'{p}@{dmax}min']['post_goodput_rps'].fmt(3, 'req/s')}"
                         for p in sorted(policies, key=lambda p: -metrics[f"{p}@{dmax}min"]["post_goodput_rps"].mean))
                     + " (paired differences against the SDK below).")
    sdk = metrics[f"{policies[0]}@{dmax}min"]
    amp = sdk["prefill_per_request_post"].mean / max(sdk["prefill_per_request_baseline"].mean, 1e-9)
    parts.append(f"What sustains it (SDK, {dmax}-min trigger): prefill tokens per completed request go from "
                 f"{sdk['prefill_per_request_baseline'].fmt(3)} before the trigger to "
                 f"{sdk['prefill_per_request_post'].fmt(3)} in the last hour ({amp:.1f}×): agents whose pinned "
                 "prefixes expired (300 s TTL) or were evicted while they queued or backed off re-prefill their whole "
                 "context; and retries: attempts per call in the last hour are "
                 + ", ".join(f"{LABELS[p]} {metrics[f'{p}@{dmax}min']['attempts_per_call_post'].fmt(3)}"
                             for p in policies) + ".")
    return " ".join(parts)


def _sections(rep: Report, table: list, comps: dict, R: int, scale: float, triggers, story: str) -> None:
    """The results at the default load (``story``: what each trigger leaves behind, and why; then the
    table), the paired differences and the method."""
    rep.section(f"At the default load ({users(scale):,} users)", [story, "",
        "Goodput = completions within TTFT ≤ 5 s and TPOT ≤ 0.15 s per second. Baseline = the 30 min before the "
        f"trigger; post = the last hour ({POST[0] / 60:.0f}–{POST[1] / 60:.0f} min). Means over {R} paired "
        "replications with 95 % Student-t intervals; the ratio is per replication.", ""] + md_table(
        ["policy", "trigger (min)", "baseline goodput (req/s)", "post goodput (req/s)", "post / baseline",
         "stayed collapsed (<80 %; Wilson 95 % CI)", "attempts per call (post)", "prefill tokens per request (post)",
         "session failure rate (after trigger)"], table))
    rep.section("Paired differences after the long trigger (policy − SDK, post goodput, req/s)",
                [f"- {LABELS[p]}: {c.fmt(3)}" + (" — significant" if c.excludes(0) else " — not significant")
                 for p, c in comps.items()])
    rep.section("Method", [
        f"- Fleet: pools `a` ({max(1, round(10 * scale))}) and `b` ({max(1, round(6 * scale))}) replicas of "
        "DeepSeek-V3 FP8 on 8×H200, session-affinity routing, prefixes pinned for 300 s (the API cache TTL), no host "
        "KV tier; gateway sheds (529) at 8 outstanding requests per replica.",
        f"- Load: {users(scale)} `autonomous_api_agent` users (20 tasks per user-day, flat), each "
        "task ~40 steps with tool calls; after the client gives up, the agent re-runs the step up to 3 times "
        "(full jitter, 30 s base) and then restarts the task once (the profile's defaults).",
        f"- Trigger: pool `b` down from {TRIGGER_AT_S / 60:.0f} min for " + " or ".join(map(str, triggers))
        + " min; runs last 4 h. The control runs the SDK policy without the trigger (with no errors the policies "
        "behave identically).",
        "- Collapse time: minutes from the trigger to the first 5-min bin below half the baseline goodput.",
        "- Common random numbers: every cell uses the same seeds, so arrivals and task sizes match across cells."])


def _band(runs, key):
    # goodput is >= 0: the band is clipped there (the table keeps the clipped bounds)
    return mean_band(np.array([r["series"][key] for r in runs]), valid=NONNEGATIVE)


def _figures(out: Path, by: dict, policies, triggers, t_min, metrics) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_goodput_timeseries(out, by, policies, triggers, t_min),
            _figure_recovery(out, policies, triggers, metrics),
            _figure_amplification(out, by, policies, triggers, t_min)]


def _figure_goodput_timeseries(out: Path, by: dict, policies, triggers, t_min) -> tuple:
    """Figure ``goodput_timeseries``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(1, len(triggers), figsize=(7 * len(triggers), 4.6), sharey=True, squeeze=False)
    rows = []
    for ax, d in zip(axes[0], triggers):
        m, lo, hi = _band(by[("control", 0)], "goodput_rps")
        ax.plot(t_min, m, color="grey", ls="--", lw=1.5, label=LABELS["control"])
        rows += [{"trigger_min": d, "policy": "control", "t_min": t, "goodput_rps": a, "ci_low": b, "ci_high": c}
                 for t, a, b, c in zip(t_min, m, lo, hi)]
        for p in policies:
            m, lo, hi = _band(by[(p, d)], "goodput_rps")
            line, = ax.plot(t_min, m, lw=1.6, label=LABELS[p])
            ax.fill_between(t_min, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            rows += [{"trigger_min": d, "policy": p, "t_min": t, "goodput_rps": a, "ci_low": b, "ci_high": c}
                     for t, a, b, c in zip(t_min, m, lo, hi)]
        ax.axvspan(TRIGGER_AT_S / 60, TRIGGER_AT_S / 60 + d, color="red", alpha=0.12, label="pool b down")
        ax.axvspan(POST[0] / 60, POST[1] / 60, color="green", alpha=0.06, label="post window")
        ax.set_title(f"{d}-min loss of 37.5 % of replicas")
        ax.set_xlabel("simulated minutes")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("goodput (SLO-met completions / s)")
    axes[0][-1].legend(fontsize=8, loc="lower left")
    fig.suptitle("Goodput before, during and after the trigger (mean of replications, 95 % CI band)")
    fig.tight_layout()
    return (save_figure(fig, out, "goodput_timeseries", pd.DataFrame(rows)),
            "Goodput per 5-min bin by retry policy; red: the outage; grey dashed: the control without trigger.")


def _figure_recovery(out: Path, policies, triggers, metrics) -> tuple:
    """Figure ``recovery``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    # 2. recovery bars
    fig, ax = plt.subplots(figsize=(10, 5.2))
    rows = []
    width = 0.8 / len(triggers)
    for j, d in enumerate(triggers):
        for i, p in enumerate(policies):
            s = metrics[f"{p}@{d}min"]["post_over_baseline"]
            lo = s.mean - s.low if math.isfinite(s.low) else 0
            x = i + (j - (len(triggers) - 1) / 2) * width
            ax.bar(x, s.mean, width, yerr=[[lo], [lo]], capsize=3, color=f"C{j}", alpha=0.75,
                   label=f"{d}-min trigger" if i == 0 else None)
            ax.scatter([x] * len(s.values), s.values, color="black", s=12, zorder=3,
                       label="one replication" if i == 0 and j == 0 else None)
            rows.append({"policy": p, "trigger_min": d, "post_over_baseline": s.mean, "ci_low": s.low,
                         "ci_high": s.high, "replications": " ".join(f"{v:.3f}" for v in s.values)})
    c = metrics["control"]["post_over_baseline"]
    ax.axhline(c.mean, color="grey", ls="--", label="control (no trigger)")
    ax.axhline(RECOVERED, color="red", ls=":", label=f"recovered threshold {RECOVERED:.0%}")
    rows.append({"policy": "control", "trigger_min": 0, "post_over_baseline": c.mean, "ci_low": c.low, "ci_high": c.high})
    ax.set_xticks(range(len(policies)), [LABELS[p] for p in policies], fontsize=9)
    ax.set_ylabel("last-hour goodput / pre-trigger goodput")
    ax.set_title("Does goodput come back after the pool returns? (bars: mean, 95 % CI; dots: replications)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=5)
    fig.tight_layout()
    return (save_figure(fig, out, "recovery", pd.DataFrame(rows)),
            "Post-trigger goodput as a share of the pre-trigger level, per policy and trigger length.")


def _figure_tipping(out: Path, tipping: dict, scale: float) -> tuple:
    """Figure ``tipping``: chance of a persistent collapse against users, one panel per trigger length,
    and the tipping load per policy against the trigger length."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    keys = list(next(iter(tipping.values())))
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(5 * (len(keys) + 1), 4.6), squeeze=False)
    rows = []
    for j, key in enumerate(keys):
        ax = axes[0][j]
        for i, (p, by_d) in enumerate(tipping.items()):
            t = by_d[key]
            x = np.array(t["users"], float) + (i - (len(tipping) - 1) / 2) * 2 * scale
            share = np.array([s[0] for s in t["share"]])
            err = [share - [s[1] for s in t["share"]], [s[2] for s in t["share"]] - share]
            ax.errorbar(x, share, yerr=err, marker="o", capsize=3, color=f"C{i}", label=LABELS[p])
            rows += [{"panel": "collapse_share", "policy": p, "trigger_min": t["trigger_min"], "load": L, "users": u,
                      "collapsed": k, "runs": n, "value": s[0], "ci_low": s[1], "ci_high": s[2]}
                     for L, u, k, n, s in zip(t["loads"], t["users"], t["collapsed"], t["runs"], t["share"])]
        ax.axhline(0.5, color="grey", ls=":")
        ax.set_xlabel("API-agent users")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{key[:-3]}-min trigger: chance of a persistent collapse", fontsize=10)
    axes[0][0].set_ylabel("share of replications (Wilson 95 %)")
    axes[0][0].legend(fontsize=8)
    ax = axes[0][-1]
    for i, (p, by_d) in enumerate(tipping.items()):
        xs, ys, lo, hi = [], [], [], []
        for key in keys:
            t = by_d[key]
            tu, edge = t["tipping_users"], (t["users"][0], t["users"][-1])
            est = tu["estimate"]
            if not math.isfinite(est):       # beyond (or below) the sweep: drawn at its edge, open marker
                est = edge[1] if est > 0 else edge[0]
            clip = lambda v: min(max(v, edge[0]), edge[1]) if not math.isfinite(v) else v  # noqa: E731
            xs.append(t["trigger_min"] + (i - (len(tipping) - 1) / 2) * 1.5)
            ys.append(est)
            lo.append(est - clip(tu["ci_low"]))
            hi.append(clip(tu["ci_high"]) - est)
            rows.append({"panel": "tipping_users", "policy": p, "trigger_min": t["trigger_min"],
                         "value": tu["estimate"], "ci_low": tu["ci_low"], "ci_high": tu["ci_high"]})
        ax.errorbar(xs, ys, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], marker="s", capsize=3, color=f"C{i}",
                    label=LABELS[p])
    ax.axhline(users(scale), color="grey", ls="--", lw=1, label="default users")
    ax.set_xlabel("trigger length (min)")
    ax.set_ylabel("users where the chance passes 50 %")
    ax.set_title("Tipping load by trigger length (95 % interval;\nbars end at the sweep's edge when open)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.suptitle("When does a capacity loss tip the cluster into a persistent collapse?")
    fig.tight_layout()
    return (save_figure(fig, out, "tipping", pd.DataFrame(rows)),
            "Share of replications with a persistent collapse at each load per trigger length and retry policy, "
            "and the tipping load (users) per policy against the trigger length.")


def _figure_amplification(out: Path, by: dict, policies, triggers, t_min) -> tuple:
    """Figure ``amplification``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    # 3. what sustains it: attempts and prefill work over time (longest trigger)
    d = max(triggers)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    rows = []
    for key, ax, title in (("attempts_rps", axes[0], "attempts sent / s (incl. retries)"),
                           ("shed_rps", axes[1], "529 overload responses / s"),
                           ("prefill_tok_s", axes[2], "prefill tokens computed / s (millions)")):
        div = 1e6 if key == "prefill_tok_s" else 1
        for p in ["control"] + list(policies):
            runs = by[("control", 0)] if p == "control" else by[(p, d)]
            m, _, _ = _band(runs, key)
            ax.plot(t_min, m / div, lw=1.4, ls="--" if p == "control" else "-",
                    color="grey" if p == "control" else None, label=LABELS[p])
            rows += [{"policy": p, "series": key, "t_min": t, "value": v} for t, v in zip(t_min, m)]
        ax.axvspan(TRIGGER_AT_S / 60, TRIGGER_AT_S / 60 + d, color="red", alpha=0.12)
        ax.set_title(title)
        ax.set_xlabel("simulated minutes")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"What sustains the collapse ({d}-min trigger): retries and re-prefill work")
    fig.tight_layout()
    return (save_figure(fig, out, "amplification", pd.DataFrame(rows)),
            "Offered attempts, shed requests and prefill work over time, per policy (longest trigger).")


#: this experiment's own command-line option (``agentsim experiment retry_storm --sensitivity``)
OPTIONS = (SENSITIVITY_OPTION,)


def run_keywords(o: dict) -> dict:
    """run()'s keywords from the parsed :data:`OPTIONS`."""
    return {"sensitivity": bool(o.get("sensitivity"))}


main = main_for(__name__)


if __name__ == "__main__":
    main()
