"""A Simulation: the environment, the RNG streams, the cluster, the streams and the records.

Built only by :func:`agentsim.run.build.build`; :meth:`Simulation.run` returns a :class:`Result`.
"""
from __future__ import annotations

import gc
import heapq
import math
import time
import zlib
from collections import deque
from contextlib import contextmanager

import numpy as np
import simpy

from ..serving.cluster import Cluster
from ..results.metrics import Recorder, Sampler
from ..model.opmodel import data_info
from ..results.result import Result, RunRecords
from ..serving.request import Request
from ..util.events import events_scheduled


class RngStreams:
    """One ``numpy.random.Generator`` per named stream, all spawned from one seed.

    A stream's generator depends only on the seed and its name, so adding a stream (or drawing
    more from one) never changes another.
    """

    def __init__(self, seed: int, salt: int = 0) -> None:
        self.seed = seed
        self.salt = salt        # e.g. the slice index: slices run with one seed draw different streams
        self._made: dict[str, np.random.Generator] = {}

    def __call__(self, name: str) -> np.random.Generator:
        g = self._made.get(name)
        if g is None:
            key = (zlib.crc32(name.encode()),) + ((self.salt,) if self.salt else ())
            ss = np.random.SeedSequence(entropy=self.seed, spawn_key=key)
            g = self._made[name] = np.random.Generator(np.random.PCG64(ss))
        return g


#: the cyclic GC's young-generation threshold while the event loop runs (CPython's default: 700)
GC_THRESHOLD = 100_000


@contextmanager
def _fewer_collections():
    """Raise the GC's young-generation threshold while the event loop runs.

    The loop allocates and frees millions of short-lived objects (events, requests, tuples), all
    freed by reference counting; at the default threshold the collector still walks the live
    young objects every 700 allocations (about 5 % of a run) and finds next to no garbage.
    """
    old = gc.get_threshold()
    if 0 < old[0] < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class Deadlines:
    """Request deadlines ``(deadline, rid, req)``, taken in that order.

    A client's deadline is now + its fixed timeout, so deadlines nearly always arrive in order:
    those queue in a FIFO (O(1) each way, where a heap costs a dozen comparisons a pop); one out of
    order goes to a heap, and the head is the smaller of the two heads.
    """

    __slots__ = ("fifo", "heap")

    def __init__(self) -> None:
        self.fifo: deque = deque()
        self.heap: list = []

    def push(self, entry: tuple) -> None:
        fifo = self.fifo
        if not fifo or entry > fifo[-1]:
            fifo.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def head(self) -> tuple | None:
        fifo, heap = self.fifo, self.heap
        if heap and (not fifo or heap[0] < fifo[0]):
            return heap[0]
        return fifo[0] if fifo else None

    def pop(self) -> tuple:
        fifo, heap = self.fifo, self.heap
        if heap and (not fifo or heap[0] < fifo[0]):
            return heapq.heappop(heap)
        return fifo.popleft()


