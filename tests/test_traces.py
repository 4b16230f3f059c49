"""Trace replay: readers, the block prefix cache, and replays of Azure, Mooncake and TraceLab traces.

Small fixtures in each format are generated into ``tmp_path`` and always run; the public traces
in ``shared/traces/`` (beside the repository) are used when present and skipped otherwise.
Acceptance: replaying the Mooncake conversation trace with an unbounded cache gives a hit rate
within 1 percentage point of the ideal rate of its block hashes, and a lower one with a bounded
cache; a generated fixture checks the same against a hand-computed ideal.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from agentsim.serving.block_cache import BLOCK_TOKENS, BlockPrefixCache
from agentsim.model.catalog import load_catalog
from agentsim.model.deployment import Deployment
from agentsim.util.errors import InputError
from agentsim.serving.prefix_cache import CacheConfig
from agentsim.run.traces import (default_scenario, ideal_block_hit_rate, read_azure, read_mooncake, read_trace,
                             read_tracelab, replay)
from cli_helper import cli

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def shared(name: str) -> Path:
    p = TRACES / name
    if not p.exists():
        pytest.skip(f"public trace {p} not present")
    return p




def small_kv_scenario(tokens: int) -> dict:
    """One Llama-3.1-8B replica on an H100 whose KV holds about ``tokens`` tokens (via the reserve)."""
    dep = Deployment.from_catalog(load_catalog(), "Llama-3.1-8B", "H100-SXM")
    reserve = (dep.gpu.hbm_bytes * 0.9 - dep.weight_bytes_per_gpu - (tokens + 0.5) * dep.kv_bytes_per_token_per_gpu) / 1e9
    return {"engine": {"prefix_cache": "blocks", "reserve_gb_per_gpu": reserve},
            "pools": {"replay": {"gpu": "H100-SXM", "model": "Llama-3.1-8B"}}}


# -- fixtures in the three formats ------------------------------------------------------------------
AZURE_CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 23:59:58.9799600,4808,10
2023-11-16 23:59:59.0319600,3180,8
2023-11-16 23:59:59.0319601,110,27
2023-11-17 00:00:01.5000000,2000,1
2023-11-17 00:00:03,512,100"""   # no trailing newline, like the real files
AZURE_ARRIVALS = [0.0, 0.052, 0.0520001, 2.52004, 4.02004]

# Mooncake: (timestamp ms, input, output, hash_ids). Requests are 5 s apart, so each finishes before
# the next arrives. Leading-run hits (512 tokens a block, capped by the input):
#   r1 [1,2] of [1,2,4] -> 1024; r2 [1] -> 512; r3 all of [1,2,3] -> min(1536, 1100) = 1100;
#   r5..r9 distinct 2048-token prompts -> 0; r10 = r0 again -> 1100.
MOONCAKE_ROWS = [
    (0, 1100, 10, [1, 2, 3]),
    (5000, 1500, 10, [1, 2, 4]),
    (10000, 600, 10, [1, 5]),
    (15000, 1100, 10, [1, 2, 3]),
    (20000, 300, 10, [6]),
    *[(25000 + 5000 * i, 2048, 10, [100 + 4 * i + j for j in range(4)]) for i in range(5)],
    (50000, 1100, 10, [1, 2, 3]),
]
IDEAL_HITS = [0, 1024, 512, 1100, 0, 0, 0, 0, 0, 0, 1100]
IDEAL_RATE = 3736 / 15940         # Σ hits / Σ input = (1024 + 512 + 1100 + 1100) / 15940
# The engine computes at least one prompt token, so a full-prompt hit counts input - 1 tokens.
SIM_HITS_UNBOUNDED = [0, 1024, 512, 1099, 0, 0, 0, 0, 0, 0, 1099]
# With ~8k tokens of KV and no host tier, r5..r9 push r0's blocks out before r10 comes back.
SIM_HITS_BOUNDED = [0, 1024, 512, 1099, 0, 0, 0, 0, 0, 0, 0]

TRACELAB_CSV = """session_id,arrival_time,round_idx,prefix_len,input_len,output_len,tool_wait_after_ms
7,250,1,576,128,64,100
7,250,0,0,512,64,1500
3,0,0,0,400,48,80
3,0,1,448,100,48,0
7,250,2,768,128,64,0
12,,0,0,600,64,50
12,,1,664,120,48,0
"""


