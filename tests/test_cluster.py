"""The cluster: routers, faults and outages, conservation of requests, power and cost.

Routers are tested twice: as objects on stand-in replicas (exact rules) and inside a running
simulation (what the requests table shows). Fault statistics use fixed seeds with tolerances
derived from the variance of an alternating renewal process (see ``test_mtbf_mttr_downtime_share``).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import agentsim
from agentsim.run import scenario as scn
from agentsim.run.api import simulate
from agentsim.run.build import build
from agentsim.serving.cluster import ROUTERS, make_router
from agentsim.serving.replica_base import ReplicaBase
from agentsim.serving.request import OUTCOMES, Request

CAT = agentsim.load_catalog()


class Stub:
    """A stand-in replica: what load-aware routers read (identical deployments: Llama-3-8B on one
    H100, so the speed-aware home choice of session affinity reduces to the least loaded)."""

    _coeffs = None

    def __init__(self, index: int, outstanding: int = 0) -> None:
        self.index = index
        self.outstanding = outstanding
        self.waiting = ()
        self.pending = 0
        if Stub._coeffs is None:
            from agentsim.model.catalog import load_catalog
            from agentsim.model.deployment import Deployment
            from agentsim.model.servicetime import StepCoeffs
            Stub._coeffs = StepCoeffs.of(Deployment.from_catalog(load_catalog(), "Llama-3-8B", "H100-SXM"))
        self.c = Stub._coeffs
        self.cache = None               # a PrefixCache when a test gives it one
        self.env = type("Clock", (), {"now": 0.0})()

    @property
    def n_running(self) -> int:
        return self.outstanding

    @property
    def queued(self) -> int:
        return len(self.waiting) + self.pending

    route_view = ReplicaBase.route_view     # over the attributes above, as a replica's

    def __repr__(self) -> str:
        return f"Stub({self.index}, {self.outstanding})"


def req(rid: int = 0, session: int = -1, prompt: int = 512, output: int = 64) -> Request:
    return Request(rid, 0.0, prompt, output, session=session)


def router(name: str, seed: int = 0, **cfg):
    return make_router(name, np.random.Generator(np.random.PCG64(seed)), scn.Router(policy=name, **cfg))


def llama8(gpu: str, replicas: int = 1, **kw) -> dict:
    return {"gpu": gpu, "model": "Llama-3-8B", "replicas": replicas, **kw}


def stream(kind: str = "poisson", **kw) -> dict:
    return {"kind": kind, "input_tokens": 512, "output_tokens": 64, **kw}


def scenario(pools: dict, streams: dict | None = None, **top) -> scn.Scenario:
    return scn.parse({"duration_s": 60, "sample_s": 10, "pools": pools, "streams": streams or {}, **top})


# -- routers on stand-ins ----------------------------------------------------------------------------------
def test_router_names():
    assert set(ROUTERS) >= {"round_robin", "least_outstanding", "power_of_two", "speed_aware", "session_affinity"}


def test_round_robin_cycles_exactly():
    rr = router("round_robin")
    cands = [Stub(i) for i in range(3)]
    assert [rr(cands, req(i)).index for i in range(9)] == [0, 1, 2] * 3
    # the cycle ignores load
    cands[0].outstanding = 100
    assert [rr(cands, req()).index for _ in range(3)] == [0, 1, 2]


def test_least_outstanding_picks_the_minimum_lowest_index_on_ties():
    lo = router("least_outstanding")
    cands = [Stub(0, 3), Stub(1, 1), Stub(2, 2), Stub(3, 1)]
    assert lo(cands, req()).index == 1
    cands[1].outstanding = 5
    assert lo(cands, req()).index == 3
    assert lo([Stub(0, 0)], req()).index == 0


def test_power_of_two_is_deterministic_per_seed():
    cands = [Stub(i, i % 3) for i in range(8)]

    def picks(seed):
        p2 = router("power_of_two", seed)
        return [p2(cands, req()).index for _ in range(200)]

    assert picks(5) == picks(5)
    assert picks(5) != picks(6)


def test_power_of_two_prefers_the_less_loaded_of_two_uniform_draws():
    # loads [0, 5, 5, 5]: replica 0 wins whenever either draw hits it -> P = 1 - (3/4)^2 = 7/16.
    # n = 8000 picks: binomial SE = sqrt(p(1-p)/n) = 0.0055; tolerance 4 SE.
    cands = [Stub(0, 0)] + [Stub(i, 5) for i in (1, 2, 3)]
    p2 = router("power_of_two", 11)
    n = 8000
    share = sum(p2(cands, req()).index == 0 for _ in range(n)) / n
    se = math.sqrt(7 / 16 * 9 / 16 / n)
    assert abs(share - 7 / 16) < 4 * se, share
    # a single candidate is returned without drawing
    assert p2([cands[2]], req()) is cands[2]


def test_session_affinity_keeps_a_session_home_while_balanced_and_moves_it_when_overloaded():
    sa = router("session_affinity", affinity_load_bound=1.25)
    a, b, c = Stub(0), Stub(1), Stub(2)
    cands = [a, b, c]
    assert sa(cands, req(session=7)) is a            # first call: the fastest expected finish = the least
                                                     # loaded here (lowest index on ties)
    a.outstanding, b.outstanding, c.outstanding = 2, 1, 1
    assert sa(cands, req(session=8)) is b            # a new session goes to the least loaded ...
    assert sa(cands, req(session=7)) is a            # ... an old one stays home: 2 <= 1.25 * 4/3 + 1
    a.outstanding = 3                                # mean 5/3: bound 1.25 * 5/3 + 1 = 3.08 -> still home
    assert sa(cands, req(session=7)) is a
    a.outstanding = 4                                # mean 2: bound 3.5 < 4 -> overloaded, move
    assert sa(cands, req(session=7)) is b
    a.outstanding = 0
    assert sa(cands, req(session=7)) is b            # the new home sticks
    assert sa([a, c], req(session=7)) is a           # home down (not a candidate): move to the least loaded
    assert sa([a, b, c], req(session=7)) is a


# -- routers in a running simulation --------------------------------------------------------------------
def test_round_robin_in_a_run_assigns_request_i_to_replica_i_mod_n():
    sc = scenario({"a": llama8("H100-SXM", 2), "b": llama8("H200", 1)},
                  {"burst": stream("all_at_once", count=30)}, router={"policy": "round_robin"})
    df = simulate(sc, seed=1).requests
    assert len(df) == 30
    assert (df["replica"] == df["request_id"] % 3).all()
    assert (df["outcome"] == "completed").all()


def test_round_robin_skips_replicas_that_are_down():
    sc = scenario({"a": llama8("H100-SXM", 2), "b": llama8("H200", 1)},
                  {"s": stream(rate=20)}, router={"policy": "round_robin"},
                  outages=[{"target": "pool:b", "start_s": 20, "end_s": 40}])
    df = simulate(sc, seed=2).requests
    during = df[(df["arrival_s"] > 20) & (df["arrival_s"] < 40)]
    assert len(during) > 100
    assert set(during["replica"]) == {0, 1}
    r = during["replica"].to_numpy()
    assert (r[1:] != r[:-1]).all()                   # it alternates between the two that are up


def test_least_outstanding_in_a_run_always_picks_a_minimum():
    sc = scenario({"a": llama8("H100-SXM", 3), "b": llama8("A100-SXM-80GB", 1)},
                  {"s": stream(rate=60, output_tokens={"kind": "uniform", "low": 16, "high": 800})},
                  router={"policy": "least_outstanding"})
    sim = build(sc, 3)
    real = sim.cluster.router
    seen = []

    def spy(cands, r):
        loads = [c.outstanding for c in cands]
        chosen = real(cands, r)
        seen.append((loads, cands.index(chosen)))
        return chosen

    sim.cluster.router = spy
    sim.run()
    assert len(seen) > 2000
    assert all(loads[i] == min(loads) for loads, i in seen)
    assert sum(max(loads) > min(loads) for loads, _ in seen) > 100   # the choice mattered


@pytest.mark.parametrize("policy", ["least_outstanding", "speed_aware"])
def test_load_aware_routers_spread_a_burst(policy):
    sc = scenario({"a": llama8("H100-SXM", 3)}, {"burst": stream("all_at_once", count=30)},
                  router={"policy": policy})
    counts = simulate(sc, seed=1).requests["replica"].value_counts().to_dict()
    assert counts == {0: 10, 1: 10, 2: 10}


def test_power_of_two_in_a_run_is_deterministic_and_uses_its_own_stream():
    sc = scenario({"a": llama8("H100-SXM", 4)}, {"s": stream(rate=30)}, router={"policy": "power_of_two"})
    r1, r2 = simulate(sc, seed=5).requests, simulate(sc, seed=5).requests
    pd.testing.assert_frame_equal(r1, r2, check_exact=True)
    assert r1["replica"].nunique() == 4
    # the routing draws come from their own stream: another router sees the same arrivals and sizes
    rr = simulate(sc.model_copy(update={"router": scn.Router(policy="round_robin")}), seed=5).requests
    np.testing.assert_array_equal(rr["arrival_s"], r1["arrival_s"])
    np.testing.assert_array_equal(rr["input_tokens"], r1["input_tokens"])
    assert not np.array_equal(rr["replica"], r1["replica"])


def test_session_affinity_in_a_run():
    """Nine sessions on three replicas: homes spread, every call of a session stays home at light load,
    and a session that floods its home spills over to the others."""
    sc = scenario({"a": llama8("H100-SXM", 3)}, router={"policy": "session_affinity"}, duration_s=120)
    sim = build(sc, 1)
    env = sim.env

    def client():
        for s in range(9):                        # first calls 50 ms apart: each is queued when the next routes
            sim.submit(sim.new_request(512, 64, session=s))
            yield env.timeout(0.05)
        for k in range(1, 4):                     # later calls, 10 s apart: the cluster is idle in between
            yield env.timeout(10)
            for s in range(9):
                sim.submit(sim.new_request(512, 64, session=s))
                yield env.timeout(0.05)
        yield env.timeout(10)
        for _ in range(30):                       # session 100 floods: 30 calls, 50 ms apart
            sim.submit(sim.new_request(2048, 512, session=100))
            yield env.timeout(0.05)

    env.process(client())
    df = sim.run().requests
    assert (df["outcome"] == "completed").all() and len(df) == 9 * 4 + 30
    light = df[df["session"] < 100]
    homes = light.groupby("session")["replica"].nunique()
    assert (homes == 1).all()                                          # each session stays on one replica
    first = light.groupby("session")["replica"].first()
    assert first.value_counts().to_dict() == {0: 3, 1: 3, 2: 3}        # homes are balanced
    flood = df[df["session"] == 100]
    assert flood["replica"].nunique() == 3                              # overload moves it


def test_speed_aware_goes_back_to_the_cached_prefix():
    """A replica holding the call's prefix on its GPU needs only the new tokens prefilled: it wins
    over an idle twin, though not once the entry has expired or when it is much busier."""
    from agentsim.serving.prefix_cache import CacheConfig, PrefixCache
    sa = router("speed_aware")
    r = Request(0, 0.0, 50_000, 200, session=1, prefix_key=("s", 1), prefix_len=49_000)
    for cached_at in (0, 1):
        cands = [Stub(0), Stub(1)]
        cands[cached_at].cache = PrefixCache(CacheConfig(ttl_s=300.0))
        cands[cached_at].cache.put(("s", 1), 49_000, 0.0)
        assert sa(cands, r).index == cached_at
        for s in cands:
            s.env.now = 301.0                     # expired: both equal again, the first wins
        assert sa(cands, r).index == 0
    cands = [Stub(0, outstanding=2), Stub(1)]
    cands[0].cache = PrefixCache(CacheConfig(ttl_s=300.0))
    cands[0].cache.put(("s", 1), 49_000, 0.0)
    assert sa(cands, r).index == 0                # a busy cache holder still beats a 49 k-token prefill
    cands[0].outstanding = 8                      # but not 8 decodes at 50 k context each: every step
    assert sa(cands, r).index == 1                # then reads ~50 GB of KV on one H100


def test_speed_aware_prefers_the_faster_pool_when_idle():
    h100, b200 = CAT.gpu("H100-SXM"), CAT.gpu("B200")
    assert b200.hbm_tbps > h100.hbm_tbps and b200.bf16_tflops > h100.bf16_tflops   # the premise
    for order in (("h100", "b200"), ("b200", "h100")):
        pools = {name: llama8({"h100": "H100-SXM", "b200": "B200"}[name], 2) for name in order}
        sc = scenario(pools, {"one": stream("all_at_once", count=1)}, router={"policy": "speed_aware"})
        assert simulate(sc, seed=1).requests["pool"].tolist() == ["b200"]
        # sparse traffic (each request done before the next): always the faster pool
        sparse = sc.model_copy(update={"streams": {"s": scn.Stream(kind="poisson", rate=0.2, input_tokens=512,
                                                                  output_tokens=64)}, "duration_s": 200})
        df = simulate(sparse, seed=2).requests
        assert len(df) > 20 and set(df["pool"]) == {"b200"}
    # the contrast: least_outstanding takes the first idle replica, whatever it is
    sc = scenario({"h100": llama8("H100-SXM"), "b200": llama8("B200")}, {"one": stream("all_at_once", count=1)},
                  router={"policy": "least_outstanding"})
    assert simulate(sc, seed=1).requests["pool"].tolist() == ["h100"]


# -- outages ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def outage_run():
    """Site s1 (pool a, 2 replicas) is down from 20 s to 40 s; site s2 (pool b) stays up."""
    sc = scenario({"a": llama8("H100-SXM", 2, site="s1"), "b": llama8("H200", 1, site="s2")},
                  {"s": stream(rate=10, output_tokens={"kind": "uniform", "low": 200, "high": 2000})},
                  sites={"s1": {}, "s2": {}}, sample_s=5, router={"policy": "least_outstanding"},
                  outages=[{"target": "site:s1", "start_s": 20, "end_s": 40}])
    sim = build(sc, 1)
    return sim, sim.run()


def test_outage_fails_everything_in_flight_at_its_start(outage_run):
    sim, res = outage_run
    df = res.requests
    a = df[df["pool"] == "a"]
    overhead = sim.cluster.pools[0].coeffs.request_overhead
    in_flight = a[(a["arrival_s"] < 20) & ~((a["outcome"] == "completed") & (a["finish_s"] <= 20))]
    assert len(in_flight) > 20
    assert (in_flight["outcome"] == "replica_failed").all()
    # running or queued: failed at 20 s exactly; still in the request overhead: when it ends
    assert in_flight["finish_s"].between(20, 20 + overhead).all()
    assert (in_flight["finish_s"] == 20).sum() >= len(in_flight) - 2
    failed = df[df["outcome"] == "replica_failed"]
    assert set(failed["pool"]) == {"a"}
    assert len(failed) == len(in_flight)
    assert failed["e2e_s"].isna().all()


def test_outage_routes_nothing_to_the_site_and_it_serves_again_after(outage_run):
    _, res = outage_run
    df = res.requests
    a = df[df["pool"] == "a"]
    assert not ((a["arrival_s"] >= 20) & (a["arrival_s"] < 40)).any()
    assert not ((a["outcome"] == "completed") & (a["finish_s"] > 20) & (a["finish_s"] < 40)).any()
    b = df[df["pool"] == "b"]
    during = df[(df["arrival_s"] >= 20) & (df["arrival_s"] < 40)]
    assert len(during) > 100 and (during["pool"] == "b").all()
    after = a[a["arrival_s"] >= 40]
    assert len(after) > 50 and (after.loc[after["finish_s"] < 55, "outcome"] == "completed").all()
    assert (b["outcome"] != "replica_failed").all()


def test_outage_in_the_time_series(outage_run):
    sim, res = outage_run
    df, ts = res.requests, res.timeseries
    up = ts.pivot(index="time_s", columns="pool", values="replicas_up")
    arrivals = ts.pivot(index="time_s", columns="pool", values="arrivals")
    for t in (5, 10, 15, 45, 50, 55, 60):
        assert up.loc[t, "a"] == 2, t
    for t in (25, 30, 35):
        assert up.loc[t, "a"] == 0 and arrivals.loc[t, "a"] == 0, t
    assert (up["b"] == 1).all()
    failed = ts.groupby("pool", observed=True)["failed"].sum()
    assert failed["a"] == (df["outcome"] == "replica_failed").sum() and failed["b"] == 0
    pools = res.pools.set_index("pool")
    assert pools.loc["a", "down_frac"] == pytest.approx(20 / 60, rel=1e-12)
    assert pools.loc["b", "down_frac"] == 0


def test_whole_cluster_down_fails_arrivals_at_once():
    sc = scenario({"a": llama8("H100-SXM", 1)}, {"s": stream(rate=5)},
                  outages=[{"target": "pool:a", "start_s": 10, "end_s": 30}])
    df = simulate(sc, seed=4).requests
    during = df[(df["arrival_s"] > 10) & (df["arrival_s"] < 30)]
    assert len(during) > 50
    assert (during["outcome"] == "replica_failed").all()
    assert (during["finish_s"] == during["arrival_s"]).all()          # refused at the door, no replica
    assert during["pool"].isna().all() and during["replica"].isna().all()
    assert (df.loc[df["arrival_s"] > 30, "outcome"].isin(["completed", "in_flight"])).all()


def test_overlapping_outages_keep_a_replica_down_until_the_last_ends():
    sc = scenario({"a": llama8("H100-SXM", 1, site="s1"), "b": llama8("H200", 1, site="s2")},
                  {"s": stream(rate=5)}, sites={"s1": {}, "s2": {}}, sample_s=5,
                  outages=[{"target": "pool:a", "start_s": 10, "end_s": 30},
                           {"target": "site:s1", "start_s": 20, "end_s": 40}])
    res = simulate(sc, seed=3)
    pools = res.pools.set_index("pool")
    assert pools.loc["a", "down_frac"] == pytest.approx(30 / 60, rel=1e-12)
    a = res.requests[res.requests["pool"] == "a"]
    assert not ((a["arrival_s"] >= 10) & (a["arrival_s"] < 40)).any()
    assert (a["arrival_s"] >= 40).any()
    up = res.timeseries.pivot(index="time_s", columns="pool", values="replicas_up")["a"]
    assert list(up.loc[[15, 25, 35]]) == [0, 0, 0] and list(up.loc[[5, 45]]) == [1, 1]


# -- MTBF / MTTR ---------------------------------------------------------------------------------------
def test_mtbf_mttr_downtime_share():
    """Down share of N replicas with exponential up (mean a = MTBF) and repair (mean b = MTTR) times.

    Each replica alternates up/down: a two-state Markov chain with rates λ = 1/a, μ = 1/b, so the
    stationary down share is p = b/(a+b). Its down indicator has autocovariance p(1-p)e^{-(λ+μ)|τ|};
    integrating gives Var(time-average over T) ≈ 2p(1-p)/((λ+μ)T) per replica. Starting up biases the
    mean by -p/((λ+μ)T). N independent replicas divide the variance by N. Here a = 1 h, b = 0.5 h,
    T = 2000 h, N = 20: p = 1/3, σ_replica = 0.0086, σ_mean = 0.0019; we accept 4.5 σ. The spread of
    the 20 per-replica shares must match σ_replica: s²/σ² ~ χ²(19)/19, 99.9 % range [0.36, 2.30].
    """
    a_h, b_h, n, t_h = 1.0, 0.5, 20, 2000.0
    T = t_h * 3600
    sc = scenario({"a": llama8("H100-SXM", n, faults={"mtbf_h": a_h, "mttr_h": b_h})}, duration_s=T, sample_s=T)
    sim = build(sc, 1)
    res = sim.run()
    p = b_h / (a_h + b_h)
    rate = 1 / a_h + 1 / b_h
    sd_one = math.sqrt(2 * p * (1 - p) / (rate * t_h))
    expect = p - p / (rate * t_h)
    shares = np.array([sim.cluster.replica_downtime(i) for i in range(n)]) / T
    down = res.pools.loc[0, "down_frac"]
    assert down == pytest.approx(shares.mean(), rel=1e-12)
    assert abs(down - expect) < 4.5 * sd_one / math.sqrt(n), (down, expect)
    ratio = shares.var(ddof=1) / sd_one ** 2
    assert 0.36 < ratio < 2.30, ratio
    # a down replica draws nothing: energy = idle power x up time (no traffic)
    idle_w = CAT.gpu("H100-SXM").server_w_per_gpu * CAT.gpu("H100-SXM").idle_power_fraction
    assert res.pools.loc[0, "energy_j"] == pytest.approx(idle_w * (n * T - shares.sum() * T), rel=1e-9)


def test_faults_fail_requests_and_are_seeded():
    sc = scenario({"a": llama8("H100-SXM", 3, faults={"mtbf_h": 0.01, "mttr_h": 0.002})},
                  {"s": stream(rate=10, output_tokens=400)}, duration_s=200)
    r1, r2 = simulate(sc, seed=9), simulate(sc, seed=9)
    pd.testing.assert_frame_equal(r1.requests, r2.requests, check_exact=True)
    failed = r1.requests[r1.requests["outcome"] == "replica_failed"]
    assert len(failed) > 10 and set(failed["replica"]) == {0, 1, 2}
    assert 0 < r1.pools.loc[0, "down_frac"] < 0.5
    r3 = simulate(sc, seed=10)
    assert r3.pools.loc[0, "down_frac"] != r1.pools.loc[0, "down_frac"]


# -- conservation -----------------------------------------------------------------------------------------
def test_every_request_is_recorded_once_with_one_outcome():
    sc = scenario({"a": llama8("H100-SXM", 2, faults={"mtbf_h": 0.01, "mttr_h": 0.003}), "b": llama8("H200", 1)},
                  {"p": stream(rate=15, output_tokens={"kind": "uniform", "low": 1, "high": 600}),
                   "c": stream("concurrency", concurrency=8, think_s={"kind": "exponential", "mean": 0.5}),
                   "burst": stream("all_at_once", count=40, input_tokens=3000, output_tokens=1),
                   "huge": stream("poisson", rate=0.2, input_tokens=900_000, output_tokens=10)},
                  outages=[{"target": "pool:b", "start_s": 30, "end_s": 45}], duration_s=90)
    sim = build(sc, 1)
    res = sim.run()
    df = res.requests
    sent = {s.name: s.sent for s in sim.sources}
    assert len(df) == sum(sent.values())
    assert df["request_id"].is_unique and sorted(df["request_id"]) == list(range(len(df)))
    assert df["stream"].astype(str).value_counts().to_dict() == {k: v for k, v in sent.items() if v}
    assert df["outcome"].notna().all() and set(df["outcome"].astype(str)) <= set(OUTCOMES)
    got = set(df["outcome"].astype(str))
    assert {"completed", "in_flight", "replica_failed", "request_too_large"} <= got
    assert not sim.open
    done = df[df["outcome"] == "completed"]
    assert done[["arrival_s", "ready_s", "admitted_s", "first_token_s", "finish_s"]].notna().all().all()
    assert ((done["arrival_s"] <= done["ready_s"]) & (done["ready_s"] <= done["admitted_s"])
            & (done["admitted_s"] <= done["first_token_s"]) & (done["first_token_s"] <= done["finish_s"])).all()
    ended = df[df["outcome"] != "in_flight"]
    assert (ended["finish_s"] <= sc.duration_s).all() and (ended["finish_s"] >= ended["arrival_s"]).all()
    assert df.loc[df["outcome"] == "in_flight", "finish_s"].isna().all()
    big = df[df["input_tokens"] == 900_000]
    assert len(big) > 5 and (big["outcome"].astype(str).isin(["request_too_large", "replica_failed"])).all()


def test_invariants_hold_under_preemption():
    """Small KV (engine.mem_util) and a closed loop of long requests: many preemptions, and the
    engine's conservation checks after every event pass; checking does not change the results."""
    sc = scenario({"a": llama8("H100-SXM", 2)},
                  {"c": stream("concurrency", concurrency=48, input_tokens={"kind": "uniform", "low": 512, "high": 2048},
                               output_tokens={"kind": "uniform", "low": 256, "high": 1024}),
                   "p": stream(rate=3, input_tokens=1024, output_tokens=300)},
                  engine={"mem_util": 0.26}, duration_s=120)
    checked = build(sc, 1, check_invariants=True).run()
    pools = checked.pools
    assert pools.loc[0, "kv_capacity_tokens"] < 30_000          # the premise: KV is scarce
    assert pools.loc[0, "preemptions"] > 50
    df = checked.requests
    assert (df["preemptions"] > 0).sum() > 20
    assert (df["outcome"] == "completed").sum() > 300
    plain = build(sc, 1).run()
    pd.testing.assert_frame_equal(plain.requests, df, check_exact=True)


