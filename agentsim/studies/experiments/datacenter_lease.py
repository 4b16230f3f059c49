"""datacenter_lease: what does leasing a Colossus-1-like data center buy?

The lease: ~150 k H100, ~50 k H200 and ~30 k GB200 GPUs (hardware-roofline.md §2.1) in one
300 MW facility (PUE 1.25, 10 % other IT load), serving DeepSeek-V3 (the open stand-in for a
frontier MoE) as the default scenario deploys it (issue 16: data-parallel attention and expert
parallelism): H100 FP8 dp 16 × ep 16 (9,375 replicas), H200 FP8 dp 8 × ep 8 (6,250), GB200 FP4
dp 16 × ep 16 (1,875). It is far too big to simulate whole, so the experiment runs **1/N slices**
(N = 625 at scale 1: 15 + 10 + 3 replicas, the finest exact cut) with the users hashed to slices
(``agentsim.run.build.sliced``), and scales them back up; each replication draws its slice and
seed as ``agentsim.studies.sweep`` does (``agentsim.studies.slicing``), so the intervals include
slice-to-slice variation.

**Steady state.** Load is diurnal, so every run starts two whole periods (48 h, ``warmup_h``) before
the measured window — Tuesday 18:00–20:00 UTC, the weekday peak of coding agents (2.7× the weekly
mean rate) — and the warm-up is discarded: sessions, prefix caches and five-hour usage windows are
those of a system that has run two days (the runs that started an hour before the window measured a
system still filling up and overstated its capacity by ~40 %, issue 19). One day was not enough:
coding sessions outlive a day, and 24 → 48 h lowered the answer by 12 % (paired, 5 seeds, 95 % CI
−17 % to −7 %); 48 → 96 h moved it +3.9 % (−1.9 % to +9.7 %, interval through 0; README:
datacenter_lease).

1. **Users at the SLO.** Coding-agent users (Max 5x after 6 May 2026) are swept over a grid of
   fleet-wide counts; the capacity is where SLO attainment (requests completed within TTFT 5 s
   and TPOT 0.15 s, among those not refused by the plan's usage limits) falls through 90 %,
   interpolated per replication — or where the busiest hour reaches the facility's 300 MW, if
   that comes first. Replications until its 95 % half-width is within 10 % (at most 7).
2. **Sensitivity to the step model.** The answer rerun with every step time scaled by the
   quartiles of the step model's held-out error (:data:`STEP_SCALES`), same seeds.
3. **Power and cost** at that capacity: the busiest hour and the window mean, scaled to the
   whole fleet, against 300 MW and nameplate; cost at catalog prices per hour, per 180-day term,
   per added user-month and per million tokens.
4. Optional (``check_existing``): the default scenario's fleet × N with the lease and its
   capacity added behind one router; and (:func:`all_slices_check`) every slice of a ≥ 1/10
   fleet against the sampled-slice answer.

Scale: ``scale`` K runs slices of 1/(625/K) of the fleet; ``FULL_SCALE`` = 5 (N = 125). The
whole fleet is ``SLICES`` slices: :func:`all_slices_check` reports per-slice time × slices.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import (Report, tidy, check_args, crossing, default_scenario, jsonable, main_for, md_table, ratio,
               replicate_until, run_tasks, save_figure, seeds, simulate_one, stat)
from .window import warm_window
from .sensitivity import step_scale_catalog, SENSITIVITY_SEEDS, STEP_SCALES
from ...util.jsonout import dumps
from ...model.catalog import load_catalog
from ...util.atomic import write_atomic
from ...util.errors import InputError
from ..slicing import slice_indices, slice_seed

QUESTION = ("How many more coding-agent users does a leased Colossus-1-like data center (≈150k H100, 50k H200, "
            "30k GB200) serve at an SLO on top of an existing fleet, at what power against its 300 MW, and at what cost?")
FULL_SCALE = 5.0
REPLICATIONS = 3
MAX_REPLICATIONS = 7
TARGET_HALFWIDTH = 0.10   # replications until the answer's 95 % interval is within ±10 % of it
SLICES = 625
# (gpu, precision, GPUs per replica, GPUs): the default scenario's shapes, tp 1 x dp_attention = ep = size
LEASE = {"h100": ("H100-SXM", "fp8", 16, 150_000), "h200": ("H200", "fp8", 8, 50_000),
         "gb200": ("GB200", "fp4", 16, 30_000)}
#: brackets where the warm lease's busiest hour reaches 300 MW (one slice, seed 1, 48 h warm: 355 MW at 0.5 M
#: users), which comes well before latency binds (~3.9 M, 24 h warm; ``SLO_GRID``; README: datacenter_lease)
USERS_GRID = (0.1e6, 0.25e6, 0.5e6)
SLO_GRID = (0.1e6, 0.25e6, 0.5e6, 3.5e6, 4.5e6)
SLO_TARGET = 0.90
WINDOW_START = "2026-06-02T18:00:00Z"    # a Tuesday: the day before the window is a weekday too
WINDOW_S = 2 * 3600.0
WARMUP_H = 48.0                          # two diurnal periods: one is not enough here (module docstring)
FACILITY_MW = 300.0
LEASE_DAYS = 180
PLAN = "max5_post_2026_05_06"


def window(warmup_h: float = WARMUP_H) -> dict:
    """Start, warm-up and duration of a run whose measured window is WINDOW_START + WINDOW_S."""
    return warm_window(WINDOW_START, WINDOW_S, warmup_h)


def lease_pools(site: str = "memphis") -> dict:
    return {f"lease_{k}": {"gpu": gpu, "model": "DeepSeek-V3", "precision": prec, "tp": 1, "dp_attention": size,
                           "ep": size, "replicas": n // size, "site": site} for k, (gpu, prec, size, n) in LEASE.items()}


def base(slices: int, warmup_h: float = WARMUP_H, catalog=()) -> dict:
    """What the lease and the combined scenarios share: engine, gateway, window, slicing."""
    d = default_scenario()
    return {"name": "datacenter_lease", **window(warmup_h), "sample_s": 300.0, "seed": 1,
            "slo_ttft_s": d["slo_ttft_s"], "slo_tpot_s": d["slo_tpot_s"], "policies": d["policies"],
            "engine": d["engine"], "router": d["router"], "catalog": [str(c) for c in catalog]}


def lease_scenario(slices: int, users: float, warmup_h: float = WARMUP_H, pools: dict | None = None,
                   catalog=()) -> dict:
    """The lease (or ``pools``) alone at memphis, serving ``users`` coding-agent users (fleet-wide)."""
    sc = base(slices, warmup_h, catalog)
    coders = default_scenario()["populations"]["coders"]
    sc.update(sites={"memphis": {"pue": 1.25, "other_it_fraction": 0.10, "facility_mw": FACILITY_MW}},
              pools=pools or lease_pools(), populations={"coders": dict(coders, size=int(users), plan=PLAN)})
    return sc


def existing_scenario(slices: int, extra_users: float = 0.0, with_lease: bool = False,
                      warmup_h: float = WARMUP_H) -> dict:
    """The default scenario's fleet and users × ``slices`` (one slice of it is the default), plus the
    lease and ``extra_users`` coding-agent users."""
    d = default_scenario()
    sc = base(slices, warmup_h)
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


def lease_step_scale_catalog(out: Path, k: float) -> Path:
    """A catalog overlay scaling every lease GPU generation's step times by ``k`` (written to ``out``)."""
    cat = load_catalog()
    return step_scale_catalog(out, k, {cat.gpu(v[0]).generation for v in LEASE.values()})


