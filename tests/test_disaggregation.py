"""Prefill/decode disaggregation (issue 17): the hand-off, the KV transfer, the P:D trade-off.

* sample-path properties over random small disaggregated scenarios (hypothesis): no request lost
  or duplicated across the hand-off, KV conserved (every token sent arrives, or is dropped with
  its request), each completed request decoded on a decode replica with exactly its prompt's KV;
* cancels and failures during the transfer end the request once, with the right outcome;
* a KV transfer time computed by hand (DeepSeek-V3, 64 k tokens, H100 prefill -> GB200 decode);
* the classic trade-off, both ways, at equal GPU count, with intervals over paired replications;
* bad input named clearly, and nothing of it shows when no pool is disaggregated.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentsim.run.api import load_scenario, simulate
from agentsim.run.build import apportioned, build
from agentsim.serving.disagg import kv_wire_bytes_per_token, link, transfer_s
from agentsim.util.errors import InputError
from agentsim.util.stats import paired_difference

HYPO = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LLAMA = dict(gpu="H100-SXM", model="Llama-3-8B", precision="bf16", tp=1)


def pd_scenario(n_pre=1, n_dec=1, stream=None, **extra) -> dict:
    pools = {"pre": dict(LLAMA, replicas=n_pre, role="prefill"), "dec": dict(LLAMA, replicas=n_dec, role="decode")}
    d = dict(name="pd", duration_s=600, pools=pools,
             streams={"s": stream or dict(kind="all_at_once", count=20, input_tokens=2000, output_tokens=50)})
    d.update(extra)
    return d


# -- sample-path properties --------------------------------------------------------------------------
@st.composite
def pd_cases(draw):
    stream = dict(kind="poisson", rate=draw(st.floats(0.5, 30)), count=draw(st.integers(1, 60)),
                  input_tokens={"kind": "uniform", "low": 1, "high": draw(st.integers(1, 30000)), "round": "round"},
                  output_tokens={"kind": "uniform", "low": 1, "high": draw(st.integers(1, 400)), "round": "round"})
    pools = {"pre": dict(LLAMA, replicas=draw(st.integers(1, 2)), role="prefill"),
             "dec": dict(LLAMA, replicas=draw(st.integers(1, 2)), role="decode")}
    if draw(st.booleans()):
        pools["mix"] = dict(LLAMA, replicas=1)        # a mixed pool beside them takes requests too
    faults = draw(st.sampled_from([0.0, 0.002, 0.01]))  # mean hours between failures (0: none)
    for p in pools.values():
        p["faults"] = {"mtbf_h": faults, "mttr_h": 0.001} if faults else {}
    engine = {"retention": draw(st.sampled_from(["none", "lru"])),
              "reserve_gb_per_gpu": draw(st.sampled_from([2.0, 52.0]))}   # 52: little KV, preemptions
    return dict(name="pd", duration_s=draw(st.sampled_from([30.0, 2000.0])), pools=pools, engine=engine,
                router={"policy": draw(st.sampled_from(["least_outstanding", "round_robin", "session_affinity"]))},
                streams={"s": stream}, seed=draw(st.integers(0, 50)))


@given(pd_cases())
@settings(max_examples=40, **HYPO)
def test_no_request_lost_or_duplicated_and_kv_conserved(case):
    sim = build(load_scenario(case), check_invariants=True)
    res = sim.run()
    h = sim.cluster.handoff
    rq = res.requests
    # every request created ends in exactly one row
    assert sorted(rq["request_id"]) == list(range(sim._rid))
    # nothing of the hand-off outlives its request: what is still in flight is in_flight
    assert set(h.flights) == set(rq.loc[rq["outcome"] == "in_flight", "request_id"])
    # KV conservation: every token sent arrived or was dropped with its request, or is on the wire
    assert h.sent_tokens == h.arrived_tokens + h.dropped_tokens + sum(f.req.prompt for f in h.moving.values())
    pools = list(res.pools["pool"])
    done = rq[rq["outcome"] == "completed"]
    moved = done[done["output_tokens"] > 1]
    on_pre = moved["pool"].astype(str) == "pre"
    assert (moved.loc[on_pre, "decode_pool"].astype(str) == "dec").all()
    assert moved.loc[~on_pre, "decode_pool"].isna().all()           # the mixed pool's run there
    bpt = kv_wire_bytes_per_token(sim.cluster.pools[0].deployment, sim.cluster.pools[1].deployment)
    np.testing.assert_allclose(moved.loc[on_pre, "kv_transfer_bytes"], moved.loc[on_pre, "input_tokens"] * bpt)
    assert (done["first_token_s"] <= done["finish_s"]).all() and (done["arrival_s"] <= done["first_token_s"]).all()
    if not len(h.flights):                # quiescent: no KV left on any replica but caches
        for r in sim.cluster.replicas:
            assert r.kv_used == 0 and r.n_running == 0 and not r.waiting
    assert "pre" in pools and "dec" in pools


def test_agents_with_timeouts_and_failures_across_the_hand_off_end_once():
    """The default fleet's H100 pool prefills and its GB200 pool decodes for coding agents with a
    20 s timeout, both pools failing every ~6 minutes: hundreds of timeouts and dozens of failures
    land on legs and transfers; every request still ends exactly once, its KV accounted."""
    ov = ["duration_s=1800", "warmup_s=300", "pools.h100.role=prefill", "pools.gb200.role=decode",
          "pools.h100.faults.mtbf_h=0.1", "pools.h100.faults.mttr_h=0.02", "pools.gb200.faults.mtbf_h=0.1",
          "pools.gb200.faults.mttr_h=0.02", "populations.coders.timeout_s=20"]
    sim = build(load_scenario("default", ov), 1, check_invariants=True)
    rq = sim.run().requests
    h = sim.cluster.handoff
    assert sorted(rq["request_id"]) == list(range(sim._rid))
    counts = rq["outcome"].value_counts()
    assert counts["timed_out"] > 100 and counts["replica_failed"] > 10
    assert set(h.flights) <= set(rq.loc[rq["outcome"] == "in_flight", "request_id"])
    assert h.sent_tokens == h.arrived_tokens + h.dropped_tokens + sum(f.req.prompt for f in h.moving.values())
    assert (rq.loc[rq["pool"] == "h100", "outcome"] == "completed").sum() > 300     # disaggregated, completed


def test_both_engines_agree_on_a_disaggregated_run():
    """The hand-off is the cluster's: the step-by-step reference gives the same timestamps (1e-9)."""
    stream = dict(kind="poisson", rate=4, count=80, input_tokens={"kind": "uniform", "low": 100, "high": 20000,
                                                                   "round": "round"},
                  output_tokens={"kind": "uniform", "low": 1, "high": 300, "round": "round"})
    sc = pd_scenario(n_pre=2, n_dec=2, stream=stream, engine={"retention": "lru"})
    fast, ref = simulate(sc, seed=3).requests, simulate(sc, seed=3, step_mode=True).requests
    assert (fast["outcome"] == ref["outcome"]).all() and (fast["outcome"] == "completed").all()
    assert fast["decode_replica"].equals(ref["decode_replica"])
    for c in ("first_token_s", "finish_s", "kv_transfer_s"):
        np.testing.assert_allclose(fast[c], ref[c], rtol=1e-9, atol=1e-9)


