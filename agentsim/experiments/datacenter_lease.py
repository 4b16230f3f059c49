"""datacenter_lease: what does leasing a Colossus-1-like data center buy?

The lease: ~150 k H100, ~50 k H200 and ~30 k GB200 GPUs (hardware-roofline.md §2.1) in one
300 MW facility (PUE 1.25, 10 % other IT load), serving DeepSeek-V3 (the open stand-in for a
frontier MoE) as the default scenario deploys it: H100 FP8 tp 8 × pp 2 (9,375 replicas), H200
FP8 tp 8 (6,250), GB200 FP4 tp 4 (7,500). It is far too big to simulate whole, so the
experiment runs a **1/N slice** (N = 625 at scale 1: 15 + 10 + 12 replicas, exact) with the
users hashed to slices, and scales it back up (``agentsim.slicing`` through ``agentsim.sweep``;
each replication draws a different slice and seed, so the intervals include slice-to-slice
variation).

1. **Users at the SLO.** Coding-agent users (Max 5x after 6 May 2026) are swept over a grid of
   fleet-wide counts during the weekday peak (16:00–19:00 UTC, the first hour warm-up); the
   capacity is where SLO attainment (requests completed within TTFT 5 s and TPOT 0.15 s, among
   those not refused by the plan's usage limits) falls through 90 %, interpolated per
   replication.
2. **Added to an existing fleet.** The existing fleet is the default scenario's fleet and users
   scaled to the same slice (N × 240 GPUs, N × 5,540 users); the lease is added to it behind one
   router with the capacity found in 1 added to its coding-agent users, and the SLO is checked on
   the combined fleet (and on the existing fleet alone).
3. **Power and cost.** The lease's facility draw at capacity (mean and peak of the 5-minute
   series, scaled to the whole fleet) against 300 MW and against nameplate; its cost at catalog
   prices per hour, per 180-day lease term, per added user-month and per million tokens.

Scale: ``scale`` K runs slices of 1/(625/K) of the fleet (bigger slices: less rounding and
noise); ``FULL_SCALE`` = 5 (N = 125).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import (Report, check_args, cli_main, crossing, default_scenario, md_table, save_figure, seeds, stat)

QUESTION = ("How many more coding-agent users does a leased Colossus-1-like data center (≈150k H100, 50k H200, "
            "30k GB200) serve at an SLO on top of an existing fleet, at what power against its 300 MW, and at what cost?")
FULL_SCALE = 5.0
REPLICATIONS = 3
SLICES = 625
LEASE = {"h100": ("H100-SXM", "fp8", 8, 2, 150_000), "h200": ("H200", "fp8", 8, 1, 50_000),
         "gb200": ("GB200", "fp4", 4, 1, 30_000)}
USERS_GRID = (3.0e6, 4.0e6, 5.0e6, 6.0e6)
SLO_TARGET = 0.90
START = "2026-06-01T16:00:00Z"
DURATION_S = 3 * 3600.0
WARMUP_S = 3600.0
FACILITY_MW = 300.0
LEASE_DAYS = 180
PLAN = "max5_post_2026_05_06"


def lease_pools(site: str = "memphis") -> dict:
    return {f"lease_{k}": {"gpu": gpu, "model": "DeepSeek-V3", "precision": prec, "tp": tp, "pp": pp,
                           "replicas": n // (tp * pp), "site": site} for k, (gpu, prec, tp, pp, n) in LEASE.items()}


def base(slices: int) -> dict:
    """What the lease and the combined scenarios share: engine, gateway, window, slicing."""
    d = default_scenario()
    return {"name": "datacenter_lease", "start": START, "duration_s": DURATION_S, "warmup_s": WARMUP_S,
            "sample_s": 300.0, "seed": 1, "slo_ttft_s": d["slo_ttft_s"], "slo_tpot_s": d["slo_tpot_s"],
            "policies": d["policies"], "engine": d["engine"], "router": d["router"]}


def lease_scenario(slices: int, users: float) -> dict:
    """The lease alone at memphis, serving ``users`` coding-agent users (fleet-wide)."""
    sc = base(slices)
    coders = default_scenario()["populations"]["coders"]
    sc.update(sites={"memphis": {"pue": 1.25, "other_it_fraction": 0.10, "facility_mw": FACILITY_MW}},
              pools=lease_pools(), populations={"coders": dict(coders, size=int(users), plan=PLAN)})
    return sc


def existing_scenario(slices: int, extra_users: float = 0.0, with_lease: bool = False) -> dict:
    """The default scenario's fleet and users × ``slices`` (one slice of it is the default), plus the
    lease and ``extra_users`` coding-agent users."""
    d = default_scenario()
    sc = base(slices)
    sites = {"existing": dict(d["sites"]["memphis"], facility_mw=0.0)}
    pools = {f"existing_{k}": dict(p, replicas=p["replicas"] * slices, site="existing") for k, p in d["pools"].items()}
    pops = {}
    for k, p in d["populations"].items():
        p = dict(p, size=p["size"] * slices)
        if p.get("kind") == "fleet":
            # the slice divides fleets back by N; tenants stay as they are, so a slice's fleet meets the same
            # per-tenant tier limits as the default scenario's
            p.update(workers=p["workers"] * slices, workers_min=p["workers_min"] * slices,
                     task_rate=p["task_rate"] * slices)
        pops[k] = p
    pops["coders"]["size"] = int(pops["coders"]["size"] + extra_users)
    if with_lease:
        sites["memphis"] = {"pue": 1.25, "other_it_fraction": 0.10, "facility_mw": FACILITY_MW}
        pools.update(lease_pools())
    sc.update(sites=sites, pools=pools, populations=pops)
    return sc


def attainment(row: pd.Series) -> float:
    """SLO attainment among requests the plan limits did not refuse."""
    refused = 0.0
    for o in ("429_window", "429_limit", "429_spend_cap"):
        v = row.get(f"outcomes.{o}", 0.0)
        refused += 0.0 if v is None or pd.isna(v) else float(v)
    n = float(row["requests"])
    return float(row["slo_attainment"]) * n / (n - refused) if n > refused else math.nan


def _count_cpu(res) -> None:
    """Add the simulations' time of a sweep (its slices' ``sim_wall_s``) to the experiment's CPU count."""
    from . import CPU_SECONDS
    CPU_SECONDS[0] += sum(float(s.get("sim_wall_s") or 0.0) for s in res.summaries)


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None, workers: int | None = None,
        *, users_grid=USERS_GRID, check_existing: bool = True) -> dict:
    from ..sweep import sweep
    check_args(scale, replications, seed)
    t0 = time.perf_counter()
    R = replications or REPLICATIONS
    out = Path(out_dir)
    rep = Report("datacenter_lease", QUESTION)
    N = max(1, round(SLICES / scale))
    ss = seeds(seed, R)
    grid = [f"populations.coders.size={','.join(str(int(u)) for u in users_grid)}"]
    sw = sweep(lease_scenario(N, users_grid[0]), grid=grid, replications=R, seed=seed, slices=N, slice_sample=1,
               workers=workers, progress=False)
    _count_cpu(sw)
    t = sw.table.copy()
    t["attainment"] = t.apply(attainment, axis=1)
    t["users"] = t["populations.coders.size"].astype(float)
    t = t.sort_values(["replication", "users"])
    per_rep = []
    for r, g in t.groupby("replication"):
        u = crossing(g["users"], g["attainment"], SLO_TARGET)
        capped = math.isinf(u)
        u = min(u, g["users"].max()) if math.isfinite(u) or capped else u
        at = lambda col: float(np.interp(u, g["users"], g[col])) if math.isfinite(u) else math.nan  # noqa: E731
        per_rep.append({"replication": int(r), "users": u, "capped": capped, "below_grid": math.isnan(u),
                        "facility_mw_mean": at("facility_power_mean_w") / 1e6,
                        "facility_mw_peak": at("facility_power_peak_w") / 1e6,
                        "usd_per_m_tokens": at("usd_per_m_tokens"), "joules_per_token": at("joules_per_token"),
                        "output_tokens_per_s": at("output_tokens_per_s"),
                        "utilisation": {p: at(f"pools.{p}.utilisation") for p in lease_pools()}})
    users = stat([p["users"] for p in per_rep])
    mw_mean = stat([p["facility_mw_mean"] for p in per_rep])
    mw_peak = stat([p["facility_mw_peak"] for p in per_rep])
    usd_mtok = stat([p["usd_per_m_tokens"] for p in per_rep])
    jpt = stat([p["joules_per_token"] for p in per_rep])
    from ..catalog import load_catalog
    cat = load_catalog()
    gpus = {k: v[4] // (v[2] * v[3]) * v[2] * v[3] for k, v in LEASE.items()}
    usd_h = sum(gpus[k] * cat.gpu(LEASE[k][0]).usd_per_gpu_hour for k in LEASE)
    nameplate_mw = sum(gpus[k] * cat.gpu(LEASE[k][0]).server_w_per_gpu for k in LEASE) * 1.10 * 1.25 / 1e6
    cost = {"usd_per_hour": usd_h, "usd_per_day": usd_h * 24, "usd_per_lease_term": usd_h * 24 * LEASE_DAYS,
            "usd_per_added_user_month": stat([usd_h * 730 / p["users"] if p["users"] else math.nan for p in per_rep])}
    # added to an existing fleet
    check = {}
    if check_existing and math.isfinite(users.mean):
        extra = math.floor(users.mean / 1e5) * 1e5
        for name, sc in (("existing", existing_scenario(N)),
                         ("existing_plus_lease", existing_scenario(N, extra_users=extra, with_lease=True))):
            res = sweep(sc, replications=R, seed=seed, slices=N, slice_sample=1, workers=workers, progress=False)
            _count_cpu(res)
            tab = res.table.copy()
            tab["attainment"] = tab.apply(attainment, axis=1)
            check[name] = {"attainment": stat(tab["attainment"]), "ttft_p90_s": stat(tab["ttft_p90_s"]),
                           "users": float(sc["populations"]["coders"]["size"]) + sum(
                               p["size"] for k, p in sc["populations"].items() if k != "coders"),
                           "coders": float(sc["populations"]["coders"]["size"]), "extra_coders": extra if
                           name != "existing" else 0.0}
    # answer
    lease_gpus = sum(gpus.values())
    per_slice = ", ".join(f"{max(1, round(gpus[k] / (LEASE[k][2] * LEASE[k][3]) / N))} {k}" for k in LEASE)
    parts = [f"A 1/{N} slice of the lease ({per_slice} "
             f"replicas) scaled ×{N} serves {users.fmt(3)} coding-agent users (Max 5x) at the weekday peak with "
             f"≥ {SLO_TARGET:.0%} SLO attainment (TTFT ≤ 5 s, TPOT ≤ 0.15 s)"
             + (" — at least; the SLO still held at the largest grid point in some replications"
                if any(p["capped"] for p in per_rep) else "") + "."]
    if check:
        e, c = check["existing"], check["existing_plus_lease"]
        verdict = ("holds" if c["attainment"].low >= SLO_TARGET else "is missed" if c["attainment"].high < SLO_TARGET
                   else "is borderline")
        parts.append(f"Added to an existing fleet ({N}× the default scenario: {N * 240:,} GPUs serving "
                     f"{e['users']:,.0f} users, attainment {e['attainment'].fmt(3)}), the lease with "
                     f"{c['extra_coders']:,.0f} more coding users keeps attainment at {c['attainment'].fmt(3)} — the "
                     f"SLO {verdict}.")
    parts.append(f"At that load the lease draws {mw_mean.fmt(3, 'MW')} on average ({mw_peak.fmt(3, 'MW')} at the "
                 f"peak 5-min interval) of its {FACILITY_MW:g} MW facility — {mw_peak.mean / FACILITY_MW:.0%} at peak; "
                 f"nameplate would be {nameplate_mw:.0f} MW. It costs ${usd_h / 1e6:.2f} M per hour at catalog "
                 f"prices (${cost['usd_per_lease_term'] / 1e9:.2f} bn for a {LEASE_DAYS}-day term), "
                 f"{cost['usd_per_added_user_month'].fmt(3)} USD per added user-month, "
                 f"{usd_mtok.fmt(3)} USD per million tokens served at the peak.")
    rep.answer = " ".join(parts)
    rows = []
    for _, r in t.iterrows():
        rows.append([int(r["replication"]), f"{r['users'] / 1e6:.2f} M", f"{r['attainment']:.3f}",
                     f"{r['ttft_p90_s']:.3g}", f"{r['tpot_p90_s']:.3g}", f"{r['facility_power_mean_w'] / 1e6:.0f}",
                     f"{r['facility_power_peak_w'] / 1e6:.0f}",
                     ", ".join(f"{p[6:]} {r.get(f'pools.{p}.utilisation', math.nan):.2f}" for p in lease_pools())])
    rep.section("Users at the SLO (the lease alone)", [
        f"Per replication: a slice (index and seed drawn per replication, the same for every grid point), "
        f"{len(users_grid)} fleet-wide user counts; attainment excludes requests refused by the plan's usage "
        "limits; capacity interpolated linearly where it falls through the target.", ""]
        + md_table(["rep", "users", "SLO attainment", "TTFT p90 (s)", "TPOT p90 (s)", "facility MW (mean)",
                    "facility MW (peak)", "busy share by pool"], rows)
        + md_table(["replication", "users at SLO", "facility MW mean", "facility MW peak", "USD per M tokens"],
                   [[p["replication"], f"{p['users'] / 1e6:.2f} M" + (" (≥)" if p["capped"] else ""),
                     f"{p['facility_mw_mean']:.0f}", f"{p['facility_mw_peak']:.0f}", f"{p['usd_per_m_tokens']:.3g}"]
                    for p in per_rep]))
    if check:
        rep.section("Added to the existing fleet", md_table(
            ["fleet", "coding users", "all users", "SLO attainment", "TTFT p90 (s)"],
            [[k, f"{v['coders']:,.0f}", f"{v['users']:,.0f}", v["attainment"].fmt(3), v["ttft_p90_s"].fmt(3)]
             for k, v in check.items()]))
    rep.section("Power and cost", [
        f"- GPUs: {', '.join(f'{gpus[k]:,} {LEASE[k][0]}' for k in LEASE)} = {lease_gpus:,}.",
        f"- Facility draw at capacity: mean {mw_mean.fmt(3, 'MW')}, peak 5-min {mw_peak.fmt(3, 'MW')} (servers × "
        f"1.10 other IT × PUE 1.25); nameplate (every server at full power) {nameplate_mw:.0f} MW; facility "
        f"{FACILITY_MW:g} MW.",
        f"- Energy: {jpt.fmt(3, 'J')} per output token at the peak.",
        f"- Cost at catalog on-demand prices: ${usd_h:,.0f} per hour, ${cost['usd_per_day']:,.0f} per day, "
        f"${cost['usd_per_lease_term']:,.0f} per {LEASE_DAYS}-day term; per added user-month (730 h) "
        f"{cost['usd_per_added_user_month'].fmt(3)} USD; {usd_mtok.fmt(3)} USD per million tokens (input + output) "
        "at the peak load."])
    rep.section("Method", [
        f"- Slicing: the whole fleet and the whole user base are declared; each run simulates slice i of {N} "
        "(pools at 1/N, users whose hash falls in the slice), merged and scaled ×N by `agentsim.slicing`. "
        "`--scale 2` halves N; the answer should move less than its interval (DESIGN §9).",
        "- Window: Monday 16:00–19:00 UTC (coding-agent peak, 2.1–2.8× the weekly mean rate), the first hour "
        "warm-up; users start with empty usage windows.",
        "- Gateway and engine as in the default scenario (overload shedding at 96 outstanding per replica, plan "
        "limits, pinned prefixes for an hour, 2 TB host KV per replica); session-affinity routing.",
        "- The existing-fleet check runs the default scenario × N (at site `existing`) with and without the "
        "lease, with the lease's capacity (rounded down to 0.1 M) added to its coding users."])
    for path, caption in _figures(out, t, per_rep, users, mw_mean, mw_peak, nameplate_mw):
        rep.figure(path, caption)
    rep.results = {"users_at_slo": users, "facility_mw_mean": mw_mean, "facility_mw_peak": mw_peak,
                   "nameplate_mw": nameplate_mw, "facility_mw": FACILITY_MW, "joules_per_token": jpt,
                   "usd_per_m_tokens": usd_mtok, "cost": cost, "per_replication": per_rep, "existing_check": check,
                   "slices": N, "gpus": gpus, "replications": R, "seeds": ss}
    rep.settings = {"scale": scale, "replications": R, "seed": seed, "slices": N,
                    "users_grid": list(users_grid), "slo": f"attainment >= {SLO_TARGET}", "window": START}
    return rep.write(out, time.perf_counter() - t0)


def _figures(out: Path, t: pd.DataFrame, per_rep, users, mw_mean, mw_peak, nameplate_mw) -> list:
    import matplotlib.pyplot as plt
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    ax = axes[0]
    rows = []
    for r, g in t.groupby("replication"):
        ax.plot(g["users"] / 1e6, g["attainment"], marker="o", label=f"replication {r}")
        rows += [{"panel": "attainment", "replication": int(r), "users": u, "value": v}
                 for u, v in zip(g["users"], g["attainment"])]
    ax.axhline(SLO_TARGET, color="red", ls=":", label=f"SLO target {SLO_TARGET:.0%}")
    if math.isfinite(users.mean):
        ax.axvline(users.mean / 1e6, color="black", lw=1, label=f"capacity {users.mean / 1e6:.2f} M")
        if math.isfinite(users.low):
            ax.axvspan(users.low / 1e6, users.high / 1e6, color="black", alpha=0.08, label="95 % CI")
    ax.set_xlabel("coding-agent users on the lease (millions, fleet-wide)")
    ax.set_ylabel("SLO attainment (TTFT ≤ 5 s, TPOT ≤ 0.15 s)")
    ax.set_title("Users the lease serves at the SLO (weekday peak)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    for r, g in t.groupby("replication"):
        line, = ax.plot(g["users"] / 1e6, g["facility_power_mean_w"] / 1e6, marker="o", label=f"mean, rep {r}")
        ax.plot(g["users"] / 1e6, g["facility_power_peak_w"] / 1e6, marker="^", ls="--", color=line.get_color(),
                label=f"peak 5-min, rep {r}")
        rows += [{"panel": "power_mean_mw", "replication": int(r), "users": u, "value": v / 1e6}
                 for u, v in zip(g["users"], g["facility_power_mean_w"])]
        rows += [{"panel": "power_peak_mw", "replication": int(r), "users": u, "value": v / 1e6}
                 for u, v in zip(g["users"], g["facility_power_peak_w"])]
    ax.axhline(FACILITY_MW, color="red", ls="-", label=f"facility {FACILITY_MW:g} MW")
    ax.axhline(nameplate_mw, color="red", ls=":", label=f"nameplate {nameplate_mw:.0f} MW")
    ax.set_xlabel("coding-agent users on the lease (millions)")
    ax.set_ylabel("facility power (MW)")
    ax.set_title("Facility draw of the lease vs its 300 MW")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths.append((save_figure(fig, out, "capacity_and_power", pd.DataFrame(rows)),
                  "SLO attainment and facility power of the lease vs fleet-wide coding-agent users, per replication."))
    fig, ax = plt.subplots(figsize=(9, 4.6))
    rows = []
    pools = [c for c in t.columns if c.startswith("pools.") and c.endswith(".utilisation")]
    for c in pools:
        m = t.groupby("users")[c].mean()
        ax.plot(m.index / 1e6, m.to_numpy(), marker="o", label=c.split(".")[1])
        rows += [{"pool": c.split(".")[1], "users": u, "utilisation": v} for u, v in m.items()]
    ax.set_xlabel("coding-agent users on the lease (millions)")
    ax.set_ylabel("busy share (mean of replications)")
    ax.set_title("Which generation carries the load (session-affinity routing, speed-aware homes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append((save_figure(fig, out, "pool_utilisation", pd.DataFrame(rows)),
                  "Busy share of each GPU generation's pool as the user count grows."))
    return paths


def main(argv: list[str] | None = None) -> dict:
    import sys
    return cli_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
