"""mixed_fleet_routing: which router uses a mixed-generation fleet best?

The default scenario's fleet — H100 (16-GPU), H200 (8-GPU) and GB200 (16-GPU) replicas of
DeepSeek-V3 in Colossus-1 proportions, with very different speeds — serves its coding agents,
API agents and chat users through the afternoon rise to the peak (Tuesday 15:00–18:00 UTC,
measured after a whole day of warm-up that is discarded) at the default load and at 1.5× it. Each router sees the same traffic (common random numbers):

* ``round_robin`` — blind to speed and load;
* ``least_outstanding`` — fewest queued + running requests;
* ``speed_aware`` — lowest expected finish time from the service-time model;
* ``session_affinity`` — a session stays on its replica (prefix-cache hits) unless it is
  overloaded; new sessions are placed speed-aware.

The answer compares goodput (completions within TTFT ≤ 5 s and TPOT ≤ 0.15 s per second), SLO
attainment, latency percentiles, the prefix-cache hit rate and session times, with paired
95 % intervals.

Scale: ``scale`` multiplies the fleet and the users (default: the default scenario's 240 GPUs);
``FULL_SCALE`` = 4.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import (Report, tidy, check_args, default_scenario, main_for, md_table, paired, ratio, run_arms, save_figure,
               scale_system, seeds, simulate_one, stat)
from .window import WARMUP_H, warm_window, warmup_keywords, warmup_option, warmup_sentence
from .sensitivity import sensitivity as step_sensitivity, sensitivity_sentence, SENSITIVITY_OPTION

QUESTION = ("On a mixed fleet of GPU generations, how much better do speed-aware and session-affinity routing "
            "serve agent traffic than round robin?")
FULL_SCALE = 4.0
REPLICATIONS = 3
ROUTERS = ("round_robin", "least_outstanding", "speed_aware", "session_affinity")
LOADS = (1.0, 1.5)
WINDOW_START = "2026-06-02T15:00:00Z"     # Tuesday afternoon, the coding agents' rise to their peak
WINDOW_S = 3 * 3600.0
CDF_SAMPLE = 4000


def scenario(scale: float, router: str, load: float, window_s: float = WINDOW_S, warmup_h: float = WARMUP_H) -> dict:
    """The default fleet and users (times ``load``) behind ``router``, measured ``window_s`` from
    WINDOW_START after ``warmup_h`` hours of warm-up."""
    sc = default_scenario()
    sc.update(name=f"routing_{router}", sample_s=300.0, **warm_window(WINDOW_START, window_s, warmup_h))
    sc["router"]["policy"] = router
    sc = scale_system(sc, scale)
    for p in sc["populations"].values():          # load multiplies the users only
        p["size"] = max(1, round(p["size"] * load))
        if p.get("kind") == "fleet":
            p["task_rate"] *= load
            p["workers"] = min(p["workers"], p["size"])
    return sc


def measure(sc: dict, seed: int) -> dict:
    res = simulate_one(sc, seed)
    s = res.summary()
    df = res.requests
    done = df[(df["outcome"] == "completed") & (df["arrival_s"] >= sc["warmup_s"])]
    share = done["pool"].astype(str).value_counts(normalize=True).to_dict()
    rng = np.random.default_rng(0)
    x = done["ttft_s"].to_numpy()
    sample = np.sort(rng.choice(x, size=min(CDF_SAMPLE, len(x)), replace=False)) if len(x) else x
    ss = res.sessions
    top = ss[(ss["kind"] == "session") & (ss["start_s"] >= sc["warmup_s"]) & (ss["outcome"] == "completed")] \
        if len(ss) else ss
    coders = top[top["profile"].astype(str) == "interactive_coding_agent"] if len(top) else top
    keys = ("goodput_rps", "slo_attainment", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p90_s", "tpot_p99_s",
            "e2e_p50_s", "prefix_hit_rate", "output_tokens_per_s", "joules_per_token", "usd_per_m_tokens",
            "session_failure_rate", "preemptions")
    out = {k: float(s.get(k, math.nan)) for k in keys}
    out["coder_session_p50_s"] = float(np.percentile(coders["duration_s"], 50)) if len(coders) else math.nan
    out["coder_session_p90_s"] = float(np.percentile(coders["duration_s"], 90)) if len(coders) else math.nan
    out["pool_share"] = share
    out["pool_util"] = {k: v["busy_share"] for k, v in s["pools"].items()}
    out["ttft_sample"] = sample
    out["outcomes"] = s["outcomes"]
    return out


ROWS = (("goodput_rps", "goodput (req/s within SLO)", 3), ("slo_attainment", "SLO attainment", 3),
        ("ttft_p50_s", "TTFT p50 (s)", 3), ("ttft_p90_s", "TTFT p90 (s)", 3), ("ttft_p99_s", "TTFT p99 (s)", 3),
        ("tpot_p90_s", "TPOT p90 (s)", 3), ("prefix_hit_rate", "prefix-cache hit rate", 3),
        ("coder_session_p50_s", "coding session time p50 (s)", 3),
        ("coder_session_p90_s", "coding session time p90 (s)", 3),
        ("joules_per_token", "J per output token", 3), ("usd_per_m_tokens", "USD per M tokens", 3))


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None, workers: int | None = None,
        *, address: str | None = None, routers=ROUTERS, loads=LOADS, window_s: float = WINDOW_S,
        warmup_h: float = WARMUP_H, sensitivity: bool = False) -> dict:
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("mixed_fleet_routing", QUESTION)
    ss = seeds(seed, R)
    cells = [(r, L) for L in loads for r in routers]
    warm_window(WINDOW_START, window_s, warmup_h)          # hours >= 0 or an error
    arms = {(r, L): scenario(scale, r, L, window_s, warmup_h) for r, L in cells}
    by = run_arms(measure, arms, ss, workers, address, label="mixed_fleet_routing")
    rep.runs = tidy(by, ss, lambda k: {"router": k[0], "load": k[1]})
    base = routers[0]
    metrics, sections = _metrics(by, routers, loads, base)
    best = {L: max(routers, key=lambda r: metrics[f"{r}@{L:g}x"]["goodput_rps"].mean) for L in loads}
    L0 = loads[0]
    pair = {(base, L0): arms[(base, L0)], (best[L0], L0): arms[(best[L0], L0)]}
    sens = step_sensitivity(measure, pair, by, ss, lambda b: {
        f"{best[L0]} / {base} goodput at {L0:g}×": ratio([r["goodput_rps"] for r in b[(base, L0)]],
                                                        [r["goodput_rps"] for r in b[(best[L0], L0)]]).mean},
        out, workers=workers, address=address, label="mixed_fleet_routing") \
        if sensitivity and best[L0] != base else None
    rep.answer = _answer(by, metrics, best, routers, loads, base) + sensitivity_sentence(sens, lambda v: f"{v:.3f}×")
    _sections(rep, sections, metrics, routers, loads, base, R, arms[cells[0]], scale, window_s, warmup_h)
    _assumptions(rep, window_s, warmup_h)
    for path, caption in _figures(out, by, routers, loads, metrics, base):
        rep.figure(path, caption)
    rep.results = {"metrics": metrics, "best_router": {f"{L:g}x": best[L] for L in loads}, "replications": R,
                   "seeds": ss, "warmup_h": warmup_h, "steady_state": warmup_h >= 24.0, "sensitivity": sens}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "routers": list(routers), "loads": list(loads),
                    "window_start": WINDOW_START, "window_s": window_s, "warmup_h": warmup_h}
    return rep.write(out, time.perf_counter() - t0)


def _metrics(by: dict, routers, loads, base: str) -> tuple[dict, list]:
    """Per router and load: the figures, goodput against ``base`` (ratio and paired difference) and
    where requests went; and the rows of each load's results table."""
    metrics: dict = {}
    sections = []
    for L in loads:
        rows = []
        for r in routers:
            m = {k: stat([x[k] for x in by[(r, L)]]) for k, _, _ in ROWS}
            m["goodput_vs_" + base] = ratio([x["goodput_rps"] for x in by[(base, L)]],
                                            [x["goodput_rps"] for x in by[(r, L)]])
            m["goodput_minus_" + base] = paired([x["goodput_rps"] for x in by[(base, L)]],
                                                [x["goodput_rps"] for x in by[(r, L)]])
            m["pool_share"] = {p: float(np.mean([x["pool_share"].get(p, 0.0) for x in by[(r, L)]]))
                               for p in sorted({p for x in by[(r, L)] for p in x["pool_share"]})}
            metrics[f"{r}@{L:g}x"] = m
            rows.append([r] + [m[k].fmt(d) for k, _, d in ROWS[:7]] + [m["goodput_vs_" + base].fmt(3)])
        sections.append((f"Load {L:g}× the default users", rows))
    return metrics, sections