def test_a_completed_request_decodes_with_its_prompt_resident():
    """All tokens out, the first from the prefill replica; the decode replica prefills nothing."""
    sim = build(load_scenario(pd_scenario()))
    res = sim.run()
    rq = res.requests
    assert (rq["outcome"] == "completed").all() and len(rq) == 20
    assert (rq["prefill_tokens"] <= rq["input_tokens"]).all()
    assert (rq["kv_transfer_s"] > 0).all() and (rq["first_token_s"] + rq["kv_transfer_s"] < rq["finish_s"]).all()
    dec = sim.cluster.pools[1].replicas[0]
    assert dec.tokens_out == (rq["output_tokens"] - 1).sum()          # every later token on the decode replica
    assert rq["replica"].eq(0).all() and rq["decode_replica"].eq(1).all()


def _when(sim, ready, act):
    """A process that polls every millisecond until ``ready(handoff)`` returns a flight, then ``act(flight)``."""
    def proc():
        while (f := ready(sim.cluster.handoff)) is None:
            yield sim.env.timeout(0.001)
        act(f)
    sim.env.process(proc())


def _on_wire(h):
    return next(iter(h.moving.values()), None)


def _decoding(h):
    f = next(iter(h.flights.values()), None)
    return f if f is not None and f.stage == 2 and f.leg.first_token == f.leg.first_token else None


@pytest.mark.parametrize("what", ["cancel", "fail_prefill", "fail_decode"])
def test_a_request_on_the_wire_ends_once(what):
    """Llama-3-8B: 60 k tokens x 131,072 B over one 50 GB/s NIC: ~0.16 s on the wire, polled every ms."""
    sim = build(load_scenario(pd_scenario(stream=dict(kind="all_at_once", count=1, input_tokens=60000,
                                                      output_tokens=20))))
    acts = {"cancel": lambda f: sim.cancel(f.req, "timed_out"),
            "fail_prefill": lambda f: sim.cluster.take_down(f.src.index),
            "fail_decode": lambda f: sim.cluster.take_down(f.dst.index)}
    _when(sim, _on_wire, acts[what])
    rq = sim.run().requests
    assert len(rq) == 1 and rq["outcome"].iloc[0] == ("timed_out" if what == "cancel" else "replica_failed")
    h = sim.cluster.handoff
    assert not h.flights and not h.moving and h.dropped_tokens == 60000 and h.arrived_tokens == 0
    assert sim.cluster.replicas[1].tokens_out == 0     # the decode replica never got it


