"""``agentsim sweep``: identical tables on every executor, resume after a kill, bad input.

The acceptance tests: the same small grid on the local process pool, on a Dask ``LocalCluster``
(two worker processes) and in this process gives identical tables (``check_exact``), with and
without slicing; a sweep killed with SIGKILL midway and rerun simulates only the unfinished
points and leaves the finished ones untouched. Scenarios are small (a tenth of a second per
run) so the whole file runs in well under a minute on two cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from agentsim.run.api import simulate
from agentsim.util.errors import InputError
from agentsim.studies.executor import InlineExecutor
from agentsim.studies.grid import check_path, parse_grid, split_values
from agentsim.studies.sweep import TABLE, TASKS, flatten, load_point, sweep, task_key
from cli_helper import cli

# Two pools, a randomised router, a Poisson stream and a fleet of coding agents (sessions, prefix
# cache, retries): enough moving parts for a hidden dependence on the process to show.
RICH = """\
name = "rich"
duration_s = 120
warmup_s = 10
sample_s = 10
seed = 5

[pools.h100]
gpu = "H100-SXM"
model = "Llama-3-8B"

[pools.h200]
gpu = "H200"
model = "Llama-3-8B"
engine = { max_batch = 16 }

[router]
policy = "power_of_two"

[streams.chat]
kind = "poisson"
rate = 4
input_tokens = { kind = "lognormal", median = 512, sigma = 0.8, max = 4096 }
output_tokens = { kind = "lognormal", median = 128, sigma = 0.6, max = 1024 }

[populations.coders]
profile = "interactive_coding_agent"
kind = "fleet"
size = 4
workers = 4
"""

GRID = ["router.policy=power_of_two,session_affinity", "streams.chat.rate=2,4"]

TOY_CATALOG = """\
[generations.toy]
mfu_bf16 = 0.5
mfu_fp8 = 0.5
mfu_fp4 = 0.5
mbu = 0.75
step_overhead_ms = 10.0
request_overhead_ms = 0.0
link_efficiency = 0.7
allreduce_latency_us = 0.0

[gpus.ToyGPU]
vendor = "Toy"
generation = "toy"
bf16_tflops = 1000.0
fp8_tflops = 0.0
fp4_tflops = 0.0
hbm_gb = 80.0
hbm_tbps = 3.0
scaleup_gbps = 900.0
scaleout_gbps = 50.0
tdp_w = 700.0
server_w_per_gpu = 1000.0
idle_power_fraction = 0.3
gpus_per_node = 8
host_mem_gb_per_gpu = 0.0
host_link_gbps = 64.0
usd_per_gpu_hour = 1.0

