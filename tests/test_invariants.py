"""Exact sample-path properties of the engine over random small scenarios (hypothesis).

No statistics here: every property holds on every path, up to float tolerance.

* conservation — every request ends in exactly one outcome (none lost, none duplicated), and
  after every event each open request sits at exactly one replica;
* causality — arrival <= ready <= admitted <= first_token <= finish;
* Little's law on the sample path — ∫N dt over [0, T], integrated between events by a probe that
  never reads the records, equals Σ (min(finish, T) − arrival) from the records;
* work conservation — no replica idles while a request waits at it (the union of its running
  intervals covers every wait), its busy time is exactly that union, and the engine's own
  ``check_invariants`` mode holds after every event;
* the response-time law R = N/X − Z as an identity with its boundary terms;
* token buckets — the gateway admits exactly what a reference bucket admits, and the admitted
  requests obey the arrival curve b + r·t;
* determinism — the same seed gives identical tables.

The random scenarios exclude none of the cases that once found engine bugs: closed-loop streams
draw zero think time too.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentsim.studies import theory as th
from agentsim.run.api import load_scenario
from agentsim.run.build import build
from agentsim.model.catalog import load_catalog
from agentsim.model.deployment import Deployment
from agentsim.provider.limits import tier
from agentsim.serving.request import OUTCOMES
from agentsim.studies.validation_systems import CONST_GPU, MODEL, PS_GPU, catalog_file

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
TIERS = ("anthropic_2025_tier1", "anthropic_2025_tier2")


def tiny_weights_bytes() -> float:
    cat = load_catalog((catalog_file(),))
    return Deployment.from_catalog(cat, MODEL, CONST_GPU).weight_bytes_per_gpu


WEIGHTS = tiny_weights_bytes()


def reserve_for(kv_tokens: int) -> float:
    """engine.reserve_gb_per_gpu that leaves about ``kv_tokens`` of KV for the tiny model (4 B each)."""
    return (0.9 * 80e9 - WEIGHTS - 4 * kv_tokens) / 1e9


# -- random scenarios ------------------------------------------------------------------------------------
def token_dist(draw, lo: int, hi: int):
    kind = draw(st.sampled_from(["constant", "uniform", "geometric"]))
    if kind == "constant":
        return draw(st.integers(lo, hi))
    if kind == "uniform":
        a = draw(st.integers(lo, hi))
        b = draw(st.integers(a, hi))
        return {"kind": "uniform", "low": a, "high": b, "round": "round"}
    return {"kind": "geometric", "mean": draw(st.floats(0, (hi - lo) / 3)), "offset": lo, "max": hi}


@st.composite
def stream_cfg(draw, max_input: int = 3000, max_output: int = 600):
    kind = draw(st.sampled_from(["poisson", "poisson", "concurrency", "all_at_once"]))
    s = {"kind": kind, "input_tokens": token_dist(draw, 1, max_input), "output_tokens": token_dist(draw, 1, max_output),
         "priority": draw(st.integers(0, 2))}
    if kind == "poisson":
        s.update(rate=draw(st.floats(0.2, 40)), count=draw(st.integers(1, 60)))
    elif kind == "concurrency":
        # zero think time included: a closed loop resubmitting at once once double-applied steps
        think = draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0), st.just({"kind": "exponential", "mean": 0.5})))
        s.update(concurrency=draw(st.integers(1, 5)), think_s=think, count=draw(st.integers(1, 40)))
    else:
        s.update(count=draw(st.integers(1, 30)))
    return s


@st.composite
def pool_cfg(draw):
    kind = draw(st.sampled_from(["const", "ps", "h100"]))
    engine = {"max_batch": draw(st.integers(1, 16)), "token_budget": draw(st.sampled_from([16, 64, 256, 2048]))}
    if kind == "h100":
        return {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": draw(st.integers(1, 2)), "engine": engine}
    engine["reserve_gb_per_gpu"] = reserve_for(draw(st.integers(4096, 9000)))   # small KV: preemptions
    return {"gpu": CONST_GPU if kind == "const" else PS_GPU, "model": MODEL,
            "replicas": draw(st.integers(1, 3)), "engine": engine}


@st.composite
def scenarios(draw, policies: bool = True, outages: bool = True):
    pools = {f"p{i}": draw(pool_cfg()) for i in range(draw(st.integers(1, 2)))}
    streams = {f"s{i}": draw(stream_cfg()) for i in range(draw(st.integers(1, 2)))}
    duration = draw(st.floats(1.0, 20.0))
    sc = {"name": "prop", "duration_s": duration, "sample_s": duration / 4, "catalog": [catalog_file()],
          "engine": {"retention": draw(st.sampled_from(["lru", "none"])),
                     "admission": draw(st.sampled_from(["fcfs", "priority"]))},
          "pools": pools, "streams": streams,
          "router": {"policy": draw(st.sampled_from(["round_robin", "least_outstanding", "power_of_two",
                                                     "speed_aware", "session_affinity"]))}}
    chain = []
    if policies and draw(st.booleans()):
        chain.append({"name": "chaos", "probability": draw(st.floats(0, 0.5)),
                      "outcome": draw(st.sampled_from(["529_overload", "429_limit", "replica_failed"]))})
    if policies and draw(st.booleans()):
        chain.append({"name": "rate_limits", "default_tier": draw(st.sampled_from(TIERS)),
                      "burst_window_s": draw(st.floats(1, 60))})
    if policies and draw(st.booleans()):
        chain.append({"name": "overload_shedding", "max_outstanding_per_replica": draw(st.integers(1, 8))})
    if chain:
        sc["policies"] = chain
    if outages and draw(st.booleans()):
        start = draw(st.floats(0, duration * 0.8))
        sc["outages"] = [{"target": "pool:p0", "start_s": start, "end_s": start + draw(st.floats(0.01, 5))}]
    return sc


# -- the probe: N(t) integrated between events, without the records ----------------------------------------
class Probe:
    """Wraps ``env.step``: integrates the number of open requests and of requests at replicas
    between events, and checks after every event that the two counts agree."""

    def __init__(self, sim) -> None:
        self.sim = sim
        env = sim.env
        self.t = 0.0
        self.area_open = 0.0
        self.area_replicas = 0.0
        self.n_open = 0
        self.n_replicas = 0
        self.mismatch: list = []
        self.events = 0
        step = env.step

        def probed_step() -> None:
            t1 = env.peek()
            if t1 > self.t and t1 < math.inf:
                dt = t1 - self.t
                self.area_open += self.n_open * dt
                self.area_replicas += self.n_replicas * dt
                self.t = t1
            step()
            self.events += 1
            self.n_open = len(sim.open)
            self.n_replicas = sum(r.outstanding for r in sim.cluster.replicas)
            if self.n_open != self.n_replicas:
                self.mismatch.append((env.now, self.n_open, self.n_replicas))

        env.step = probed_step


def run_probed(sc: dict, seed: int = 1):
    sim = build(load_scenario(sc), seed, check_invariants=True)
    probe = Probe(sim)
    res = sim.run()
    return sim, probe, res


# -- property helpers --------------------------------------------------------------------------------------
def assert_conservation(sim, res) -> None:
    df = res.requests
    assert np.array_equal(np.sort(df["request_id"].to_numpy()), np.arange(sim._rid)), "a request lost or duplicated"
    assert df["outcome"].notna().all() and df["outcome"].isin(OUTCOMES).all()
    assert not sim.open
    counts = df["outcome"].value_counts()
    assert int(counts.sum()) == len(df)


def assert_causal(res) -> None:
    df = res.requests
    cols = ["arrival_s", "ready_s", "admitted_s", "first_token_s", "finish_s"]
    x = df[cols].to_numpy()
    T = res.meta["duration_s"]
    for i, row in enumerate(x):
        seen = row[~np.isnan(row)]
        assert np.all(np.diff(seen) >= -1e-9 * (1 + np.abs(seen[1:]))), (df.iloc[i][cols + ["outcome"]].to_dict())
        assert seen[-1] <= T * (1 + 1e-12) + 1e-12
    done = df[df["outcome"] == "completed"]
    assert not done[cols].isna().any().any(), "a completed request misses a timestamp"
    assert (df.loc[df["outcome"] != "in_flight", "finish_s"].notna()).all()
    assert df.loc[df["outcome"] == "in_flight", "finish_s"].isna().all()


def sojourn_sum(df: pd.DataFrame, T: float) -> float:
    f = df["finish_s"].to_numpy()
    f = np.where(np.isnan(f), T, np.minimum(f, T))
    return float((f - df["arrival_s"].to_numpy()).sum())


def assert_little(probe: Probe, res) -> None:
    T = res.meta["duration_s"]
    assert probe.t == pytest.approx(T, rel=1e-12)
    df = res.requests
    total = sojourn_sum(df, T)
    tol = 1e-9 * (1 + T) * (1 + len(df))
    assert abs(probe.area_open - total) <= tol, (probe.area_open, total)
    at_replicas = sojourn_sum(df[df["replica"] >= 0], T)
    assert abs(probe.area_replicas - at_replicas) <= tol, (probe.area_replicas, at_replicas)
    assert not probe.mismatch, probe.mismatch[:3]


def merged(intervals: np.ndarray, tol: float) -> np.ndarray:
    if not len(intervals):
        return np.empty((0, 2))
    iv = intervals[np.argsort(intervals[:, 0], kind="stable")]
    out = [list(iv[0])]
    for s, e in iv[1:]:
        if s <= out[-1][1] + tol:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return np.asarray(out)


def assert_work_conserving(sim, res) -> None:
    """Per replica: every wait lies inside the union of running intervals; busy time = that union."""
    df = res.requests
    T = res.meta["duration_s"]
    tol = 1e-9 * (1 + T)
    for r in sim.cluster.replicas:
        here = df[df["replica"] == r.index]
        adm = here["admitted_s"].to_numpy()
        fin = here["finish_s"].to_numpy()
        fin = np.where(np.isnan(fin), T, fin)
        ran = ~np.isnan(adm)
        u = merged(np.column_stack([adm[ran], fin[ran]]), tol)
        busy = float((u[:, 1] - u[:, 0]).sum()) if len(u) else 0.0
        assert abs(r.accounted(T)[0] - busy) <= tol * (1 + len(u)), (r.index, r.accounted(T)[0], busy)
        ready = here["ready_s"].to_numpy()
        end = np.where(ran, adm, fin)                   # a request never admitted waited until it ended
        waited = ~np.isnan(ready) & (end > ready + tol)
        for s, e in zip(ready[waited], end[waited]):
            k = np.searchsorted(u[:, 0], s + tol, side="right") - 1 if len(u) else -1
            assert k >= 0 and u[k, 0] <= s + tol and u[k, 1] >= e - tol, \
                f"replica {r.index} idle while a request waited in [{s}, {e}]"


# -- the properties ----------------------------------------------------------------------------------------
@settings(max_examples=300, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 2 ** 16))
def test_sample_path_invariants(sc, seed):
    """Conservation, causality, Little's law and work conservation on one random run."""
    sim, probe, res = run_probed(sc, seed)
    assert_conservation(sim, res)
    assert_causal(res)
    assert_little(probe, res)
    assert_work_conserving(sim, res)