def _answer(by: dict, metrics: dict, best: dict, routers, loads, base: str) -> str:
    """Goodput per router at each load, the best one against the runner-up, and why affinity matters."""
    parts = []
    for L in loads:
        g = {r: metrics[f"{r}@{L:g}x"] for r in routers}
        b = best[L]
        others = [r for r in routers if r != b]
        second = max(others, key=lambda r: g[r]["goodput_rps"].mean)
        diff = paired([x["goodput_rps"] for x in by[(second, L)]], [x["goodput_rps"] for x in by[(b, L)]])
        parts.append(
            f"At {L:g}× the default load, goodput is " + ", ".join(
                f"{r} {g[r]['goodput_rps'].fmt(3)} req/s" for r in routers)
            + f"; best: {b} ({g[b]['goodput_vs_' + base].fmt(3)}× {base}; {diff.fmt(3)} req/s more than the runner-up "
            f"{second}{' — significant' if diff.excludes(0) else ' — not significant'}), with SLO attainment "
            f"{g[b]['slo_attainment'].fmt(3)} vs {g[base]['slo_attainment'].fmt(3)} and prefix-cache hit rate "
            f"{g[b]['prefix_hit_rate'].fmt(3)} vs {g[base]['prefix_hit_rate'].fmt(3)} for {base}.")
    if "speed_aware" in routers and "session_affinity" in routers:
        L = loads[-1]
        parts.append(
            f"Speed-awareness alone is not enough for agents: without affinity a session's long context is "
            f"re-prefilled wherever it lands (hit rate {metrics[f'speed_aware@{L:g}x']['prefix_hit_rate'].fmt(3)} "
            f"vs {metrics[f'session_affinity@{L:g}x']['prefix_hit_rate'].fmt(3)} with affinity at {L:g}×).")
    return " ".join(parts)


