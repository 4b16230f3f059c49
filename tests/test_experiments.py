"""The experiments (agentsim/experiments): tiny runs that check the outputs and one robust direction each.

Each tiny run writes summary.md (with the answer and 95 % intervals), results.json and its
figures (PNG + the plotted data as CSV). The default-size runs are behind ``-m slow``.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from agentsim.studies.experiments import EXPERIMENTS, Stat, crossing, load, paired, ratio, stat

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2


def check_outputs(out: Path, res: dict, figures: list[str]) -> dict:
    """summary.md with the answer and CI fields, results.json, and figures holding data."""
    md = (out / "summary.md").read_text()
    assert "**Answer.**" in md and res["answer"] and res["answer"] in md
    assert "95 % CI" in md
    data = json.loads((out / "results.json").read_text())
    assert data["answer"] == res["answer"]
    assert set(data["figures"]) == {f"{f}.png" for f in figures}
    for f in figures:
        png = out / f"{f}.png"
        assert png.stat().st_size > 10_000, f"{png} looks empty"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        df = pd.read_csv(out / f"{f}.csv")
        assert len(df) > 0
        assert df.select_dtypes("number").notna().any().any(), f"{f}.csv has no numbers"
        assert f"]({f}.png)" in md
    # every arm x seed as one tidy row: its description, its seed and its scalar figures
    runs = pd.read_csv(out / "runs.csv")
    assert data["runs_csv"] == "runs.csv" and len(runs) > 0 and "seed" in runs
    assert set(runs["seed"]) == set(data.get("seeds", runs["seed"]))
    assert len(runs) == len(runs.drop_duplicates([c for c in runs.columns[:runs.columns.get_loc("seed") + 1]]))
    return data


def ci_fields(d: dict) -> None:
    assert {"mean", "ci_low", "ci_high", "n", "values"} <= set(d)
    assert d["n"] >= 2


# -- the shared helpers ---------------------------------------------------------------------------------
def test_stats_helpers():
    s = stat([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.low < 2.0 < s.high and s.n == 3
    assert math.isnan(stat([5.0]).low)
    d = paired([1, 2, 3], [2, 3, 4.5])
    assert d.mean == pytest.approx(3.5 / 3) and d.values == (1.0, 1.0, 1.5)
    assert ratio([2, 4], [4, 8]).mean == 2.0
    assert crossing([1, 2, 3], [1.0, 0.8, 0.4], 0.6) == pytest.approx(2.5)
    assert crossing([1, 2], [1.0, 0.95], 0.9) == math.inf
    assert math.isnan(crossing([1, 2], [0.5, 0.4], 0.9))
    assert "95 % CI" in Stat(1.0, 0.5, 1.5, 3).fmt()


def test_registry_and_cli_list():
    assert set(EXPERIMENTS) == {"datacenter_lease", "limits_doubling", "retry_storm", "mixed_fleet_routing",
                                "site_outage", "energy"}
    for name in EXPERIMENTS:
        mod = load(name)
        assert callable(mod.run) and callable(mod.main) and mod.QUESTION.endswith("?")
        assert (ROOT / "experiments" / f"{name}.py").exists()
    r = subprocess.run([sys.executable, "-c", "from agentsim.cli import main; main(['experiment', 'list'])"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert all(name in r.stdout for name in EXPERIMENTS)
    bad = subprocess.run([sys.executable, "-c", "from agentsim.cli import main; main(['experiment', 'nosuch'])"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr and "traceback" not in bad.stderr.lower()


def test_script_help():
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "energy.py"), "--help"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0 and "--scale" in r.stdout and "--replications" in r.stdout


# -- tiny runs ----------------------------------------------------------------------------------------------
def test_retry_storm_tiny(tmp_path):
    mod = load("retry_storm")
    res = mod.run(tmp_path, scale=0.1, replications=2, workers=WORKERS,
                  policies=("anthropic_sdk", "claude_code_watchdog"), triggers=(30,), loads=(1.0,))
    data = check_outputs(tmp_path, res, ["goodput_timeseries", "recovery", "amplification", "tipping"])
    tip = data["tipping"]["anthropic_sdk"]["30min"]
    assert tip["loads"] == [1.0] and tip["runs"] == [2] and "persistent collapse" in res["answer"]
    assert set(pd.read_csv(tmp_path / "tipping.csv")["policy"]) == {"anthropic_sdk", "claude_code_watchdog"}
    m = data["metrics"]["anthropic_sdk@30min"]
    ci_fields(m["post_over_baseline"])
    ts = pd.read_csv(tmp_path / "goodput_timeseries.csv")
    assert set(ts["policy"]) == {"control", "anthropic_sdk", "claude_code_watchdog"}
    # retrying forever never sends fewer attempts per call than the SDK's two retries
    wd = data["metrics"]["claude_code_watchdog@30min"]["attempts_per_call_post"]["mean"]
    assert wd >= m["attempts_per_call_post"]["mean"] - 0.01


def test_retry_storm_collapse_chance_rises_with_load():
    """The named effect: at 0.25 scale, 5 x the users of 0.4 x collapse persistently more often after a
    30-min trigger — the high load's Wilson interval lies above the low load's (10 paired seeds: with
    routers releasing a moved session's pin (issue 18) 6 seeds gave 4/6 against 0/6, whose Wilson
    intervals touch; 10 give 8/10 against 0/10; before the release 5/6 against 0/6)."""
    from agentsim.studies.experiments import run_arms
    from agentsim.util.stats import proportion_interval, tipping_point
    mod = load("retry_storm")
    loads = (0.4, 2.0)
    n = 10
    by = run_arms(mod.measure, {L: mod.scenario(0.25, "anthropic_sdk", 30, L) for L in loads}, list(range(1, n + 1)),
                  WORKERS)
    k = [sum(r["persistent_collapse"] for r in by[L]) for L in loads]
    low, high = proportion_interval(k[0], n), proportion_interval(k[1], n)
    assert high[1] > low[2], (k, low, high)
    est, lo, hi = tipping_point(loads, k, [n, n])
    assert loads[0] <= lo <= est <= hi or hi == math.inf


def test_limits_doubling_tiny(tmp_path):
    mod = load("limits_doubling")
    res = mod.run(tmp_path, scale=0.1, replications=3, workers=WORKERS, duration_s=13.5 * 3600.0, warmup_h=0.5,
                  elasticity=((1.0, 0.5),))
    data = check_outputs(tmp_path, res, ["hourly", "peak_ttft_cdf", "relative_change"])
    m = data["metrics"]
    for key in ("output_tokens", "busy_gpu_hours", "peak_ttft_p90_s", "rate_429_window"):
        ci_fields(m[key]["before"])
        ci_fields(m[key]["change"])
    # looser limits: fewer coding sessions end at a limit (paired change, its interval below 0; the 429
    # count itself need not fall: a user who now waits for the window instead of leaving can be refused again)
    assert m["coder_sessions_limited_share"]["change"]["ci_high"] < 0
    # with held-back demand returning (half again the sessions per user-day), served output tokens rise:
    # the paired change's interval lies above 0
    e = data["elasticity"]["growth 1, held back 0.5"]["output_tokens"]["change"]
    assert e["ci_low"] > 0, e


def test_mixed_fleet_routing_tiny(tmp_path):
    mod = load("mixed_fleet_routing")
    res = mod.run(tmp_path, scale=0.2, replications=2, workers=WORKERS, loads=(1.5,), window_s=3600.0, warmup_h=1.0,
                  sensitivity=True)
    data = check_outputs(tmp_path, res, ["routers", "ttft_cdf", "pools"])
    m = data["metrics"]
    ci_fields(m["session_affinity@1.5x"]["goodput_rps"])
    # affinity keeps sessions on their cached prefixes
    assert m["session_affinity@1.5x"]["prefix_hit_rate"]["mean"] > m["round_robin@1.5x"]["prefix_hit_rate"]["mean"]
    # ... and so ranks above round robin on goodput: the paired difference's 95 % interval lies above 0
    d = m["session_affinity@1.5x"]["goodput_minus_round_robin"]
    assert d["ci_low"] > 0, d
    # the headline's sensitivity band: the best router's goodput ratio rerun at both step-time scales
    (name, band), = data["sensitivity"]["band"].items()
    assert name.endswith("goodput at 1.5×") and 0 < band[0] <= band[1] and "Sensitivity to the step model" in res["answer"]


def test_site_outage_tiny(tmp_path):
    """The named effect: losing one of two sites at the peak loses sessions (failed, abandoned or ended
    by errors) — the paired change over 2 seeds has its 95 % interval above 0 (0.2 scale at 2.5x the
    users: the surviving site's replicas are past the shedding bound, so calls are shed and give up;
    measured 0.045 lost against 0 without the outage in both seeds). 4.75 h, the shortest run that
    leaves 30 min after the outage to judge recovery: ~10 s CPU per pair, the cost of the former
    output-only run (1.5x, 6 h)."""
    mod = load("site_outage")
    res = mod.run(tmp_path, scale=0.2, replications=2, workers=WORKERS, loads=(2.5,), duration_s=4.75 * 3600.0,
                  warmup_h=0.0)
    data = check_outputs(tmp_path, res, ["recovery", "timeline", "sessions"])
    m = data["metrics"]["2.5x"]
    ci_fields(m["failure_rate"]["outage"])
    ci_fields(m["duration_mean_s"]["change"])
    lost = m["lost_rate"]["change"]
    ci_fields(lost)
    assert lost["ci_low"] > 0, lost
    # half the fleet gone at the peak: less goodput while it is down
    assert m["goodput_outage_rps"]["outage"]["mean"] < m["goodput_outage_rps"]["baseline"]["mean"]
    tip = data["tipping"]
    assert tip["loads"] == [2.5] and tip["runs"] == [2] and tip["not_recovered"][0] in (0, 1, 2)
    assert "does not recover" in res["answer"] or "Every run recovers" in res["answer"]
    assert "## Assumptions, with sources" in (tmp_path / "summary.md").read_text()


def test_energy_tiny(tmp_path):
    mod = load("energy")
    # loads close enough around the Hopper capacities (~10-20 users/GPU) that the interpolated kWh there is
    # steady; 16 GPUs per generation, 4 seeds (72 small runs, ~15 s CPU)
    res = mod.run(tmp_path, scale=0.5, replications=4, workers=WORKERS, generations=("H100", "H200", "GB200"),
                  loads=(4, 8, 12, 16, 64, 256), duration_s=3 * 3600.0)
    data = check_outputs(tmp_path, res, ["energy_by_load", "at_capacity"])
    g = data["grid"]
    ci_fields(g["H100@64"]["joules_per_token"])
    # idle power dominates a lightly loaded GPU: J/token falls with load
    for gen in ("H100", "GB200"):
        assert g[f"{gen}@64"]["joules_per_token"]["mean"] < g[f"{gen}@4"]["joules_per_token"]["mean"]
    # Blackwell FP4 beats Hopper FP8 per token at the same (moderate) load
    assert g["GB200@64"]["joules_per_token"]["mean"] < g["H100@64"]["joules_per_token"]["mean"]
    # the planner's unit: energy per engaged user-hour at each generation's SLO capacity, GB200 below H100
    # (the paired per-seed ratio's 95 % interval lies below 1)
    r = data["capacity_point"]["GB200"]["kwh_per_engaged_hour_vs_H100"]
    assert r["ci_high"] < 1, r
    # ... and ordered step by step, H100 > H200 > GB200: each generation's paired ratio to the one before
    # it has its 95 % interval below 1
    for gen in ("H200", "GB200"):
        r = data["capacity_point"][gen]["kwh_per_engaged_hour_vs_previous"]
        assert r["ci_high"] < 1, (gen, r)


def test_datacenter_lease_tiny(tmp_path):
    mod = load("datacenter_lease")
    res = mod.run(tmp_path, scale=0.1, replications=2, workers=WORKERS, users_grid=(0.2e6, 2.0e6), warmup_h=1.0)
    data = check_outputs(tmp_path, res, ["capacity_and_power", "pool_utilisation"])
    ci_fields(data["users_at_slo"])
    ci_fields(data["facility_mw_busiest_hour"])
    assert data["slices"] == 6250 and data["cost"]["usd_per_hour"] > 0
    # the warm-up is stated, and one shorter than a diurnal period is flagged as not steady
    assert data["warmup_h"] == 1.0 and data["steady_state"] is False
    assert "LESS than one diurnal period" in res["answer"]
    # the answer is the first of latency and the facility's MW: the busiest hour there is inside 300 MW
    assert data["facility_mw_busiest_hour"]["mean"] <= data["facility_mw"] + 1e-6
    # the sensitivity reruns: slower steps (x1.006) serve no more users than faster ones (x0.956) on the same seeds
    sens = data["sensitivity"]
    assert set(sens) == {"x0.956", "x1.006"} and sens["x1.006"]["users"] <= sens["x0.956"]["users"]
    # more users draw more power
    cp = pd.read_csv(tmp_path / "capacity_and_power.csv")
    p = cp[cp["panel"] == "mw_window"].groupby("users")["value"].mean()
    assert len(p) == 2 and p.iloc[-1] > p.iloc[0]


def test_datacenter_lease_users_at_the_slo_rise_with_the_added_pool():
    """A pool added to the fleet raises the users it serves at the SLO: the paired (same slices and
    seeds) difference of the per-replication capacities has its 95 % interval above 0."""
    mod = load("datacenter_lease")
    lp = mod.lease_pools()
    base = {"lease_h200": lp["lease_h200"]}                               # 1 H200 replica per 1/6250 slice
    added = dict(base, added_h200=dict(lp["lease_h200"]))                 # + another
    ss, grid = [1, 2, 3], (1.5e6, 2.5e6, 3.5e6, 5.0e6)
    _, before = mod.users_at_slo(6250, ss, grid, warmup_h=1.0, pools=base, workers=WORKERS)
    _, after = mod.users_at_slo(6250, ss, grid, warmup_h=1.0, pools=added, workers=WORKERS)
    b, a = [p["users_slo"] for p in before], [p["users_slo"] for p in after]
    assert all(math.isfinite(x) for x in b + a), (b, a)     # every capacity found inside the grid
    d = paired(b, a)
    assert d.low > 0, d


def test_step_time_scale_scales_every_step_and_is_validated(tmp_path):
    """The sensitivity knob: a catalog overlay's step_time_scale multiplies each step's time; bad values
    are refused naming the field."""
    from dataclasses import replace
    from agentsim.model.catalog import load_catalog
    from agentsim.model.deployment import Deployment
    from agentsim.model.servicetime import StepCoeffs
    from agentsim.util.errors import InputError
    dep = Deployment.from_catalog(load_catalog(), "DeepSeek-V3", "H200", precision="fp8", ep=8, dp=8)
    slow = replace(dep, efficiency=dep.efficiency.model_copy(update={"step_time_scale": 1.1}))
    c, k = StepCoeffs.of(dep), StepCoeffs.of(slow)
    for step in ({"prefill_tokens": 2000, "prefill_attn": 1e6}, {"decodes": 64, "decode_context": 4000},
                 {"prefill_tokens": 40000, "decodes": 5000, "decode_context": 4000}):
        assert k.step_time(**step) == pytest.approx(1.1 * c.step_time(**step), rel=1e-12)
    bad = tmp_path / "bad.toml"
    bad.write_text("[generations.hopper]\nstep_time_scale = 0\n")
    with pytest.raises(InputError, match="step_time_scale"):
        load_catalog((str(bad),))


def test_datacenter_lease_options_are_checked():
    """Its own options: bad values are refused naming the option; good ones become run()'s keywords."""
    from agentsim.util.errors import InputError
    mod = load("datacenter_lease")
    for bad, needle in (({"users": "x"}, "--users"), ({"users": "0.5"}, "--users"),
                        ({"warmup_hours": -1.0}, "--warmup-hours"), ({"all_slices": 0}, "--all-slices")):
        with pytest.raises(InputError, match=needle):
            mod.run_keywords(bad)
    kw = mod.run_keywords({"users": "1.5,0.5", "warmup_hours": 48.0, "no_sensitivity": True})
    assert kw["users_grid"] == (0.5e6, 1.5e6) and kw["warmup_h"] == 48.0 and kw["sensitivity"] is False
    # the run's clock: the measured window stays put, the start moves back by the warm-up
    assert mod.window(48.0) == {"start": "2026-05-31T18:00:00Z", "warmup_s": 172800.0, "duration_s": 180000.0}


