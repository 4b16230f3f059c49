"""The cluster-wide KV tier (issue 17): LRU within its capacity (hypothesis), a load priced at
latency + bytes / bandwidth, cancels and failures during a load, bad input, and what it buys a
fleet whose router scatters sessions."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentsim.run.api import load_scenario, simulate
from agentsim.run.build import build
from agentsim.serving.kv_tier import KvTier
from agentsim.util.errors import InputError
from agentsim.util.stats import paired_difference

HYPO = dict(deadline=None, derandomize=True, database=None)


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 5000), st.sampled_from(["a", "b"])), max_size=60),
       st.floats(1e3, 5e4))
@settings(max_examples=60, **HYPO)
def test_tier_bytes_are_conserved_and_bounded(puts, capacity):
    tier = KvTier(None, capacity, 1e9, 0.0)
    for key, tokens, model in puts:
        tier.put(model, key, tokens, 4.0)
        assert tier.used == pytest.approx(sum(b for _, b in tier.entries.values()))
        assert tier.used <= capacity
        if 0 < tokens * 4.0 <= capacity:
            assert tier.tokens(model, key) == tokens and next(reversed(tier.entries)) == (model, key)  # newest


def scattered(tier_gb: float, seed: int = 1, **extra) -> dict:
    """Coding agents on 4 replicas that round_robin scatters: a session's next call rarely finds
    its context on the replica it lands on."""
    d = dict(name="tier", duration_s=3600, warmup_s=300, seed=seed,
             engine={"host_kv_gb": 200.0, "retention": "lru", "prefix_ttl_s": 3600},
             pools={"h100": dict(gpu="H100-SXM", model="Llama-3.1-8B", replicas=4)},
             router={"policy": "round_robin"}, kv_tier={"capacity_gb": tier_gb},
             populations={"coders": {"profile": "interactive_coding_agent", "size": 600}})
    d.update(extra)
    return d


def test_a_load_costs_latency_plus_bytes_over_bandwidth():
    """Llama-3.1-8B, bf16 KV: 32 layers x 8 KV heads x 128 x 2 x 2 B = 131,072 B a token. 40,000
    tokens at 50 GB/s + 1 ms = 0.001 + 40,000 x 131,072 / 50e9 = 0.105858 s."""
    sim = build(load_scenario(scattered(10.0)), 1)
    r = sim.cluster.replicas[0]
    req = sim.new_request(41_000, 10, prefix_key=("s", 1), prefix_len=40_000)
    sim.cluster.kv_tier.put("Llama-3.1-8B", ("s", 1), 45_000, 131_072)
    seconds, tokens = sim.cluster.kv_tier.plan(req, r, "Llama-3.1-8B", 131_072)
    assert tokens == 40_000 and seconds == pytest.approx(0.001 + 40_000 * 131_072 / 50e9, rel=1e-12)
    r.cache.put(("s", 1), 40_000, 0.0)
    assert sim.cluster.kv_tier.plan(req, r, "Llama-3.1-8B", 131_072) == (0.0, 0)   # it holds it already


@pytest.mark.parametrize("what", ["cancel", "fail"])
def test_a_request_loading_ends_once(what):
    sim = build(load_scenario(scattered(10.0, populations={})), 1)
    tier = sim.cluster.kv_tier
    tier.put("Llama-3.1-8B", ("s", 1), 45_000, 131_072)
    req = sim.new_request(41_000, 10, prefix_key=("s", 1), prefix_len=40_000)
    ended = []
    req.on_done = ended.append
    sim.submit(req)
    assert req.rid in tier.loading
    if what == "cancel":
        sim.cancel(req, "cancelled")
    else:
        sim.cluster.take_down(req.replica)
    sim.env.run(until=5)
    assert ended == [req] and req.outcome == ("cancelled" if what == "cancel" else "replica_failed")
    assert not tier.loading and tier.loads == 0 and all(r.outstanding == 0 for r in sim.cluster.replicas)


def test_the_tier_needs_a_host_tier_to_load_into():
    with pytest.raises(InputError) as e:
        build(load_scenario(scattered(10.0, engine={"host_kv_gb": 0.0})), 1)
    assert all(w in str(e.value) for w in ("pools.h100", "kv_tier.capacity_gb", "host_kv_gb 0"))


def test_a_tier_brings_back_the_hits_a_scattering_router_loses():
    """Paired replications (seeds 1-4): the tier raises the token hit rate and lowers TTFT p50."""
    figs = {}
    for gb in (0.0, 2000.0):
        figs[gb] = []
        for seed in (1, 2, 3, 4):
            res = simulate(scattered(gb, seed), seed=seed)
            done = res.requests[res.requests["outcome"] == "completed"]
            hit = (done["cached_gpu_tokens"] + done["cached_host_tokens"]).sum() / done["input_tokens"].sum()
            figs[gb].append((float(hit), res.summary()["ttft_p50_s"]))
    hit = paired_difference([f[0] for f in figs[0.0]], [f[0] for f in figs[2000.0]])
    ttft = paired_difference([f[1] for f in figs[0.0]], [f[1] for f in figs[2000.0]])
    assert hit[1] > 0.03, f"hit rate with the tier - without = {hit}"
    assert ttft[2] < 0, f"TTFT p50 with the tier - without = {ttft}"


def test_loads_keep_the_engine_invariants_and_both_engines_agree():
    import numpy as np
    fast = simulate(scattered(2000.0, 2), seed=2, check_invariants=True).requests
    ref = simulate(scattered(2000.0, 2), seed=2, step_mode=True).requests
    assert (fast["outcome"] == ref["outcome"]).all() and (fast["cached_host_tokens"] > 0).sum() > 50
    for c in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(fast[c], ref[c], rtol=1e-9, atol=1e-9)


def test_disaggregated_pools_load_from_and_write_to_the_tier_and_end_requests_once():
    """Prefill legs load what their replica lacks; prefill and decode legs leave their KV in the tier;
    with timeouts and failures on both pools, every request still ends exactly once."""
    base = dict(gpu="H100-SXM", model="Llama-3.1-8B", faults={"mtbf_h": 0.1, "mttr_h": 0.02})
    sc = scattered(2000.0, 3, pools={"pre": dict(base, replicas=3, role="prefill"),
                                     "dec": dict(base, replicas=2, role="decode")},
                   populations={"coders": {"profile": "interactive_coding_agent", "size": 600, "timeout_s": 20}})
    sim = build(load_scenario(sc), 3, check_invariants=True)
    rq = sim.run().requests
    tier, h = sim.cluster.kv_tier, sim.cluster.handoff
    assert sorted(rq["request_id"]) == list(range(sim._rid))
    in_flight = set(rq.loc[rq["outcome"] == "in_flight", "request_id"])
    assert tier.loads > 20 and len(tier.entries) > 20 and set(tier.loading) <= in_flight
    assert set(h.flights) <= in_flight
    counts = rq["outcome"].value_counts()
    assert counts["completed"] > 300 and counts["timed_out"] + counts["replica_failed"] > 0


@pytest.mark.parametrize("what", ["cancel", "fail"])
def test_a_prefill_leg_loading_ends_its_request_once(what):
    pools = {"pre": dict(gpu="H100-SXM", model="Llama-3.1-8B", role="prefill"),
             "dec": dict(gpu="H100-SXM", model="Llama-3.1-8B", role="decode")}
    sim = build(load_scenario(scattered(10.0, populations={}, pools=pools)), 1)
    tier, h = sim.cluster.kv_tier, sim.cluster.handoff
    tier.put("Llama-3.1-8B", ("s", 1), 45_000, 131_072)
    req = sim.new_request(41_000, 10, prefix_key=("s", 1), prefix_len=40_000)
    ended = []
    req.on_done = ended.append
    sim.submit(req)
    assert req.rid in tier.loading and req.rid in h.flights     # the prefill leg waits for its load
    if what == "cancel":
        sim.cancel(req, "cancelled")
    else:
        sim.cluster.take_down(0)
    sim.env.run(until=5)
    assert ended == [req] and req.outcome == ("cancelled" if what == "cancel" else "replica_failed")
    assert not tier.loading and not h.flights and h.sent_tokens == 0


@st.composite
def tiered_cases(draw):
    base = dict(gpu="H100-SXM", model="Llama-3.1-8B")
    mtbf = draw(st.sampled_from([0.0, 0.05]))
    faults = {"mtbf_h": mtbf, "mttr_h": 0.01} if mtbf else {}
    if draw(st.booleans()):
        pools = {"pre": dict(base, replicas=draw(st.integers(1, 3)), role="prefill", faults=faults),
                 "dec": dict(base, replicas=draw(st.integers(1, 2)), role="decode", faults=faults)}
    else:
        pools = {"m": dict(base, replicas=draw(st.integers(1, 4)), faults=faults)}
    return scattered(draw(st.sampled_from([0.5, 5.0, 500.0])), draw(st.integers(0, 30)), pools=pools,
                     duration_s=draw(st.sampled_from([600.0, 1800.0])),
                     router={"policy": draw(st.sampled_from(["round_robin", "prefix_aware", "session_affinity"]))},
                     engine={"host_kv_gb": draw(st.sampled_from([5.0, 200.0])), "retention": "lru",
                             "prefix_ttl_s": 3600},
                     populations={"coders": {"profile": "interactive_coding_agent", "size": draw(st.integers(50, 400)),
                                             "timeout_s": draw(st.sampled_from([10.0, 600.0]))}})


@given(tiered_cases())
@settings(max_examples=15, **HYPO)
def test_kv_is_conserved_across_replicas_hand_off_and_tier(case):
    """Whatever the fleet, router, tier size, timeouts and failures: every request ends once; the tier
    holds exactly its entries' bytes within capacity; every token a load brought is what the tier
    held for that key; the hand-off's tokens are sent = arrived + dropped + on the wire; a request
    never counts more cached tokens than its prompt; the engines' own checks hold after every event."""
    sim = build(load_scenario(case), check_invariants=True)
    rq = sim.run().requests
    tier, h = sim.cluster.kv_tier, sim.cluster.handoff
    assert sorted(rq["request_id"]) == list(range(sim._rid))
    assert tier.used == pytest.approx(sum(b for _, b in tier.entries.values())) and tier.used <= tier.capacity
    in_flight = set(rq.loc[rq["outcome"] == "in_flight", "request_id"])
    assert set(tier.loading) <= in_flight
    assert ((rq["cached_gpu_tokens"] + rq["cached_host_tokens"]) <= rq["input_tokens"]).all()
    if h is not None:
        assert h.sent_tokens == h.arrived_tokens + h.dropped_tokens + sum(f.req.prompt for f in h.moving.values())
        assert set(h.flights) <= in_flight
