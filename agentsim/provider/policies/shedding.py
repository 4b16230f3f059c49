"""``overload_shedding``: ``529_overload`` when the serving fleet is past a load bound.

Load is measured over the replicas that could serve the request: outstanding requests per up
replica, and the estimated queueing delay at the least-loaded replica (its queued prompt tokens
at its prefill rate). Each priority class is shed at a share of the bound (``class_headroom``),
so lower-priority tiers are turned away first.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from .base import Policy


class OverloadShedding(Policy):
    name = "overload_shedding"

    class Params(Policy.Params):
        max_outstanding_per_replica: float = Field(0.0, ge=0, description="bound on queued + running per up "
                                                                           "replica (0 = not used)")
        max_queue_delay_s: float = Field(0.0, ge=0, description="bound on the estimated queueing delay "
                                                                "(0 = not used)")
        class_headroom: list[float] = Field(default_factory=lambda: [1.0, 0.9, 0.8, 0.7],
                                            description="share of the bound at which priority class k is shed")

        @model_validator(mode="after")
        def _check(self):
            if not self.class_headroom or any(not 0 < h <= 1 for h in self.class_headroom):
                raise ValueError(f"class_headroom needs values in (0, 1], got {self.class_headroom}")
            if self.max_outstanding_per_replica == 0 and self.max_queue_delay_s == 0:
                raise ValueError("give max_outstanding_per_replica or max_queue_delay_s (both are 0)")
            return self

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.shed = 0

    def admit(self, req, now):
        p = self.p
        load = self.view.fleet.load(req.model)
        if load is None:
            return None
        share = p.class_headroom[min(max(req.priority, 0), len(p.class_headroom) - 1)]
        if p.max_outstanding_per_replica:
            if load.outstanding_per_replica >= p.max_outstanding_per_replica * share:
                self.shed += 1
                return "529_overload", float("nan")
        if p.max_queue_delay_s:
            if load.queue_delay_s() >= p.max_queue_delay_s * share:
                self.shed += 1
                return "529_overload", float("nan")
        return None
