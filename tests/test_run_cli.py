"""``agentsim run``: the output directory, its reconciliation with summary.json, replications,
atomic writes, determinism and ``Result.load`` round trips.

The scenario is small on purpose (60 simulated seconds, three replicas of Llama-3-8B): every
run here takes a fraction of a second.
"""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import agentsim
from agentsim.run.api import simulate
from agentsim.serving.request import OUTCOMES
from agentsim.results.result import Result
from cli_helper import cli

SCENARIO = """\
name = "small-run"
duration_s = 60
warmup_s = 10
seed = 3
sample_s = 10
slo_ttft_s = 0.5
slo_tpot_s = 0.05

[pools.h100]
gpu = "H100-SXM"
model = "Llama-3-8B"
replicas = 2

[pools.h200]
gpu = "H200"
model = "Llama-3-8B"
replicas = 1

[router]
policy = "least_outstanding"

[streams.chat]
kind = "poisson"
rate = 20
input_tokens = { kind = "lognormal", median = 512, sigma = 0.8, max = 4096 }
output_tokens = { kind = "lognormal", median = 128, sigma = 0.6, max = 1024 }
"""

FILES = {"requests.parquet", "timeseries.parquet", "pools.parquet", "summary.json", "manifest.json"}


def assert_result_dir(d: Path) -> None:
    """The documented files are there, complete, and nothing temporary is left behind."""
    names = set(os.listdir(d))
    assert FILES <= names, FILES - names
    for n in names:
        assert not n.startswith(".") and "tmp" not in n, f"leftover {n}"
        if n == "figures":                      # the standard figures (run --out writes them by default)
            pngs = os.listdir(d / n)
            assert pngs and all(p.endswith(".png") and not p.startswith(".") for p in pngs), pngs
            continue
        assert (d / n).is_file() and (d / n).stat().st_size > 0, n
        assert n.endswith((".parquet", ".json")), n
SEED = 7




def nan_to_none(o):
    """summary.json writes NaN as null; the in-memory summary has NaN."""
    if isinstance(o, dict):
        return {k: nan_to_none(v) for k, v in o.items()}
    if isinstance(o, float) and math.isnan(o):
        return None
    return o


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("scn") / "small.toml"
    p.write_text(SCENARIO)
    return p