def sliced_task(sc: dict, slices: int, seed: int) -> tuple[dict, int]:
    """The task of one replication: the slice ``agentsim.studies.sweep`` would run for base seed ``seed``
    (index drawn by :func:`agentsim.studies.slicing.slice_indices`, seed by :func:`slice_seed`)."""
    i = slice_indices(slices, 1, seed)[0]
    return dict(sc, slice={"count": slices, "index": i}), slice_seed(seed, slices, i)


REFUSED = ("429_window", "429_limit", "429_spend_cap")


def measure(sc: dict, seed: int) -> dict:
    """One slice: SLO attainment (plan refusals excluded), power over the measured window and its
    busiest hour, utilisation and unit costs. Additive figures are per slice (the caller scales)."""
    res = simulate_one(sc, seed)
    df = res.requests
    warm = sc["warmup_s"]
    df = df[df["arrival_s"] >= warm]
    served = df[~df["outcome"].isin(REFUSED)]
    done = served[served["outcome"] == "completed"]
    ok = done[(done["ttft_s"] <= sc["slo_ttft_s"]) & ~(done["tpot_s"] > sc["slo_tpot_s"])]
    ts = res.timeseries
    fac = ts.groupby("time_s", observed=True)["facility_power_w"].sum()
    t = fac.index.to_numpy(dtype=float)
    w = fac.to_numpy(dtype=float)
    inwin = t > warm + 1e-9                      # samples covering intervals after the warm-up
    hours = np.floor((t[inwin] - warm - 1e-9) / 3600.0)
    hourly = pd.Series(w[inwin]).groupby(hours).mean()
    pools = res.window_pools()                  # busy share, energy and cost of the measured window
    tokens = float(done["input_tokens"].sum() + done["output_tokens"].sum())
    pool_cost = float(pools["cost_usd"].sum())
    ended = res.finished_in_window()
    return {"attainment": len(ok) / len(served) if len(served) else math.nan,
            "ok": int(len(ok)), "served": int(len(served)),
            "ttft_p90_s": float(np.percentile(done["ttft_s"], 90)) if len(done) else math.nan,
            "tpot_p90_s": float(np.nanpercentile(done["tpot_s"], 90)) if len(done) else math.nan,
            "power_w_window": float(w[inwin].mean()) if inwin.any() else math.nan,
            "power_w_busiest_hour": float(hourly.max()) if len(hourly) else math.nan,
            "power_w_max_interval": float(w[inwin].max()) if inwin.any() else math.nan,
            "power_series_w": w, "power_series_t": t,
            "usd_per_m_tokens": pool_cost / tokens * 1e6 if tokens else math.nan,
            "joules_per_token": float(pools["facility_energy_j"].sum()) / float(ended["output_tokens"].sum() or math.nan),
            "utilisation": dict(zip(pools["pool"], pools["busy_frac"].astype(float))),
            "coders_in_slice": int(len(set(df.loc[df["population"].astype(str) == "coders", "user"]))),
            "requests": int(len(df)), "sim_wall_s": float(res.meta.get("sim_wall_s", math.nan))}


def users_at_slo(N: int, seeds_: list[int], users_grid=USERS_GRID, *, warmup_h: float = WARMUP_H,
                 pools: dict | None = None, catalog=(), workers=None, address=None, label: str = "lease"):
    """Every seed × user count of the lease (or ``pools``) through :func:`measure`: the per-seed results
    (grid order) and the per-replication capacity (:func:`_per_replication`)."""
    tasks = [sliced_task(lease_scenario(N, u, warmup_h, pools, catalog), N, s) for s in seeds_ for u in users_grid]
    flat = run_tasks(measure, tasks, workers, label=f"datacenter_lease ({label})", address=address)
    k = len(users_grid)
    per_seed = [flat[i * k:(i + 1) * k] for i in range(len(seeds_))]
    return per_seed, _per_replication(_grid_table(_by_grid(per_seed), users_grid, seeds_, N))