@pytest.mark.parametrize("what", ["fail", "cancel"])
def test_a_decoding_request_fails_with_its_decode_replica_or_is_cancelled(what):
    sim = build(load_scenario(pd_scenario(stream=dict(kind="all_at_once", count=1, input_tokens=4000,
                                                      output_tokens=2000))))
    _when(sim, _decoding, (lambda f: sim.cluster.take_down(f.dst.index)) if what == "fail"
          else (lambda f: sim.cancel(f.req, "cancelled")))
    rq = sim.run().requests
    assert list(rq["outcome"]) == ["replica_failed" if what == "fail" else "cancelled"]
    assert not sim.cluster.handoff.flights and sim.cluster.handoff.arrived_tokens == 4000
    assert 0 < sim.cluster.replicas[1].tokens_out < 1999


# -- the transfer ---------------------------------------------------------------------------------------
def deepseek_pools(sites=("a", "b"), decode_gpu="GB200", decode_precision="fp4"):
    sc = load_scenario(dict(name="t", duration_s=10, engine=dict(kv_dtype="fp8"), sites={s: {} for s in set(sites)},
                            pools=dict(
        p=dict(gpu="H100-SXM", model="DeepSeek-V3", precision="fp8", tp=1, dp_attention=16, ep=16, site=sites[0],
               role="prefill"),
        d=dict(gpu=decode_gpu, model="DeepSeek-V3", precision=decode_precision, tp=1, dp_attention=8, ep=8,
               site=sites[1], role="decode"))))
    return build(sc, 1).cluster.pools


def test_kv_transfer_time_by_hand_deepseek_64k_h100_to_gb200():
    """DeepSeek-V3 (MLA): 61 layers x (512 latent + 64 rope) = 35,136 KV elements a token, FP8 KV:
    1 B each. 64 k tokens = 65,536 x 35,136 = 2,302,672,896 B. The H100 replica (16 GPUs, dp_attention
    16) holds a sequence on one attention rank = 1 GPU; the GB200 decode domain is another site, so
    the KV goes over scale-out: one 400 Gb/s NIC per GPU = 50 GB/s (gpus.toml, both GPUs). Time =
    0.5 ms latency + 2,302,672,896 / 50e9 = 0.0005 + 0.04605345792 = 0.04655345792 s."""
    pre, dec = deepseek_pools()
    assert link(pre, dec) == ("scale-out", 50e9)
    seconds, nbytes = transfer_s(65536, pre, dec, 0.0005)
    assert nbytes == 2_302_672_896
    assert seconds == pytest.approx(0.04655345792, rel=1e-12)


def test_kv_transfer_bytes_convert_to_the_narrower_layout_and_scale_up_in_one_domain():
    """Llama-3-70B: 80 layers x 8 KV heads x 128 x 2 (K and V) = 163,840 elements a token. bf16
    prefill -> fp8 decode puts 1 B an element on the wire. Both pools TP4 on one 8-GPU H100 node:
    NVLink4 900 GB/s bidirectional = 450 GB/s a direction per GPU, x 4 lanes = 1.8 TB/s."""
    sc = load_scenario(dict(name="t", duration_s=10, pools=dict(
        p=dict(gpu="H100-SXM", model="Llama-3-70B", precision="fp8", tp=4, role="prefill"),
        d=dict(gpu="H100-SXM", model="Llama-3-70B", precision="fp8", tp=4, role="decode",
               engine={"kv_dtype": "fp8"}))))
    pre, dec = build(sc, 1).cluster.pools
    assert kv_wire_bytes_per_token(pre.deployment, dec.deployment) == 163_840
    assert link(pre, dec) == ("scale-up", 4 * 450e9)
    assert transfer_s(10_000, pre, dec, 0.0)[0] == pytest.approx(10_000 * 163_840 / 1.8e12, rel=1e-12)
    two = build(load_scenario(sc.model_dump() | {"pools": {k: v.model_dump() | {"replicas": 2}
                                                           for k, v in sc.pools.items()}}), 1).cluster.pools
    assert link(*two)[0] == "scale-out"             # 16 GPUs no longer fit one 8-GPU node