class Simulation:
    """Everything of one run, wired by ``build``; components never look up globals."""

    def __init__(self, scenario, seed: int, env: simpy.Environment, rng: RngStreams) -> None:
        self.scenario = scenario
        self.seed = seed
        self.env = env
        self.rng = rng
        self.cluster: Cluster | None = None
        self.gateway = None            # agentsim.provider.gateway.Gateway when the scenario has policies
        self.recorder: Recorder | None = None
        self.sampler: Sampler | None = None
        self.sources: list = []
        self.open: dict[int, Request] = {}
        self.stream_names: list[str] = []
        self.populations: list = []
        self.session_recorder = None
        self.scalers: list = []        # agentsim.serving.autoscale.PoolScaler of each autoscaled pool
        self.wall_s = 0.0
        self._rid = 0
        self._sid = 0
        self._cid = 0
        self._deadlines = Deadlines()
        self._sweeping = False

    def new_request(self, prompt: int, output: int, **kw) -> Request:
        rid = self._rid
        self._rid = rid + 1
        return Request(rid, self.env.now, prompt, output, **kw)

    #: request timeouts fire on this grid (s): a timeout is at most this late, and one wake-up serves
    #: every deadline that falls in the same slot
    TIMEOUT_GRANULARITY_S = 1.0

    def add_deadline(self, req: Request, deadline: float) -> None:
        """Time ``req`` out (``timed_out``) if it is still open at ``deadline``."""
        self._deadlines.push((deadline, req.rid, req))
        if not self._sweeping:
            self._sweeping = True
            self.env.process(self._sweep())

    def _sweep(self):
        """One process for all timeouts: sleep until the earliest deadline of a request still open."""
        deadlines, grid, open_ = self._deadlines, self.TIMEOUT_GRANULARITY_S, self.open
        while True:
            head = deadlines.head()
            while head is not None and head[1] not in open_:     # ended before its deadline: forget it
                deadlines.pop()
                head = deadlines.head()
            if head is None:
                break
            wake = math.ceil(head[0] / grid) * grid
            yield self.env.timeout(max(0.0, wake - self.env.now))
            now = self.env.now
            head = deadlines.head()
            while head is not None and head[0] <= now:
                deadlines.pop()
                if head[1] in open_:
                    self.cancel(head[2], "timed_out")
                head = deadlines.head()
        self._sweeping = False

    def new_session_id(self) -> int:
        self._sid += 1
        return self._sid - 1

    def new_call_id(self) -> int:
        self._cid += 1
        return self._cid - 1

    def cancel(self, req: Request, outcome: str) -> None:
        """The client gives up on a request that is still open (timeout, abandonment)."""
        if req.rid in self.open and req.replica >= 0:
            self.cluster.cancel(req, outcome)

    def submit(self, req: Request, model: str | None = None) -> None:
        """A request enters the provider: gateway policies, then the router."""
        self.open[req.rid] = req
        req.model = model
        if self.gateway is not None and not self.gateway.submit(req):
            return
        self.cluster.route(req, model)
        if req.replica >= 0:
            self.recorder.routed(req)

    def end(self, req: Request, outcome: str) -> None:
        """End a request that never reached a replica (a gateway rejection, a local throttle)."""
        req.outcome = outcome
        req.finish = self.env.now
        self._finish(req)

    def end_unsent(self, req: Request, outcome: str) -> None:
        """End a request its client never sent (a local throttle): recorded like any other."""
        self.open[req.rid] = req
        self.end(req, outcome)

    def done(self, req: Request) -> None:
        """A request that passed the gateway ends (from a replica or the router)."""
        if self.gateway is not None:
            self.gateway.on_done(req)
        self._finish(req)

    def _finish(self, req: Request) -> None:
        """Every request ends here exactly once, whatever its outcome."""
        del self.open[req.rid]
        self.recorder.ended(req)
        if req.on_done is not None:
            req.on_done(req)

    def quiescent(self) -> bool:
        """All streams are done and no request is open."""
        return not self.open and all(s.finished for s in self.sources) and not self.populations

    def run(self, progress=None) -> "Result":
        """Run to ``duration_s``; ``progress(sim_time)`` is called about 100 times if given."""

        for s in self.sources:
            s.start()
        for p in self.populations:
            p.start()
        if self.sampler is not None:
            self.sampler.start()
        duration = self.scenario.duration_s
        t0 = time.perf_counter()
        with _fewer_collections():
            if progress is None:
                self.env.run(until=duration)
            else:
                step = duration / 100
                for i in range(1, 101):
                    self.env.run(until=min(duration, i * step))
                    progress(self.env.now)
        self.wall_s = time.perf_counter() - t0
        if self.sampler is not None and self.sampler._t < duration:
            self.sampler.sample()
        for req in sorted(self.open.values(), key=lambda r: r.rid):
            req.outcome = "in_flight"
            self.recorder.record(req)
        self.open.clear()
        for p in self.populations:
            p.finish(self.env.now)
        return Result.from_records(self.records())

    def records(self) -> RunRecords:
        """The finished run's records for :meth:`Result.from_records`."""
        return RunRecords(
            recorder=self.recorder, samples=self.sampler.columns() if self.sampler is not None else {},
            sessions=self.session_recorder.columns() if self.session_recorder is not None else {},
            pool_report=self.cluster.report(self.env.now), pool_sites={p.name: p.site for p in self.cluster.pools},
            profiles={p.name: p.cfg.profile for p in self.populations}, streams=list(self.stream_names),
            warmup_s=self.scenario.warmup_s, meta=self.run_meta(),
            handoff=self.cluster.handoff.records if self.cluster.handoff is not None else None)

    def run_meta(self) -> dict:
        """The run's metadata: scenario, seed, timings, SLOs, sites, step model and each population's counters."""
        sc = self.scenario
        meta = {"scenario": sc.model_dump(mode="json"), "seed": self.seed, "duration_s": sc.duration_s,
                "warmup_s": sc.warmup_s, "sim_wall_s": self.wall_s, "events": self.events,
                "slo_ttft_s": sc.slo_ttft_s, "slo_tpot_s": sc.slo_tpot_s,
                "sites": {k: v.model_dump() for k, v in sc.sites.items()}, "step_model": data_info()}
        meta["populations"] = {p.name: {"profile": p.cfg.profile, "retry_policy": p.policy.name,
                                        "sessions_started": p.sessions_started, "calls": p.stats.calls,
                                        "attempts": p.stats.attempts, "retries": p.stats.retries,
                                        "gave_up": p.stats.gave_up, "abandoned": p.stats.abandoned,
                                        "local_rejects": p.stats.local_rejects,
                                        "workers": [list(x) for x in p.worker_series]} for p in self.populations}
        if self.scalers:              # each autoscaled pool's (time, action, replica) log
            meta["autoscale"] = {s.pool: [list(e) for e in s.log] for s in self.scalers}
        return meta

    @property
    def events(self) -> int:
        """SimPy events scheduled so far (the deterministic cost measure)."""
        return events_scheduled(self.env)
