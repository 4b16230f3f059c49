"""energy: joules per token and tokens per megawatt, by GPU generation and load.

Each generation serves DeepSeek-V3 to interactive coding agents the way it would be deployed:
H100 FP8 (tp 8 × pp 2: the weights do not fit one 8-GPU node), H200 FP8 (tp 8), MI300X FP8
(tp 8), B200 FP8 (tp 8) and GB200 FP4 (tp 4) — the same number of GPUs per generation (32 by
default), in a facility with PUE 1.25 and 10 % other IT load (Colossus-1-like). The load is
swept from light to overload in coding-agent users per GPU (flat arrivals). Per point the
experiment measures the facility energy per output token (servers at their idle share plus the
dynamic share while kernels run, × (1 + other IT) × PUE), output tokens per second per
facility megawatt (its reciprocal, scaled), the mean draw per GPU and SLO attainment.

The headline compares generations at each one's **SLO capacity** — the highest load at which
at least 90 % of requests complete within TTFT 5 s and TPOT 0.15 s (interpolated per seed) —
where a planner would run them, and shows how much of a lightly loaded GPU's energy is idle.

Scale: ``scale`` multiplies the GPUs per generation (32 at 1) and so the users;
``FULL_SCALE`` = 4.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import (Report, tidy, check_args, crossing, main_for, md_table, ratio, run_arms, save_figure, seeds,
               simulate_one, stat)
from .window import mser5_warmup_s, settled
from .sensitivity import sensitivity as step_sensitivity, sensitivity_sentence, SENSITIVITY_OPTION
from ...model.catalog import load_catalog
from ...model.deployment import Deployment
from ...model.servicetime import StepCoeffs

QUESTION = "How many joules per token, and how many tokens per megawatt, does each GPU generation deliver, by load?"
FULL_SCALE = 4.0
REPLICATIONS = 3
#: label -> (catalog GPU, precision, tp, pp)
GENERATIONS = {"H100": ("H100-SXM", "fp8", 8, 2), "H200": ("H200", "fp8", 8, 1), "MI300X": ("MI300X", "fp8", 8, 1),
               "B200": ("B200", "fp8", 8, 1), "GB200": ("GB200", "fp4", 4, 1)}
LOADS = (4, 8, 16, 32, 64, 128, 256)       # coding-agent users per GPU (flat arrivals)
GPUS = 32
SLO_TARGET = 0.9
#: each run's length; its warm-up is picked per run by MSER-5 on completions per minute (constant
#: input: issue 19's rule), at most half the run — coding sessions last hours, so a load point fills
#: for hours before it settles (3-h runs with a fixed 30 min left 25 of 35 cells unsettled)
DURATION_S = 8 * 3600.0


def scenario(gen: str, users_per_gpu: float, scale: float = 1.0, duration_s: float = DURATION_S) -> dict:
    gpu, prec, tp, pp = GENERATIONS[gen]
    replicas = max(1, round(GPUS * scale / (tp * pp)))
    gpus = replicas * tp * pp
    return {
        "name": f"energy_{gen}", "duration_s": duration_s, "warmup_s": 0.0, "sample_s": 60.0,
        "slo_ttft_s": 5.0, "slo_tpot_s": 0.15,
        "engine": {"retention": "pin_session", "prefix_ttl_s": 3600.0, "host_kv_gb": 2000.0},
        "sites": {"dc": {"pue": 1.25, "other_it_fraction": 0.10}},
        "pools": {"g": {"gpu": gpu, "model": "DeepSeek-V3", "precision": prec, "tp": tp, "pp": pp,
                        "replicas": replicas, "site": "dc"}},
        "router": {"policy": "session_affinity"},
        "populations": {"coders": {"profile": "interactive_coding_agent", "size": max(1, round(users_per_gpu * gpus)),
                                   "arrival": "flat"}},
    }


def measure(sc: dict, seed: int) -> dict:
    """One load point: the run's warm-up picked by MSER-5 on its completions per minute, then every
    figure over the rest of the run (summary and pool table read the picked warm-up)."""
    res = simulate_one(sc, seed)
    df = res.requests
    warm = mser5_warmup_s(df.loc[df["outcome"] == "completed", "finish_s"], sc["duration_s"])
    res = replace(res, meta={**res.meta, "warmup_s": warm})
    s = res.summary()
    pools = res.window_pools()              # after the warm-up, like the tokens set against it
    gpus = float(pools["gpus"].sum())
    dur = sc["duration_s"] - warm
    energy = float(pools["facility_energy_j"].sum())
    done = res.finished_in_window()
    out_tokens = float(done["output_tokens"].sum())
    fac_w = energy / dur
    return {"gpus": gpus, "joules_per_token": energy / out_tokens if out_tokens else math.nan,
            "tokens_per_s_per_mw": out_tokens / dur / (fac_w / 1e6) if fac_w else math.nan,
            "facility_w_per_gpu": fac_w / gpus, "server_w_per_gpu": float(pools["energy_j"].sum()) / dur / gpus,
            "output_tokens_per_s_per_gpu": out_tokens / dur / gpus,
            "busy": float(pools["busy_frac"].mean()), "slo_attainment": float(s["slo_attainment"]),
            "kwh_per_engaged_hour": float(s.get("energy_per_engaged_hour_kwh", math.nan)),
            "ttft_p90_s": float(s["ttft_p90_s"]), "tpot_p90_s": float(s["tpot_p90_s"]),
            "warmup_s": warm, "settled": settled(warm, sc["duration_s"]),
            "idle_w_per_gpu": float(_idle_w(res)) * float(sc["sites"]["dc"]["pue"])
            * (1 + float(sc["sites"]["dc"]["other_it_fraction"]))}


def _idle_w(res) -> float:
    """Server power per GPU of an idle replica (from the catalog via the deployment)."""
    p = res.meta["scenario"]["pools"]["g"]
    dep = Deployment.from_catalog(load_catalog(), p["model"], p["gpu"], tp=p["tp"], pp=p["pp"], precision=p["precision"])
    c = StepCoeffs.of(dep)
    return c.power_w * c.idle_fraction / dep.n_gpus


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None, workers: int | None = None,
        *, address: str | None = None, generations=tuple(GENERATIONS), loads=LOADS, sensitivity: bool = False,
        duration_s: float = DURATION_S) -> dict:
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("energy", QUESTION)
    ss = seeds(seed, R)
    cells = [(g, L) for g in generations for L in loads]
    arms = {(g, L): scenario(g, L, scale, duration_s) for g, L in cells}
    by = run_arms(measure, arms, ss, workers, address, label="energy")
    rep.runs = tidy(by, ss, lambda k: {"generation": k[0], "users_per_gpu": k[1]})
    keys = ("joules_per_token", "tokens_per_s_per_mw", "facility_w_per_gpu", "output_tokens_per_s_per_gpu",
            "slo_attainment", "ttft_p90_s", "busy")
    grid = {f"{g}@{L}": {k: stat([r[k] for r in by[(g, L)]]) for k in keys} for g, L in cells}
    cap = _capacity_points(by, generations, loads, R)
    ref = generations[0]
    best = min(generations, key=lambda g: cap[g]["kwh_per_engaged_hour"].mean
               if math.isfinite(cap[g]["kwh_per_engaged_hour"].mean) else math.inf)
    lo = loads[0]
    idle = {g: stat([r["idle_w_per_gpu"] / r["facility_w_per_gpu"] for r in by[(g, lo)]]) for g in generations}
    sens = step_sensitivity(measure, arms, by, ss, lambda b: {
        f"{g} kWh": _capacity_points(b, generations, loads, len(next(iter(b.values()))))[g]["kwh_per_engaged_hour"].mean
        for g in generations}, out, workers=workers, address=address, label="energy") if sensitivity else None
    rep.answer = _answer(grid, cap, idle, generations, loads, best, ref) + sensitivity_sentence(sens, lambda v: f"{v:.3g}")
    _sections(rep, grid, cap, generations, loads, ref, R, scale, duration_s)
    _assumptions(rep, generations)
    unsettled = [f"{g} at {L:g}/GPU" for g, L in cells if not all(r["settled"] for r in by[(g, L)])]
    picked = [r["warmup_s"] for g, L in cells for r in by[(g, L)]]
    rep.assume(f"Steady state (constant input): each run's warm-up is picked by MSER-5 on its completions per "
               f"minute (median {np.median(picked) / 60:.0f} min, at most {max(picked) / 60:.0f} min of the "
               f"{duration_s / 3600:g}-h runs) and left out of every figure; "
               + (f"{len(unsettled)} of {len(cells)} load points had not settled within the run (MSER-5 cut at half "
                  f"the run in some replication: still filling, or overloaded): {', '.join(unsettled)}"
                  if unsettled else "every load point settled within the first half of its run"),
               "agentsim.results.steady; White 1997 (MSER-5)")
    for path, caption in _figures(out, by, generations, loads, grid, cap):
        rep.figure(path, caption)
    rep.results = {"capacity_point": {g: {k: v for k, v in cap[g].items() if not k.startswith("_")}
                                      for g in generations},
                   "grid": grid, "most_efficient": best, "idle_share_at_lowest_load": idle, "replications": R,
                   "seeds": ss, "sensitivity": sens, "warmup_rule": "MSER-5 per run", "unsettled": unsettled,
                   "steady_state": not unsettled}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "generations": list(generations),
                    "users_per_gpu": list(loads), "gpus_per_generation": GPUS * scale, "duration_s": duration_s}
    return rep.write(out, time.perf_counter() - t0)


def _sections(rep: Report, grid: dict, cap: dict, generations, loads, ref: str, R: int, scale: float,
              duration_s: float) -> None:
    """The capacity table, the table by load, and the method."""
    rows = []
    for g in generations:
        c = cap[g]
        rows.append([g, " ".join(map(str, GENERATIONS[g][1:2])) + f", tp {GENERATIONS[g][2]} × pp {GENERATIONS[g][3]}",
                     ("≥ " if c["capped"] else "") + c["users_per_gpu"].fmt(3), c["kwh_per_engaged_hour"].fmt(3),
                     c["joules_per_token"].fmt(3),
                     c["tokens_per_s_per_mw"].fmt(3), c["output_tokens_per_s_per_gpu"].fmt(3),
                     c[f"joules_per_token_vs_{ref}"].fmt(3)])
    rep.section("At each generation's SLO capacity", [
        f"Capacity = the highest load (users per GPU) at which SLO attainment ≥ {SLO_TARGET:.0%}, interpolated "
        "log-linearly between grid points per seed ('≥' = still met at the largest load tried: a lower bound); J/token and "
        f"tokens/s/MW interpolated there. {R} replications, 95 % intervals.", ""]
        + md_table(["GPU", "deployment", "users/GPU at SLO", "kWh per engaged user-hour", "J per output token", "output tokens/s per MW",
                    "output tokens/s per GPU", f"J/token vs {ref}"], rows))
    grid_rows = []
    for g in generations:
        for L in loads:
            m = grid[f"{g}@{L}"]
            grid_rows.append([g, L, m["joules_per_token"].fmt(3), m["tokens_per_s_per_mw"].fmt(3),
                              m["facility_w_per_gpu"].fmt(3), m["output_tokens_per_s_per_gpu"].fmt(3),
                              m["slo_attainment"].fmt(3)])
    rep.section("By load", md_table(["GPU", "users/GPU", "J per output token", "output tokens/s per MW",
                                     "facility W per GPU", "output tokens/s per GPU", "SLO attainment"], grid_rows))
    rep.section("Method", [
        f"- Each generation: {GPUS * scale:g} GPUs (rounded to whole replicas) serving DeepSeek-V3 with "
        "session-affinity routing, prefixes pinned for an hour and a 2 TB host KV tier per replica; a site with PUE "
        "1.25 and 10 % other IT load.",
        f"- Load: `interactive_coding_agent` users with flat arrivals, {', '.join(map(str, loads))} per GPU; "
        f"{duration_s / 3600:g} h runs; each run's warm-up (MSER-5 on its completions per minute) is left out of "
        "every figure (energy and busy shares from the pools' sampled series after it, tokens of the requests "
        "finishing after it).",
        "- Energy: per replica, server power × (idle share + dynamic share while a step runs), plus idle power "
        "while up; facility = servers × (1 + other IT) × PUE. Output tokens/s per MW = 10⁶ / (J per output token).",
        "- Precisions follow deployment practice (FP8 on Hopper/CDNA3/B200, FP4 on GB200); B200 FP8 vs H200 FP8 "
        "isolates the generation, GB200 FP4 adds the precision step."])


def _answer(grid: dict, cap: dict, idle: dict, generations, loads, best: str, ref: str) -> str:
    """Energy per token at each generation's SLO capacity, the best one, and how load changes it."""
    lo, hi = loads[0], loads[-1]
    return (
        "Per engaged user-hour of coding agents, at each generation's SLO capacity (≥ 90 % of requests within "
        "TTFT 5 s / TPOT 0.15 s), the facility spends " + "; ".join(
            f"{g} {cap[g]['kwh_per_engaged_hour'].fmt(3, 'kWh')}" for g in generations)
        + f" ({cap[best][f'kwh_per_engaged_hour_vs_{ref}'].fmt(3)}× {ref}'s for {best}). Per output token (an agent "
        "call reads ~290 input tokens per output token, so this counts prefill too) it spends " + "; ".join(
            f"{g} {cap[g]['joules_per_token'].fmt(3, 'J')} per output token "
            f"({cap[g]['tokens_per_s_per_mw'].fmt(3)} output tokens/s per MW, at "
            f"{'≥ ' if cap[g]['capped'] else ''}{cap[g]['users_per_gpu'].fmt(3)} users/GPU)" for g in generations)
        + f". Most efficient: {best}, {cap[best][f'joules_per_token_vs_{ref}'].fmt(3)}× the energy per token of "
        f"{ref}. Load matters as much as the chip: from {lo} to {hi} users/GPU J/token falls "
        + ", ".join(f"{g} {grid[f'{g}@{lo}']['joules_per_token'].mean / grid[f'{g}@{hi}']['joules_per_token'].mean:.1f}×"
                    for g in generations)
        + f"; at {lo} users/GPU the idle floor is "
        + ", ".join(f"{g} {idle[g].mean:.0%}" for g in generations) + " of the draw.")