def run(out_dir, scale: float = 1.0, seed: int = 1, replications: int | None = None, workers: int | None = None,
        *, address: str | None = None, users_grid=USERS_GRID, check_existing: bool = False,
        warmup_h: float = WARMUP_H, sensitivity: bool = True, all_slices: int | None = None,
        all_slices_limit: int | None = None) -> dict:
    check_args(scale, replications, seed)
    window(warmup_h)
    t0 = time.perf_counter()
    out = Path(out_dir)
    rep = Report("datacenter_lease", QUESTION)
    N = max(1, round(SLICES / scale))
    kw = dict(users_grid=users_grid, warmup_h=warmup_h, workers=workers, address=address)

    def run_seeds(batch: list[int]) -> list[list[dict]]:
        return users_at_slo(N, batch, **kw)[0]

    def answer_stat(per_seed: list[list[dict]]):
        ss_ = seeds(seed, len(per_seed))
        return stat([p["users"] for p in _per_replication(_grid_table(_by_grid(per_seed), users_grid, ss_, N))])

    if replications:
        ss = seeds(seed, replications)
        per_seed = run_seeds(ss)
    else:   # as many as the answer needs: its 95 % half-width within 10 % (3, then 2 at a time, at most 7)
        per_seed, ss, _ = replicate_until(run_seeds, answer_stat, seed, start=REPLICATIONS, step=2,
                                          cap=MAX_REPLICATIONS, rel_halfwidth=TARGET_HALFWIDTH)
    R = len(ss)
    results = _by_grid(per_seed)
    rep.runs = tidy({u: [per_seed[j][i] for j in range(R)] for i, u in enumerate(users_grid)}, ss,
                    lambda u: {"users": u, "slices": N, "warmup_h": warmup_h, "step_time_scale": 1.0})
    t = _grid_table(results, users_grid, ss, N)
    per_rep = _per_replication(t)
    users = stat([p["users"] for p in per_rep])
    figs = {"users": users, "users_slo": stat([p["users_slo"] for p in per_rep]),
            "users_power": stat([p["users_at_facility_mw"] for p in per_rep]),
            "mw_mean": stat([p["mw_window"] for p in per_rep]), "mw_peak": stat([p["mw_busiest_hour"] for p in per_rep]),
            "mw_5min": stat([p["mw_max_interval"] for p in per_rep]),
            "usd_mtok": stat([p["usd_per_m_tokens"] for p in per_rep]),
            "jpt": stat([p["joules_per_token"] for p in per_rep]),
            "attainment": stat([p["attainment"] for p in per_rep]),
            "warmup_h": warmup_h, "sensitivity": {}}
    if sensitivity and math.isfinite(users.mean):
        figs["sensitivity"] = _sensitivity(out, N, ss[:SENSITIVITY_SEEDS], per_rep[:SENSITIVITY_SEEDS], users, kw)
    if all_slices:
        figs["all_slices"] = _all_slices_vs_sample(out, t, users_grid, users, all_slices, seed, workers, address,
                                                   warmup_h, all_slices_limit)
    gpus, usd_h, nameplate_mw, cost = _lease_cost(per_rep)
    check = (_existing_fleet_check(users, N, ss, workers, address, warmup_h)
             if check_existing and math.isfinite(users.mean) else {})
    lease = {"gpus": gpus, "usd_h": usd_h, "nameplate_mw": nameplate_mw, "cost": cost}
    rep.answer = _answer(N, per_rep, check, figs, lease)
    _sections(rep, t, N, users_grid, per_rep, check, figs, lease)
    _assumptions(rep, warmup_h)
    for path, caption in _figures(out, t, results, users, nameplate_mw, N, users_grid, ss, figs["users_power"],
                                  warmup_h):
        rep.figure(path, caption)
    rep.results = {"users_at_slo": users, "users_at_slo_latency_only": figs["users_slo"],
                   "users_at_facility_mw": figs["users_power"], "facility_mw_busiest_hour": figs["mw_peak"],
                   "facility_mw_window_mean": figs["mw_mean"], "facility_mw_max_5min_scaled": figs["mw_5min"],
                   "sensitivity": figs["sensitivity"], "all_slices": figs.get("all_slices", {}), "warmup_h": warmup_h, "warmup_s": warmup_h * 3600.0,
                   "warmup_rule": "two diurnal periods (48 h) before the measured window: one was not enough",
                   "steady_state": warmup_h >= 24.0,
                   "nameplate_mw": nameplate_mw, "facility_mw": FACILITY_MW, "joules_per_token": figs["jpt"],
                   "usd_per_m_tokens": figs["usd_mtok"], "cost": cost, "per_replication": per_rep,
                   "existing_check": check, "slices": N, "gpus": gpus, "replications": R, "seeds": ss,
                   "users_grid": list(users_grid),
                   "slice_sim_wall_s": stat([r["sim_wall_s"] for r in results])}
    rep.settings = {"scale": scale, "replications": R if replications else f"{R} (until the answer's 95 % "
                    f"half-width is within {TARGET_HALFWIDTH:.0%}, at most {MAX_REPLICATIONS})", "seed": seed, "slices": N,
                    "users_grid": list(users_grid), "slo": f"attainment >= {SLO_TARGET}",
                    "window": f"{WINDOW_START} + {WINDOW_S / 3600:g} h", "warmup_h": warmup_h,
                    "step_time_scales": list(STEP_SCALES) if sensitivity else "off"}
    return rep.write(out, time.perf_counter() - t0)


def _sensitivity(out: Path, N: int, ss: list[int], base_rep: list[dict], users, kw: dict) -> dict:
    """The answer rerun with step times × each of STEP_SCALES on the first seeds: per scale, the paired
    ratio to the unscaled answer on those seeds, and the answer times that ratio."""
    sens = {}
    for k in STEP_SCALES:
        _, per_rep = users_at_slo(N, ss, catalog=(lease_step_scale_catalog(out, k),), label=f"step times x{k:g}", **kw)
        r = ratio([p["users"] for p in base_rep], [p["users"] for p in per_rep])
        sens[f"x{k:g}"] = {"step_time_scale": k, "ratio": r, "users": users.mean * r.mean,
                           "seeds": ss, "per_replication": per_rep}
    return sens


def _by_grid(per_seed: list[list[dict]]) -> list[dict]:
    """Per-seed results reordered grid point by grid point (the order :func:`_grid_table` reads)."""
    return [per_seed[j][i] for i in range(len(per_seed[0])) for j in range(len(per_seed))]