@settings(max_examples=40, **SETTINGS)
@given(sc=scenarios(), seed=st.integers(0, 2 ** 16))
def test_same_seed_same_tables(sc, seed):
    a = build(load_scenario(sc), seed).run()
    b = build(load_scenario(sc), seed).run()
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.timeseries, b.timeseries)
    pd.testing.assert_frame_equal(a.pools, b.pools)


@settings(max_examples=60, **SETTINGS)
@given(N=st.integers(1, 6), Z=st.one_of(st.just(0.0), st.floats(0.0, 3.0)),
       gpu=st.sampled_from([CONST_GPU, PS_GPU, "H100-SXM"]),
       max_batch=st.integers(1, 4), duration=st.floats(0.5, 30), seed=st.integers(0, 1000),
       out=st.integers(1, 300))
def test_response_time_law_identity(N, Z, gpu, max_batch, duration, seed, out):
    """N·T = ∫(in system) + ∫(thinking): with a constant think time Z every request ending at f
    starts a think [f, f + Z], so R = N/X − Z holds up to the terms cut at T."""
    model = "Llama-3-8B" if gpu == "H100-SXM" else MODEL
    sc = {"name": "law", "duration_s": duration, "sample_s": duration, "catalog": [catalog_file()],
          "engine": {"max_batch": max_batch}, "pools": {"p": {"gpu": gpu, "model": model}},
          "streams": {"c": {"kind": "concurrency", "concurrency": N, "think_s": Z, "input_tokens": 64,
                            "output_tokens": {"kind": "uniform", "low": 1, "high": out, "round": "round"}}}}
    res = build(load_scenario(sc), seed).run()
    df = res.requests
    T = duration
    f = df["finish_s"].to_numpy()
    ended = f[~np.isnan(f)]
    thinking = float((np.minimum(ended + Z, T) - ended).sum())
    in_system = sojourn_sum(df, T)
    assert in_system + thinking == pytest.approx(N * T, rel=1e-9, abs=1e-9)
    # each client's next arrival is its previous finish + Z
    later = np.sort(df["arrival_s"].to_numpy()[N:])
    assert np.allclose(later, np.sort(ended + Z)[:len(later)], rtol=0, atol=1e-9 * (1 + T))
    C = len(ended)
    if C:   # the law with its boundary terms: N/X − Z − R = (N·T − C·(R + Z)) / C
        X, R = C / T, float(df.loc[~np.isnan(f), "e2e_s"].mean())
        boundary = N * T - C * (R + Z)
        assert th.response_time(N, X, Z) - R == pytest.approx(boundary / C, rel=1e-6, abs=1e-9)