def _assumptions(rep: Report, generations) -> None:
    """What the answer rests on, each with its source."""
    cat = load_catalog()
    rep.assume("Server power per GPU and idle share: " + ", ".join(
        f"{g} {cat.gpu(GENERATIONS[g][0]).server_w_per_gpu:,.0f} W, idle {cat.gpu(GENERATIONS[g][0]).idle_power_fraction:.0%}"
        for g in generations), "agentsim/data/gpus.toml (server_w_per_gpu, idle_power_fraction)")
    rep.assume("Facility: PUE 1.25 and 10 % other IT load on top of the servers (Colossus-1-like)",
               "shared/reference/hardware-roofline.md §2.1")
    rep.assume("Each generation serves DeepSeek-V3 as deployed in practice: " + ", ".join(
        f"{g} {GENERATIONS[g][1].upper()} tp {GENERATIONS[g][2]} × pp {GENERATIONS[g][3]}" for g in generations),
        "agentsim/data/models.toml; the weights must fit the replica's HBM")
    rep.assume("Step times from the measured op tables (held-out median |error| 2.8 %, max 19 % on load points)",
               "README: calibration, `agentsim calibrate --tier c`")
    rep.assume("Interactive coding-agent sessions, flat arrivals; an engaged hour is an hour of a session's "
               "length less its idle gaps beyond the usual think time",
               "agentsim/data/profiles.toml interactive_coding_agent; agentsim.workload.populations (engaged_s)")
    rep.assume("SLO capacity: ≥ 90 % of requests within TTFT 5 s and TPOT 0.15 s, interpolated per seed",
               "the default scenario's slo_ttft_s / slo_tpot_s")