def write_mooncake(path: Path, rows=MOONCAKE_ROWS) -> Path:
    path.write_text("".join(json.dumps({"timestamp": t, "input_length": i, "output_length": o, "hash_ids": h}) + "\n"
                            for t, i, o, h in rows))
    return path


@pytest.fixture
def azure_file(tmp_path) -> Path:
    p = tmp_path / "azure.csv"
    p.write_text(AZURE_CSV)
    return p


@pytest.fixture
def mooncake_file(tmp_path) -> Path:
    return write_mooncake(tmp_path / "mooncake.jsonl")


@pytest.fixture
def tracelab_file(tmp_path) -> Path:
    p = tmp_path / "tracelab.csv"
    p.write_text(TRACELAB_CSV)
    return p


# -- readers ----------------------------------------------------------------------------------------
def test_azure_reader_parses_exactly(azure_file):
    tr = read_azure(azure_file)
    assert tr.format == "azure" and tr.n_requests == 5
    assert [r.arrival_s for r in tr.requests] == pytest.approx(AZURE_ARRIVALS, abs=1e-12)
    assert [(r.input_tokens, r.output_tokens) for r in tr.requests] == [(4808, 10), (3180, 8), (110, 27), (2000, 1),
                                                                        (512, 100)]
    assert all(r.hash_ids is None for r in tr.requests)
    assert tr.ideal_hit_rate() is None


def test_mooncake_reader_parses_exactly(mooncake_file):
    tr = read_mooncake(mooncake_file)
    assert tr.n_requests == len(MOONCAKE_ROWS)
    assert [(r.arrival_s, r.input_tokens, r.output_tokens, r.hash_ids) for r in tr.requests] == \
        [(t / 1000, i, o, tuple(h)) for t, i, o, h in MOONCAKE_ROWS]
    assert tr.ideal_hit_rate() == pytest.approx(IDEAL_RATE, abs=1e-15)


def test_ideal_hit_rate_counts_leading_runs_only():
    from agentsim.run.traces import TraceRequest
    reqs = [TraceRequest(0, 1024, 1, (1, 2)), TraceRequest(1, 1536, 1, (9, 2, 3)), TraceRequest(2, 1000, 1, (1, 2))]
    # r1 shares block 2 but not its first block: no hit; r2 reuses both blocks, capped at 1000 tokens
    assert ideal_block_hit_rate(reqs) == pytest.approx(1000 / (1024 + 1536 + 1000))


def test_tracelab_reader_orders_sessions_and_rounds(tracelab_file):
    tr = read_tracelab(tracelab_file)
    assert [s.session_id for s in tr.sessions] == ["3", "12", "7"]        # by start, then first appearance
    assert [s.sid for s in tr.sessions] == [3, 12, 7]
    assert [s.arrival_s for s in tr.sessions] == [0.0, 0.0, 0.25]          # an empty arrival_time is 0
    s7 = tr.sessions[2]
    assert [r.round_idx for r in s7.rounds] == [0, 1, 2]
    assert [(r.prefix_len, r.input_len, r.output_len, r.tool_wait_s) for r in s7.rounds] == \
        [(0, 512, 64, 1.5), (576, 128, 64, 0.1), (768, 128, 64, 0.0)]
    assert tr.n_requests == 7
    prefix = 576 + 768 + 448 + 664
    total = prefix + 512 + 128 + 128 + 400 + 100 + 600 + 120
    assert tr.ideal_hit_rate() == pytest.approx(prefix / total)


def test_tracelab_reader_without_arrival_column(tmp_path):
    p = tmp_path / "single.csv"
    p.write_text("session_id,round_idx,prefix_len,input_len,output_len,tool_wait_after_ms\n"
                 "0,0,12461,5875,124,182\n0,1,18333,13570,15950,28\n")
    tr = read_tracelab(p)
    assert len(tr.sessions) == 1 and tr.sessions[0].arrival_s == 0.0
    assert [r.prompt for r in tr.sessions[0].rounds] == [12461 + 5875, 18333 + 13570]