# -- power and cost -----------------------------------------------------------------------------------------
def test_idle_pool_energy_facility_power_and_cost():
    g = CAT.gpu("H200")
    sc = scenario({"x": llama8("H200", 3, tp=2, site="dc"), "y": llama8("H200", 1, site="dc", usd_per_gpu_hour=2.5)},
                  sites={"dc": {"pue": 1.3, "other_it_fraction": 0.1}}, duration_s=600, sample_s=60)
    res = build(sc, 1).run()
    pools = res.pools.set_index("pool")
    idle_w_per_gpu = g.server_w_per_gpu * g.idle_power_fraction
    factor = (1 + 0.1) * 1.3
    for name, gpus, price in (("x", 6, g.usd_per_gpu_hour), ("y", 1, 2.5)):
        row = pools.loc[name]
        assert row["gpus"] == gpus
        assert row["energy_j"] == pytest.approx(gpus * idle_w_per_gpu * 600, rel=1e-12)
        assert row["facility_energy_j"] == pytest.approx(row["energy_j"] * factor, rel=1e-12)
        assert row["cost_usd"] == pytest.approx(gpus * price * 600 / 3600, rel=1e-12)
        assert row["busy_frac"] == 0
    ts = res.timeseries
    assert len(ts) >= 2
    for _, r in ts.iterrows():
        gpus = 6 if r["pool"] == "x" else 1
        assert r["power_w"] == pytest.approx(gpus * idle_w_per_gpu, rel=1e-9)
        assert r["facility_power_w"] == pytest.approx(r["power_w"] * factor, rel=1e-12)
    s = res.summary()
    assert s["energy_j"] == pytest.approx(pools["facility_energy_j"].sum(), rel=1e-12)
    assert s["cost_usd"] == pytest.approx(pools["cost_usd"].sum(), rel=1e-12)


