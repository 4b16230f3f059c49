"""What both replica engines share: the arrival path and the interface a cluster and a client use.

The event-skipping :class:`~agentsim.serving.engine.Replica` and the step-by-step
:class:`~agentsim.serving.engine_reference.SteppingReplica` differ in how they run steps, not in how
a request arrives, waits out its per-request overhead or is refused: that part is written once here.
"""
from __future__ import annotations

from simpy.events import Event

from ..util.events import _push
from .request import Request


class ReplicaBase:
    """Subclasses provide ``env``, ``c`` (StepCoeffs), ``cfg``, ``index``, ``up``, ``pending``,
    ``_enqueue(req)`` and ``_end(req, outcome)``."""

    def submit(self, req: Request) -> None:
        """A request arrives; it becomes schedulable after the per-request overhead."""
        req.replica = self.index
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