def _capacity_points(by: dict, generations, loads, R: int) -> dict:
    """Per generation: its SLO capacity per seed, and J/token, tokens/s/MW and tokens/s/GPU there."""
    # capacity point per seed: highest users/GPU with attainment >= target (log-linear interpolation)
    cap = {}
    for g in generations:
        caps, jpt, tpm, tpg, kph = [], [], [], [], []
        for i in range(R):
            att = [by[(g, L)][i]["slo_attainment"] for L in loads]
            x = crossing(np.log(loads), att, SLO_TARGET)
            if math.isnan(x):
                caps.append(math.nan)
                jpt.append(math.nan)
                tpm.append(math.nan)
                tpg.append(math.nan)
                kph.append(math.nan)
                continue
            x = min(x, math.log(loads[-1]))
            caps.append(math.exp(x))
            interp = lambda key: float(np.interp(x, np.log(loads), [by[(g, L)][i][key] for L in loads]))  # noqa: E731
            jpt.append(float(np.exp(np.interp(x, np.log(loads), np.log([by[(g, L)][i]["joules_per_token"]
                                                                          for L in loads])))))
            tpm.append(1e6 / jpt[-1])
            tpg.append(interp("output_tokens_per_s_per_gpu"))
            kph.append(float(np.exp(np.interp(x, np.log(loads), np.log([by[(g, L)][i]["kwh_per_engaged_hour"]
                                                                          for L in loads])))))
        cap[g] = {"users_per_gpu": stat(caps), "joules_per_token": stat(jpt), "tokens_per_s_per_mw": stat(tpm),
                  "output_tokens_per_s_per_gpu": stat(tpg), "kwh_per_engaged_hour": stat(kph), "_kph": kph,
                  "capped": any(c >= loads[-1] * (1 - 1e-9) for c in caps if math.isfinite(c)),
                  "_jpt": jpt}
    ref = generations[0]
    for i, g in enumerate(generations):
        cap[g][f"joules_per_token_vs_{ref}"] = ratio(cap[ref]["_jpt"], cap[g]["_jpt"])
        cap[g][f"kwh_per_engaged_hour_vs_{ref}"] = ratio(cap[ref]["_kph"], cap[g]["_kph"])
        if i:   # against the generation before it in the list (paired, same seeds): the ordering, step by step
            prev = generations[i - 1]
            cap[g]["kwh_per_engaged_hour_vs_previous"] = ratio(cap[prev]["_kph"], cap[g]["_kph"])
            cap[g]["previous"] = prev
    return cap


