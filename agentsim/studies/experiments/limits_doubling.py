"""limits_doubling: double the five-hour limits and drop the peak-hour throttle (6 May 2026).

The default scenario's measured weekday (Colossus-like mixed fleet serving coding agents, API
agents and chat; Tuesday, after a whole day of warm-up) is run twice with the same seeds:

* **before** — the plans of 26 Mar – 6 May 2026: Pro $6, Max 5x $30, Max 20x $120 of
  list-price usage per rolling five hours, and the peak-hour throttle on (weekdays 05–11 PT =
  12–18 UTC, usage weighs 1.5×);
* **after** — the ``*_post_2026_05_06`` plans: five-hour budgets doubled, the peak-hour weight
  removed (the throttle policy stays in the chain, switched off). Weekly budgets are unchanged.

Coding-agent users are split over the plans (40 % Pro, 40 % Max 5x, 20 % Max 20x — an
assumption: Anthropic publishes no mix); chat users are on Pro. The change in demand
(requests sent and served, tokens served), GPU busy-hours, energy, peak-hour latency and the
429 rates are paired differences per seed, with 95 % intervals.

Scale: ``scale`` multiplies the fleet and every population (default: the default scenario's
240 GPUs and 5,540 users); ``FULL_SCALE`` = 4.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ...provider.limits import prices
from ...workload.profiles import get_profile
from ...util.stats import NONNEGATIVE, mean_band
from . import (Report, tidy, check_args, default_scenario, main_for, md_table, paired, ratio, run_arms, save_figure,
               scale_system, seeds, simulate_one, stat)
from .window import WARMUP_H, warm_window, warmup_keywords, warmup_option, warmup_sentence
from .sensitivity import sensitivity as step_sensitivity, sensitivity_sentence, SENSITIVITY_OPTION

QUESTION = ("What does doubling the five-hour usage limits and dropping the peak-hour throttle do to demand, "
            "GPU-hours, peak-hour latency and 429 rates?")
FULL_SCALE = 4.0
REPLICATIONS = 3
AFTER = "_post_2026_05_06"     # the plans after the change carry this suffix in limits.toml


def plan_mix() -> tuple[tuple[str, float], ...]:
    """The default coders' sourced plan mix (default.toml, post-change plans), as the plans before it."""
    mix = default_scenario()["populations"]["coders"]["plan_mix"]
    return tuple((plan.removesuffix(AFTER), share) for plan, share in mix.items())


WINDOW_START = "2026-06-02T00:00:00Z"     # the measured day: the default scenario's (a Tuesday)
PEAK = (12 * 3600.0, 18 * 3600.0)          # the throttle's hours, from the measured day's 00:00 UTC
CDF_SAMPLE = 4000
#: elasticity arms after the change: (growth of coding users, held-back sessions per user-day returning)
ELASTICITY = ((1.0, 0.25), (1.25, 0.0))


def scenario(scale: float, after: bool, duration_s: float = 86400.0, growth: float = 1.0,
             held_back: float = 0.0, warmup_h: float = WARMUP_H) -> dict:
    """The default day (``duration_s`` measured from WINDOW_START after ``warmup_h`` hours of warm-up)
    before or after the change. Elasticity (after only): ``growth`` multiplies the
    coding users (new subscribers the looser plans bring), ``held_back`` adds that share to each coding
    user's sessions per day (demand the old limits held back that returns)."""
    sc = default_scenario()
    coders = sc["populations"].pop("coders")
    pops = {}
    per_day = get_profile(coders["profile"], coders.get("params", {})).sessions_per_user_day
    for plan, share in plan_mix():
        c = {k: v for k, v in coders.items() if k != "plan_mix"}
        c["size"] = max(1, round(coders["size"] * share * growth))
        if held_back:
            c["params"] = dict(c.get("params", {}), sessions_per_user_day=per_day * (1 + held_back))
        c["plan"] = f"{plan}{AFTER}" if after else plan
        pops[f"coders_{plan}"] = c
    chat = dict(sc["populations"]["chat"], plan="pro_post_2026_05_06" if after else "pro")
    sc["populations"] = {**pops, "api_agents": sc["populations"]["api_agents"], "chat": chat}
    for p in sc["policies"]:
        if p["name"] == "peak_throttle":
            p["enabled"] = not after
    sc["name"] = f"limits_{'after' if after else 'before'}" + (f"_g{growth:g}_h{held_back:g}" if (growth, held_back)
                                                                != (1.0, 0.0) else "")
    sc.update(warm_window(WINDOW_START, duration_s, warmup_h))
    return scale_system(sc, scale)