def test_tracelab_reader_accepts_canonical_id_form(tmp_path):
    p = tmp_path / "canonical.csv"
    p.write_text("id,input_len,output_len,arrival_time,round_idx,tool_wait_after_ms,prefix_len\n"
                 "a,100,10,0,0,5,0\na,20,10,0,1,0,110\nb,50,5,1000,0,0,0\n")
    tr = read_tracelab(p)
    assert [(s.session_id, s.sid, s.arrival_s) for s in tr.sessions] == [("a", 0, 0.0), ("b", 1, 1.0)]


def test_real_files_parse():
    for name, fmt, n in [("azure2023_AzureLLMInferenceTrace_code.csv", "azure", 8819),
                         ("azure2023_AzureLLMInferenceTrace_conv.csv", "azure", 19366),
                         ("mooncake_conversation_trace.jsonl", "mooncake", 12031),
                         ("mooncake_synthetic_trace.jsonl", "mooncake", 3993),
                         ("tracelab_session_workload_example.csv", "tracelab", 11),
                         ("tracelab_multi_session_example.csv", "tracelab", 8),
                         ("tracelab_multi_session_large.csv", "tracelab", 303)]:
        assert read_trace(shared(name), fmt).n_requests == n, name
    tr = read_trace(shared("tracelab_multi_session_large.csv"), "tracelab")
    assert len(tr.sessions) == 48


def test_mooncake_ideal_rates_of_real_traces():
    """The figures of workloads-policies.md §2.3 (infinite cache, 512-token blocks)."""
    conv = read_mooncake(shared("mooncake_conversation_trace.jsonl"))
    syn = read_mooncake(shared("mooncake_synthetic_trace.jsonl"))
    assert round(conv.ideal_hit_rate(), 3) == 0.374
    assert round(syn.ideal_hit_rate(), 3) == 0.651


# -- bad input: one message naming file, line and column; exit code 2 ---------------------------------
BAD_FILES = [
    ("azure", "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n",
     ["missing column(s) GeneratedTokens"]),
    ("azure", "a.csv", AZURE_CSV.replace("3180,8", "31x0,8"), ["line 3", "'ContextTokens'", "'31x0'"]),
    ("azure", "a.csv", AZURE_CSV.replace("2023-11-17 00:00:01.5000000", "yesterday"), ["line 5", "'TIMESTAMP'"]),
    ("azure", "a.csv", AZURE_CSV.replace("2000,1", "2000,0"), ["line 5", "'GeneratedTokens'", ">= 1"]),
    ("azure", "a.csv", AZURE_CSV.replace("512,100", "512"), ["line 6", "expected 3 fields"]),
    ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
                            '{"timestamp": 5, "input_length": 10, "hash_ids": [1]}\n',
     ["line 2", "missing key(s) output_length"]),
    ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n\n'
                            '{"timestamp": 0, "input_length": 10, "output_len\n', ["line 3", "not valid JSON"]),
    ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": "ten", "output_length": 1, "hash_ids": [1]}\n',
     ["line 1", "'input_length'"]),
    ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1, 2, 3]}\n',
     ["line 1", "'hash_ids'", "at most 2 blocks"]),
    ("tracelab", "t.csv", "session_id,prefix_len,input_len,output_len,tool_wait_after_ms\n0,0,10,10,0\n",
     ["missing column(s) round_idx"]),
    ("tracelab", "t.csv", TRACELAB_CSV.replace("448,100,48,0", "448,100,48,soon"),
     ["line 5", "'tool_wait_after_ms'", "'soon'"]),
    ("tracelab", "t.csv", TRACELAB_CSV.replace("7,250,2,", "7,250,1,"), ["line 6", "round 1 twice", "line 2"]),
]


@pytest.mark.parametrize("fmt,name,text,needles", BAD_FILES)
def test_bad_trace_files_name_file_and_line(tmp_path, fmt, name, text, needles):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(InputError) as e:
        read_trace(p, fmt)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    code, out, err = cli("replay", str(p), "--trace-format", fmt)
    assert code == 2
    assert "Traceback" not in err and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and str(p) in err


def test_missing_trace_file_exits_2(tmp_path):
    code, _, err = cli("replay", str(tmp_path / "nope.csv"), "--trace-format", "azure")
    assert code == 2 and "nope.csv" in err and "cannot open" in err and "Traceback" not in err


