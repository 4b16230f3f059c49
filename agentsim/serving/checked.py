"""The event-skipping replica with its conservation checked after every event (tests, ``--check-invariants``).

A subclass, so the replica's hot path carries no flag: the checks cost nothing unless asked for.
"""
from __future__ import annotations

from simpy.events import Event

from .request import Request
from .engine import Replica


class CheckedReplica(Replica):
    """A :class:`Replica` that asserts its bookkeeping after each arrival, cancel and step boundary."""

    def cancel(self, req: Request, outcome: str = "cancelled") -> None:
        settled = not (req.finish == req.finish or req.removed or req.running)   # left the queue at once
        super().cancel(req, outcome)
        if settled:
            self.check()

    def _enqueue(self, req: Request) -> None:
        super()._enqueue(req)
        if not self._applying:      # mid-boundary the books are being updated: checked once it is applied
            self.check()

    def _on_timer(self, ev: Event) -> None:
        stale = ev is not self._timer
        super()._on_timer(ev)
        if not stale:
            self.check()

    def _on_wake(self, ev: Event) -> None:
        stale = ev is not self._wake
        super()._on_wake(ev)
        if not stale:
            self.check()

    def check(self) -> None:
        """Conservation after every event (used by the tests): each request in exactly one place."""
        waiting = list(self.waiting)
        ids = [r.rid for r in waiting] + list(self.live)
        assert len(ids) == len(set(ids)), "a request is in two places"
        decoders = [r for r in self.live.values() if r.pf_done >= r.prompt_len]
        prefill = [r for r in self.live.values() if r.pf_done < r.prompt_len]
        assert len(decoders) == self.n_dec, (len(decoders), self.n_dec)
        assert prefill == list(self.prefilling), "prefill queue out of sync"
        assert sum(r.b for r in decoders) == self.sum_b
        kv = sum(r.b + self.V - 1 for r in decoders) + sum(r.prompt_len for r in prefill)
        assert kv == self.kv_used, (kv, self.kv_used)
        cached = self.cache.gpu_used if self.cache is not None else 0
        assert self.kv_used + cached <= self.cap, (self.kv_used, cached, self.cap)
        if self.cache is not None:
            assert cached == sum(t for t, _ in self.cache.gpu.values())
            assert self.cache.host_used == sum(self.cache.host.values()) <= self.cache.cfg.host_tokens
        assert len(self.live) <= self.max_batch
        assert self.outstanding == len(waiting) + len(self.live) + len(self._pend) + self._npending, \
            (self.outstanding, len(waiting), len(self.live), len(self._pend), self._npending)
        assert all(not r.running for r in waiting)
        assert all(not r.running and not r.removed for _, r in self._pend)
        if self._pend and self._timer is None:
            assert self._wake is not None, "a request waits out its overhead on an idle replica that will not wake"
        if self.waiting and self._timer is None:
            raise AssertionError("work waits while the replica idles")
