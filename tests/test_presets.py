"""Engine presets (issue 13): sourced defaults, one code path for ``estimate --engine`` and
``engine.preset``, explicit fields winning, the per-sequence scheduler term keeping the engine's
closed form exact, the TTFT split adding up, and estimate's offline and server modes."""
from __future__ import annotations

import json
import math
import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from engine_harness import coeffs, mismatches, poisson_workload, rel_close, run_both

from agentsim.model import presets
from agentsim.run.api import simulate
from agentsim.run.build import build, default_limits
from agentsim.model.catalog import data_path, load_catalog
from agentsim.cli import main
from agentsim.serving.engine import EngineConfig
from agentsim.util.errors import InputError
from agentsim.studies.estimate import estimate, estimate_scenario
from agentsim.run.scenario import parse

SHAPE = dict(model="Llama-3.1-8B", gpu="H100-SXM", precision="fp8", input_tokens=700, output_tokens=90)
#: the values a preset must carry (each with a source)
FIELDS = {"version", "kernels", "max_batch", "max_batch_small", "token_budget", "token_budget_small", "kv_dtype",
          "kv_dtype_quantized", "no_evict", "offline_limits", "schedule", "step_overhead_ms", "per_seq_us",
          "request_overhead_ms"}


def cli_json(args: list[str], capsys) -> dict:
    try:
        main(args)
    except SystemExit as e:
        assert e.code == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", presets.PRESETS)
def test_every_default_carries_a_source(name):
    table = tomllib.loads(data_path("presets.toml").read_text())[name]
    values = {k for k in table if k != "sources"}
    assert FIELDS <= values, FIELDS - values
    for key in values:
        source = table["sources"].get(key, "")
        assert len(source) > 20, (name, key, source)   # a sentence: where it is stated, or that nothing states it
    assert table["kernels"] == name


@pytest.mark.parametrize("name", presets.PRESETS)
def test_estimate_engine_flag_equals_a_scenario_with_the_preset(name, capsys):
    """The CLI flag and a scenario file naming the preset run the same simulation, bit for bit."""
    out = cli_json(["estimate", "--model", SHAPE["model"], "--gpu", SHAPE["gpu"], "--precision", "fp8",
                    "--input-tokens", "700", "--output-tokens", "90", "--concurrency", "24", "--requests", "300",
                    "--engine", name, "--format", "json"], capsys)
    scenario = f"""
name = "by-hand"
duration_s = 1e7
sample_s = 1e7
slo_ttft_s = 1e9
slo_tpot_s = 1e9
[engine]
preset = "{name}"
[pools.p]
gpu = "{SHAPE['gpu']}"
model = "{SHAPE['model']}"
precision = "fp8"
[streams.s]
kind = "concurrency"
concurrency = 24
count = 300
input_tokens = 700
output_tokens = 90
"""
    res = simulate(parse(tomllib.loads(scenario)), seed=1)
    s, pool = res.summary(), res.pools.iloc[0]
    for key in ("requests", "ttft_s", "ttft_p99_s", "tpot_s", "tpot_p99_s", "e2e_s", "frontend_s", "queue_s", "prefill_s"):
        assert out[key] == s[key], (name, key)
    assert (out["max_batch"], out["token_budget"], out["kernels"]) == (pool["max_batch"], pool["token_budget"], name)


def pool_of(engine: dict, **shape):
    sc = parse(estimate_scenario(**{**SHAPE, **shape}, concurrency=4, requests=10, engine=engine))
    return build(sc).cluster.pools[0]


def test_preset_fills_only_unset_fields_and_sets_the_time_outside_the_gpu():
    cat = load_catalog()
    pool = pool_of({"preset": "trtllm"})
    fitted = presets.overheads("trtllm", cat)
    assert pool.deployment.kv_dtype == "fp8" and pool.deployment.engine == "trtllm"   # FP8 checkpoint -> FP8 KV
    assert pool.coeffs.request_overhead == fitted["request_overhead_ms"] * 1e-3
    assert pool.coeffs.overhead == fitted["step_overhead_ms"] * 1e-3
    no_evict = pool.deployment.kv_capacity_tokens // (700 + 90)     # GUARANTEED_NO_EVICT binds below 2048
    assert (pool.config.max_batch, pool.config.token_budget) == (min(2048, no_evict), 8192)
    mine = pool_of({"preset": "trtllm", "kv_dtype": "bf16", "kernels": "vllm", "max_batch": 7, "token_budget": 512})
    assert mine.deployment.kv_dtype == "bf16" and mine.deployment.engine == "vllm"
    assert (mine.config.max_batch, mine.config.token_budget) == (7, 512)
    assert mine.coeffs.request_overhead == pool.coeffs.request_overhead    # the preset's overheads stay