def measure(sc: dict, seed: int) -> dict:
    res = simulate_one(sc, seed)
    df = res.requests
    warm = sc["warmup_s"]
    df = df[df["arrival_s"] >= warm]
    coder = df["population"].astype(str).str.startswith("coders")
    done = df[df["outcome"] == "completed"]
    peak = df[(df["arrival_s"] >= warm + PEAK[0]) & (df["arrival_s"] < warm + PEAK[1])]
    peak_done = peak[peak["outcome"] == "completed"]
    dur_h = (sc["duration_s"] - warm) / 3600
    pools = res.window_pools()          # busy share and energy of the measured day only
    pct = lambda x, q: float(np.percentile(x, q)) if len(x) else math.nan  # noqa: E731
    ss = res.sessions
    top = ss[(ss["kind"] == "session") & (ss["start_s"] >= warm)] if len(ss) else ss
    coder_sessions = top[top["population"].astype(str).str.startswith("coders")] if len(top) else top
    coder_req = df[coder]
    users_limited = coder_req.loc[coder_req["outcome"] == "429_window", "user"].nunique()
    cs = coder_sessions[coder_sessions["outcome"] != "in_flight"] if len(coder_sessions) else coder_sessions
    users_active = coder_req["user"].nunique()
    return {
        "hourly": _hourly(res, df, done, coder, warm, sc["duration_s"]),
        "requests": float(len(df)),
        "completed": float(len(done)),
        "coder_requests": float(coder.sum()),
        "coder_completed": float((coder & (df["outcome"] == "completed")).sum()),
        "output_tokens": float(done["output_tokens"].sum()),
        "input_tokens": float(done["input_tokens"].sum()),
        "uncached_input_tokens": float(done["prefill_tokens"].sum()),
        "coder_output_tokens": float(done.loc[coder[done.index], "output_tokens"].sum()),
        "busy_gpu_hours": float((pools["busy_frac"] * pools["gpus"]).sum() * dur_h),
        "energy_mwh": float(pools["facility_energy_j"].sum()) / 3.6e9,
        "peak_ttft_p50_s": pct(peak_done["ttft_s"], 50), "peak_ttft_p90_s": pct(peak_done["ttft_s"], 90),
        "peak_ttft_p99_s": pct(peak_done["ttft_s"], 99),
        "peak_tpot_p90_s": pct(peak_done["tpot_s"].dropna(), 90),
        "peak_queue_s": float(peak_done["queue_s"].mean()) if len(peak_done) else math.nan,
        "peak_completed": float(len(peak_done)),
        "rate_429_window": float((df["outcome"] == "429_window").mean()),
        "rate_429_window_peak": float((peak["outcome"] == "429_window").mean()) if len(peak) else math.nan,
        "rate_429_any": float(df["outcome"].astype(str).str.startswith("429").mean()),
        "rate_529": float((df["outcome"] == "529_overload").mean()),
        "coder_users_limited_share": users_limited / users_active if users_active else math.nan,
        "coder_sessions_limited_share": float((coder_sessions["outcome"] == "limited").mean())
        if len(coder_sessions) else math.nan,
        "coder_sessions_completed": float((coder_sessions["outcome"] == "completed").sum()) if len(coder_sessions) else 0.0,
        "coder_session_usd": _session_usd(cs),
        "coder_session_input_tokens": float(cs["input_tokens"].mean()) if len(cs) else math.nan,
        "peak_ttft_sample": _sample(peak_done["ttft_s"].to_numpy()),
    }