def _grid_table(results: list[dict], users_grid, ss: list[int], N: int) -> pd.DataFrame:
    """One row per replication × user count: attainment, latency, fleet power (slice × N), cost, utilisation."""
    rows = []
    for k, (u, s) in enumerate([(u, s) for u in users_grid for s in ss]):
        r = results[k]
        rows.append({"replication": ss.index(s), "users": float(u), "attainment": r["attainment"],
                     "ttft_p90_s": r["ttft_p90_s"], "tpot_p90_s": r["tpot_p90_s"],
                     "mw_window": r["power_w_window"] * N / 1e6, "mw_busiest_hour": r["power_w_busiest_hour"] * N / 1e6,
                     "mw_max_interval": r["power_w_max_interval"] * N / 1e6,
                     "usd_per_m_tokens": r["usd_per_m_tokens"], "joules_per_token": r["joules_per_token"],
                     **{f"util.{p}": v for p, v in r["utilisation"].items()}})
    return pd.DataFrame(rows).sort_values(["replication", "users"])


def _per_replication(t: pd.DataFrame) -> list[dict]:
    """Per replication: the users at which attainment falls through the target (``users_slo``), where the
    busiest hour reaches the facility's MW (``users_at_facility_mw``), the capacity — the first of the two
    (``users``) — and the figures there."""
    per_rep = []
    for r, g in t.groupby("replication"):
        u_slo = crossing(g["users"], g["attainment"], SLO_TARGET)
        up = crossing(g["users"], -g["mw_busiest_hour"], -FACILITY_MW)   # where the busiest hour reaches 300 MW
        u = min(u_slo, up) if not (math.isnan(u_slo) or math.isnan(up)) else math.nan
        capped = math.isinf(u)
        u = min(u, g["users"].max()) if math.isfinite(u) or capped else u
        at = lambda col: float(np.interp(u, g["users"], g[col])) if math.isfinite(u) else math.nan  # noqa: E731
        per_rep.append({"replication": int(r), "users": u, "capped": capped, "below_grid": math.isnan(u),
                        "users_slo": u_slo, "users_at_facility_mw": up,
                        "binds": "power" if up < u_slo else "latency", "attainment": at("attainment"),
                        "mw_window": at("mw_window"), "mw_busiest_hour": at("mw_busiest_hour"),
                        "mw_max_interval": at("mw_max_interval"), "usd_per_m_tokens": at("usd_per_m_tokens"),
                        "joules_per_token": at("joules_per_token")})
    return per_rep