@settings(max_examples=80, **SETTINGS)
@given(tier_name=st.sampled_from(TIERS), burst=st.floats(1, 60), rate=st.floats(0.1, 60),
       duration=st.floats(1, 120), seed=st.integers(0, 1000))
def test_token_bucket_matches_reference_and_arrival_curve(tier_name, burst, rate, duration, seed):
    """Unit requests through the RPM bucket: decisions equal a reference (b, r) bucket's, and the
    admitted ones obey admitted(s, t) <= b + r·(t − s) for every window."""
    rpm = tier(tier_name).rpm
    r, b = rpm / 60.0, max(1.0, rpm * burst / 60.0)       # the RPM bucket is at least one request deep
    sc = {"name": "tb", "duration_s": duration, "sample_s": duration, "catalog": [catalog_file()],
          "engine": {"max_batch": 1 << 20}, "pools": {"p": {"gpu": CONST_GPU, "model": MODEL}},
          "policies": [{"name": "rate_limits", "default_tier": tier_name, "burst_window_s": burst}],
          "streams": {"s": {"kind": "poisson", "rate": rate, "input_tokens": {"kind": "uniform", "low": 1,
                                                                           "high": 30, "round": "round"},
                            "output_tokens": {"kind": "uniform", "low": 1, "high": 10, "round": "round"}}}}
    res = build(load_scenario(sc), seed).run()
    df = res.requests.sort_values("arrival_s", kind="stable")
    t = df["arrival_s"].to_numpy()
    admitted = ~df["outcome"].isin(["429_limit", "request_too_large"]).to_numpy()
    assert np.array_equal(admitted, th.token_bucket_filter(t, b, r))
    assert th.arrival_curve_excess(t[admitted], r) <= b + 1e-9
    assert admitted.sum() <= th.token_bucket_bound(b, r, duration) + 1e-9