def _hourly(res, df, done, coder, warm: float, duration_s: float) -> dict:
    """Hourly series of the measured day: completions, output tokens (all, coding agents), attempts,
    429s and busy GPUs."""
    hours = np.arange(warm, duration_s + 1, 3600.0)
    hist = lambda x, w=None: np.histogram(x, hours, weights=w)[0].astype(float)  # noqa: E731
    return {
        "completed": hist(done["finish_s"]),
        "output_tokens": hist(done["finish_s"], done["output_tokens"]),
        "coder_output_tokens": hist(done.loc[coder[done.index], "finish_s"],
                                    done.loc[coder[done.index], "output_tokens"]),
        "attempts": hist(df["arrival_s"]),
        "window_429": hist(df.loc[df["outcome"] == "429_window", "arrival_s"]),
        "busy_gpus": _busy_gpus(res, hours),
    }


def _sample(ttft: np.ndarray) -> np.ndarray:
    """At most CDF_SAMPLE values, sorted, drawn without replacement by a fixed-seed generator."""
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(ttft, size=min(CDF_SAMPLE, len(ttft)), replace=False)) if len(ttft) else ttft


def _session_usd(cs) -> float:
    """Mean list-price cost (Sonnet prices) of the ended coding sessions ``cs``."""
    price = prices("sonnet")
    return float(np.mean([price.usd(i - c, c, o) for i, c, o in
                          zip(cs["input_tokens"], cs["cached_tokens"], cs["output_tokens"])])) if len(cs) else math.nan


def _busy_gpus(res, hours) -> np.ndarray:
    """Mean busy GPUs per hour (busy share × GPUs, summed over pools) from the time series."""
    ts = res.timeseries
    if not len(ts):
        return np.zeros(len(hours) - 1)
    gpus = dict(zip(res.pools["pool"], res.pools["gpus"]))
    w = ts["busy_frac"].to_numpy() * ts["pool"].astype(str).map(gpus).to_numpy(dtype=float)
    t = ts["time_s"].to_numpy() - 1e-9          # a sample at time t covers the interval ending at t
    tot = np.histogram(t, hours, weights=w)[0]
    cnt = np.histogram(t, hours)[0] / max(ts["pool"].nunique(), 1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)