@pytest.mark.parametrize("name", ["limits_doubling", "mixed_fleet_routing", "site_outage"])
def test_diurnal_experiments_measure_after_a_whole_day_of_warm_up(name):
    """Issue 19, build item 1: with the default populations' diurnal input, each run starts a whole
    period before the window it measures (which stays on its weekday and hour), and the warm-up is an
    option checked like any other."""
    from datetime import datetime, timedelta
    from agentsim.util.errors import InputError
    mod = load(name)
    assert mod.run_keywords({"warmup_hours": None}) == {"warmup_h": 24.0, "sensitivity": False}
    assert mod.run_keywords({"warmup_hours": 6.0, "sensitivity": True}) == {"warmup_h": 6.0, "sensitivity": True}
    with pytest.raises(InputError, match="--warmup-hours"):
        mod.run_keywords({"warmup_hours": -2.0})
    make = {"limits_doubling": lambda h: mod.scenario(0.1, True, warmup_h=h),
            "mixed_fleet_routing": lambda h: mod.scenario(0.1, "round_robin", 1.0, warmup_h=h),
            "site_outage": lambda h: mod.scenario(0.1, True, warmup_h=h)}[name]
    window = []
    for h in (24.0, 6.0):
        sc = make(h)
        assert sc["warmup_s"] == h * 3600 and sc["duration_s"] > sc["warmup_s"]
        t0 = datetime.fromisoformat(sc["start"].replace("Z", "+00:00")) + timedelta(seconds=sc["warmup_s"])
        window.append((t0, sc["duration_s"] - sc["warmup_s"]))
        if name == "site_outage":     # the outage keeps its hour of the measured day
            assert [(o["start_s"] - sc["warmup_s"]) for o in sc["outages"]] == [mod.OUTAGE[0]]
    assert window[0] == window[1] and window[0][0].weekday() == 1      # a Tuesday, whatever the warm-up