def test_unknown_trace_format_exits_2(azure_file):
    code, _, err = cli("replay", str(azure_file), "--trace-format", "burstgpt")
    assert code == 2 and "burstgpt" in err and "Traceback" not in err


def test_tracelab_with_block_cache_is_refused(tracelab_file):
    code, _, err = cli("replay", str(tracelab_file), "--trace-format", "tracelab",
                       "--set", "engine.prefix_cache=blocks")
    assert code == 2 and "block hashes" in err


# -- the block prefix cache -------------------------------------------------------------------------
def test_block_cache_hits_are_leading_runs_and_shared():
    c = BlockPrefixCache(CacheConfig(ttl_s=100.0))
    assert c.take((1, 2, 3), 1200, 0.0) == (0, 0, 0)
    c.put((1, 2, 3), 1300, 1.0)                    # blocks of 512, 512 and 276 tokens
    assert c.gpu_used == 1300 == sum(t for t, _ in c.gpu.values())
    assert c.take((1, 2, 9), 1500, 2.0) == (1024, 0, 0)
    assert c.take((1, 2, 9), 1500, 2.0) == (1024, 0, 0)      # not consumed
    assert c.take((9, 1, 2), 1500, 2.0) == (0, 0, 0)         # only a leading run counts
    assert c.take((1, 2, 3), 1100, 2.0) == (1100, 0, 0)      # capped by prefix_len
    assert c.peek_gpu((1, 2, 3)) == 0
    c.put((1, 2, 3), 1300, 3.0)                              # a refresh adds nothing
    assert c.gpu_used == 1300


def test_block_cache_evicts_lru_to_host_and_expires():
    c = BlockPrefixCache(CacheConfig(ttl_s=10.0, host_tokens=1024))
    c.put((1, 2), 1024, 0.0)
    c.put((5, 6), 1024, 1.0)
    assert c.evictable(1.0) == 2048
    # LRU first; within a request the leading block is the most recent, so block 2 goes before block 1
    assert c.evict(512, 2.0) == 512 and list(c.host) == [2] and list(c.gpu) == [1, 6, 5]
    assert c.take((1, 2), 1024, 3.0) == (512, 512, 0)        # a run continuing in the host tier
    assert c.evict(2048, 3.0) == 1536
    assert c.gpu_used == 0 and c.host_used == 1024 == sum(c.host.values())   # host capacity holds
    c.put((7,), 512, 4.0)
    assert c.take((7,), 512, 20.0) == (0, 0, 0)              # expired (TTL 10 s): dropped
    assert c.gpu_used == 0 and not c.gpu
    c.put((8,), 512, 30.0)
    c.clear()
    assert c.gpu_used == c.host_used == 0


def test_block_cache_pinning_and_disabled():
    c = BlockPrefixCache(CacheConfig(retention="pin_session", ttl_s=10.0))
    c.put((1,), 512, 0.0)
    assert c.evictable(5.0) == 0 and c.evictable(5.0, force=True) == 512
    assert c.evict(512, 5.0) == 0 and c.next_expiry(5.0) == 10.0
    assert c.evictable(11.0) == 512 and c.evict(512, 11.0) == 512
    off = BlockPrefixCache(CacheConfig(retention="none"))
    off.put((1,), 512, 0.0)
    assert not off.enabled and off.gpu_used == 0 and off.take((1,), 512, 0.0) == (0, 0, 0)


# -- Mooncake replay: simulated vs ideal hit rate -------------------------------------------------------
def cached(res) -> list[int]:
    df = res.requests.sort_values("arrival_s", kind="stable")
    return (df["cached_gpu_tokens"] + df["cached_host_tokens"]).tolist()


def test_mooncake_fixture_unbounded_matches_hand_computed_ideal(mooncake_file):
    tr = read_mooncake(mooncake_file)
    assert tr.ideal_hit_rate() == pytest.approx(IDEAL_RATE)
    res = replay(tr, small_kv_scenario(8192), unbounded_cache=True, check_invariants=True)
    assert (res.requests["outcome"] == "completed").all()
    assert cached(res) == SIM_HITS_UNBOUNDED
    t = res.meta["trace"]
    assert t["ideal_hit_rate"] == pytest.approx(IDEAL_RATE) and t["trace_requests"] == len(MOONCAKE_ROWS)
    assert t["hit_rate"] == pytest.approx(sum(SIM_HITS_UNBOUNDED) / 15940)
    assert abs(t["hit_rate"] - IDEAL_RATE) < 0.01


