"""The replica without a ready event per request (``Replica.LAZY_READY``) against the same replica
with one (``LAZY_READY = False``, the path priority admission still takes).

Without ready events a request's queue join and its cut of the running stretch are decided when it
arrives (or at the next plan), and the moved timer is put at the very time the ready event would
have put it: per-request timestamps must be the same bits, with fewer SimPy events. Observers
(``waiting``, ``pending``, ``outstanding``) must see the queue as the ready events would have left it.
"""
from __future__ import annotations

import numpy as np
import pytest
from engine_harness import (Workload, arrival_for_ready, busy_boundaries, coeffs, deployment, events_scheduled, mismatches,
                            poisson_workload, run)

from agentsim.serving.engine import EPS, EngineConfig, Replica


class EventReady(Replica):
    """The same replica, one ready event per request."""

    LAZY_READY = False


def fields(reqs) -> str:
    return repr([(r.outcome, r.ready, r.admitted, r.first_token, r.finish, r.preemptions, r.prefill_tokens)
                 for r in reqs])


WORKLOADS = {
    # name: (deployment, config kwargs, workload arguments)
    "a": ("llama8b-h100", {}, (1, 3000, 20.0, 1024, 128)),
    "lognormal, busy": ("llama8b-h100", {"max_batch": 64}, (2, 1500, 12.0, (800.0, 1.0, 8000), (200.0, 1.0, 2000))),
    "chunked, small budget": ("llama70b-4xh100-fp8", {"token_budget": 512}, (3, 800, 8.0, (1500.0, 0.8, 8000), (100.0, 0.8, 600))),
    "kv bound, preemptions": ("llama8b-h100", {"kv_capacity": 30_000}, (4, 600, 30.0, (2000.0, 0.5, 8000), (400.0, 0.5, 1500))),
    "light load": ("deepseekv3-8xh200-fp8", {}, (5, 400, 0.7, (500.0, 1.0, 8000), (300.0, 1.0, 2000))),
}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_same_bits_without_ready_events(name):
    dep, kw, args = WORKLOADS[name]
    cfg = EngineConfig(**{"kv_capacity": deployment(dep).kv_capacity_tokens, **kw})
    wl = poisson_workload(*args, cached_frac=0.3)
    lazy, rep_l, env_l = run(Replica, coeffs(dep), cfg, wl, check_invariants=True)
    eager, rep_e, env_e = run(EventReady, coeffs(dep), cfg, wl)
    assert rep_l._lazy and not rep_e._lazy
    assert fields(lazy) == fields(eager)
    assert (rep_l.steps, rep_l.tokens_out, rep_l.preemptions) == (rep_e.steps, rep_e.tokens_out, rep_e.preemptions)
    assert rep_l.busy_time == rep_e.busy_time and rep_l.energy_j == rep_e.energy_j
    # one event fewer per request that arrives while the replica runs a stretch
    assert events_scheduled(env_l) < events_scheduled(env_e) - 0.3 * len(wl)


def test_cancels_and_failures_agree():
    """Cancels before, at and after the overhead, and a failure with requests in their overhead
    delay: the same outcomes and timestamps (1e-9; a cancelled request whose arrival already cut
    the stretch can move later boundaries by an ulp)."""
    co = coeffs("llama8b-h100")
    oh = co.request_overhead
    cfg = EngineConfig(kv_capacity=deployment("llama8b-h100").kv_capacity_tokens, max_batch=48)
    wl = poisson_workload(6, 1200, 25.0, (900.0, 0.8, 8000), (150.0, 0.8, 1000))
    rng = np.random.default_rng(6)
    picks = rng.choice(len(wl), 150, replace=False)
    delays = rng.choice([oh / 3, oh, 2 * oh, 0.05, 0.5], len(picks))
    cancels = [(float(wl.arrival[i] + d), int(i)) for i, d in zip(picks, delays)]
    at = [(20.0, lambda rep: rep.fail()), (20.0 + 2.5 * oh, lambda rep: rep.repair())]
    lazy, _, env_l = run(Replica, co, cfg, wl, cancels=cancels, at=at, check_invariants=True)
    eager, _, env_e = run(EventReady, co, cfg, wl, cancels=cancels, at=at)
    assert not mismatches(lazy, eager)
    assert {r.outcome for r in lazy} == {"completed", "cancelled", "replica_failed"}
    assert events_scheduled(env_l) < events_scheduled(env_e)


def test_observers_see_the_queue_as_ready_events_leave_it():
    """``waiting``, ``pending`` and ``outstanding`` read at many instants (as routers and the sampler
    do) are the same with and without ready events."""
    co = coeffs("llama8b-h100")
    cfg = EngineConfig(kv_capacity=deployment("llama8b-h100").kv_capacity_tokens, max_batch=32)
    wl = poisson_workload(7, 800, 30.0, (1500.0, 0.6, 8000), (120.0, 0.6, 800))
    times = np.sort(np.random.default_rng(7).uniform(0.0, float(wl.arrival[-1]), 400)).tolist()
    seen = {}
    for cls in (Replica, EventReady):
        log = seen[cls] = []
        at = [(t, lambda rep, log=log: log.append((rep.pending, [r.rid for r in rep.waiting], rep.outstanding,
                                                   len(rep.waiting)))) for t in times]
        run(cls, co, cfg, wl, at=at)
    assert seen[Replica] == seen[EventReady]
    assert sum(1 for p, *_ in seen[Replica] if p) > 20 and sum(1 for _, w, *_ in seen[Replica] if w) > 20


def _ends(cls, co, cfg, wl):
    """The run's per-request fields and the simulated moment each request's ``on_done`` ran at."""
    envs, ends = [], []

    class Watched(cls):
        def __init__(self, env, *a, **kw):
            envs.append(env)
            super().__init__(env, *a, **kw)

    reqs, _, _ = run(Watched, co, cfg, wl, on_done=lambda r: ends.append((r.rid, envs[0].now)))
    return fields(reqs), ends


@pytest.mark.parametrize("start", [0.0, 5000.0], ids=["t~1s", "t~5000s"])
@pytest.mark.parametrize("offset", [0.0, 0.5, -0.5, 0.9, -0.9])
def test_ready_near_a_boundary_ends_requests_at_the_same_moment(start, offset):
    """A request ready within EPS of a step boundary, mid-stretch or at a stretch end: the same bits,
    and every ``on_done`` at the same simulated moment as with its ready event. (The ready event
    applies that boundary when it fires, a few µs from the boundary; ending requests at the boundary
    instead moved the clients' next arrivals and the full-size agents run diverged.)"""
    base, co, cfg, boundaries = busy_boundaries("llama8b-h100", None, start)
    oh = co.request_overhead
    tried = 0
    for b in boundaries:
        a = arrival_for_ready(b + offset * EPS * max(1.0, b), oh)
        k = int(np.searchsorted(base.arrival, a, side="right"))
        wl = Workload(np.insert(base.arrival, k, a), np.insert(base.prompt, k, 100), np.insert(base.output, k, 5))
        lazy, eager = _ends(Replica, co, cfg, wl), _ends(EventReady, co, cfg, wl)
        assert lazy == eager, b
        tried += 1
    assert tried >= 4


def test_priority_admission_keeps_ready_events():
    cfg = EngineConfig(kv_capacity=100_000, admission="priority")
    _, rep, _ = run(Replica, coeffs("llama8b-h100"), cfg, poisson_workload(8, 20, 5.0, 100, 10))
    assert not rep._lazy