def test_mser5_picks_a_short_transient_and_flags_a_drifting_run():
    """The constant-load rule (energy): MSER-5 on completions per minute cuts a short start-up
    transient, and a series still drifting at the end is cut at half the run — not settled."""
    from agentsim.studies.experiments.window import mser5_warmup_s, settled
    rng = np.random.default_rng(7)
    end = 8 * 3600.0
    t = np.arange(0.0, end, 60.0)
    rate = np.where(t < 1800.0, 2.0, 20.0)                       # 30 min filling, then steady
    finish = np.repeat(t, rng.poisson(rate))
    warm = mser5_warmup_s(finish, end)
    assert 1800.0 - 300.0 <= warm <= 3600.0 and settled(warm, end)
    drifting = np.repeat(t, rng.poisson(1.0 + t / 600.0))        # still rising at the end
    warm = mser5_warmup_s(drifting, end)
    assert not settled(warm, end), warm


def _tpot(sc: dict, seed: int) -> dict:
    from agentsim.studies.experiments import simulate_one
    return {"tpot": float(simulate_one(sc, seed).summary()["tpot_s"])}


def test_sensitivity_reruns_the_headline_with_the_step_models_error(tmp_path):
    """Build item 5's band: the headline's arms rerun on the first seeds with every step × each
    held-out-error quartile. Light load on one replica, so TPOT is one step's time: it must move with
    the scale, and the band is the lowest and highest of the three."""
    from agentsim.studies.experiments import run_arms
    from agentsim.studies.experiments.sensitivity import STEP_SCALES, sensitivity
    sc = {"name": "sens", "duration_s": 120.0, "sample_s": 60,
          "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": 1}},
          "streams": {"s": {"kind": "poisson", "rate": 2.0, "input_tokens": 512, "output_tokens": 64}}}
    arms = {"a": sc}
    by = run_arms(_tpot, arms, [1, 2, 3], workers=0)
    s = sensitivity(_tpot, arms, by, [1, 2, 3], lambda b: {"tpot": float(np.mean([r["tpot"] for r in b["a"]]))},
                    tmp_path, workers=0)
    v = {k: x["tpot"] for k, x in s["values"].items()}
    assert s["seeds"] == [1, 2] and s["step_time_scales"] == list(STEP_SCALES)
    assert v["x0.956"] < v["x1"] < v["x1.006"]
    assert v["x0.956"] == pytest.approx(0.956 * v["x1"], rel=0.02)
    assert s["band"]["tpot"] == (v["x0.956"], v["x1.006"])