ROWS = (  # key, label, unit, digits
    ("requests", "requests sent (attempts)", "", 4),
    ("completed", "requests served", "", 4),
    ("coder_completed", "coding-agent requests served", "", 4),
    ("output_tokens", "output tokens served", "", 4),
    ("input_tokens", "input tokens served", "", 4),
    ("coder_sessions_completed", "coding sessions completed", "", 4),
    ("busy_gpu_hours", "GPU busy-hours", "", 4),
    ("energy_mwh", "facility energy (MWh)", "", 4),
    ("peak_ttft_p50_s", "peak-hour TTFT p50 (s)", "", 3),
    ("peak_ttft_p90_s", "peak-hour TTFT p90 (s)", "", 3),
    ("peak_ttft_p99_s", "peak-hour TTFT p99 (s)", "", 3),
    ("peak_tpot_p90_s", "peak-hour TPOT p90 (s)", "", 3),
    ("peak_queue_s", "peak-hour mean queue wait (s)", "", 3),
    ("rate_429_window", "429 (usage window) share of requests", "", 3),
    ("rate_429_window_peak", "429 (usage window) share, peak hours", "", 3),
    ("rate_529", "529 (overload) share of requests", "", 3),
    ("coder_users_limited_share", "coding users hitting a window limit", "", 3),
    ("coder_sessions_limited_share", "coding sessions ended by a limit", "", 3),
    ("coder_session_usd", "list-price usage per ended coding session (USD)", "", 3),
    ("coder_session_input_tokens", "input tokens per ended coding session", "", 3),
)


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None, workers: int | None = None,
        *, address: str | None = None, duration_s: float = 86400.0, elasticity=ELASTICITY,
        warmup_h: float = WARMUP_H, sensitivity: bool = False) -> dict:
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("limits_doubling", QUESTION)
    ss = seeds(seed, R)
    warm_window(WINDOW_START, duration_s, warmup_h)          # hours >= 0 or an error
    arms = {after: scenario(scale, after, duration_s, warmup_h=warmup_h) for after in (False, True)}
    arms.update({(g, h): scenario(scale, True, duration_s, g, h, warmup_h) for g, h in elasticity})
    sc0 = arms[False]
    by = run_arms(measure, arms, ss, workers, address, label="limits_doubling")
    rep.runs = tidy(by, ss, lambda k: {"arm": "after" if k is True else "before" if k is False else "after",
                                       "growth": k[0] if isinstance(k, tuple) else 1.0,
                                       "held_back": k[1] if isinstance(k, tuple) else 0.0})
    before, after = by[False], by[True]
    metrics, table = _metrics(before, after)
    elastic = {f"growth {g:g}, held back {h:g}": _metrics(before, by[(g, h)])[0] for g, h in elasticity}
    sens = step_sensitivity(measure, {False: arms[False], True: arms[True]}, by, ss, _headline, out, workers=workers,
                            address=address, label="limits_doubling") if sensitivity else None
    rep.answer = _answer(metrics) + _elastic_answer(elastic) + sensitivity_sentence(sens, lambda v: f"{v:+.1%}")
    _sections(rep, metrics, table, sc0, R, scale, warmup_h)
    _assumptions(rep, warmup_h)
    if elastic:
        rep.section("Elasticity (after the change, with demand responding)", _elastic_lines(elastic, R))
    for path, caption in _figures(out, before, after, sc0, metrics):
        rep.figure(path, caption)
    rep.results = {"metrics": metrics, "elasticity": elastic, "replications": R, "seeds": ss,
                   "warmup_h": warmup_h, "steady_state": warmup_h >= 24.0, "sensitivity": sens}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "duration_s": duration_s, "warmup_h": warmup_h,
                    "plan_mix": dict(plan_mix()), "elasticity (growth, held back)": [list(e) for e in elasticity]}
    return rep.write(out, time.perf_counter() - t0)


ELASTIC_ROWS = ("output_tokens", "busy_gpu_hours", "peak_ttft_p90_s", "rate_429_window", "rate_529")


def _elastic_lines(elastic: dict, R: int) -> list[str]:
    """Each elasticity arm against 'before': relative change of the figures a planner sizes by."""
    rows = []
    for label, m in elastic.items():
        cells = []
        for key in ELASTIC_ROWS:
            r = m[key]["ratio"]
            cells.append(f"{r.mean - 1:+.1%} ({r.low - 1:+.1%} to {r.high - 1:+.1%})" if math.isfinite(r.low)
                         else "n/a")
        rows.append([label] + cells)
    return [f"The doubled limits with demand responding: `growth` multiplies the coding users (new subscribers), "
            f"`held back` adds that share to each coding user's sessions per day (demand the old limits held back, "
            f"returning). Relative change against 'before', {R} paired replications, 95 % intervals. Both are "
            "assumptions to sweep (`run(..., elasticity=((g, h), ...))`): no provider publishes them.", ""] + md_table(
        ["arm", "served output tokens", "GPU busy-hours", "peak TTFT p90", "429 window share", "529 share"], rows)


def _elastic_answer(elastic: dict) -> str:
    if not elastic:
        return ""
    return " With demand responding: " + "; ".join(
        f"{label}: served output tokens {m['output_tokens']['ratio'].mean - 1:+.1%}, GPU busy-hours "
        f"{m['busy_gpu_hours']['ratio'].mean - 1:+.1%}, peak TTFT p90 {m['peak_ttft_p90_s']['after'].fmt(3, 's')}"
        for label, m in elastic.items()) + "."