def _figures(out: Path, by, generations, loads, grid, cap) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_energy_by_load(out, generations, loads, grid),
            _figure_at_capacity(out, generations, cap)]


def _figure_energy_by_load(out: Path, generations, loads, grid) -> tuple:
    """Figure ``energy_by_load``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    rows = []
    for ax, key, title, log in ((axes[0][0], "joules_per_token", "facility J per output token", True),
                                (axes[0][1], "tokens_per_s_per_mw", "output tokens/s per facility MW", True),
                                (axes[1][0], "facility_w_per_gpu", "facility W per GPU (mean draw)", False),
                                (axes[1][1], "slo_attainment", "SLO attainment", False)):
        for g in generations:
            m = np.array([grid[f"{g}@{L}"][key].mean for L in loads])
            lo = np.array([grid[f"{g}@{L}"][key].low for L in loads])
            hi = np.array([grid[f"{g}@{L}"][key].high for L in loads])
            line, = ax.plot(loads, m, marker="o", ms=4, label=g)
            if np.isfinite(lo).all():       # on log axes a band below zero is drawn from a tenth of the mean
                ax.fill_between(loads, np.maximum(lo, m / 10) if log else lo, hi, color=line.get_color(), alpha=0.15,
                                lw=0)
            rows += [{"metric": key, "gpu": g, "users_per_gpu": L, "mean": a, "ci_low": b, "ci_high": c}
                     for L, a, b, c in zip(loads, m, lo, hi)]
        if key == "slo_attainment":
            ax.axhline(SLO_TARGET, color="red", ls=":", label=f"target {SLO_TARGET:.0%}")
        ax.set_xscale("log", base=2)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("coding-agent users per GPU")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Energy by GPU generation and load (DeepSeek-V3, coding agents; mean, 95 % CI band)")
    fig.tight_layout()
    return (save_figure(fig, out, "energy_by_load", pd.DataFrame(rows)),
            "J per output token, tokens/s per MW, draw per GPU and SLO attainment vs users per GPU (bands: 95 % "
            "CI; on log axes cut at a tenth of the mean).")


def _figure_at_capacity(out: Path, generations, cap) -> tuple:
    """Figure ``at_capacity``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    rows = []
    for ax, key, title in ((axes[0], "joules_per_token", "J per output token at SLO capacity"),
                           (axes[1], "tokens_per_s_per_mw", "output tokens/s per MW at SLO capacity")):
        for i, g in enumerate(generations):
            s = cap[g][key]
            err = s.mean - s.low if math.isfinite(s.low) else 0
            ax.bar(i, s.mean, yerr=err, capsize=4, color=f"C{i}")
            rows.append({"metric": key, "gpu": g, "mean": s.mean, "ci_low": s.low, "ci_high": s.high,
                         "users_per_gpu": cap[g]["users_per_gpu"].mean})
        ax.set_xticks(range(len(generations)), generations)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return (save_figure(fig, out, "at_capacity", pd.DataFrame(rows)),
            "Each generation at its SLO capacity: energy per token and tokens per MW (95 % CI).")


#: this experiment's own command-line option (``agentsim experiment energy --sensitivity``)
OPTIONS = (SENSITIVITY_OPTION,)


def run_keywords(o: dict) -> dict:
    """run()'s keywords from the parsed :data:`OPTIONS`."""
    return {"sensitivity": bool(o.get("sensitivity"))}


main = main_for(__name__)


if __name__ == "__main__":
    main()