def _window(window_s: float) -> str:
    return f"{WINDOW_START[:10]} (a Tuesday) from {WINDOW_START[11:16]} UTC for {window_s / 3600:g} h"


def _assumptions(rep: Report, window_s: float, warmup_h: float) -> None:
    """What the answer rests on, each with its source."""
    rep.assume(warmup_sentence(warmup_h, _window(window_s)), "issue 19 (steady state); agentsim.results.steady")
    rep.assume("The default scenario's fleet: H100 FP8, H200 FP8 and GB200 FP4 replicas of DeepSeek-V3 in Colossus-1 "
               "proportions (240 GPUs at scale 1)", "agentsim/data/scenarios default; hardware-roofline.md §2.1")
    rep.assume("Its users: coding agents, API agents and chat, with the Azure 2024 weekly profiles; 1.5× scales "
               "every population", "agentsim/data/diurnal.toml; agentsim/data/profiles.toml")
    rep.assume("Prefix caches per replica (sessions' contexts; host KV tier as in the default engine); a session's "
               "next call hits only on the replica that holds its prefix", "the default scenario's engine table")
    rep.assume("Goodput: completions within TTFT 5 s and TPOT 0.15 s per second, of requests arriving in the window",
               "the default scenario's slo_ttft_s / slo_tpot_s")
    rep.assume("Step times from the measured op tables (held-out median |error| 2.8 %)",
               "README: calibration, `agentsim calibrate --tier c`")


def _sections(rep: Report, sections: list, metrics: dict, routers, loads, base: str, R: int, sc0: dict,
              scale: float, window_s: float, warmup_h: float) -> None:
    """A results table per load, sessions/energy/cost, and the method (the fleet as ``sc0`` has it)."""
    header = ["router"] + [lab for _, lab, _ in ROWS[:7]] + [f"goodput / {base}"]
    for title, rows in sections:
        rep.section(f"Results — {title}", [f"Means over {R} paired replications, 95 % Student-t intervals."]
                    + [""] + md_table(header, rows))
    extra = []
    for L in loads:
        for r in routers:
            m = metrics[f"{r}@{L:g}x"]
            extra.append([f"{L:g}×", r] + [m[k].fmt(d) for k, _, d in ROWS[7:]]
                         + [", ".join(f"{p} {v:.0%}" for p, v in m["pool_share"].items())])
    rep.section("Sessions, energy, cost and where requests go",
                md_table(["load", "router"] + [lab for _, lab, _ in ROWS[7:]] + ["share of requests by pool"], extra))
    fleet = ", ".join(f"{k} {v['replicas']}× {v['gpu']} (tp {v['tp']}, pp {v.get('pp', 1)}, dp {v.get('dp_attention', 1)}, ep {v.get('ep', 1)}, {v['precision']})"
                      for k, v in sc0["pools"].items())
    rep.section("Method", [
        f"- Fleet: {fleet} — the default scenario's Colossus-like mix, scaled ×{scale:g}.",
        "- Traffic: the default populations (coding agents on Max 5x, API-agent fleet, chat users), times the load "
        f"factor; measured {_window(window_s)} after {warmup_h:g} h of warm-up; gateway as in the default scenario "
        f"(shedding at {_shed(sc0)} outstanding per replica, plan and tier limits).",
        "- Same seeds for every router (common random numbers): differences are paired per seed."])


