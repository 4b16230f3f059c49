"""site_outage: one of two sites is lost mid-day — what do agents see, and how fast is it over?

The default scenario's fleet is split over two sites (``memphis`` and ``atlanta``, each half of
every pool) behind one router. On a weekday, ``atlanta`` goes down at 17:00 UTC for two hours
(the coding-agent peak): in-flight requests there fail back to their
clients (``replica_failed``), the surviving site takes all traffic, the gateway sheds what it
cannot queue (``529``), and clients retry by their policies (Claude Code: 10 retries; the API
SDK: 2; chat users regenerate once). The same day without the outage, with the same seeds, is
the baseline; every figure is a paired difference. Two loads: the default users, and 1.25× them.

Answers: the agents' failure rate (sessions active around the outage that end ``failed``), task
completion time (session duration), the request-level damage (failed attempts by outcome,
retries), and recovery — how long after the site returns goodput per 15 minutes is back
within 10 % of the baseline's.

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
from ...util.stats import NONNEGATIVE, mean_band
from . import Report, tidy, check_args, default_scenario, main_for, md_table, paired, ratio, run_arms, save_figure, scale_system, seeds, simulate_one, stat

QUESTION = ("When a site is lost mid-day, how much do agents' failure rate and task completion time rise, and "
            "how long does recovery take?")
FULL_SCALE = 4.0
REPLICATIONS = 3
START_HOUR = 14
START = f"2026-06-01T{START_HOUR:02d}:00:00Z"
DURATION_S = 8 * 3600.0
OUTAGE = (3 * 3600.0, 5 * 3600.0)        # 17:00-19:00 UTC, the coding-agent peak
LOADS = (1.0, 1.25)
BIN_S = 900.0
AROUND = (OUTAGE[0] - 3600.0, OUTAGE[1])  # sessions starting in the hour before and during the outage
RECOVERED = 0.9
OUTAGE_UTC = f"{START_HOUR + OUTAGE[0] / 3600:.0f}:00–{START_HOUR + OUTAGE[1] / 3600:.0f}:00"


def scenario(scale: float, outage: bool, outage_s: tuple[float, float] = OUTAGE, load: float = 1.0,
             duration_s: float = DURATION_S) -> dict:
    sc = default_scenario()
    sc.update(name="site_outage" if outage else "site_outage_baseline", start=START, duration_s=duration_s,
              warmup_s=3600.0, sample_s=BIN_S)
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
    sc["outages"] = [{"target": "site:atlanta", "start_s": outage_s[0], "end_s": outage_s[1]}] if outage else []
    return sc


def measure(sc: dict, seed: int) -> dict:
    res = simulate_one(sc, seed)
    df = res.requests
    edges = np.arange(0.0, sc["duration_s"] + BIN_S / 2, BIN_S)
    done = df[df["outcome"] == "completed"]
    ok = done[(done["ttft_s"] <= sc["slo_ttft_s"]) & ~(done["tpot_s"] > sc["slo_tpot_s"])]
    hist = lambda x: np.histogram(x, edges)[0].astype(float)  # noqa: E731
    bad = df[~df["outcome"].isin(["completed", "in_flight", "429_window", "429_spend_cap"])]
    ttft_p90 = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        x = done.loc[(done["arrival_s"] >= lo) & (done["arrival_s"] < hi), "ttft_s"]
        ttft_p90.append(float(np.percentile(x, 90)) if len(x) else math.nan)
    ss = res.sessions
    top = ss[ss["kind"] == "session"]
    around = top[(top["start_s"] >= AROUND[0]) & (top["start_s"] < AROUND[1])]
    ended = around[around["outcome"] != "in_flight"]
    by_pop = {}
    for prof, g in ended.groupby("profile", observed=True):
        gdone = g.loc[g["outcome"] == "completed", "duration_s"]
        by_pop[str(prof)] = {"failure_rate": float((g["outcome"] == "failed").mean()) if len(g) else math.nan,
                             "lost_rate": float(g["outcome"].isin(["failed", "abandoned", "limited"]).mean())
                             if len(g) else math.nan,
                             "abandon_rate": float((g["outcome"] == "abandoned").mean()) if len(g) else math.nan,
                             "ended": int(len(g)),
                             "duration_mean_s": float(gdone.mean()) if len(gdone) else math.nan,
                             "duration_p90_s": float(np.percentile(gdone, 90)) if len(gdone) else math.nan}
    cdone = ended.loc[ended["outcome"] == "completed", "duration_s"]
    post = _post_outage(res, df, sc["duration_s"])
    window = df[(df["finish_s"] >= OUTAGE[0]) & (df["finish_s"] < OUTAGE[1])]   # attempts that ended in it
    outcomes = {str(k): int(v) for k, v in window["outcome"].value_counts().items() if v}
    calls = window[window["attempt"] == 0]          # a call's first attempt
    return {
        "series": {"goodput_rps": hist(ok["finish_s"]) / BIN_S, "failed_rps": hist(bad["arrival_s"]) / BIN_S,
                   "attempts_rps": hist(df["arrival_s"]) / BIN_S, "ttft_p90_s": np.array(ttft_p90),
                   "session_failures": hist(top.loc[top["outcome"] == "failed", "end_s"]),
                   "abandoned": hist(df.loc[df["outcome"] == "cancelled", "finish_s"])},
        "failure_rate": float((ended["outcome"] == "failed").mean()) if len(ended) else math.nan,
        "abandon_rate": float((ended["outcome"] == "abandoned").mean()) if len(ended) else math.nan,
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


#: what can keep goodput down after the site returns, as measured after it does (see _post_outage)
MECHANISMS = {"queue": "requests queued at the replicas", "retries": "attempts per call",
              "cache_loss": "prefix-cache miss rate (uncached share of input tokens)"}


def _post_outage(res, df, duration_s: float) -> dict:
    """After the site returns: the mean queue over the sampled intervals, attempts per call, and the
    cache miss rate — the three mechanisms that can keep a run from recovering."""
    ts = res.timeseries
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


METRICS = (("failure_rate", "session failure rate", 3), ("abandon_rate", "session abandon rate (all profiles; only chat users abandon)", 3),
           ("duration_mean_s", "session time, mean (s)", 3), ("duration_p50_s", "session time, p50 (s)", 3),
           ("duration_p90_s", "session time, p90 (s)", 3),
           ("goodput_outage_rps", "goodput during the outage (req/s)", 3),
           ("outage_failed_share", "failed attempts during the outage (share)", 3),
           ("outage_attempts_per_call", "attempts per call during the outage", 3))


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None,
        workers: int | None = None, *, address: str | None = None, loads=LOADS, duration_s: float = DURATION_S) -> dict:
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("site_outage", QUESTION)
    ss = seeds(seed, R)
    cells = [(L, o) for L in loads for o in (False, True)]
    if duration_s < OUTAGE[1] + 2 * BIN_S:
        raise InputError(f"duration_s must leave time after the outage (> {OUTAGE[1] + 2 * BIN_S:g} s), got {duration_s}")
    arms = {(L, o): scenario(scale, o, load=L, duration_s=duration_s) for L, o in cells}
    by = run_arms(measure, arms, ss, workers, address, label="site_outage")
    rep.runs = tidy(by, ss, lambda k: {"load": k[0], "outage": k[1]})
    metrics: dict = {}
    parts = []
    for L in loads:
        base, hit = by[(L, False)], by[(L, True)]
        M, rows, prof_rows, oc_rows = _load_metrics(base, hit)
        metrics[f"{L:g}x"] = M
        parts.append(_load_answer(L, M, hit, R, duration_s))
        rep.section(f"Results at {L:g}× the default load", [
            f"Sessions starting {AROUND[0] / 3600 + START_HOUR:.0f}:00–{AROUND[1] / 3600 + START_HOUR:.0f}:00 UTC "
            f"(the hour before and the outage), {R} paired replications, 95 % intervals.", ""]
            + md_table(["metric", "baseline (no outage)", f"site lost {OUTAGE_UTC} UTC", "change"], rows)
            + ["By session profile:", ""]
            + md_table(["profile", "failure rate, baseline", "failure rate, outage", "mean time (s), baseline",
                        "mean time (s), outage"], prof_rows)
            + ["Attempts that ended during the outage window, by outcome (mean per replication):", ""]
            + md_table(["outcome", "baseline", "outage"], oc_rows))
    rep.answer = " ".join(parts)
    _method(rep, arms[cells[1]], scale, duration_s)     # the first load with the outage
    for path, caption in _figures(out, by, loads):
        rep.figure(path, caption)
    rep.results = {"metrics": metrics, "replications": R, "seeds": ss}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "loads": list(loads), "outage_utc": OUTAGE_UTC,
                    "window_start_utc": START, "duration_s": duration_s}
    return rep.write(out, time.perf_counter() - t0)


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


def _method(rep: Report, sc0: dict, scale: float, duration_s: float) -> None:
    """The method section (the fleet as the outage scenario ``sc0`` has it)."""
    fleet = ", ".join(f"{k} {v['replicas']}" for k, v in sc0["pools"].items())
    rep.section("Method", [
        f"- Fleet: the default scenario's pools split over two sites ({fleet} replicas), one session-affinity "
        f"router across both; scaled ×{scale:g}.",
        f"- Traffic: the default populations (coding agents, API agents, chat) times the load factor, weekday "
        f"{START_HOUR}:00–{START_HOUR + duration_s / 3600:.0f}:00 UTC, the first hour warm-up. Site `atlanta` is "
        f"down {OUTAGE_UTC} UTC; its in-flight requests fail (`replica_failed`) and its sessions lose their cached "
        "prefixes. The gateway is the default one (shedding at 96 outstanding requests per up replica); clients "
        "time out after 600 s.",
        f"- Recovery: the first 15-min bin after the site returns from which goodput stays >= {RECOVERED:.0%} of "
        "the baseline's in the same bin, in minutes after the site returns.",
        "- Failure rate = sessions ending `failed` / sessions ended (in-flight at the end excluded); abandon rate = "
        "chat users who gave up waiting. Outcomes during the outage count the attempts that ended in it "
        "(in-flight failures included).",
        "- Same seeds with and without the outage: differences are paired."])


def _figures(out: Path, by, loads) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_timeline(out, by, loads),
            _figure_sessions(out, by, loads)]


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


main = main_for(__name__)


if __name__ == "__main__":
    main()