def _assumptions(rep: Report, warmup_h: float) -> None:
    """What the answer rests on, each with its source."""
    rep.assume(warmup_sentence(warmup_h, f"{WINDOW_START[:10]}, a Tuesday, 00:00–24:00 UTC") + " The weekly usage "
               "windows start empty when the run does", "issue 19 (steady state); agentsim.results.steady")
    rep.assume("Plans before and after 6 May 2026: five-hour budgets doubled, the peak-hour weight (1.5× on weekdays "
               "12–18 UTC) removed, weekly budgets unchanged", "agentsim/data/limits.toml (workload reference §3.3/§6.5)")
    rep.assume(f"Coding users split {', '.join(f'{share:.0%} {plan}' for plan, share in plan_mix())}, each on the same "
               "tier before and after the change", "the default scenario's populations.coders.plan_mix, derived there from "
               "Claude Code's cost per developer-day (workloads-policies.md §1.3) and the plans' weekly budgets (§6.5)")
    rep.assume("Usage priced at list prices per million tokens", "agentsim/data/limits.toml [prices]")
    rep.assume("Elasticity is swept, not known: growth of coding users and held-back sessions per user-day that "
               f"return ({', '.join(f'×{g:g}, +{h:.0%}' for g, h in ELASTICITY)})", "this experiment's ELASTICITY")
    rep.assume("A simulated coding session costs less than measured ones (mean ≈ $7.4 vs TraceLab $9.70, p50 $0.38 "
               "vs $0.61), so limits bind somewhat less often than in practice",
               "tests/test_tracelab_targets.py; workload reference (TraceLab)")


def _sections(rep: Report, metrics: dict, table: list, sc0: dict, R: int, scale: float, warmup_h: float) -> None:
    """The results table and the method (the fleet and users as the 'before' scenario ``sc0`` has them)."""
    rep.section("Results", [
        f"One simulated weekday (Tuesday {WINDOW_START[:10]}, 00:00–24:00 UTC, after {warmup_h:g} h of warm-up "
        f"that is left out), {R} paired replications (same seeds before and after). Change = after − before; relative = "
        "mean of the per-seed ratio after / before − 1. 95 % Student-t intervals.", ""]
        + md_table(["metric", "before (pre-6-May plans, throttle on)", "after (doubled 5-h, no throttle)",
                    "change", "relative change"], table))
    rep.section("Method", [
        "- Fleet and traffic: the default scenario (H100/H200/GB200 pools in Colossus-1 proportions serving "
        "DeepSeek-V3; interactive coding agents, an autonomous API-agent fleet and chat users with Azure-2024 "
        "diurnal profiles), "
        f"scaled ×{scale:g}: {sum(p['replicas'] for p in sc0['pools'].values())} replicas, "
        f"{sum(p['size'] for p in sc0['populations'].values()):,} users.",
        "- Coding users by plan: " + ", ".join(f"{int(s * 100)} % {p}" for p, s in plan_mix())
        + " [assumption]; chat users on Pro. Usage is list-price dollars (cache reads 0.1×); a user at a limit "
          "waits up to 1 h for the window to free, then the session ends (`limited`).",
        "- Before: plans `pro`, `max5`, `max20` (5-h budgets $6/$30/$120, weekly $70/$250/$800, peak weight "
        "1.5×) with `peak_throttle` enabled; after: the `*_post_2026_05_06` plans (5-h budgets doubled, weight 1) "
        "with the throttle disabled.",
        f"- Users enter the measured day with {warmup_h:g} h of usage history (the five-hour windows carry the "
        "warm-up's usage; the weekly windows start empty when the run does, so weekly limits bind less than late "
        "in a week).",
        f"- Calibration note: a simulated coding session uses "
        f"{metrics['coder_session_input_tokens']['before'].fmt(3)} input tokens and "
        f"{metrics['coder_session_usd']['before'].fmt(3, 'USD')} of list-price usage on average, counting the "
        "sessions that ended within the day (long, heavy-tailed sessions still running at the end are left out, so "
        "this understates the mean). TraceLab's mean is 12.9 M tokens ≈ $9.70 per session (workloads-policies.md "
        "§6.1/§6.5); where simulated usage per user is lower, the plans' limits bind less than in practice.",
        "- GPU busy-hours = Σ pools busy share × GPUs × hours (a replica is busy while any step runs)."])