# -- the trade-off ------------------------------------------------------------------------------------------
def tradeoff_scenario(share: float | None) -> dict:
    """Eight Llama-3-70B FP8 TP4 replicas (32 H100), long prompts (median 30 k tokens), short outputs,
    at a load where the mixed fleet is busy ~98 % of the time (prefill is most of the work)."""
    base = dict(gpu="H100-SXM", model="Llama-3-70B", precision="fp8", tp=4)
    pools = ({"mixed": dict(base, replicas=8)} if share is None else
             {"pre": dict(base, replicas=4, role="prefill"), "dec": dict(base, replicas=4, role="decode")})
    d = dict(name="tradeoff", duration_s=600, warmup_s=60, pools=pools, router={"policy": "least_outstanding"},
             streams={"s": dict(kind="poisson", rate=2.0,
                                input_tokens=dict(kind="lognormal", median=30000, sigma=0.5, max=100000),
                                output_tokens=dict(kind="lognormal", median=300, sigma=0.7, max=3000))})
    if share is not None:
        d["disaggregation"] = {"prefill_gpu_share": share}
    return d


REPS = 5


def figures(share):
    rs = simulate(tradeoff_scenario(share), seed=11, replications=REPS)
    return [r.summary() for r in rs.results]


def test_disaggregation_trade_off_both_ways_at_equal_gpu_count():
    mixed, good, bad = figures(None), figures(0.75), figures(0.25)    # 8 mixed; 6P:2D; 2P:6D (all 32 GPUs)
    key = lambda rows, k: [r[k] for r in rows]  # noqa: E731
    # a good ratio: decode no longer stalls behind prefill chunks, so the TPOT tail drops
    d, lo, hi = paired_difference(key(mixed, "tpot_p99_s"), key(good, "tpot_p99_s"))
    assert hi < 0, f"TPOT p99 6P:2D - mixed = {d:.4f} s [{lo:.4f}, {hi:.4f}]: not lower"
    # an unfavourable ratio: too little prefill, the queue for it grows, TTFT and goodput suffer
    d, lo, hi = paired_difference(key(mixed, "ttft_p50_s"), key(bad, "ttft_p50_s"))
    assert lo > 0, f"TTFT p50 2P:6D - mixed = {d:.2f} s [{lo:.2f}, {hi:.2f}]: not higher"
    d, lo, hi = paired_difference(key(mixed, "goodput_rps"), key(bad, "goodput_rps"))
    assert hi < 0, f"goodput 2P:6D - mixed = {d:.3f} [{lo:.3f}, {hi:.3f}]: not lower"


# -- input, the ratio field, off by default -----------------------------------------------------------------
def test_prefill_gpu_share_resplits_at_equal_gpu_count():
    sc = load_scenario(tradeoff_scenario(0.75))
    pools = apportioned(sc).pools
    assert (pools["pre"].replicas, pools["dec"].replicas) == (6, 2)
    sc = load_scenario(tradeoff_scenario(0.01))
    assert (apportioned(sc).pools["pre"].replicas, apportioned(sc).pools["dec"].replicas) == (1, 7)
    sc = load_scenario(tradeoff_scenario(0.99))
    assert (apportioned(sc).pools["pre"].replicas, apportioned(sc).pools["dec"].replicas) == (7, 1)
    sc = load_scenario(tradeoff_scenario(0.5625))       # 4.5 replicas of prefill: rounded half up
    assert (apportioned(sc).pools["pre"].replicas, apportioned(sc).pools["dec"].replicas) == (5, 3)
    mixed_sizes = tradeoff_scenario(0.5)                # 4 x 8-GPU prefill + 2 x 4-GPU decode: 40 GPUs
    mixed_sizes["pools"]["pre"]["tp"], mixed_sizes["pools"]["dec"]["replicas"] = 8, 2
    pools = apportioned(load_scenario(mixed_sizes)).pools
    assert (pools["pre"].replicas, pools["dec"].replicas) == (3, 4)     # 20 / 8 = 2.5 -> 3: 24 + 16 GPUs


@pytest.mark.parametrize("data, words", [
    (pd_scenario() | {"pools": {"pre": dict(LLAMA, role="prefill")}},
     ["pools.pre.role 'prefill'", "no pool with role 'decode'", "Llama-3-8B"]),
    (pd_scenario() | {"pools": {"pre": dict(LLAMA, role="prefill"), "dec": dict(LLAMA, role="decode"),
                                "pre2": dict(LLAMA, role="prefill")}, "disaggregation": {"prefill_gpu_share": 0.5}},
     ["prefill_gpu_share", "exactly one pool with role prefill", "pre2"]),
    (pd_scenario(disaggregation={"decode_router": "fastest"}), ["disaggregation.decode_router", "fastest"]),
    (pd_scenario() | {"pools": {"pre": dict(LLAMA, role="prefil")}}, ["role", "prefil", "decode"]),
])
def test_bad_disaggregation_input_is_named(data, words):
    with pytest.raises(InputError) as e:
        build(load_scenario(data), 1)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_nothing_shows_without_disaggregation():
    res = simulate(pd_scenario() | {"pools": {"m": dict(LLAMA)}}, seed=1)
    assert "kv_transfer_s" not in res.requests and "role" not in res.pools
    assert math.isfinite(res.summary()["ttft_p50_s"])