def _figures(out: Path, by, routers, loads, metrics, base) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_routers(out, routers, loads, metrics),
            _figure_ttft_cdf(out, by, routers, loads),
            _figure_pools(out, by, routers, loads, metrics)]


def _figure_routers(out: Path, routers, loads, metrics) -> tuple:
    """Figure ``routers``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    rows = []
    width = 0.8 / len(loads)
    for ax, (key, title) in zip(axes, (("goodput_rps", "goodput (req/s within SLO)"),
                                       ("slo_attainment", "SLO attainment"),
                                       ("ttft_p90_s", "TTFT p90 (s, log)"))):
        for j, L in enumerate(loads):
            for i, r in enumerate(routers):
                s = metrics[f"{r}@{L:g}x"][key]
                err = s.mean - s.low if math.isfinite(s.low) else 0
                ax.bar(i + (j - (len(loads) - 1) / 2) * width, s.mean, width, yerr=err, capsize=3, color=f"C{j}",
                       label=f"{L:g}× load" if i == 0 else None)
                rows.append({"metric": key, "load": L, "router": r, "mean": s.mean, "ci_low": s.low, "ci_high": s.high})
        if key == "ttft_p90_s":
            ax.set_yscale("log")
        ax.set_xticks(range(len(routers)), [r.replace("_", "\n") for r in routers], fontsize=9)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle("Routers on a mixed H100/H200/GB200 fleet (mean, 95 % CI)")
    fig.tight_layout()
    return (save_figure(fig, out, "routers", pd.DataFrame(rows)),
            "Goodput, SLO attainment and TTFT p90 per router and load.")


def _figure_ttft_cdf(out: Path, by, routers, loads) -> tuple:
    """Figure ``ttft_cdf``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    L = loads[-1]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    rows = []
    for r in routers:
        x = np.sort(np.concatenate([m["ttft_sample"] for m in by[(r, L)]]))
        y = np.arange(1, len(x) + 1) / max(len(x), 1)
        ax.step(x, y, where="post", label=r)
        rows += [{"router": r, "ttft_s": a, "cdf": b} for a, b in zip(x, y)]
    ax.set_xscale("log")
    ax.axvline(5.0, color="grey", ls=":", label="TTFT SLO 5 s")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of completed requests")
    ax.set_title(f"Time to first token at {L:g}× load (sample of each replication)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return (save_figure(fig, out, "ttft_cdf", pd.DataFrame(rows)), f"TTFT CDF per router at {L:g}× load.")


def _figure_pools(out: Path, by, routers, loads, metrics) -> tuple:
    """Figure ``pools``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    L = loads[-1]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    rows = []
    pools = sorted({p for m in metrics.values() for p in m["pool_share"]})
    for ax, key, title in ((axes[0], "pool_share", "share of completed requests by pool"),
                           (axes[1], "pool_util", "busy share by pool")):
        for i, r in enumerate(routers):
            for j, p in enumerate(pools):
                v = float(np.mean([m[key].get(p, 0.0) for m in by[(r, L)]]))
                ax.bar(i + (j - (len(pools) - 1) / 2) * 0.25, v, 0.25, color=f"C{j + 2}", label=p if i == 0 else None)
                rows.append({"panel": key, "router": r, "pool": p, "value": v, "load": L})
        ax.set_xticks(range(len(routers)), [r.replace("_", "\n") for r in routers], fontsize=9)
        ax.set_title(f"{title} ({L:g}× load)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return (save_figure(fig, out, "pools", pd.DataFrame(rows)),
            "Where each router sends requests and how busy each generation's pool is.")


def _shed(sc: dict):
    """Where the scenario's gateway starts shedding (outstanding requests per replica)."""
    return next((p.get("max_outstanding_per_replica") for p in sc["policies"] if p["name"] == "overload_shedding"), "—")


#: this experiment's own command-line option: the warm-up (``agentsim experiment mixed_fleet_routing --warmup-hours H``)
OPTIONS = (warmup_option(), SENSITIVITY_OPTION)


def run_keywords(o: dict) -> dict:
    """run()'s keywords from the parsed :data:`OPTIONS`."""
    return {**warmup_keywords(o), "sensitivity": bool(o.get("sensitivity"))}


main = main_for(__name__)


if __name__ == "__main__":
    main()