def test_no_preset_keeps_the_generation_overheads_and_vllm_limits():
    pool = pool_of({})
    eff = load_catalog().efficiency(pool.deployment.gpu)
    assert pool.coeffs.overhead == eff.step_overhead_ms * 1e-3
    assert pool.coeffs.request_overhead == eff.request_overhead_ms * 1e-3 and pool.coeffs.per_seq == 0.0
    assert (pool.config.max_batch, pool.config.token_budget) == default_limits(pool.deployment)
    assert pool.deployment.kv_dtype == "bf16"


def test_sglang_budget_follows_gpu_memory():
    assert pool_of({"preset": "sglang"}).config.token_budget == 8192                  # 80 GB: 8192
    assert pool_of({"preset": "sglang"}, gpu="B200").config.token_budget == 16384     # >= 160 GiB: 16384
    assert pool_of({"preset": "vllm"}, gpu="A100-SXM-80GB", precision="bf16").config.max_batch == 256  # vLLM A100 rule


def test_trtllm_no_evict_caps_the_batch_for_constant_lengths():
    pool = pool_of({"preset": "trtllm"}, input_tokens=60_000, output_tokens=4_000)
    assert pool.config.max_batch == pool.deployment.kv_capacity_tokens // 64_000 < 2048


def test_unknown_preset_is_one_clear_error():
    with pytest.raises(InputError) as e:
        parse(estimate_scenario(**SHAPE, concurrency=1, engine={"preset": "tgi"}))
    msg = str(e.value)
    assert "engine.preset" in msg and "'tgi'" in msg and "vllm" in msg and "\n" not in msg


# -- per-sequence scheduler time: the closed form stays exact --------------------------------------
@pytest.mark.parametrize("dep", ["llama8b-h100", "llama70b-4xh100-fp8"])
def test_per_seq_overhead_keeps_the_engines_equal(dep):
    co = coeffs(dep).with_(per_seq=40e-6)
    wl = poisson_workload(5, 200, 40.0, (512.0, 1.0, 4096), (128.0, 1.0, 512), cached_frac=0.3)
    cfg = EngineConfig(kv_capacity=200_000, max_batch=48, token_budget=1024)
    (a, ra, _), (b, rb, _) = run_both(co, cfg, wl)
    assert not mismatches(a, b)
    assert ra.steps == rb.steps and rel_close(ra.energy_j, rb.energy_j)
    plain = run_both(coeffs(dep), cfg, wl)[0][0]
    assert sum(r.finish for r in a) > sum(r.finish for r in plain)   # the term costs time


@st.composite
def unchunked(draw):
    """Random workloads for an engine that never splits a prompt that fits the budget."""
    n = draw(st.integers(1, 80))
    wl = poisson_workload(draw(st.integers(0, 2**32 - 1)), n, draw(st.sampled_from([2.0, 50.0, math.inf])),
                          (draw(st.sampled_from([64.0, 900.0, 3000.0])), 1.0, 8192), (64.0, 1.0, 400),
                          cached_frac=draw(st.sampled_from([0.0, 0.5])), host_frac=draw(st.sampled_from([0.0, 0.5])))
    biggest = int((wl.prompt + wl.output).max())
    cfg = EngineConfig(kv_capacity=max(biggest, draw(st.sampled_from([biggest, 4 * biggest, 200_000]))),
                       max_batch=draw(st.integers(1, 64)), token_budget=draw(st.sampled_from([512, 2048, 4096, 8192])),
                       chunked_prefill=False)
    return draw(st.sampled_from(["llama8b-h100", "llama70b-4xh100-fp8"])), cfg, wl


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(unchunked())
def test_unchunked_prefill_keeps_the_engines_equal(case):
    """TensorRT-LLM's unchunked prefill (the trtllm preset): fast engine == step-by-step reference."""
    dep, cfg, wl = case
    (a, ra, _), (b, rb, _) = run_both(coeffs(dep), cfg, wl)
    assert not mismatches(a, b), mismatches(a, b)[:3]
    assert ra.steps == rb.steps and ra.preemptions == rb.preemptions


@pytest.mark.parametrize("cls", ["fast", "reference"])
def test_unchunked_prompt_runs_whole_in_its_own_step(cls):
    """Two 5000-token prompts at once, budget 8192: unchunked, the first runs alone (its first token
    after exactly one 5000-token prefill step) and the second waits for the next step; chunked, the
    second's 3192-token chunk shares (and lengthens) the first step."""
    from engine_harness import Workload, run
    from agentsim.serving.engine import Replica
    from agentsim.serving.engine_reference import SteppingReplica
    co = coeffs("llama8b-h100", 0.0)
    wl = Workload(np.zeros(2), np.array([5000, 5000]), np.array([4, 4]))
    alone = co.step_time(5000, 5000 * 5000 / 2, 5000, 0, 0, 1)
    first = {}
    for chunked in (False, True):
        cfg = EngineConfig(kv_capacity=100_000, max_batch=8, token_budget=8192, chunked_prefill=chunked)
        reqs, _, _ = run(Replica if cls == "fast" else SteppingReplica, co, cfg, wl)
        first[chunked] = [r.first_token for r in reqs]
    assert rel_close(first[False][0], alone)
    assert first[False][1] > 2 * alone * 0.99          # a whole second prefill step after the first
    assert first[True][0] > alone * 1.2                 # chunked: the first step carries 8192 tokens