@settings(max_examples=15, **SETTINGS)
@given(seed=st.integers(0, 1000), p=st.floats(0, 0.7), workers=st.integers(1, 6), duration=st.floats(5, 40))
def test_agents_with_retries_conserve_requests(seed, p, workers, duration):
    """A fleet of agents under injected failures: every attempt has one outcome, attempts of a
    call are numbered 0..n−1, a call has at most one completed attempt (the last), and nothing
    happens out of causal order."""
    from agentsim.studies.validate import retry_population
    sc = {"name": "agents", "duration_s": duration, "sample_s": duration, "catalog": [catalog_file()],
          "engine": {"max_batch": 8}, "pools": {"p": {"gpu": CONST_GPU, "model": MODEL}},
          "policies": [{"name": "chaos", "probability": p, "outcome": "529_overload"}],
          "populations": {"a": retry_population(workers, 5)}}
    sim, probe, res = run_probed(sc, seed)
    assert_conservation(sim, res)
    assert_causal(res)
    assert_little(probe, res)
    df = res.requests
    for _, g in df.groupby("call_id"):
        assert sorted(g["attempt"]) == list(range(len(g)))
        ok = (g["outcome"] == "completed").to_numpy()
        assert ok.sum() <= 1 and (not ok.any() or ok[np.argmax(g["attempt"].to_numpy())])
        assert len(g) <= 3                                  # anthropic_sdk: at most 3 attempts