def test_loaded_pool_power_between_idle_and_full_and_integrates_to_energy():
    g = CAT.gpu("H100-SXM")
    sc = scenario({"a": llama8("H100-SXM", 2, site="dc")}, {"s": stream(rate=40, output_tokens=256)},
                  sites={"dc": {"pue": 1.25, "other_it_fraction": 0.2}}, duration_s=120, sample_s=10)
    res = build(sc, 1).run()
    row = res.pools.iloc[0]
    full = 2 * g.server_w_per_gpu * 120
    idle = full * g.idle_power_fraction
    assert idle * 1.05 < row["energy_j"] < full
    assert row["facility_energy_j"] == pytest.approx(row["energy_j"] * 1.2 * 1.25, rel=1e-12)
    ts = res.timeseries
    assert list(ts["time_s"]) == [10.0 * k for k in range(1, 13)]
    assert (ts["power_w"] * 10).sum() == pytest.approx(row["energy_j"], rel=1e-9)
    np.testing.assert_allclose(ts["facility_power_w"], ts["power_w"] * 1.5, rtol=1e-12)
    assert (ts["power_w"] > 2 * g.server_w_per_gpu * g.idle_power_fraction).all()
    assert (ts["busy_frac"] > 0).all() and (ts["busy_frac"] <= 1).all()