def _metrics(before: list[dict], after: list[dict]) -> tuple[dict, list]:
    """Each ROWS figure before and after, their paired difference and ratio; the results table's rows."""
    metrics = {}
    table = []
    for key, label, _, digits in ROWS:
        a, b = [r[key] for r in before], [r[key] for r in after]
        d, rel = paired(a, b), ratio(a, b)
        metrics[key] = {"before": stat(a), "after": stat(b), "change": d, "ratio": rel}
        table.append([label, stat(a).fmt(digits), stat(b).fmt(digits), d.fmt(digits),
                      f"{(rel.mean - 1):+.1%} ({(rel.low - 1):+.1%} to {(rel.high - 1):+.1%})"
                      if math.isfinite(rel.low) else f"{rel.mean - 1:+.1%}" if math.isfinite(rel.mean) else "n/a"])
    return metrics, table


def _answer(metrics: dict) -> str:
    """Demand, GPU-hours, energy, peak latency and limits: before and after, paired."""
    m = metrics
    pct = lambda k: m[k]["ratio"]  # noqa: E731
    f = lambda s: f"{s.mean - 1:+.1%} (95 % CI {s.low - 1:+.1%} to {s.high - 1:+.1%})"  # noqa: E731
    return (
        f"Doubling the five-hour limits and dropping the peak throttle changes served output tokens by "
        f"{f(pct('output_tokens'))} and requests sent by {f(pct('requests'))}; coding-agent requests served "
        f"{f(pct('coder_completed'))}. GPU busy-hours change by {f(pct('busy_gpu_hours'))} "
        f"({m['busy_gpu_hours']['change'].fmt(3)} GPU-hours per simulated day at this fleet size) and facility "
        f"energy by {f(pct('energy_mwh'))}. Peak-hour (12–18 UTC) TTFT p90 goes from "
        f"{m['peak_ttft_p90_s']['before'].fmt(3, 's')} to {m['peak_ttft_p90_s']['after'].fmt(3, 's')} "
        f"(p99 {m['peak_ttft_p99_s']['before'].fmt(3, 's')} → {m['peak_ttft_p99_s']['after'].fmt(3, 's')}). "
        f"The 429 usage-window share of requests falls from {m['rate_429_window']['before'].fmt(3)} to "
        f"{m['rate_429_window']['after'].fmt(3)} (peak hours: {m['rate_429_window_peak']['before'].fmt(3)} → "
        f"{m['rate_429_window_peak']['after'].fmt(3)}); coding users who hit a limit: "
        f"{m['coder_users_limited_share']['before'].fmt(3)} → {m['coder_users_limited_share']['after'].fmt(3)}; "
        f"529 overload share {m['rate_529']['before'].fmt(3)} → {m['rate_529']['after'].fmt(3)}.")


def _figures(out: Path, before, after, sc, metrics) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_hourly(out, before, after),
            _figure_peak_ttft_cdf(out, before, after, sc),
            _figure_relative_change(out, metrics)]