def test_stretch_matches_step_by_step_with_per_seq():
    co = coeffs("llama8b-h100").with_(per_seq=25e-6)
    n, S = 37, 37 * 900
    law = co.stretch(n, S, 0, 0)
    steps = [co.step_time(decodes=n, decode_context=S + n * u) for u in range(50)]
    assert math.isclose(law.elapsed(50), sum(steps), rel_tol=1e-12)


# -- the TTFT split ---------------------------------------------------------------------------------
def test_ttft_split_adds_up_for_every_completed_request():
    """Front end + queue + prefill == TTFT for every completed request (to the rounding of the
    timestamps they are differences of), with a nonzero front end and real queueing."""
    sc = parse(estimate_scenario(**SHAPE, rate=60.0, requests=600, engine={"preset": "vllm", "max_batch": 8}))
    res = simulate(sc, seed=3)
    done = res.requests[res.requests["outcome"] == "completed"]
    assert len(done) == 600
    total = done["frontend_s"] + done["queue_s"] + done["prefill_s"]
    scale = np.spacing(done["first_token_s"].to_numpy()) * 4
    assert (np.abs(total - done["ttft_s"]).to_numpy() <= scale).all()
    assert (done["frontend_s"] > 0).all() and (done["queue_s"] > 0).mean() > 0.5 and (done["prefill_s"] > 0).all()
    assert np.allclose(done["frontend_s"], presets.overheads("vllm", load_catalog())["request_overhead_ms"] * 1e-3)
    s = res.summary()
    assert math.isclose(s["frontend_s"] + s["queue_s"] + s["prefill_s"], s["ttft_s"], rel_tol=1e-9)


# -- offline and server modes -----------------------------------------------------------------------
def test_offline_mode_is_max_load():
    a = estimate(**SHAPE, mode="offline", requests=200, engine={"preset": "vllm"})
    b = estimate(**SHAPE, max_load=True, requests=200, engine={"preset": "vllm"})
    assert a == {**b, "sim_wall_s": a["sim_wall_s"]}


def test_server_mode_finds_the_highest_rate_meeting_the_bounds():
    kw = dict(**SHAPE, mode="server", ttft_p99=0.25, tpot_p99=0.03, requests=300, engine={"preset": "vllm"},
              min_duration_s=5.0)
    out = estimate(**kw)
    assert out["server_meets"] and 0 < out["server_rate_rps"] < out["offline_saturation_rps"]
    assert out["ttft_p99_s"] <= 0.25 and out["tpot_p99_s"] <= 0.03
    assert out["server_requests"] >= 300
    over = estimate(**SHAPE, rate=out["server_next_rps"], requests=out["server_requests"], engine={"preset": "vllm"})
    assert over["ttft_p99_s"] > 0.25 or over["tpot_p99_s"] > 0.03        # the next rate probed misses a bound
    assert out["server_next_rps"] - out["server_rate_rps"] <= out["offline_saturation_rps"] * 2.0 ** -13
    again = estimate(**kw)
    assert {k: v for k, v in again.items() if k != "sim_wall_s"} == {k: v for k, v in out.items() if k != "sim_wall_s"}


@pytest.mark.parametrize("bad, needle", [(dict(ttft_p99=2.0), "--tpot-p99"), (dict(ttft_p99=-1.0, tpot_p99=0.1), "--ttft-p99"),
                                         (dict(ttft_p99=math.nan, tpot_p99=0.1), "--ttft-p99")])
def test_server_mode_bad_bounds(bad, needle):
    with pytest.raises(InputError, match=needle):
        estimate(**SHAPE, mode="server", **bad)


def test_server_runs_last_long_enough_to_show_a_growing_queue():
    """At the offline saturation rate the queue grows with the run: MLPerf's 600 s run fails a
    bound a 300-request run passes, so the longer run finds a lower rate."""
    kw = dict(**SHAPE, mode="server", ttft_p99=1.0, tpot_p99=0.1, requests=300, engine={"preset": "vllm"})
    short = estimate(**kw, min_duration_s=0.0)
    long = estimate(**kw, min_duration_s=120.0)
    assert long["server_requests"] > short["server_requests"] == 300
    assert long["server_rate_rps"] < short["server_rate_rps"]


def test_bounds_without_server_mode_are_refused():
    with pytest.raises(InputError, match="only apply with --mode server"):
        estimate(**SHAPE, concurrency=1, ttft_p99=1.0)