[models.Toy]
layers = 1
d_model = 64
n_heads = 1
n_kv_heads = 1
head_dim = 64
d_ff = 64
vocab = 256
max_context = 100000
"""

TOY = """\
name = "toy"
duration_s = 500
warmup_s = 50
catalog = ["toy.toml"]
[pools.m]
gpu = "ToyGPU"
model = "Toy"
engine = { max_batch = 10 }
[streams.s]
kind = "poisson"
rate = 8.0
input_tokens = 1
output_tokens = { kind = "geometric", mean = 99, offset = 1 }
"""




@pytest.fixture(scope="module")
def rich(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("rich") / "rich.toml"
    p.write_text(RICH)
    return p


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy")
    (d / "toy.toml").write_text(TOY_CATALOG)
    (d / "mmc.toml").write_text(TOY)
    return d / "mmc.toml"


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


# -- identical results whatever the executor -------------------------------------------------------
def test_pool_dask_and_inline_give_identical_tables(rich, dask_cluster, tmp_path):
    pool = sweep(rich, GRID, replications=2, workers=2, progress=False, out_dir=tmp_path / "pool")
    dask = sweep(rich, GRID, replications=2, address=dask_cluster.scheduler_address, progress=False)
    inline = sweep(rich, GRID, replications=2, workers=0, progress=False)
    assert len(pool.table) == 8 and pool.ran == 8 and dask.ran == 8
    pd.testing.assert_frame_equal(pool.table, dask.table, check_exact=True)
    pd.testing.assert_frame_equal(pool.table, inline.table, check_exact=True)
    # the table written to disk is the same table
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "pool" / TABLE), pool.table, check_exact=True)
    # ... and a row is what simulate() gives for that point and seed
    t = pool.table
    row = t[(t["router.policy"] == "session_affinity") & (t["streams.chat.rate"] == 2) & (t["replication"] == 1)]
    direct = flatten(simulate(rich, seed=6, overrides=["router.policy=session_affinity", "streams.chat.rate=2"])
                     .summary())
    got = row.iloc[0].to_dict()
    for k, v in direct.items():
        if k != "sim_wall_s":
            assert got[k] == v or (v != v and got[k] != got[k]), k


def test_sliced_sweep_identical_on_pool_and_dask(rich, dask_cluster):
    kw = dict(replications=1, slices=2, progress=False)
    pool = sweep(rich, ["router.policy=power_of_two,session_affinity"], workers=2, **kw)
    dask = sweep(rich, ["router.policy=power_of_two,session_affinity"], address=dask_cluster.scheduler_address, **kw)
    pd.testing.assert_frame_equal(pool.table, dask.table, check_exact=True)
    assert pool.ran == 4 and set(pool.table["slices"]) == {2} and set(pool.table["percentile_method"]) == {"pooled"}


# -- resume -------------------------------------------------------------------------------------------
def _task_files(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / TASKS).glob("*.json")}


def test_killed_sweep_reruns_only_unfinished_points(toy, tmp_path):
    out = tmp_path / "out"
    code = "import sys; from agentsim.cli import main; main(sys.argv[1:])"
    argv = ["sweep", str(toy), "--grid", "pools.m.engine.max_batch=10,11,12,13,14", "-r", "2", "--set",
            "duration_s=300", "--workers", "1", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ((out / TASKS).exists() and len(_task_files(out)) >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the sweep did not get going"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)      # the sweep and the pool processes it started
        proc.wait()
    before = _task_files(out)
    assert 3 <= len(before) < 10, len(before)
    assert not (out / TABLE).exists()            # the combined table comes only at the end
    grid, kw = ["pools.m.engine.max_batch=10,11,12,13,14"], dict(replications=2, overrides=["duration_s=300"])
    res = sweep(toy, grid, workers=0, out_dir=out, progress=False, **kw)
    assert (res.reused, res.ran) == (len(before), 10 - len(before))
    after = _task_files(out)
    assert len(after) == 10 and all(after[k] == v for k, v in before.items())  # finished files untouched
    assert sorted(res.table["key"]) == sorted(p[:-5] for p in after)
    assert res.table["requests"].notna().all() and len(res.table) == 10
    again = sweep(toy, grid, workers=0, out_dir=out, progress=False, **kw)
    assert (again.reused, again.ran) == (10, 0)
    pd.testing.assert_frame_equal(again.table, res.table, check_exact=True)
    # the resumed table is the one an uninterrupted sweep gives
    pd.testing.assert_frame_equal(sweep(toy, grid, workers=0, progress=False, **kw).table, res.table, check_exact=True)


class _StopAfter(InlineExecutor):
    """Runs tasks in process; Ctrl-C arrives when the n-th task is submitted."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def submit(self, fn, /, *args, **kwargs):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt
        return super().submit(fn, *args, **kwargs)