def test_progress_is_reported_as_tasks_finish():
    from agentsim.studies.executor import run_all
    seen = []
    out = run_all(pow, [(2, i) for i in range(4)], workers=0, progress=lambda d, n: seen.append((d, n)))
    assert out == [1, 2, 4, 8] and seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_bad_arguments(tmp_path):
    from agentsim.util.errors import InputError
    with pytest.raises(InputError, match="scale"):
        load("energy").run(tmp_path, scale=0)
    with pytest.raises(InputError, match="replications"):
        load("energy").run(tmp_path, replications=1)


# -- default size (minutes each) ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_default_size(tmp_path, name):
    mod = load(name)
    res = mod.run(tmp_path)
    assert (tmp_path / "summary.md").exists() and res["answer"]
    if name == "datacenter_lease":    # issue 19: the lease's default size within 5 minutes on two cores
        assert res["cpu_s"] < 2 * 300, "the default size should run in under 5 minutes on two cores"
    data = json.loads((tmp_path / "results.json").read_text())
    if "warmup_h" in data:            # diurnal input: a whole period of warm-up at the default size
        assert data["steady_state"], "a default run with diurnal input must warm up a whole period"


def test_same_results_on_any_executor(tmp_path):
    """Same seeds, same numbers: in this process, on a process pool and on Dask (the executor only
    places tasks)."""
    distributed = pytest.importorskip("distributed")
    mod = load("energy")

    def outputs(out: Path, **where) -> tuple:
        mod.run(out, scale=0.25, replications=2, generations=("H100",), loads=(4, 64), duration_s=2 * 3600.0, **where)
        data = json.loads((out / "results.json").read_text())
        for machine in ("runtime_s", "cpu_s", "settings"):
            data.pop(machine)
        return data, {f.name: f.read_bytes() for f in sorted(out.glob("*.csv"))}

    inline = outputs(tmp_path / "inline", workers=0)
    pool = outputs(tmp_path / "pool", workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        dask = outputs(tmp_path / "dask", address=c.scheduler_address)
        assert c.scheduler.transition_counter > 0, "the Dask run did not go through the cluster"
    assert inline[1] and inline == pool == dask


def test_summary_puts_assumptions_with_sources_after_the_answers_table(tmp_path):
    from agentsim.studies.experiments import Report
    rep = Report("x", "How many?", answer="Ten users per MW.")
    rep.section("Answer table", ["| a |", "|---|", "| 1 |"])
    rep.section("Method", ["replications"])
    rep.assume("PUE 1.25", "hardware-roofline.md §2.1")
    out = rep.write(tmp_path, runtime_s=1.0)
    md = (tmp_path / "summary.md").read_text()
    assert md.index("Ten users per MW") < md.index("## Answer table") < md.index("## Assumptions, with sources") \
        < md.index("## Method")
    assert "- PUE 1.25 — *hardware-roofline.md §2.1*" in md
    assert json.loads((tmp_path / "results.json").read_text())["assumptions"] == \
        [{"assumption": "PUE 1.25", "source": "hardware-roofline.md §2.1"}]
    assert out["summary_path"].endswith("summary.md")