def _figure_hourly(out: Path, before, after) -> tuple:
    """Figure ``hourly``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    hours = np.arange(len(before[0]["hourly"]["completed"]))
    fig, axes = plt.subplots(2, 2, figsize=(14, 8.5), sharex=True)
    rows = []
    panels = (("output_tokens", "output tokens served per hour (millions)", 1e6),
              ("attempts", "requests sent per hour (thousands)", 1e3),
              ("window_429", "429 usage-window rejections per hour", 1),
              ("busy_gpus", "busy GPUs (mean over the hour)", 1))
    for ax, (key, title, div) in zip(axes.ravel(), panels):
        for label, runs, color in (("before", before, "tab:red"), ("after", after, "tab:blue")):
            x = np.array([r["hourly"][key] for r in runs]) / div
            m, lo, hi = mean_band(x, valid=NONNEGATIVE)
            h = hi - m
            ax.step(hours, m, where="post", color=color, label=label)
            ax.fill_between(hours, lo, hi, step="post", color=color, alpha=0.15, lw=0)
            rows += [{"series": key, "variant": label, "hour_utc": int(t), "mean": v * div, "ci_half": w * div}
                     for t, v, w in zip(hours, m, h)]
        ax.axvspan(PEAK[0] / 3600, PEAK[1] / 3600, color="orange", alpha=0.12, label="peak-throttle hours")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("hour of the measured day (UTC, Tuesday)")
    fig.suptitle("Before (pre-6-May plans, peak throttle on) vs after (doubled 5-h limits, no throttle); 95 % CI bands")
    fig.tight_layout()
    return (save_figure(fig, out, "hourly", pd.DataFrame(rows)),
            "Hourly served tokens, requests sent, 429 usage-window rejections and busy GPUs, before vs after.")


def _figure_peak_ttft_cdf(out: Path, before, after, sc) -> tuple:
    """Figure ``peak_ttft_cdf``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    # peak-hour TTFT CDF
    fig, ax = plt.subplots(figsize=(8, 4.8))
    rows = []
    for label, runs, color in (("before", before, "tab:red"), ("after", after, "tab:blue")):
        x = np.sort(np.concatenate([r["peak_ttft_sample"] for r in runs]))
        y = np.arange(1, len(x) + 1) / max(len(x), 1)
        ax.step(x, y, where="post", color=color, label=f"{label} (n={len(x):,} sampled)")
        rows += [{"variant": label, "ttft_s": a, "cdf": b} for a, b in zip(x, y)]
    ax.set_xscale("log")
    ax.axvline(sc["slo_ttft_s"], color="grey", ls=":", label=f"SLO {sc['slo_ttft_s']:g} s")
    ax.set_xlabel("TTFT (s), requests arriving 12–18 UTC")
    ax.set_ylabel("fraction of completed requests")
    ax.set_title("Peak-hour time to first token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return (save_figure(fig, out, "peak_ttft_cdf", pd.DataFrame(rows)),
            "CDF of TTFT for requests arriving in the peak-throttle hours (a sample of each replication).")


def _figure_relative_change(out: Path, metrics) -> tuple:
    """Figure ``relative_change``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    # relative changes with CIs
    keys = ("requests", "completed", "output_tokens", "coder_completed", "busy_gpu_hours", "energy_mwh",
            "peak_ttft_p90_s", "peak_tpot_p90_s")
    fig, ax = plt.subplots(figsize=(9, 4.8))
    rows = []
    for i, k in enumerate(keys):
        r = metrics[k]["ratio"]
        lo = (r.mean - r.low) * 100 if math.isfinite(r.low) else 0
        ax.barh(i, (r.mean - 1) * 100, xerr=lo, capsize=3, color="tab:blue" if r.mean >= 1 else "tab:red")
        rows.append({"metric": k, "relative_change": r.mean - 1, "ci_low": r.low - 1, "ci_high": r.high - 1})
    ax.set_yticks(range(len(keys)), [dict((a, b) for a, b, *_ in ROWS)[k] for k in keys], fontsize=9)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("change after vs before (%), 95 % CI")
    ax.set_title("Effect of doubling the 5-h limits and dropping the peak throttle")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return (save_figure(fig, out, "relative_change", pd.DataFrame(rows)),
            "Paired relative change of demand, GPU-hours, energy and peak-hour latency.")


#: this experiment's own command-line option: the warm-up (``agentsim experiment limits_doubling --warmup-hours H``)
OPTIONS = (warmup_option(), SENSITIVITY_OPTION)


def run_keywords(o: dict) -> dict:
    """run()'s keywords from the parsed :data:`OPTIONS`."""
    return {**warmup_keywords(o), "sensitivity": bool(o.get("sensitivity"))}


def _headline(by: dict) -> dict:
    """The answer's lead figures from before (False) / after (True) runs: relative changes, paired."""
    rel = lambda key: ratio([r[key] for r in by[False]], [r[key] for r in by[True]]).mean - 1  # noqa: E731
    return {"served output tokens": rel("output_tokens"), "GPU busy-hours": rel("busy_gpu_hours")}


main = main_for(__name__)


if __name__ == "__main__":
    main()