def test_interrupted_sweep_keeps_finished_points_and_resumes(rich, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        sweep(rich, GRID, executor=_StopAfter(4), out_dir=tmp_path, progress=False)
    assert len(_task_files(tmp_path)) == 3
    res = sweep(rich, GRID, workers=0, out_dir=tmp_path, progress=False)
    assert (res.reused, res.ran) == (3, 1)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_table_layout_and_keys(rich, tmp_path):
    res = sweep(rich, ["streams.chat.rate=2,3"], replications=2, seed=11, workers=0, out_dir=tmp_path,
                progress=False)
    t = res.table
    assert list(t.columns[:4]) == ["streams.chat.rate", "replication", "seed", "key"]
    assert list(t["seed"]) == [11, 12, 11, 12] and list(t["replication"]) == [0, 1, 0, 1]
    assert "sim_wall_s" not in t and "events" in t and "pools.h100.busy_share" in t
    assert t["key"].is_unique
    sc = load_point(rich, ["streams.chat.rate=3"])
    assert t["key"].iloc[3] == task_key(sc.model_dump(mode="json"), 12)
    payload = json.loads((tmp_path / TASKS / f"{t['key'].iloc[3]}.json").read_text())
    assert payload["seed"] == 12 and payload["summary"]["requests"] == t["requests"].iloc[3]
    assert sorted(os.listdir(tmp_path)) == [TABLE, TASKS]


def test_catalog_from_environment_travels_with_the_scenario(toy, tmp_path, monkeypatch):
    """A worker without AGENTSIM_CATALOG still finds the GPUs the driver's environment names."""
    sc_text = toy.read_text().replace('catalog = ["toy.toml"]\n', "")
    (tmp_path / "s.toml").write_text(sc_text)
    monkeypatch.setenv("AGENTSIM_CATALOG", str(toy.parent / "toy.toml"))
    res = sweep(tmp_path / "s.toml", ["duration_s=100"], workers=0, progress=False)
    assert res.table["requests"].iloc[0] > 0
    monkeypatch.delenv("AGENTSIM_CATALOG")
    from agentsim.studies.sweep import plan_rows
    row = plan_rows(load_point(toy, []), {}, [1])[0]
    assert str(toy.parent / "toy.toml") in row.tasks[0][1]["catalog"]


# -- grid parsing -------------------------------------------------------------------------------------
def test_split_values_respects_brackets_and_quotes():
    assert split_values("1,2, 3") == ["1", "2", "3"]
    assert split_values('{kind="exponential",mean=3},[1,2],"a,b"') == ['{kind="exponential",mean=3}', "[1,2]",
                                                                      '"a,b"']
    assert parse_grid(["a.b=1,2", ("c", [3, "x"])]) == [("a.b", ["1", "2"]), ("c", ["3", "x"])]


@pytest.mark.parametrize("spec, words", [
    ("pools.h100.replicaz=1,2", ["unknown field 'replicaz'", "did you mean 'replicas'"]),
    ("pools.a100.replicas=1,2", ["unknown field 'a100'", "h100"]),
    ("pools.h100.engine.max_bach=4,8", ["'max_bach' is not an engine setting", "max_batch"]),
    ("streams.chat.rate.x=1", ["is a value, not a table"]),
    ("outages.0.start_s=1", ["list of 0"]),
    ("streams.chat.rate", ["expected PATH=V1,V2"]),
    ("streams.chat.rate=1,,2", ["empty value"]),
    ("streams.chat.rate=-1,2", ["rate", "-1"]),
])
def test_bad_grid_is_one_clear_line_and_exit_2(rich, spec, words):
    code, out, err = cli("sweep", str(rich), "--grid", spec, "--workers", "0", "--no-progress")
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_check_path_free_tables():
    data = load_point({"pools": {"a": {"gpu": "H100", "model": "Llama-3-8B"}},
                       "populations": {"c": {"profile": "chat_user", "size": 3}}}, []).model_dump(mode="json")
    assert check_path(data, "pools.a.engine.max_batch", "--grid") is None
    assert check_path(data, "populations.c.params.turns.sigma", "--grid") is None
    assert check_path(data, "pools.a.replicas", "--grid") == 1
    with pytest.raises(InputError, match="unknown field 'popul'"):
        check_path(data, "popul.c.size", "--grid")


def test_unreachable_dask_address_exit_2(rich):
    t = time.monotonic()
    code, out, err = cli("sweep", str(rich), "--grid", "streams.chat.rate=2", "--address", "tcp://127.0.0.1:9",
                         "--connect-timeout", "1", "--no-progress")
    assert code == 2 and err.startswith("error: --address tcp://127.0.0.1:9: no Dask scheduler reachable"), err
    assert err.count("\n") == 1 and time.monotonic() - t < 30


def test_sweep_cli_json_and_table(rich, tmp_path):
    code, out, err = cli("sweep", str(rich), "--grid", "streams.chat.rate=2,3", "--workers", "0", "--format", "json",
                         "--out", str(tmp_path), "--no-progress")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["streams.chat.rate"] for r in rows] == [2, 3] and all(r["requests"] > 0 for r in rows)
    assert "2 row(s): 2 simulation(s) run, 0 reused" in err
    code, out, err = cli("sweep", str(rich), "--grid", "streams.chat.rate=2,3", "--workers", "0", "--out",
                         str(tmp_path), "--no-progress")
    assert code == 0 and "0 simulation(s) run, 2 reused" in err
    assert out.splitlines()[0].split()[:3] == ["streams.chat.rate", "requests", "ttft_p99_s"]