LONG_DECODE = {"one": stream("all_at_once", count=1, output_tokens=7600)}   # one request decoding for ~52 s


def test_time_series_power_stays_within_physical_bounds():
    g = CAT.gpu("H100-SXM")
    sc = scenario({"a": llama8("H100-SXM", 1)}, LONG_DECODE, duration_s=60, sample_s=10)
    res = simulate(sc, seed=1)
    done = res.requests.iloc[0]
    assert done["outcome"] == "completed" and done["finish_s"] > 50       # the premise: busy for > 50 s
    ts = res.timeseries
    full = g.server_w_per_gpu
    assert (ts["power_w"] <= full * (1 + 1e-9)).all(), ts["power_w"].max()
    assert (ts.loc[ts["time_s"] <= 50, "busy_frac"] > 0.99).all()
    assert (ts.loc[ts["time_s"] <= 50, "power_w"] > full * g.idle_power_fraction * 1.01).all()


def test_a_failure_keeps_the_energy_drawn_before_it():
    g = CAT.gpu("H100-SXM")
    idle_w = g.server_w_per_gpu * g.idle_power_fraction
    sc = scenario({"a": llama8("H100-SXM", 1)}, LONG_DECODE, duration_s=60, sample_s=10,
                  outages=[{"target": "pool:a", "start_s": 10, "end_s": 50}])
    res = simulate(sc, seed=1)
    assert res.requests.iloc[0]["outcome"] == "replica_failed"             # the premise: it failed mid-decode
    up_s = 60 - 40
    assert res.pools.loc[0, "energy_j"] >= idle_w * up_s                   # up time draws at least idle power
    first = res.timeseries.iloc[0]
    assert first["time_s"] == 10 and first["power_w"] > idle_w             # decoding from 0 to 10 s


def test_shedding_on_queue_delay_runs_and_sheds_under_overload():
    """``overload_shedding.max_queue_delay_s`` asks the fleet for its queueing delay (it raised an
    AttributeError after the step model moved to op tables); an overloaded fleet sheds with it, an
    idle one does not."""
    policy = 'policies=[{name="overload_shedding", max_queue_delay_s=2.0}]'
    hot = simulate("engine_mixed", seed=1, overrides=["duration_s=120", "warmup_s=10", "streams.chat.rate=200", policy])
    cold = simulate("engine_mixed", seed=1, overrides=["duration_s=120", "warmup_s=10", "streams.chat.rate=1", policy])
    assert (hot.requests["outcome"] == "529_overload").sum() > 0
    assert (cold.requests["outcome"] == "529_overload").sum() == 0