def test_mooncake_fixture_bounded_cache_hits_less(mooncake_file):
    tr = read_mooncake(mooncake_file)
    res = replay(tr, small_kv_scenario(8192), check_invariants=True)
    assert abs(int(res.pools["kv_capacity_tokens"].iloc[0]) - 8192) <= 2
    assert cached(res) == SIM_HITS_BOUNDED
    assert res.meta["trace"]["hit_rate"] < IDEAL_RATE - 0.01


def test_block_cache_same_in_step_mode(mooncake_file):
    """The step-by-step reference engine makes the same cache decisions at the same times."""
    tr = read_mooncake(mooncake_file)
    fast = replay(tr, small_kv_scenario(8192)).requests
    res = replay(tr, small_kv_scenario(8192), step_mode=True, check_invariants=True)
    assert cached(res) == SIM_HITS_BOUNDED
    ref = res.requests
    for col in ("first_token_s", "finish_s"):
        assert fast[col].to_numpy() == pytest.approx(ref[col].to_numpy(), rel=1e-9)


def test_mooncake_conversation_hit_rate_acceptance():
    """Unbounded cache: within 1 pp of the ideal 37.4 %; the default (bounded) cache: lower."""
    tr = read_mooncake(shared("mooncake_conversation_trace.jsonl"))
    ideal = tr.ideal_hit_rate()
    unbounded = replay(tr, unbounded_cache=True)
    bounded = replay(tr)
    for res in (unbounded, bounded):
        assert (res.requests["outcome"] == "completed").all()
        assert res.meta["trace"]["ideal_hit_rate"] == ideal
    hu, hb = unbounded.meta["trace"]["hit_rate"], bounded.meta["trace"]["hit_rate"]
    assert abs(hu - ideal) < 0.01, (hu, ideal)
    assert hb < hu - 0.01, (hb, hu)


def test_default_scenario_for_mooncake_is_one_block_cache_replica():
    tr = read_mooncake(shared("mooncake_conversation_trace.jsonl"))
    sc = default_scenario(tr)
    assert sc["engine"]["prefix_cache"] == "blocks"
    (pool,) = sc["pools"].values()
    assert pool["replicas"] == 1 and pool["tp"] in (1, 2, 4, 8)


# -- Azure replay: arrivals as in the trace -----------------------------------------------------------
def test_azure_fixture_replay_arrivals(azure_file):
    res = replay(read_azure(azure_file), check_invariants=True)
    df = res.requests.sort_values("request_id")
    assert df["arrival_s"].tolist() == pytest.approx(AZURE_ARRIVALS, abs=1e-9)
    assert df["input_tokens"].tolist() == [4808, 3180, 110, 2000, 512]
    assert (df["outcome"] == "completed").all() and (df["trigger"] == "request").all()
    assert res.meta["duration_s"] == pytest.approx(float(df["finish_s"].max()))   # ends when the trace drains


def test_azure_real_replay_arrivals_equal_trace():
    path = shared("azure2023_AzureLLMInferenceTrace_code.csv")
    ts = pd.to_datetime(pd.read_csv(path)["TIMESTAMP"])
    expected = ((ts - ts.iloc[0]).dt.total_seconds()).to_numpy()
    res = replay(read_azure(path))
    got = res.requests.sort_values("request_id")["arrival_s"].to_numpy()
    assert len(got) == len(expected) == 8819
    assert abs(got - expected).max() < 1e-6
    assert (res.requests["outcome"] == "completed").all()