@pytest.fixture(scope="module")
def run_dir(scenario_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code, stdout, stderr = cli("run", str(scenario_file), "--seed", str(SEED), "--out", str(out), "--no-progress",
                               "--format", "json")
    assert code == 0, stderr
    return out, json.loads(stdout)


@pytest.fixture(scope="module")
def tables(run_dir):
    out, _ = run_dir
    return (pd.read_parquet(out / "requests.parquet"), json.loads((out / "summary.json").read_text()),
            json.loads((out / "manifest.json").read_text()))


# -- the directory --------------------------------------------------------------------------------------
def test_out_dir_holds_exactly_the_documented_files(run_dir):
    out, _ = run_dir
    assert_result_dir(out)
    json.loads((out / "summary.json").read_text())
    json.loads((out / "manifest.json").read_text())


def test_stdout_json_is_the_summary(run_dir, tables):
    printed = dict(run_dir[1])
    summary = dict(tables[1])
    printed.pop("sim_wall_s"), summary.pop("sim_wall_s")
    assert nan_to_none(printed) == summary


def test_manifest_has_seed_version_and_scenario(tables, scenario_file):
    _, _, manifest = tables
    assert manifest["seed"] == SEED
    assert manifest["agentsim_version"] == agentsim.__version__
    sc = agentsim.run.scenario.load(scenario_file)
    assert agentsim.run.scenario.parse(manifest["scenario"]) == sc
    assert manifest["scenario"]["name"] == "small-run"
    assert manifest["duration_s"] == 60 and manifest["warmup_s"] == 10
    assert manifest["events"] > 0 and manifest["sim_wall_s"] >= 0


def test_requests_table_schema(tables):
    df, _, _ = tables
    for col in ("request_id", "stream", "session", "tenant", "pool", "site", "replica", "priority", "input_tokens",
                "output_tokens", "cached_gpu_tokens", "cached_host_tokens", "prefill_tokens", "preemptions",
                "outcome", "arrival_s", "ready_s", "admitted_s", "first_token_s", "finish_s", "queue_s", "ttft_s",
                "tpot_s", "e2e_s"):
        assert col in df.columns, col
    assert df["request_id"].tolist() == list(range(len(df)))
    assert set(df["outcome"].astype(str)) <= set(OUTCOMES)
    assert set(df["pool"].astype(str)) == {"h100", "h200"}
    done = df[df["outcome"] == "completed"]
    np.testing.assert_array_equal(done["ttft_s"], done["first_token_s"] - done["arrival_s"])
    np.testing.assert_array_equal(done["e2e_s"], done["finish_s"] - done["arrival_s"])
    np.testing.assert_array_equal(done["queue_s"], done["admitted_s"] - done["ready_s"])
    np.testing.assert_allclose(done["tpot_s"], (done["finish_s"] - done["first_token_s"]) / (done["output_tokens"] - 1))
    ordered = (done["arrival_s"] <= done["ready_s"]) & (done["ready_s"] <= done["admitted_s"]) & \
              (done["admitted_s"] <= done["first_token_s"]) & (done["first_token_s"] <= done["finish_s"])
    assert ordered.all()
    assert df.loc[df["outcome"] != "completed", "e2e_s"].isna().all()


def test_requests_reconcile_with_summary(tables):
    df, s, manifest = tables
    warm, duration = manifest["warmup_s"], manifest["duration_s"]
    after = df[df["arrival_s"] >= warm]
    done = after[after["outcome"] == "completed"]
    assert len(done) > 500                        # enough traffic for the comparison to mean something
    assert s["requests"] == len(after)
    assert s["completed"] == len(done)
    counts = after["outcome"].astype(str).value_counts()
    assert s["outcomes"] == {o: int(n) for o, n in counts.items()}
    assert sum(s["outcomes"].values()) == s["requests"]
    # throughput = tokens of completed requests / the span from the end of warm-up to the last completion
    last = float(done["finish_s"].max())
    assert duration - 5 < last <= duration
    span = last - warm
    assert s["output_tokens_per_s"] == pytest.approx(done["output_tokens"].sum() / span, rel=1e-12)
    assert s["input_tokens_per_s"] == pytest.approx(done["input_tokens"].sum() / span, rel=1e-12)
    assert s["requests_per_s"] == pytest.approx(len(done) / span, rel=1e-12)
    # latency means and percentiles are over completed requests after warm-up
    for name in ("ttft", "tpot", "e2e"):
        x = done[f"{name}_s"].dropna().to_numpy()
        assert s[f"{name}_s"] == pytest.approx(x.mean(), rel=1e-12)
        for p in (50, 90, 99):
            assert s[f"{name}_p{p}_s"] == pytest.approx(np.percentile(x, p), rel=1e-12)
    assert s["queue_s"] == pytest.approx(done["queue_s"].mean(), rel=1e-12)
    good = done[(done["ttft_s"] <= 0.5) & ~(done["tpot_s"] > 0.05)]
    assert s["goodput_rps"] == pytest.approx(len(good) / span, rel=1e-12)
    assert s["slo_attainment"] == pytest.approx(len(good) / len(after), rel=1e-12)
    # the warm-up really is left out: more rows than the summary counts
    assert len(df) > s["requests"]


def test_pools_and_timeseries_reconcile_with_summary(run_dir, tables):
    out, _ = run_dir
    df, s, manifest = tables
    pools = pd.read_parquet(out / "pools.parquet")
    ts = pd.read_parquet(out / "timeseries.parquet")
    assert list(pools["pool"]) == ["h100", "h200"]
    assert list(pools["replicas"]) == [2, 1] and list(pools["gpus"]) == [2, 1]
    # energy and cost are the measured window's (after the 10-s warm-up): the sampled facility power
    # over the five 10-s intervals after it, and the run's cost prorated to 50 of its 60 s
    after = ts[ts["time_s"] > 10.0]
    assert s["energy_j"] == pytest.approx(float((after["facility_power_w"] * 10.0).sum()), rel=1e-9)
    assert s["energy_j"] < pools["facility_energy_j"].sum()
    assert s["cost_usd"] == pytest.approx(pools["cost_usd"].sum() * 50.0 / 60.0, rel=1e-12)
    assert set(s["pools"]) == {"h100", "h200"}
    # the time series covers the run in sample_s steps, one row per pool per interval
    assert sorted(ts["time_s"].unique()) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert len(ts) == 12
    # every routed request is counted once as an arrival in the time series
    assert ts["arrivals"].sum() == len(df)
    per_pool = ts.groupby("pool", observed=True)["arrivals"].sum()
    assert per_pool.to_dict() == df["pool"].astype(str).value_counts().to_dict()
    assert ts["completed"].sum() == (df["outcome"] == "completed").sum()
    by_t = after.groupby("time_s")["facility_power_w"].sum()          # the window's samples
    assert s["facility_power_mean_w"] == pytest.approx(by_t.mean(), rel=1e-12)
    assert s["facility_power_peak_w"] == pytest.approx(by_t.max(), rel=1e-12)


# -- Result.load and determinism --------------------------------------------------------------------------
def test_result_load_round_trips(run_dir, tables, scenario_file):
    out, _ = run_dir
    _, summary, _ = tables
    loaded = Result.load(out)
    got = nan_to_none(json.loads(json.dumps(loaded.summary(), default=float)))
    assert got == summary
    # the saved run is exactly what the API produces for the same scenario and seed
    fresh = simulate(str(scenario_file), seed=SEED)
    pd.testing.assert_frame_equal(loaded.requests, fresh.requests, check_exact=True)
    pd.testing.assert_frame_equal(loaded.pools, fresh.pools, check_exact=True)
    pd.testing.assert_frame_equal(loaded.timeseries, fresh.timeseries, check_exact=True)


def test_result_load_of_a_non_result_is_an_input_error(tmp_path):
    with pytest.raises(agentsim.InputError, match=r"missing manifest\.json"):
        Result.load(tmp_path)


def test_same_seed_same_requests_different_seed_different(scenario_file, tmp_path, tables):
    first, _, _ = tables
    code, _, err = cli("run", str(scenario_file), "--seed", str(SEED), "--out", str(tmp_path / "again"),
                       "--no-progress", "--format", "json")
    assert code == 0, err
    again = pd.read_parquet(tmp_path / "again" / "requests.parquet")
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    other = simulate(str(scenario_file), seed=SEED + 100).requests
    assert len(other) != len(first) or not np.array_equal(other["arrival_s"].to_numpy(), first["arrival_s"].to_numpy())
    # and the scenario's own seed is used when --seed is absent
    default = simulate(str(scenario_file)).requests
    pd.testing.assert_frame_equal(default, simulate(str(scenario_file), seed=3).requests, check_exact=True)


# -- replications ---------------------------------------------------------------------------------------
def test_replications_write_one_directory_each_and_a_ci_summary(scenario_file, tmp_path):
    out = tmp_path / "reps"
    code, stdout, err = cli("run", str(scenario_file), "--seed", "11", "--replications", "3", "--out", str(out),
                            "--no-progress", "--format", "json")
    assert code == 0, err
    assert set(os.listdir(out)) == {"rep-000", "rep-001", "rep-002", "summary.json"}
    for i in range(3):
        assert_result_dir(out / f"rep-{i:03d}")
        assert json.loads((out / f"rep-{i:03d}" / "manifest.json").read_text())["seed"] == 11 + i
    s = json.loads((out / "summary.json").read_text())
    assert s["replications"] == 3
    reps = [json.loads((out / f"rep-{i:03d}" / "summary.json").read_text()) for i in range(3)]
    for key in ("e2e_s", "ttft_s", "output_tokens_per_s", "requests", "energy_j"):
        x = np.array([r[key] for r in reps], float)
        assert s[key] == pytest.approx(x.mean(), rel=1e-12)
        half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
        assert s[f"{key}_ci_low"] == pytest.approx(x.mean() - half, rel=1e-9)
        assert s[f"{key}_ci_high"] == pytest.approx(x.mean() + half, rel=1e-9)
        assert s[f"{key}_ci_low"] < s[key] < s[f"{key}_ci_high"]   # the seeds differ, so the reps do too
    printed = json.loads(stdout)
    assert printed["e2e_s_ci_low"] == pytest.approx(s["e2e_s_ci_low"], rel=1e-12)


# -- errors -----------------------------------------------------------------------------------------------
def test_unwritable_output_directory_exits_2(scenario_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, out, err = cli("run", str(scenario_file), "--out", str(blocker / "sub"), "--no-progress", "--format", "json")
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output directory") and "not writable" in lines[0]
    assert str(blocker / "sub") in lines[0]
    assert blocker.read_text() == "not a directory"


def test_output_path_that_is_a_file_exits_2(scenario_file, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = cli("run", str(scenario_file), "--out", str(blocker), "--no-progress")
    assert code == 2 and "Traceback" not in err and "--out" in err


def test_table_format_prints_the_headline(scenario_file, tmp_path):
    code, out, err = cli("run", str(scenario_file), "--no-progress", "--out", str(tmp_path / "t"))
    assert code == 0, err
    assert out.splitlines()[0].split() == ["metric", "value"]
    for m in ("ttft_p99_s", "e2e_s", "output_tokens_per_s", "outcome:completed", "pool:h100:busy_share", "pool:h100:capacity_utilisation"):
        assert m in out
    assert "results written to" in err


def test_replication_summary_outcomes_describe_all_replications(scenario_file):
    rs = simulate(str(scenario_file), seed=11, replications=3)
    s = rs.summary()
    reps = [r.summary() for r in rs.results]
    assert len({r["requests"] for r in reps}) == 3                     # the premise: the replications differ
    assert sum(s["outcomes"].values()) == pytest.approx(s["requests"], rel=1e-12)
    assert s["outcomes"]["completed"] == pytest.approx(s["completed"], rel=1e-12)
