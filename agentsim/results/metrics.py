"""Flat records out of the engine: one row per request, and sampled time series.

Rows are kept in typed arrays (8 bytes a cell, no Python object per value), so a million
requests cost well under 200 MB. Analysis happens outside, on the DataFrames a Result builds.
"""
from __future__ import annotations

from array import array
from operator import attrgetter

import numpy as np

from ..serving.cluster import Cluster, replica_energy_j
from ..serving.request import OUTCOMES, Request

OUTCOME_CODE = {o: i for i, o in enumerate(OUTCOMES)}
COMPLETED, IN_FLIGHT = OUTCOME_CODE["completed"], OUTCOME_CODE["in_flight"]

INT_COLUMNS = ("request_id", "call_id", "attempt", "trigger", "stream", "population", "session", "user", "tenant", "pool",
               "replica", "priority", "input_tokens",
               "output_tokens", "cached_gpu_tokens", "cached_host_tokens", "prefill_tokens", "preemptions",
               "outcome")
FLOAT_COLUMNS = ("arrival_s", "ready_s", "admitted_s", "first_token_s", "finish_s", "retry_after_s")


class Recorder:
    """Appends one row per finished request (and, at the end, one per request still in flight).

    A row is first its values, appended to a flat buffer of at most :data:`FLUSH_ROWS` rows: one
    list extend a request instead of one append per column. A full buffer is moved into typed
    chunks a column at a time (a strided slice each); the pool column, the outcome codes and the
    per-pool counts of ends are made there, from the replica and outcome columns. The chunks are
    joined into one typed array per column when the arrays are read (``ints``, ``floats``,
    :meth:`columns`); ``pool_counts`` flushes first.
    """

    FLUSH_ROWS = 4096

    def __init__(self, pool_of_replica: list[int], n_pools: int) -> None:
        self._ints = {c: array("q") for c in INT_COLUMNS}
        self._floats = {c: array("d") for c in FLOAT_COLUMNS}
        self.pool_of_replica = pool_of_replica
        self.count = 0
        #: per pool: [requests routed to it, completed there, ended otherwise] (the sampler's deltas)
        self._counts: list[list[int]] = [[0, 0, 0] for _ in range(n_pools)]   # ends counted at the flush
        # the buffered row: the Request attribute of each column, in this order (pool is derived)
        fields = {"request_id": "rid", "call_id": "call", "attempt": "attempt", "trigger": "trigger",
                  "stream": "stream", "population": "population", "session": "session", "user": "user",
                  "tenant": "tenant", "replica": "replica", "priority": "priority", "input_tokens": "prompt",
                  "output_tokens": "output", "cached_gpu_tokens": "cached_gpu", "cached_host_tokens": "cached_host",
                  "prefill_tokens": "prefill_tokens", "preemptions": "preemptions", "outcome": "outcome",
                  "arrival_s": "arrival", "ready_s": "ready", "admitted_s": "admitted", "first_token_s": "first_token",
                  "finish_s": "finish", "retry_after_s": "retry_after"}
        assert set(fields) | {"pool"} == set(INT_COLUMNS) | set(FLOAT_COLUMNS)
        self._cols = tuple(fields)
        self._row = attrgetter(*fields.values())   # what record() reads, inlined there (tests compare the two)
        self._flush_at = self.FLUSH_ROWS * len(fields)
        self._chunks: dict[str, list[array]] = {c: [] for c in (*INT_COLUMNS, *FLOAT_COLUMNS)}   # flushed rows
        self._rows: list = []                 # the buffered rows' values, one row after the other
        self._buffer = self._rows.extend

    def routed(self, req: Request) -> None:
        """``req`` reached a replica (counted for its pool's arrivals)."""
        self._counts[self.pool_of_replica[req.replica]][0] += 1

    @property
    def pool_counts(self) -> list[list[int]]:
        """Per pool: [requests routed to it, completed there, ended otherwise] (the sampler's deltas)."""
        self.flush()
        return self._counts

    def record(self, req: Request) -> None:
        # the attributes in the order of ``fields`` in __init__ (plain attribute loads: faster than attrgetter)
        self._buffer((req.rid, req.call, req.attempt, req.trigger, req.stream, req.population, req.session, req.user,
                      req.tenant, req.replica, req.priority, req.prompt, req.output, req.cached_gpu, req.cached_host,
                      req.prefill_tokens, req.preemptions, req.outcome, req.arrival, req.ready, req.admitted,
                      req.first_token, req.finish, req.retry_after))
        self.count += 1
        if len(self._rows) >= self._flush_at:
            self.flush()

    #: a request that ended: its row (its pool's count of ends is taken from the rows at the flush:
    #: every row not ``in_flight`` that reached a replica), one call fewer than a wrapper around record
    ended = record

    def flush(self) -> None:
        """Move the buffered rows into per-column chunks (typed arrays of one flush each)."""
        rows = self._rows
        if not rows:
            return
        chunks = self._chunks
        k = len(self._cols)
        for j, name in enumerate(self._cols):
            values = rows[j::k]       # a strided slice is this column (zip(*rows) of tuples is ~10x slower)
            if name == "outcome":
                codes = array("q", map(OUTCOME_CODE.__getitem__, values))
                chunks[name].append(codes)
            elif name in self._ints:
                chunks[name].append(array("q", values))
                if name == "replica":     # the replica's pool, -1 where it reached none
                    r = np.asarray(values, dtype=np.int64)
                    pools = np.asarray(self.pool_of_replica, dtype=np.int64)[np.maximum(r, 0)] if len(self.pool_of_replica) else r
                    pool = np.where(r >= 0, pools, -1).astype(np.int64)
                    chunks["pool"].append(array("q", pool.tobytes()))
            else:
                chunks[name].append(array("d", values))
        rows.clear()
        oc = np.frombuffer(codes, dtype=np.int64)
        ended = (pool >= 0) & (oc != IN_FLIGHT)
        n = len(self._counts)
        done = np.bincount(pool[ended & (oc == COMPLETED)], minlength=n).tolist()
        other = np.bincount(pool[ended & (oc != COMPLETED)], minlength=n).tolist()
        for c, d, o in zip(self._counts, done, other):
            c[1] += d
            c[2] += o

    def _gather(self) -> None:
        """Flush, then join each column's chunks onto its array in one resize (an array grown
        by appends is reallocated, and copied, every ~6 % of growth: ~17 copies of the column)."""
        self.flush()
        for name, parts in self._chunks.items():
            if parts:
                a = self._ints.get(name)
                if a is None:
                    a = self._floats[name]
                a.frombytes(b"".join(parts))
                parts.clear()

    @property
    def ints(self) -> dict[str, array]:
        self._gather()
        return self._ints

    @property
    def floats(self) -> dict[str, array]:
        self._gather()
        return self._floats

    def columns(self) -> dict[str, np.ndarray]:
        self._gather()
        out = {c: np.frombuffer(a, dtype=np.int64) if len(a) else np.empty(0, np.int64) for c, a in self._ints.items()}
        out.update({c: np.frombuffer(a, dtype=np.float64) if len(a) else np.empty(0) for c, a in self._floats.items()})
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