# -- TraceLab replay: closed-loop rounds --------------------------------------------------------------
def check_rounds(tr, res) -> None:
    """Each session's round k+1 is sent exactly when round k ended plus its tool wait (never before)."""
    df = res.requests
    assert len(df) == tr.n_requests and (df["outcome"] == "completed").all()
    for s in tr.sessions:
        rows = df[df["session"] == s.sid].sort_values("arrival_s")
        assert rows["input_tokens"].tolist() == [r.prompt for r in s.rounds]
        assert rows["output_tokens"].tolist() == [r.output_len for r in s.rounds]
        assert rows["arrival_s"].iloc[0] == pytest.approx(s.arrival_s, abs=1e-12)
        assert rows["trigger"].tolist() == ["user"] + ["tool"] * (len(s.rounds) - 1)
        for k in range(len(s.rounds) - 1):
            start_next = rows["arrival_s"].iloc[k + 1]
            ready = rows["finish_s"].iloc[k] + s.rounds[k].tool_wait_s
            assert start_next >= ready - 1e-9
            assert start_next == pytest.approx(ready, abs=1e-9)
        # the session's context is cached under its key: a later round reuses its prefix
        hits = (rows["cached_gpu_tokens"] + rows["cached_host_tokens"]).tolist()
        assert hits[0] == 0
        assert all(h <= r.prefix_len for h, r in zip(hits, s.rounds))


def test_tracelab_fixture_replay_order(tracelab_file):
    tr = read_tracelab(tracelab_file)
    res = replay(tr, check_invariants=True)
    check_rounds(tr, res)
    df = res.requests
    r1 = df[(df["session"] == 7)].sort_values("arrival_s").iloc[1]
    # the previous round left 512 + 64 - 1 tokens of KV (the last sampled token is never written)
    assert r1["cached_gpu_tokens"] == 575


@pytest.mark.parametrize("name", ["tracelab_multi_session_large.csv", "tracelab_multi_session_example.csv",
                                  "tracelab_session_workload_example.csv"])
def test_tracelab_real_replay_order(name):
    tr = read_tracelab(shared(name))
    res = replay(tr)
    check_rounds(tr, res)
    if name == "tracelab_multi_session_large.csv":      # cumulative prefixes: hits close to the plan
        assert abs(res.meta["trace"]["hit_rate"] - tr.ideal_hit_rate()) < 0.05


# -- the command ----------------------------------------------------------------------------------------
def test_replay_cli_json_and_out(mooncake_file, tmp_path):
    out_dir = tmp_path / "res"
    code, out, err = cli("replay", str(mooncake_file), "--trace-format", "mooncake", "--unbounded-cache",
                         "--format", "json", "--out", str(out_dir))
    assert code == 0, err
    s = json.loads(out)
    for key in ("requests", "completed", "ttft_s", "e2e_p99_s", "prefix_hit_rate", "cost_usd", "events_per_request",
                "trace_requests", "ideal_hit_rate", "hit_rate"):
        assert key in s, key
    assert s["trace_requests"] == s["completed"] == len(MOONCAKE_ROWS)
    assert s["ideal_hit_rate"] == pytest.approx(IDEAL_RATE)
    saved = json.loads((out_dir / "summary.json").read_text())
    assert saved["hit_rate"] == pytest.approx(s["hit_rate"])
    assert {"requests.parquet", "manifest.json", "pools.parquet"} <= {p.name for p in out_dir.iterdir()}
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["trace"]["trace_format"] == "mooncake"
    assert manifest["scenario"]["engine"]["prefix_cache"] == "blocks"


def test_replay_cli_table_with_scenario(azure_file, tmp_path):
    scn = tmp_path / "cluster.toml"
    scn.write_text('[pools.a]\ngpu = "H100-SXM"\nmodel = "Llama-3-8B"\nreplicas = 2\n'
                   '[streams.chat]\nkind = "poisson"\nrate = 50\n')
    code, out, err = cli("replay", str(azure_file), "--trace-format", "azure", "--scenario", str(scn))
    assert code == 0, err
    assert "trace_requests" in out and "hit_rate" in out and "ttft_p99_s" in out
    res = replay(read_azure(azure_file), str(scn))
    assert len(res.requests) == 5          # the scenario's own streams are replaced by the trace
    assert set(res.requests["replica"]) <= {0, 1}


def test_duration_bounds_the_run(mooncake_file):
    res = replay(read_mooncake(mooncake_file), duration_s=12.0)
    assert res.meta["duration_s"] == pytest.approx(12.0)
    assert len(res.requests) == 3 and math.isclose(res.requests["arrival_s"].max(), 10.0)