def _lease_cost(per_rep: list[dict]) -> tuple[dict, float, float, dict]:
    """The lease's GPUs, cost per hour, nameplate facility MW, and its cost per day, term and added user."""
    cat = load_catalog()
    gpus = {k: v[3] // v[2] * v[2] for k, v in LEASE.items()}
    usd_h = sum(gpus[k] * cat.gpu(LEASE[k][0]).usd_per_gpu_hour for k in LEASE)
    nameplate_mw = sum(gpus[k] * cat.gpu(LEASE[k][0]).server_w_per_gpu for k in LEASE) * 1.10 * 1.25 / 1e6
    cost = {"usd_per_hour": usd_h, "usd_per_day": usd_h * 24, "usd_per_lease_term": usd_h * 24 * LEASE_DAYS,
            "usd_per_added_user_month": stat([usd_h * 730 / p["users"] if p["users"] else math.nan for p in per_rep])}
    return gpus, usd_h, nameplate_mw, cost


def _existing_fleet_check(users, N: int, ss: list[int], workers, address, warmup_h: float = WARMUP_H) -> dict:
    """The default fleet × N alone, and with the lease and its capacity in coding users added."""
    R = len(ss)
    check = {}
    extra = math.floor(users.mean / 1e5) * 1e5
    variants = (("existing", existing_scenario(N, warmup_h=warmup_h)),
                ("existing_plus_lease", existing_scenario(N, extra_users=extra, with_lease=True, warmup_h=warmup_h)))
    ctasks = [sliced_task(sc, N, s) for _, sc in variants for s in ss]
    cres = run_tasks(measure, ctasks, workers, label="datacenter_lease (existing fleet)", address=address)
    for j, (name, sc) in enumerate(variants):
        rr = cres[j * R:(j + 1) * R]
        check[name] = {"attainment": stat([r["attainment"] for r in rr]),
                       "ttft_p90_s": stat([r["ttft_p90_s"] for r in rr]),
                       "users": float(sum(p["size"] for p in sc["populations"].values())),
                       "coders": float(sc["populations"]["coders"]["size"]),
                       "extra_coders": extra if name != "existing" else 0.0,
                       "gpus": sum(p["replicas"] * p["tp"] * p.get("pp", 1) * p.get("dp_attention", 1)
                                   for p in sc["pools"].values())}
    return check


def _window_text() -> str:
    h = int(WINDOW_START[11:13])
    return f"Tuesday {h:02d}:00–{h + WINDOW_S / 3600:.0f}:00 UTC"


def _answer(N: int, per_rep: list[dict], check: dict, figs: dict, lease: dict) -> str:
    """One paragraph in planner's units: users at the SLO (and what binds), its sensitivity band, the
    warm-up, power at that load against the facility, and cost."""
    users, users_power, mw_mean, mw_peak, usd_mtok = (figs[k] for k in ("users", "users_power", "mw_mean", "mw_peak",
                                                                        "usd_mtok"))
    gpus, usd_h, nameplate_mw, cost = (lease[k] for k in ("gpus", "usd_h", "nameplate_mw", "cost"))
    binds = {p["binds"] for p in per_rep if math.isfinite(p["users"])}
    slo = figs["users_slo"]
    latency = (f"latency alone would allow {slo.fmt(3)} users" if math.isfinite(slo.mean) else
               f"latency does not bind on the grid: attainment ≥ {SLO_TARGET:.0%} up to its largest point")
    bound = (f"the facility's {FACILITY_MW:g} MW binds first ({latency})" if binds == {"power"} else
             f"latency binds before the facility's {FACILITY_MW:g} MW" if binds == {"latency"} else
             f"latency or the facility's {FACILITY_MW:g} MW, whichever comes first (replications differ)")
    att = figs["attainment"]
    sens = figs["sensitivity"]
    band = ""
    if sens:
        lo, hi = min(v["users"] for v in sens.values()), max(v["users"] for v in sens.values())
        band = (f" (sensitivity band {lo / 1e6:.3g}–{hi / 1e6:.3g} M with step times scaled by the step model's "
                f"held-out error quartiles ×{STEP_SCALES[0]:g} … ×{STEP_SCALES[1]:g})")
    parts = [f"The leased data center serves {users.fmt(3)} coding-agent users (Max 5x){band} at the weekday peak "
             f"({_window_text()}) with ≥ {SLO_TARGET:.0%} of requests within TTFT 5 s and TPOT 0.15 s (there: "
             f"{att.fmt(3)}); {bound}. Measured in a warm system: each run starts {figs['warmup_h']:g} h before the window"
             + (f" ({figs['warmup_h'] / 24:g} diurnal periods)" if figs["warmup_h"] >= 24
                else " — LESS than one diurnal period: not steady")
             + f"; 1/{N} slices scaled ×{N}, {len(per_rep)} replications"
             + (" — at least: the SLO still held at the largest grid point in some replications"
                if any(p["capped"] for p in per_rep) else "") + "."]
    if check:
        e, c = check["existing"], check["existing_plus_lease"]
        verdict = ("holds" if c["attainment"].low >= SLO_TARGET else "is missed" if c["attainment"].high < SLO_TARGET
                   else "is borderline")
        parts.append(f"Added to an existing fleet ({N}× the default scenario: {e['gpus']:,} GPUs serving "
                     f"{e['users']:,.0f} users at attainment {e['attainment'].fmt(3)}), the lease with "
                     f"{c['extra_coders']:,.0f} more coding users behind one router gives attainment "
                     f"{c['attainment'].fmt(3)} — the SLO {verdict}"
                     + (", so the increment is at least the lease's own capacity." if verdict == "holds" else "."))
    inside = "inside" if mw_peak.high <= FACILITY_MW + 1e-9 else "at or over"
    parts.append(f"At that load the lease draws {mw_peak.fmt(3, 'MW')} in the busiest hour, {inside} its "
                 f"{FACILITY_MW:g} MW ({mw_mean.fmt(3, 'MW')} averaged over the window; nameplate {nameplate_mw:.0f} MW), "
                 f"and costs ${usd_h / 1e6:.2f} M per hour at catalog prices (${cost['usd_per_lease_term'] / 1e9:.2f} bn "
                 f"for a {LEASE_DAYS}-day term): {cost['usd_per_added_user_month'].fmt(3)} USD per added user-month "
                 f"against the plan's $100, {usd_mtok.fmt(3)} USD per million tokens served at the peak.")
    return " ".join(parts)


def _sections(rep: Report, t: pd.DataFrame, N: int, users_grid, per_rep: list[dict], check: dict, figs: dict,
              lease: dict) -> None:
    """Users at the SLO, the existing-fleet check, power and cost, and the method."""
    users, mw_mean, mw_peak, mw_5min, usd_mtok, jpt = (figs[k] for k in ("users", "mw_mean", "mw_peak", "mw_5min",
                                                                         "usd_mtok", "jpt"))
    gpus, usd_h, nameplate_mw, cost = (lease[k] for k in ("gpus", "usd_h", "nameplate_mw", "cost"))
    trows = [[int(r["replication"]), f"{r['users'] / 1e6:.2f} M", f"{r['attainment']:.3f}", f"{r['ttft_p90_s']:.3g}",
              f"{r['tpot_p90_s']:.3g}", f"{r['mw_busiest_hour']:.0f}", f"{r['mw_window']:.0f}",
              ", ".join(f"{c[11:]} {r[c]:.2f}" for c in t.columns if c.startswith("util."))]
             for _, r in t.iterrows()]
    rep.section("Users at the SLO (the lease alone)", [
        "Per replication: one slice (index and seed drawn per replication as `agentsim.studies.sweep` does; the same for "
        f"every user count: common random numbers), {len(users_grid)} fleet-wide user counts. Attainment = requests "
        "completed within both SLOs / requests not refused by the plan's usage limits, after the warm-up; capacity "
        "interpolated linearly where it falls through the target.", ""]
        + md_table(["rep", "users", "SLO attainment", "TTFT p90 (s)", "TPOT p90 (s)", "MW busiest hour",
                    "MW window mean", "busy share by pool"], trows)
        + md_table(["replication", "users at SLO", "binds", "MW busiest hour", "MW window mean", "USD per M tokens",
                    f"users when the busiest hour reaches {FACILITY_MW:g} MW"],
                   [[p["replication"], f"{p['users'] / 1e6:.2f} M" + (" (≥)" if p["capped"] else ""), p["binds"],
                     f"{p['mw_busiest_hour']:.0f}", f"{p['mw_window']:.0f}", f"{p['usd_per_m_tokens']:.3g}",
                     f"{p['users_at_facility_mw'] / 1e6:.2f} M" if math.isfinite(p["users_at_facility_mw"]) else
                     ("never on the grid" if math.isinf(p["users_at_facility_mw"]) else "below the grid")]
                    for p in per_rep]))
    al = figs.get("all_slices")
    if al:
        rep.section("All slices of a tenth of the fleet against the sampled slices", [
            f"All {al['slices_run']} of {al['slices']} slices (a fleet {al['fleet_share']:.3f} the lease's size, "
            f"{al['users'] * al['fleet_share'] / 1e6:.3g} M users: {al['users'] / 1e6:.3g} M fleet-wide) at seed "
            f"{al['seed']}, merged: SLO attainment {al['attainment']:.3f}; the sampled slices at that user count: "
            f"{al['sampled_attainment'].fmt(3)} — "
            + ("the all-slice figures (attainment and busiest-hour MW) lie inside the sampled intervals."
               if al["agrees"] else
               "NOT inside the sampled interval." if al["slices_run"] == al["slices"] else
               f"only {al['slices_run']} slices ran (a timing run)."),
            f"Busiest hour, whole fleet from the merged slices: {al['mw_busiest_hour_whole_fleet']:.0f} MW; the sampled "
            f"slices: {al['sampled_mw_busiest_hour'].fmt(3, 'MW')}. "
            f"Time: {al['wall_s']:.0f} s wall, {al['cpu_s']:.0f} s CPU, {al['cpu_s_per_slice']:.0f} s CPU per slice; "
            f"the whole fleet ({SLICES} slices) per user count and seed: ≈ {al['full_fleet_cpu_s_estimate'] / 3600:.1f} "
            "CPU-hours."])
    sens = figs["sensitivity"]
    if sens:
        rep.section("Sensitivity to the step model", [
            f"The answer rerun on the first {len(next(iter(sens.values()))['seeds'])} seeds (paired: same slices and "
            "seeds) with every step time scaled by the quartiles of the step model's held-out error (measured / "
            "predicted step time over the 12 scored held-out load points of `agentsim calibrate --tier c`; catalog "
            "overlay `[generations.<gen>] step_time_scale`).", ""] + md_table(
            ["step times ×", "users at SLO / unscaled (paired)", "users at SLO"],
            [[f"{v['step_time_scale']:g}", v["ratio"].fmt(3), f"{v['users'] / 1e6:.3g} M"] for v in sens.values()]))
    if check:
        rep.section("Added to the existing fleet", md_table(
            ["fleet", "GPUs", "coding users", "all users", "SLO attainment", "TTFT p90 (s)"],
            [[k, f"{v['gpus']:,}", f"{v['coders']:,.0f}", f"{v['users']:,.0f}", v["attainment"].fmt(3),
              v["ttft_p90_s"].fmt(3)] for k, v in check.items()]))
    rep.section("Power and cost", [
        f"- GPUs: {', '.join(f'{gpus[k]:,} {LEASE[k][0]}' for k in LEASE)} = {sum(gpus.values()):,}.",
        f"- Facility draw at capacity: busiest hour {mw_peak.fmt(3, 'MW')}, measured-window mean "
        f"{mw_mean.fmt(3, 'MW')} (servers × 1.10 other IT × PUE 1.25); nameplate {nameplate_mw:.0f} MW; facility "
        f"{FACILITY_MW:g} MW. The largest single 5-min interval of a slice, scaled ×{N}, reads {mw_5min.fmt(3, 'MW')} — "
        "an overestimate of the fleet's 5-min peak, since a slice's fluctuations do not add up across slices.",
        f"- Energy: {jpt.fmt(3, 'J')} per output token.",
        f"- Cost at catalog on-demand prices: ${usd_h:,.0f} per hour, ${cost['usd_per_day']:,.0f} per day, "
        f"${cost['usd_per_lease_term']:,.0f} per {LEASE_DAYS}-day term; per added user-month (730 h) "
        f"{cost['usd_per_added_user_month'].fmt(3)} USD; {usd_mtok.fmt(3)} USD per million tokens (input + output) "
        "at the peak load."])
    rep.section("Method", [
        f"- Slicing (DESIGN §9): the whole fleet and user base are declared; each run simulates slice i of {N} "
        "(pools at 1/N by `agentsim.run.build.sliced`, users whose hash falls in the slice) and additive figures are "
        f"scaled ×{N}; each replication draws its slice and seed with `agentsim.studies.slicing`. `--scale 2` halves N; the "
        "answer should move less than its interval.",
        f"- Window: {_window_text()} (coding-agent peak, 2.7× the weekly mean rate), after a warm-up of "
        f"{figs['warmup_h']:g} h that is discarded (the run starts at {window(figs['warmup_h'])['start']}).",
        "- Gateway and engine as in the default scenario (overload shedding at 96 outstanding per replica, plan "
        "limits, prefixes pinned for an hour, 2 TB host KV per replica); session-affinity routing.",
        "- The existing-fleet check (`--check-existing`; off by default: warm, it costs the default scenario's day "
        "per slice) runs the default scenario × N (site `existing`) alone and with the lease added behind the same "
        "router, the lease's capacity (rounded down to 0.1 M) added to its coding users.",
        "- Capacity is interpolated linearly between grid points; its interval covers replication and slice noise, "
        "not the interpolation (the draw rises steeply once the H100 pool takes load)."])


def _assumptions(rep: Report, warmup_h: float) -> None:
    """What the answer rests on, each with its source."""
    rep.assume("The lease: 150 k H100, 50 k H200, 30 k GB200 in one 300 MW facility, PUE 1.25, 10 % other IT load",
               "shared/reference/hardware-roofline.md §2.1 (Colossus 1)")
    rep.assume("Every GPU serves DeepSeek-V3 as the default scenario deploys it (dp attention = ep: H100 16, "
               "H200 8, GB200 16; FP8, GB200 FP4)", "agentsim/data/scenarios default; issue 16")
    rep.assume("Step times from the measured op tables; their held-out error's quartiles "
               f"(×{STEP_SCALES[0]:g} … ×{STEP_SCALES[1]:g} step time) give the sensitivity band",
               "`agentsim calibrate --tier c`, held-out third (README: calibration)")
    rep.assume("Coding-agent users on the Max 5x plan after 6 May 2026 ($60 per 5-h window, $250 per week, "
               "$100 a month)", "agentsim/data/limits.toml plans.max5_post_2026_05_06 (workload reference §3.3/§6.5)")
    rep.assume("Arrivals follow the Azure 2024 coding trace's weekly profile (Tuesday 18–20 UTC: 2.7× the weekly "
               "mean rate)", "agentsim/data/diurnal.toml azure2024_coding")
    rep.assume(f"Steady state: {warmup_h:g} h of warm-up, discarded; the weekly usage window starts empty at the "
               "run's start. Checked by doubling, paired over seeds 1–5: 24 → 48 h lowered the answer by 12 % "
               "(95 % CI −17 % to −7 %; coding sessions outlive a day, p99 length 14.6 h), 48 → 96 h moved it "
               "+3.9 % (−1.9 % to +9.7 %)",
               "README: datacenter_lease (warm-up doubled); agentsim.results.steady")
    rep.assume("SLO: TTFT ≤ 5 s and TPOT ≤ 0.15 s for ≥ 90 % of requests not refused by the plan's limits",
               "the default scenario's slo_ttft_s / slo_tpot_s")
    rep.assume("Catalog on-demand GPU prices; a month is 730 h", "agentsim/data/gpus.toml usd_per_gpu_hour")


def _figures(out: Path, t: pd.DataFrame, results, users, nameplate_mw, N, users_grid, ss, users_power,
             warmup_h: float = WARMUP_H) -> list:
    """The figures, one function each: ``[(path, caption)]``."""
    return [_figure_capacity_and_power(out, t, results, users, nameplate_mw, N, users_grid, ss, users_power, warmup_h),
            _figure_pool_utilisation(out, t)]


def _figure_capacity_and_power(out: Path, t: pd.DataFrame, results, users, nameplate_mw, N, users_grid, ss,
                               users_power, warmup_h: float = WARMUP_H) -> tuple:
    """Figure ``capacity_and_power``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    rows = _attainment_panel(axes[0], t, users)
    ax = axes[1]
    m = t.groupby("users")[["mw_busiest_hour", "mw_window"]].agg(["mean", "min", "max"])
    for col, label, style in (("mw_busiest_hour", "busiest hour", "-o"), ("mw_window", "measured-window mean", "--o")):
        ax.plot(m.index / 1e6, m[(col, "mean")], style, label=f"{label} (mean; band: min–max of replications)")
        ax.fill_between(m.index / 1e6, m[(col, "min")], m[(col, "max")], alpha=0.15)
        rows += [{"panel": col, "replication": -1, "users": u, "value": v} for u, v in m[(col, "mean")].items()]
    ax.axhline(FACILITY_MW, color="red", ls="-", label=f"facility {FACILITY_MW:g} MW")
    ax.axhline(nameplate_mw, color="red", ls=":", label=f"nameplate {nameplate_mw:.0f} MW")
    if math.isfinite(users.mean):
        ax.axvline(users.mean / 1e6, color="black", lw=1, label="capacity at the SLO")
    if math.isfinite(users_power.mean):
        ax.axvline(users_power.mean / 1e6, color="red", lw=1, ls="--",
                   label=f"busiest hour reaches {FACILITY_MW:g} MW ({users_power.mean / 1e6:.2f} M)")
    ax.set_xlabel("coding-agent users on the lease (millions)")
    ax.set_ylabel("facility power, fleet-wide (MW)")
    ax.set_title("Facility draw of the lease vs its 300 MW")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[2]
    R = len(ss)
    k = len(users_grid) - 1 if len(users_grid) < 2 else int(np.argmin(np.abs(np.asarray(users_grid) - users.mean))) \
        if math.isfinite(users.mean) else len(users_grid) - 1
    for i in range(R):
        r = results[k * R + i]
        hrs = (np.asarray(r["power_series_t"]) - warmup_h * 3600) / 3600 + int(WINDOW_START[11:13])
        ax.step(hrs, np.asarray(r["power_series_w"]) * N / 1e6, where="pre", label=f"replication {i}")
        rows += [{"panel": "series_mw", "replication": i, "users": users_grid[k], "value": w * N / 1e6,
                  "hour_utc": h} for h, w in zip(hrs, r["power_series_w"])]
    ax.axhline(FACILITY_MW, color="red", ls="-", label=f"facility {FACILITY_MW:g} MW")
    ax.axvspan(int(WINDOW_START[11:13]) - warmup_h, int(WINDOW_START[11:13]), color="grey", alpha=0.1,
               label="warm-up (discarded)")
    ax.set_xlabel("hour (UTC; the window starts at 18, the warm-up the day before)")
    ax.set_ylabel("one slice's 5-min draw × N (MW)")
    ax.set_title(f"Draw over time at {users_grid[k] / 1e6:g} M users (a slice scaled ×{N})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return (save_figure(fig, out, "capacity_and_power", pd.DataFrame(rows)),
            "SLO attainment and facility power of the lease vs fleet-wide coding-agent users; the draw over "
            "time near capacity.")


def _attainment_panel(ax, t: pd.DataFrame, users) -> list[dict]:
    """SLO attainment against users per replication, the target and the capacity with its CI; the rows drawn."""
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
    return rows


def _figure_pool_utilisation(out: Path, t: pd.DataFrame) -> tuple:
    """Figure ``pool_utilisation``: (its path, its caption)."""
    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate

    fig, ax = plt.subplots(figsize=(9, 4.6))
    rows = []
    for c in [c for c in t.columns if c.startswith("util.")]:
        m = t.groupby("users")[c].mean()
        ax.plot(m.index / 1e6, m.to_numpy(), marker="o", label=c[5:])
        rows += [{"pool": c[5:], "users": u, "utilisation": v} for u, v in m.items()]
    ax.set_xlabel("coding-agent users on the lease (millions)")
    ax.set_ylabel("busy share (mean of replications)")
    ax.set_title("Which generation carries the load (session-affinity routing, speed-aware homes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return (save_figure(fig, out, "pool_utilisation", pd.DataFrame(rows)),
            "Busy share of each GPU generation's pool as the user count grows.")


def _all_slices_vs_sample(out: Path, t: pd.DataFrame, users_grid, users, M: int, seed: int, workers, address,
                          warmup_h: float, limit: int | None) -> dict:
    """All M slices at the grid point nearest the answer against the sampled slices' attainment there."""
    u = users_grid[int(np.argmin(np.abs(np.asarray(users_grid) - users.mean)))] if math.isfinite(users.mean) \
        else users_grid[0]
    sample = stat(t.loc[t["users"] == u, "attainment"])
    mw = stat(t.loc[t["users"] == u, "mw_busiest_hour"])
    res = all_slices_check(out, u, M, seed, workers, address=address, warmup_h=warmup_h, limit=limit)
    res["sampled_attainment"] = sample
    res["sampled_mw_busiest_hour"] = mw
    inside = lambda x, s: s.low <= x <= s.high  # noqa: E731
    res["agrees"] = bool(res["slices_run"] == M and inside(res["attainment"], sample)
                         and inside(res["mw_busiest_hour_whole_fleet"], mw))
    return res


def all_slices_check(out_dir, users: float, slices: int = 63, seed: int = 1, workers: int | None = None, *,
                     address: str | None = None, warmup_h: float = WARMUP_H, limit: int | None = None) -> dict:
    """Every one of ``slices`` slices of a fleet ``slices / SLICES`` the lease's size (63 of 625: ≥ 1/10),
    at ``users`` × that share, run once each on the executor and merged (attainment as a ratio of sums,
    power summed): the all-slice answer the sampled slices estimate. ``limit`` runs only the first
    slices (a timing run: per-slice time × slices). Writes ``all_slices.json`` into ``out_dir``."""
    t0 = time.perf_counter()
    share = slices / SLICES
    pools = {k: dict(p, replicas=p["replicas"] // SLICES * slices) for k, p in lease_pools().items()}
    sc = lease_scenario(slices, users * share, warmup_h, pools)
    idx = list(range(slices))[:limit]
    tasks = [(dict(sc, slice={"count": slices, "index": i}), slice_seed(seed, slices, i)) for i in idx]
    from . import CPU_SECONDS
    cpu0 = CPU_SECONDS[0]
    rr = run_tasks(measure, tasks, workers, label=f"datacenter_lease (all {slices} slices)", address=address)
    cpu = CPU_SECONDS[0] - cpu0
    power: dict[float, float] = {}
    for r in rr:
        for t, w in zip(r["power_series_t"], r["power_series_w"]):
            power[float(t)] = power.get(float(t), 0.0) + float(w)
    tt = np.array(sorted(power))
    ww = np.array([power[t] for t in tt]) * (SLICES / len(rr))
    inwin = tt > warmup_h * 3600 + 1e-9
    hourly = pd.Series(ww[inwin]).groupby(np.floor((tt[inwin] - warmup_h * 3600 - 1e-9) / 3600.0)).mean()
    res = {"users": users, "slices": slices, "slices_run": len(rr), "fleet_share": share, "seed": seed,
           "warmup_h": warmup_h, "attainment": sum(r["ok"] for r in rr) / max(1, sum(r["served"] for r in rr)),
           "attainment_by_slice": stat([r["attainment"] for r in rr]),
           "mw_busiest_hour_whole_fleet": float(hourly.max()) / 1e6 if len(hourly) else math.nan,
           "wall_s": time.perf_counter() - t0, "cpu_s": cpu, "cpu_s_per_slice": cpu / max(1, len(rr)),
           "full_fleet_cpu_s_estimate": cpu / max(1, len(rr)) * SLICES}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out_dir) / "all_slices.json", dumps(jsonable(res)))
    return res


#: this experiment's own command-line options, (flag, settings) — ``agentsim experiment`` and the script
#: both read them (:func:`agentsim.studies.experiments.add_options`); :func:`run_keywords` maps them to run()
OPTIONS = (
    ("--warmup-hours", {"type": float, "default": WARMUP_H,
                        "help": "hours simulated before the measured window, then discarded (default 48: two periods)"}),
    ("--users", {"type": str, "default": None,
                 "help": "fleet-wide user counts in millions, comma-separated (default "
                         f"{','.join(f'{u / 1e6:g}' for u in USERS_GRID)}; {','.join(f'{u / 1e6:g}' for u in SLO_GRID)} "
                         "also finds where latency binds)"}),
    ("--check-existing", {"flag": True, "help": "also run the default fleet x N with the lease added (slow)"}),
    ("--no-sensitivity", {"flag": True, "help": "skip the step-model sensitivity reruns"}),
    ("--all-slices", {"type": int, "default": None,
                      "help": "after the answer, run all M slices of a fleet M/625 the lease's size at the "
                              "answer's nearest grid point (63: >= 1/10) and compare"}),
    ("--all-slices-limit", {"type": int, "default": None,
                            "help": "with --all-slices: run only the first K (per-slice time x slices)"}),
)


def run_keywords(o: dict) -> dict:
    """run()'s keywords from the parsed :data:`OPTIONS` (``o``: option name with underscores -> value)."""
    grid = USERS_GRID
    if o.get("users"):
        try:
            grid = tuple(sorted(float(x) * 1e6 for x in o["users"].split(",")))
        except ValueError:
            raise InputError(f"--users {o['users']!r}: give user counts in millions, e.g. 0.5,1.5") from None
        if len(grid) < 2 or grid[0] <= 0:
            raise InputError(f"--users {o['users']!r}: need at least two positive counts")
    window(o.get("warmup_hours", WARMUP_H) if o.get("warmup_hours") is not None else WARMUP_H)   # >= 0 or an error
    if o.get("all_slices") is not None and o["all_slices"] < 1:
        raise InputError(f"--all-slices must be >= 1, got {o['all_slices']}")
    return {"users_grid": grid, "warmup_h": WARMUP_H if o.get("warmup_hours") is None else o["warmup_hours"],
            "check_existing": bool(o.get("check_existing")), "sensitivity": not o.get("no_sensitivity"),
            "all_slices": o.get("all_slices"), "all_slices_limit": o.get("all_slices_limit")}


main = main_for(__name__)


if __name__ == "__main__":
    main()
