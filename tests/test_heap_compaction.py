"""Stale engine timers dropped from SimPy's queue (``agentsim.util.events.compact``).

With hundreds of replicas a cut cannot move its timer (the queue is too long to search), so the
re-armed stretch leaves its old entry behind; compaction drops such entries once the queue has
doubled. It must change nothing but the queue's length: the same bits for every request, the same
event count, and a queue that stays near one entry per replica instead of growing with the stale
ones.
"""
from __future__ import annotations

from heapq import heappop

import numpy as np
import simpy
from engine_harness import ArrivalChain, coeffs, deployment, events_scheduled, poisson_workload

from agentsim.serving.checked import CheckedReplica
from agentsim.serving.engine import EngineConfig, Replica
from agentsim.util import events

REPLICAS = 400


def _fleet(cls, n: int = 8_000):
    """``REPLICAS`` replicas at 20 req/s each (1024 -> 128), uniform random routing drawn up front;
    returns the requests, the event count and the longest queue seen at each second."""
    env = simpy.Environment()
    cfg = EngineConfig(kv_capacity=deployment("llama8b-h100").kv_capacity_tokens, max_batch=256, token_budget=8192)
    reps = [cls(env, coeffs("llama8b-h100"), cfg, index=i) for i in range(REPLICAS)]
    wl = poisson_workload(7, n, 20.0 * REPLICAS, 1024, 128)
    route = np.random.default_rng(3).integers(0, REPLICAS, n).tolist()
    reqs = wl.requests()
    ArrivalChain(env, reqs, lambda req: reps[route[req.rid]].submit(req))
    lengths = []

    def watch():
        while env._queue:                 # anything left but this watcher
            lengths.append(len(env._queue))
            yield env.timeout(0.05)
    env.process(watch())
    env.run()
    rows = [(r.outcome, r.ready, r.admitted, r.first_token, r.finish, r.preemptions) for r in reqs]
    return rows, events_scheduled(env), max(lengths)


def test_compaction_changes_nothing_but_the_queue_length(monkeypatch):
    on, events_on, peak_on = _fleet(CheckedReplica)
    monkeypatch.setattr(events, "COMPACT_MIN_QUEUE", 10**12)     # never compact
    off, events_off, peak_off = _fleet(Replica)
    assert on == off
    assert events_on == events_off
    assert peak_off > 3 * REPLICAS            # stale timers pile up without compaction ...
    assert peak_on <= 2.5 * REPLICAS          # ... and stay near one entry per replica with it


def test_compact_keeps_live_entries_and_heap_order():
    """Entries of other events (and live timers) stay, in the same pop order."""
    env = simpy.Environment()

    class Owner:
        def __init__(self):
            self._timer = None

        def _on_timer(self, ev):
            pass

    owners = [Owner() for _ in range(50)]
    for i, o in enumerate(owners):
        for k in range(3):                    # the last push is the live one
            o._timer = events._push(env, o._on_timer, None, (i * 7 + k * 13) % 17)[3]
    others = [env.timeout(d) for d in (3.0, 1.0, 2.0)]
    live = {id(o._timer) for o in owners} | {id(e) for e in others}
    expect = sorted(e for e in env._queue if id(e[3]) in live)
    assert events.compact(env._queue) == 100
    got = [heappop(env._queue) for _ in range(len(env._queue))]
    assert got == expect