def test_probe_sees_every_event():
    sc = {"name": "one", "duration_s": 5.0, "sample_s": 5.0, "catalog": [catalog_file()],
          "pools": {"p": {"gpu": CONST_GPU, "model": MODEL}},
          "streams": {"s": {"kind": "all_at_once", "count": 3, "input_tokens": 1, "output_tokens": 100}}}
    sim, probe, res = run_probed(sc)
    # three requests of 0.1 s each, one after another (max_batch default 1024: all at once)
    assert probe.area_open == pytest.approx(3 * 0.1, rel=1e-6)
    assert probe.events > 0 and not probe.mismatch


# -- known engine bugs (found by the properties above) ------------------------------------------------------
def closed_loop(max_batch: int, think=None, **extra) -> dict:
    stream = {"kind": "concurrency", "concurrency": 4, "count": 200, "input_tokens": 1,
              "output_tokens": {"kind": "uniform", "low": 10, "high": 200, "round": "round"}}
    if think is not None:
        stream["think_s"] = think
    return {"name": "loop", "duration_s": 60.0, "sample_s": 60.0, "catalog": [catalog_file()],
            "engine": {"max_batch": max_batch}, "pools": {"p": {"gpu": CONST_GPU, "model": MODEL}},
            "streams": {"c": stream}, **extra}


def test_closed_loop_with_zero_think_time_is_fine():
    """The same loop through a scheduled (zero-delay) resubmission agrees with the reference."""
    sc = load_scenario(closed_loop(8, think=0.0))
    a = build(sc, 1, check_invariants=True).run().requests
    b = build(sc, 1, step_mode=True).run().requests
    assert np.allclose(a["finish_s"], b["finish_s"], rtol=1e-9, atol=0)


def test_closed_loop_without_think_time_matches_reference():
    sc = load_scenario(closed_loop(8))
    a = build(sc, 1).run()
    b = build(sc, 1, step_mode=True).run()
    assert np.allclose(a.requests["finish_s"], b.requests["finish_s"], rtol=1e-9, atol=0)
    # each request is in service for exactly O steps of 1 ms
    e2e = a.requests["finish_s"] - a.requests["admitted_s"]
    assert np.all(e2e >= a.requests["output_tokens"] * 1e-3 * (1 - 1e-6))


def test_closed_loop_without_think_time_keeps_invariants():
    build(load_scenario(closed_loop(3)), 1, check_invariants=True).run()


def test_closed_loop_without_think_time_survives_an_outage():
    sc = closed_loop(8, outages=[{"target": "pool:p", "start_s": 1.0, "end_s": 2.0}])
    sc["pools"]["p"] = {"gpu": "H100-SXM", "model": "Llama-3-8B"}   # request overhead > 0: not the bug above
    res = build(load_scenario(sc), 1).run()
    assert (res.requests["outcome"] == "replica_failed").any()


def test_itpm_charges_requests_without_a_prefix_key():
    sc = {"name": "itpm", "duration_s": 60.0, "sample_s": 60.0,
          "pools": {"p": {"gpu": "H100-SXM", "model": "Llama-3-8B"}},
          "policies": [{"name": "rate_limits", "default_tier": "anthropic_2025_tier1"}],   # ITPM 30k, depth 30k
          "streams": {"s": {"kind": "all_at_once", "count": 3, "input_tokens": 40_000, "output_tokens": 5}}}
    res = build(load_scenario(sc), 1).run()
    assert (res.requests["outcome"] == "request_too_large").all()


def test_cancel_in_overhead_delay_leaves_no_phantom_load():
    from agentsim.studies.validate import retry_population
    pop = retry_population(2, 3)
    pop["timeout_s"] = 0.002            # below the 5 ms request overhead of Hopper: every attempt times out pending
    sc = {"name": "phantom", "duration_s": 2.0, "sample_s": 2.0,
          "pools": {"p": {"gpu": "H100-SXM", "model": "Llama-3-8B"}}, "populations": {"a": pop}}
    sim, probe, res = run_probed(sc, 1)
    assert (res.requests["outcome"] == "timed_out").any()
    assert not probe.mismatch, probe.mismatch[:3]
