"""The event-skipping :class:`Replica` against the step-by-step :class:`SteppingReplica`.

Both implement the semantics in ``agentsim/engine.py``'s docstring independently; on any workload
they must give the same outcome, preemption count, first-token and finish time (1e-9 relative)
for every request. The fast replica runs with ``check_invariants=True`` throughout.

Hypothesis runs derandomized without a database, so CI is deterministic.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from engine_harness import (DEPLOYMENTS, StepLog, Workload, arrival_for_ready, busy_boundaries, coeffs, deployment, mismatches,
                            poisson_workload, rel_close, run, run_both)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agentsim.serving.engine import EPS, EngineConfig, Replica
from agentsim.serving.engine_reference import SteppingReplica
from agentsim.serving.request import Request

ENGINES = (Replica, SteppingReplica)
DEPS = sorted(DEPLOYMENTS)
HYPO = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def assert_agree(fast_run, ref_run, *, label: bool = False) -> None:
    (a, ra, _), (b, rb, _) = fast_run, ref_run
    if label:   # what the example exercised (shown by --hypothesis-show-statistics)
        event("preemption" if ra.preemptions else "no preemption")
        event("request_too_large" if any(r.outcome == "request_too_large" for r in a) else "all fit")
        event("chunked prefill" if any(r.prefill_tokens > ra.budget - 1 for r in a) else "whole prompts")
    diff = mismatches(a, b)
    assert not diff, f"{len(diff)} differences, first: {diff[:5]}"
    assert ra.preemptions == rb.preemptions
    assert ra.steps == rb.steps
    assert ra.tokens_out == rb.tokens_out
    assert rel_close(ra.busy_time, rb.busy_time) and rel_close(ra.energy_j, rb.energy_j)
    assert [r.prefill_tokens for r in a] == [r.prefill_tokens for r in b]
    assert all(r.outcome in ("completed", "request_too_large") for r in a)


# -- random workloads ------------------------------------------------------------------------------

@st.composite
def scenarios(draw):
    dep = draw(st.sampled_from(DEPS))
    n = draw(st.integers(1, 120))
    rate = draw(st.sampled_from([0.5, 5.0, 50.0, 500.0, math.inf]))   # light load .. burst at t=0
    prompt = draw(st.sampled_from([4.0, 64.0, 512.0, 2048.0]))
    output = draw(st.sampled_from([1.0, 8.0, 64.0, 300.0]))
    wl = poisson_workload(draw(st.integers(0, 2**32 - 1)), n, rate, (prompt, 1.0, 8192), (output, 1.0, 512),
                          cached_frac=draw(st.sampled_from([0.0, 0.5, 1.0])), host_frac=draw(st.sampled_from([0.0, 0.5])))
    ones = draw(st.sampled_from([0.0, 0.3, 1.0]))                       # O = 1 edge cases
    if ones:
        wl.output[np.arange(n) % max(1, round(1 / ones)) == 0] = 1
    budget = draw(st.one_of(st.sampled_from([16, 8192]), st.integers(16, 8192)))
    max_batch = draw(st.one_of(st.sampled_from([1, 256]), st.integers(1, 256)))
    biggest = int((wl.prompt + wl.output).max())
    tight = draw(st.sampled_from([0.0, 0.95, 1.1, 1.3, 1.6, 2.5, 4.0]))   # x the largest request; 0: real
    kv = deployment(dep).kv_capacity_tokens if tight == 0 else max(1, int(tight * biggest))
    overhead = draw(st.sampled_from([None, 0.0]))
    admission = draw(st.sampled_from(["fcfs", "fcfs", "priority"]))
    if admission == "priority":
        wl.priority = np.random.default_rng(n).integers(0, 3, n)
    cfg = EngineConfig(kv_capacity=kv, max_batch=max_batch, token_budget=budget, admission=admission)
    return dep, overhead, cfg, wl


@settings(max_examples=600, **HYPO)
@given(scenarios())
def test_random_workloads_agree(scenario):
    dep, overhead, cfg, wl = scenario
    co = coeffs(dep, overhead)
    assert_agree(*run_both(co, cfg, wl), label=True)


@st.composite
def explicit_workloads(draw):
    """Small explicit workloads (they shrink well): ties, bursts, tiny budgets and KV."""
    n = draw(st.integers(1, 8))
    gaps = draw(st.lists(st.sampled_from([0.0, 1e-4, 3e-3, 0.02, 0.3]), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 3000), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 200), min_size=n, max_size=n))
    cached = draw(st.lists(st.integers(0, 3000), min_size=n, max_size=n))
    wl = Workload(np.cumsum(gaps), np.array(prompts), np.array(outputs), np.minimum(cached, prompts))
    lo = max(1, max(p + o for p, o in zip(prompts, outputs)) - 50)
    kv = draw(st.integers(lo, max(lo, 8000)))
    cfg = EngineConfig(kv_capacity=kv, max_batch=draw(st.integers(1, 6)), token_budget=draw(st.integers(16, 4096)))
    return draw(st.sampled_from(DEPS)), draw(st.sampled_from([None, 0.0])), cfg, wl


@settings(max_examples=500, **HYPO)
@given(explicit_workloads())
def test_small_explicit_workloads_agree(scenario):
    dep, overhead, cfg, wl = scenario
    assert_agree(*run_both(coeffs(dep, overhead), cfg, wl), label=True)


@pytest.mark.parametrize("dep", DEPS)
@pytest.mark.parametrize("regime", ["below_saturation_chunked", "overload_tight_kv"])
def test_larger_workloads_agree(dep, regime):
    """A few hundred requests per deployment; the tight-KV overload must actually preempt."""
    if regime == "below_saturation_chunked":
        wl = poisson_workload(7, 300, 3.0, (512.0, 1.0, 8192), (128.0, 1.0, 1024), cached_frac=0.3)
        cfg = EngineConfig(kv_capacity=deployment(dep).kv_capacity_tokens, max_batch=64, token_budget=512)
    else:
        wl = poisson_workload(8, 300, 200.0, (512.0, 1.0, 4096), (128.0, 1.0, 1024))
        cfg = EngineConfig(kv_capacity=12_000, max_batch=128, token_budget=2048)
    fast, ref = run_both(coeffs(dep), cfg, wl)
    assert_agree(fast, ref)
    if regime == "overload_tight_kv":
        assert fast[1].preemptions > 0


# -- arrivals at and within 1e-9·max(1, t) of a step boundary -----------------------------------

@pytest.mark.parametrize("overhead", [0.0, None], ids=["no_overhead", "request_overhead"])
@pytest.mark.parametrize("dep", ["llama8b-h100", "deepseekv3-8xh200-fp8"])
@pytest.mark.parametrize("start", [0.0, 5000.0], ids=["t~1s", "t~5000s"])   # EPS is relative beyond 1 s
@pytest.mark.parametrize("offset", [0.0, 0.5, -0.5, 0.9, -0.9])
def test_arrival_at_step_boundary_joins_that_step(dep, overhead, start, offset):
    """A newcomer ready at a boundary, or within 0.5/0.9·EPS·max(1, t) after or before it, joins the
    step that starts there: mid-stretch (the fast replica must cut) and at a stretch end."""
    base, co, cfg, boundaries = busy_boundaries(dep, overhead, start)
    assert len(boundaries) >= 4
    oh = co.request_overhead
    tested = 0
    for b in boundaries:
        t_ready = b + offset * EPS * max(1.0, b)
        a = arrival_for_ready(t_ready, oh)
        if offset == 0.0 and oh > 0 and a + oh != b:
            continue            # no float arrival is ready exactly at this boundary (a + oh skips it)
        tested += 1
        k = int(np.searchsorted(base.arrival, a, side="right"))
        wl = Workload(np.insert(base.arrival, k, a), np.insert(base.prompt, k, 100), np.insert(base.output, k, 5))
        ref_log = StepLog(SteppingReplica)
        fast, ref = run(Replica, co, cfg, wl, check_invariants=True), run(ref_log.cls, co, cfg, wl)
        assert_agree(fast, ref)
        starts = sorted(set(ref_log.starts))
        nxt = next(s for s in starts if s > b + 2 * EPS * max(1.0, b))   # the boundary after b
        for new in (fast[0][k], ref[0][k]):
            assert new.rid == k and new.outcome == "completed"
            assert rel_close(new.admitted, b), (new.admitted, b)           # joined the step starting at b
            assert rel_close(new.first_token, nxt), (new.first_token, nxt)  # and its prompt ran in it
    assert tested >= 3


# -- outcomes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", ENGINES)
def test_request_too_large(cls):
    co = coeffs("llama8b-h100")
    cfg = EngineConfig(kv_capacity=1000)
    reqs = [Request(0, 0.0, 600, 400), Request(1, 0.0, 600, 401), Request(2, 0.1, 1001, 1), Request(3, 0.2, 10, 10)]
    done = []
    run(cls, co, cfg, reqs, on_done=done.append, check_invariants=True)
    assert [r.outcome for r in reqs] == ["completed", "request_too_large", "request_too_large", "completed"]
    assert reqs[1].finish == 0.0 and reqs[2].finish == 0.1   # refused on arrival
    assert sorted(r.rid for r in done) == [0, 1, 2, 3]


@pytest.mark.parametrize("cls", ENGINES)
def test_fail_returns_every_queued_and_running_request(cls):
    co = coeffs("llama8b-h100")
    cfg = EngineConfig(kv_capacity=20_000, max_batch=8, token_budget=512)
    wl = poisson_workload(3, 60, 40.0, (800.0, 0.5, 4000), (300.0, 0.5, 1000))
    t_fail = 0.8
    seen = []
    state = {}

    def fail(rep):
        state["running"] = {r.rid for r in (rep.live.values() if cls is Replica else rep.running)}
        state["queued"] = {r.rid for r in rep.waiting}
        rep.fail()

    reqs, rep, env = run(cls, co, cfg, wl, at=[(t_fail, fail)], on_done=seen.append, check_invariants=True)
    assert state["running"] and state["queued"]          # the failure hit a busy replica
    by = {r.rid: r for r in reqs}
    for rid in state["running"] | state["queued"]:
        assert by[rid].outcome == "replica_failed" and by[rid].finish == t_fail
    for r in reqs:
        if r.outcome == "completed":
            assert r.finish <= t_fail
        else:
            assert r.outcome == "replica_failed" and r.finish >= t_fail
    assert sorted(r.rid for r in seen) == list(range(len(reqs)))   # each request ends exactly once
    assert rep.outstanding == 0
    assert {r.rid for r in reqs if r.outcome == "replica_failed" and r.arrival > t_fail}  # refused while down


def test_fail_agrees_between_engines():
    co = coeffs("llama70b-4xh100-fp8")
    cfg = EngineConfig(kv_capacity=30_000, max_batch=16, token_budget=1024)
    wl = poisson_workload(4, 80, 30.0, (700.0, 0.7, 4000), (200.0, 0.7, 800))
    at = [(1.3, lambda rep: rep.fail()), (1.7, lambda rep: rep.repair())]
    (a, ra, _), (b, rb, _) = run(Replica, co, cfg, wl, at=at, check_invariants=True), run(SteppingReplica, co, cfg, wl, at=at)
    assert not mismatches(a, b)
    assert {r.outcome for r in a} == {"completed", "replica_failed"}


def test_cancel_and_fail_during_the_request_overhead():
    """A request cancelled, or on a replica that fails, before its overhead passes never becomes
    ready (``ready`` stays nan), in both engines; one cancelled after it did keeps its ready time."""
    co = coeffs("llama8b-h100")
    oh = co.request_overhead
    cfg = EngineConfig(kv_capacity=100_000)
    reqs = lambda: [Request(i, t, 500, 50) for i, t in enumerate((0.0, 0.001, 0.002, 1.0, 1.0 + oh / 4))]  # noqa: E731
    cancels = [(0.001 + oh / 2, 1), (0.002 + 2 * oh, 2)]
    at = [(1.0 + oh / 2, lambda rep: rep.fail()), (1.0 + 3 * oh, lambda rep: rep.repair())]
    runs = [run(cls, co, cfg, reqs(), cancels=cancels, at=at) for cls in ENGINES]
    assert not mismatches(runs[0][0], runs[1][0])
    for got, _, _ in runs:
        assert [r.outcome for r in got] == ["completed", "cancelled", "cancelled", "replica_failed", "replica_failed"]
        assert math.isnan(got[1].ready) and got[2].ready == pytest.approx(0.002 + oh)
        assert math.isnan(got[3].ready) and math.isnan(got[4].ready)


@pytest.mark.parametrize("cls", ENGINES)
def test_priority_admission_serves_lower_values_first(cls):
    co = coeffs("llama8b-h100")
    cfg = EngineConfig(kv_capacity=100_000, max_batch=1, admission="priority")
    pri = [0, 3, 1, 2, 0, 1]
    reqs = [Request(i, 0.0 if i == 0 else 0.01, 100, 20, priority=p) for i, p in enumerate(pri)]
    run(cls, co, cfg, reqs, check_invariants=True)
    order = [r.rid for r in sorted(reqs, key=lambda r: r.admitted)]
    assert order == [0, 4, 2, 5, 3, 1]    # blocker first, then by (priority, arrival)
    assert all(r.outcome == "completed" for r in reqs)


def test_priority_admission_agrees_when_queued_together():
    co = coeffs("llama8b-h100")
    cfg = EngineConfig(kv_capacity=6_000, max_batch=4, token_budget=1024, admission="priority")
    wl = poisson_workload(5, 40, math.inf, (600.0, 0.8, 4000), (60.0, 0.8, 400))
    wl.priority = np.random.default_rng(5).integers(0, 4, 40)
    assert_agree(*run_both(co, cfg, wl))


def test_priority_newcomer_overtaking_a_blocked_head():
    """A newcomer that heads the priority queue while the old head is KV-blocked joins at the next
    boundary in both engines (regression: the fast replica used to cut only into an empty queue)."""
    co = coeffs("llama8b-h100", 0.0)
    cfg = EngineConfig(kv_capacity=3000, max_batch=8, admission="priority")
    # r0 decodes for seconds; r1 (priority 5) cannot fit next to it; r2 (priority 0) fits at once
    reqs = lambda: [Request(0, 0.0, 1000, 1500), Request(1, 0.1, 1999, 10, priority=5),
                    Request(2, 0.2, 100, 10, priority=0)]
    (a, _, _), (b, _, _) = run(Replica, co, cfg, reqs(), check_invariants=True), run(SteppingReplica, co, cfg, reqs())
    assert not mismatches(a, b)
    for r in (a, b):
        assert 0.2 <= r[2].admitted < 0.22 and r[1].admitted > r[0].finish - 1e-9


# -- cancellation (client timeouts, abandonment) -------------------------------------------------

needs_cancel = pytest.mark.skipif(not hasattr(Replica, "cancel"), reason="Replica.cancel not implemented")


@needs_cancel
@settings(max_examples=300, **HYPO)
@given(scenarios(), st.data())
def test_random_cancellations_agree(scenario, data):
    dep, overhead, cfg, wl = scenario
    n = len(wl)
    # mostly soon after the request's arrival, while it is likely queued or prefilling
    picks = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.sampled_from([0.0, 1e-3, 0.02, 0.1, 0.5, 3.0])),
                               min_size=1, max_size=12))
    cancels = sorted((float(wl.arrival[rid]) + 0.012 + delay, rid) for rid, delay in picks)
    fast, ref = run_both(coeffs(dep, overhead), cfg, wl, cancels=cancels)
    diff = mismatches(fast[0], ref[0])
    assert not diff, f"{len(diff)} differences, first: {diff[:5]}"
    assert fast[1].steps == ref[1].steps
    event("cancelled some" if any(r.outcome == "cancelled" for r in fast[0]) else "cancelled none")


@needs_cancel
@pytest.mark.parametrize("cls", ENGINES)
def test_cancel_queued_head_lets_the_next_request_in(cls):
    """Cancelling a KV-blocked queue head mid-stretch: the request behind it, which fits, joins at
    the next step boundary (not when the stretch would have ended, seconds later)."""
    co = coeffs("llama8b-h100", 0.0)
    cfg = EngineConfig(kv_capacity=3000, max_batch=8)
    reqs = [Request(0, 0.0, 1000, 1500), Request(1, 0.1, 1999, 10), Request(2, 0.15, 100, 10)]
    run(cls, co, cfg, reqs, cancels=[(0.2, 1)], check_invariants=True)
    assert reqs[1].outcome == "cancelled" and reqs[1].finish == 0.2
    assert 0.2 <= reqs[2].admitted < 0.22, reqs[2].admitted
    assert reqs[2].finish < reqs[0].finish


@needs_cancel
@pytest.mark.parametrize("cls", ENGINES)
def test_cancel_outcomes(cls):
    co = coeffs("llama8b-h100", 0.0)
    cfg = EngineConfig(kv_capacity=100_000, max_batch=2)
    reqs = [Request(0, 0.0, 500, 400), Request(1, 0.0, 500, 400), Request(2, 0.0, 100, 300), Request(3, 0.0, 10, 1)]
    seen = []
    log = StepLog(cls)
    run(log.cls, co, cfg, reqs, cancels=[(0.5, 0), (0.6, 3), (30.0, 1)], on_done=seen.append,
        check_invariants=True)
    assert [r.outcome for r in reqs] == ["cancelled", "completed", "completed", "cancelled"]
    nxt = min(t for t in log.starts if t > 0.5)        # a running request leaves at the end of its step
    assert reqs[0].finish == pytest.approx(nxt, abs=1e-12) and reqs[0].first_token < 0.5
    assert reqs[2].admitted == pytest.approx(nxt, abs=1e-12)          # its slot went to the next in line
    assert reqs[3].finish == 0.6 and math.isnan(reqs[3].admitted)   # a queued one leaves at once
    assert sorted(r.rid for r in seen) == [0, 1, 2, 3]                # ended exactly once (late cancel: no-op)
