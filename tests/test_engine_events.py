"""Deterministic CI gate on SimPy events per request (engine-performance.md §7.1).

Wall time is noisy on shared CI machines; the number of events SimPy schedules is not. Counted
with SimPy's event-id counter after the run, so it includes every event: the arrivals (one
callback chain, one event per request — see ``engine_harness.ArrivalChain``), the wake of an idle
replica at a request's ready time (a busy replica needs no event for it), engine timers, and a new id each time a cut
moves a timer to an earlier end (the move replaces the timer's queue entry, so nothing stale pops;
the id is drawn as a re-arm would, which keeps same-time events in their order).

Workloads (one Llama-3-8B bf16 replica on an H100-SXM, fixed seeds, Poisson arrivals):

* (a) 20 req/s, 1,024 input / 128 output tokens, 5,000 requests.
* (c) 128 input / 2,048 output at 70 % of the replica's saturation rate, 5,000 requests, and the
  same with 4,096 output tokens at 70 % of *its* saturation rate (doubling the output length at
  the same utilisation). Saturation is measured as in engine-performance.md §1.2: 10,000 requests
  queued at t = 0, throughput between the 10th and 90th percentile completions.
"""
from __future__ import annotations

import pytest
from engine_harness import coeffs, deployment, events_scheduled, poisson_workload, run, saturation_rate

from agentsim.serving.engine import EngineConfig, Replica
from agentsim.serving.engine_reference import SteppingReplica

DEP = "llama8b-h100"
N = 5_000
MAX_EVENTS_A = 3.5          # target: <= 5 events/request on (a); 3.18 since issue 20 (no ready event per
                            # request while the replica runs: 4.18 before), so losing that path fails here
MAX_CHANGE_2X_OUTPUT = 0.05


def events_per_request(cls, wl) -> float:
    cfg = EngineConfig(kv_capacity=deployment(DEP).kv_capacity_tokens)
    reqs, rep, env = run(cls, coeffs(DEP), cfg, wl)
    assert all(r.outcome == "completed" for r in reqs)
    return events_scheduled(env) / len(reqs)


@pytest.fixture(scope="module")
def rates() -> dict[int, float]:
    """70 % of the saturation rate for 128 input and 2,048 / 4,096 output tokens."""
    cfg = EngineConfig(kv_capacity=deployment(DEP).kv_capacity_tokens)
    return {o: 0.7 * saturation_rate(coeffs(DEP), cfg, 128, o) for o in (2048, 4096)}


@pytest.fixture(scope="module")
def fast(rates) -> dict[str, float]:
    return {
        "a": events_per_request(Replica, poisson_workload(1, N, 20.0, 1024, 128)),
        "c": events_per_request(Replica, poisson_workload(2, N, rates[2048], 128, 2048)),
        "c2x": events_per_request(Replica, poisson_workload(2, N, rates[4096], 128, 4096)),
    }


def test_events_per_request_a(fast):
    assert fast["a"] <= MAX_EVENTS_A, fast


def test_events_do_not_grow_with_output_length(fast):
    change = abs(fast["c2x"] - fast["c"]) / fast["c"]
    assert change < MAX_CHANGE_2X_OUTPUT, fast


def test_events_per_request_c_regression_ceiling(fast):
    """Holds the current engine's level (4.67 on (c) since issue 20, 5.67 before). The target, (c)
    within 0.5 of (a), is not met yet (4.67 vs 3.18): benchmarks/engine.py --single records that gap
    with its other targets."""
    assert fast["c"] <= 5.0, fast


def test_cuts_leave_no_stale_timer():
    """An admissible arrival cuts the stretch to the next boundary by moving its timer (one replica:
    a short SimPy queue): on (a) about a third of the arrivals do, and not one timer pops stale."""
    seen = {"moves": 0, "stale": 0}

    class Counting(Replica):
        def _rearm(self, t_end, *at):
            seen["moves"] += 1
            return super()._rearm(t_end, *at)

        def _on_timer(self, ev):
            seen["stale"] += ev is not self._timer
            return super()._on_timer(ev)

    cfg = EngineConfig(kv_capacity=deployment(DEP).kv_capacity_tokens)
    reqs, _, _ = run(Counting, coeffs(DEP), cfg, poisson_workload(1, 2000, 20.0, 1024, 128))
    assert all(r.outcome == "completed" for r in reqs)
    assert seen["moves"] > 0.2 * len(reqs) and seen["stale"] == 0, seen


def test_moving_a_timer_or_rearming_it_gives_the_same_bits(monkeypatch):
    """Where the queue is too long to search, a cut re-arms and leaves a stale timer; either way
    every timestamp and the event-id count are the same, cancellations (cuts) included."""
    import numpy as np

    import agentsim.serving.engine as engine
    cfg = EngineConfig(kv_capacity=deployment(DEP).kv_capacity_tokens)
    wl = poisson_workload(4, 1500, 20.0, 1024, 128)
    rng = np.random.default_rng(4)
    cancels = list(zip((wl.arrival[:1400] + rng.uniform(0, 2.0, 1400))[::7].tolist(), range(0, 1400, 7)))
    runs = {}
    for limit in (engine.MOVE_MAX_QUEUE, -1):
        monkeypatch.setattr(engine, "MOVE_MAX_QUEUE", limit)
        reqs, _, env = run(Replica, coeffs(DEP), cfg, wl, cancels=cancels)
        runs[limit] = ([(r.outcome, r.ready, r.admitted, r.first_token, r.finish) for r in reqs],
                       events_scheduled(env))
    moved, rearmed = runs.values()
    assert moved[1] == rearmed[1]
    assert repr(moved[0]) == repr(rearmed[0])       # bit for bit, nan included
    assert sum(o == "cancelled" for o, *_ in moved[0]) > 100


def test_reference_events_grow_with_output_length(rates, fast):
    """The step-by-step reference schedules one event per step, so the gate above can fail."""
    ref = {o: events_per_request(SteppingReplica, poisson_workload(3, 300, rates[o], 128, o)) for o in (2048, 4096)}
    assert ref[4096] > 1.5 * ref[2048], ref
    assert ref[2048] > 4 * fast["c"], (ref, fast)
