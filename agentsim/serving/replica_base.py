"""What both replica engines share: the arrival path and the interface a cluster and a client use.

The event-skipping :class:`~agentsim.serving.engine.Replica` and the step-by-step
:class:`~agentsim.serving.engine_reference.SteppingReplica` differ in how they run steps, not in how
a request arrives, waits out its per-request overhead or is refused: that part is written once here.
"""
from __future__ import annotations

import math

from simpy.events import Event

from ..util.events import _push
from .request import Request
from .scheduling import ADMISSION_POLICIES


class ReplicaBase:
    """Subclasses provide ``env``, ``c`` (StepCoeffs), ``cfg``, ``index``, ``up``, ``pending``,
    ``waiting``, ``cache``, ``on_done``, ``spec`` (a Speculation or None), ``_timer``, ``_to_cancel``, ``_enqueue(req)``,
    ``accounted(now)`` and three hooks: ``_drop_running()`` (clear the running set, return it),
    ``_cut_for_cancel()`` (a running request is to leave at the next boundary) and
    ``_new_head()`` (the queue's head changed while a stretch runs)."""

    @property
    def queued(self) -> int:
        """Requests here not yet running: in the queue or in their per-request overhead delay (what
        a load-aware router counts ahead of a newcomer)."""
        return len(self.waiting) + self.pending

    def route_view(self, key, now: float) -> tuple[int, int, int]:
        """(running, queued, unexpired GPU tokens held for prefix ``key``): what speed-aware routing
        reads of every candidate, in one call (three per candidate were a tenth of its time)."""
        cache = self.cache
        hit = cache.gpu_hit(key, now) if key is not None and cache is not None else 0
        return self.n_running, self.queued, hit

    def submit(self, req: Request) -> None:
        """A request arrives; it becomes schedulable after the per-request overhead."""
        req.replica = self.index
        if self.spec is not None:
            req.tps = self.spec.tokens_per_step()   # drawn on arrival: fixed for its whole decode
        if not self.up:
            return self._end(req, "replica_failed")
        if req.prompt + req.output > self.cfg.kv_capacity:
            return self._end(req, "request_too_large")
        if self.c.request_overhead > 0:
            self.pending += 1
            _push(self.env, self._on_ready, req, self.c.request_overhead)
        else:
            self._enqueue(req)

    def _on_ready(self, ev: Event) -> None:
        req = ev.value
        if req.removed:
            return          # cancelled during its overhead delay (cancel() already uncounted it)
        self.pending -= 1
        if self.up:
            self._enqueue(req)
        else:
            self._end(req, "replica_failed")

    def repair(self) -> None:
        self.up = True

    def fail(self) -> None:
        """The replica goes down: everything queued or running fails back to its client."""
        self.up = False
        self._close_stretch_accounting()
        victims = self._drop_running() + list(self.waiting)
        self.waiting = ADMISSION_POLICIES[self.cfg.admission]()
        self._timer = None
        if self.cache is not None:
            self.cache.clear()   # GPU and host memory of a failed replica are lost
        for r in victims:
            r.running = False
            self._end(r, "replica_failed")

    def cancel(self, req: Request, outcome: str = "cancelled") -> None:
        """The client gives up on ``req`` (timeout, abandonment).

        A queued request leaves at once; a running one leaves at the end of the step in progress
        (its KV is freed and nothing of it is cached).
        """
        if req.finish == req.finish or req.removed:   # already ended
            return
        if req.running:
            self._to_cancel.append((req, outcome))
            self._cut_for_cancel()
            return
        req.removed = True
        was_head = bool(self.waiting) and self.waiting[0] is req
        if req in self.waiting:
            self.waiting.remove(req)
        else:                         # still in its request-overhead delay
            self.pending -= 1
        self._end(req, outcome)
        if was_head and self.waiting and self._timer is not None:
            self._new_head()          # the next in line may fit now

    def _end(self, req: Request, outcome: str) -> None:
        req.outcome = outcome
        if math.isnan(req.finish):
            req.finish = self.env.now
        if self.on_done is not None:
            self.on_done(req)

    def _close_stretch_accounting(self) -> None:
        """Fold the stretch in progress into the busy-time and energy counters (it stops here)."""
        if self._timer is not None:
            self.busy_time, self.energy_j = self.accounted(self.env.now)
