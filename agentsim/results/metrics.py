"""Flat records out of the engine: one row per request, and sampled time series.

Rows are kept in typed arrays (8 bytes a cell, no Python object per value), so a million
requests cost well under 200 MB. Analysis happens outside, on the DataFrames a Result builds.
"""
from __future__ import annotations

from array import array

import numpy as np

from ..serving.cluster import Cluster, replica_energy_j
from ..serving.request import OUTCOMES, Request

OUTCOME_CODE = {o: i for i, o in enumerate(OUTCOMES)}

INT_COLUMNS = ("request_id", "call_id", "attempt", "trigger", "stream", "population", "session", "user", "tenant", "pool",
               "replica", "priority", "input_tokens",
               "output_tokens", "cached_gpu_tokens", "cached_host_tokens", "prefill_tokens", "preemptions",
               "outcome")
FLOAT_COLUMNS = ("arrival_s", "ready_s", "admitted_s", "first_token_s", "finish_s", "retry_after_s")


class Recorder:
    """Appends one row per finished request (and, at the end, one per request still in flight)."""

    def __init__(self, pool_of_replica: list[int], n_pools: int) -> None:
        self.ints = {c: array("q") for c in INT_COLUMNS}
        self.floats = {c: array("d") for c in FLOAT_COLUMNS}
        self.pool_of_replica = pool_of_replica
        self.count = 0
        #: per pool: [requests routed to it, completed there, ended otherwise] (the sampler's deltas)
        self.pool_counts: list[list[int]] = [[0, 0, 0] for _ in range(n_pools)]
        # each column's append, in the order record() fills them (one bound method each, looked up once)
        order = ("request_id", "call_id", "attempt", "trigger", "population", "stream", "session", "user", "tenant",
                 "pool", "replica", "priority", "input_tokens", "output_tokens", "cached_gpu_tokens",
                 "cached_host_tokens", "prefill_tokens", "preemptions", "outcome")
        assert set(order) == set(INT_COLUMNS)
        self._append = tuple(self.ints[c].append for c in order) + tuple(self.floats[c].append for c in FLOAT_COLUMNS)

    def routed(self, req: Request) -> None:
        """``req`` reached a replica (counted for its pool's arrivals)."""
        self.pool_counts[self.pool_of_replica[req.replica]][0] += 1

    def ended(self, req: Request) -> None:
        """Count ``req``'s end for its pool (if it reached one), then keep its row."""
        if req.replica >= 0:
            self.pool_counts[self.pool_of_replica[req.replica]][1 if req.outcome == "completed" else 2] += 1
        self.record(req)

    def record(self, req: Request) -> None:
        (rid, call, attempt, trigger, population, stream, session, user, tenant, pool, replica, priority, inp, out,
         gpu, host, prefill, preempt, outcome, arrival, ready, admitted, first, finish, retry) = self._append
        rid(req.rid)
        call(req.call)
        attempt(req.attempt)
        trigger(req.trigger)
        population(req.population)
        stream(req.stream)
        session(req.session)
        user(req.user)
        tenant(req.tenant)
        r = req.replica
        pool(self.pool_of_replica[r] if r >= 0 else -1)
        replica(r)
        priority(req.priority)
        inp(req.prompt)
        out(req.output)
        gpu(req.cached_gpu)
        host(req.cached_host)
        prefill(req.prefill_tokens)
        preempt(req.preemptions)
        outcome(OUTCOME_CODE[req.outcome])
        arrival(req.arrival)
        ready(req.ready)
        admitted(req.admitted)
        first(req.first_token)
        finish(req.finish)
        retry(req.retry_after)
        self.count += 1

    def columns(self) -> dict[str, np.ndarray]:
        out = {c: np.frombuffer(a, dtype=np.int64) if len(a) else np.empty(0, np.int64) for c, a in self.ints.items()}
        out.update({c: np.frombuffer(a, dtype=np.float64) if len(a) else np.empty(0) for c, a in self.floats.items()})
        return out


class Sampler:
    """Every ``interval`` seconds, per pool: queue, running, KV use, utilisation, power, up replicas."""

    COLUMNS = ("time_s", "pool", "arrivals", "completed", "failed", "queued", "running", "kv_used_frac",
               "busy_frac", "power_w", "facility_power_w", "replicas_up")

    def __init__(self, env, cluster: Cluster, interval: float, recorder: Recorder, quiescent) -> None:
        """``quiescent()`` says when nothing is left to happen (the sampler then stops)."""
        self.env, self.cluster, self.interval = env, cluster, interval
        self.recorder, self.quiescent = recorder, quiescent
        self.rows: list[tuple] = []
        n = len(cluster.replicas)
        self._busy = [0.0] * n
        self._energy = [0.0] * n
        self._counts = [(0, 0, 0)] * len(cluster.pools)
        self._t = 0.0

    def start(self) -> None:
        self.env.process(self._run())

    def _run(self):
        while True:
            yield self.env.timeout(self.interval)
            self.sample()
            if self.quiescent():
                return  # nothing left to happen: let the run end early

    def sample(self) -> None:
        now = self.env.now
        dt = now - self._t
        if dt <= 0:
            return
        cl = self.cluster
        rid = 0
        for p in cl.pools:
            q = run = kv = up = 0
            busy = energy = 0.0
            for r in p.replicas:
                b = r.accounted(now)[0]
                e = replica_energy_j(r, p, cl.replica_downtime(rid), now)
                busy += b - self._busy[rid]
                energy += e - self._energy[rid]
                self._busy[rid], self._energy[rid] = b, e
                q += len(r.waiting)
                run += r.n_running
                kv += r.kv_used
                up += r.up
                rid += 1
            arrivals, completed, failed = self.recorder.pool_counts[p.index]
            a0, c0, f0 = self._counts[p.index]
            self._counts[p.index] = (arrivals, completed, failed)
            n = len(p.replicas)
            power = energy / dt
            self.rows.append((now, p.index, arrivals - a0, completed - c0, failed - f0, q, run,
                              kv / (p.config.kv_capacity * n), min(1.0, busy / (dt * n)), power,
                              power * p.facility_factor(), up))
        self._t = now

    def columns(self) -> dict[str, np.ndarray]:
        if not self.rows:
            return {c: np.empty(0) for c in self.COLUMNS}
        arr = list(zip(*self.rows))
        return {c: np.asarray(v) for c, v in zip(self.COLUMNS, arr)}
