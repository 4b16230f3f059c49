"""``peak_throttle``: peak hours in which usage weighs more and/or limits shrink.

It rejects nothing itself; ``usage_windows`` and ``rate_limits`` ask it, at each request, for the
usage weight (a plan's ``peak_weight`` unless overridden) and the limit scale. The default
schedule is Anthropic's announced one: weekdays 05:00–11:00 Pacific (12:00–18:00 UTC in summer).
``enabled = false`` keeps it in the chain but switched off, so runs compare like for like.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from ..clock import Schedule, zone
from .base import Policy


class PeakThrottle(Policy):
    name = "peak_throttle"

    class Params(Policy.Params):
        enabled: bool = Field(True, description="switch the throttle on or off")
        days: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], description="weekdays (0 = Monday)")
        start_hour: float = Field(5.0, ge=0, lt=24, description="local start hour")
        end_hour: float = Field(11.0, gt=0, le=24, description="local end hour (exclusive)")
        timezone: str = Field("America/Los_Angeles", description="IANA time zone of the hours")
        usage_weight: float | None = Field(None, ge=1, description="usage multiplier in peak hours for every "
                                                                   "plan (default: each plan's peak_weight)")
        limit_scale: float = Field(1.0, gt=0, le=1, description="API limit refill scale in peak hours")

        @model_validator(mode="after")
        def _check(self):
            if self.end_hour <= self.start_hour:
                raise ValueError(f"end_hour ({self.end_hour}) must be after start_hour ({self.start_hour})")
            for h in (self.start_hour, self.end_hour):
                if abs(h * 60 - round(h * 60)) > 1e-9:
                    raise ValueError(f"hours must be whole minutes (e.g. 5.25 = 05:15), got {h}")
            bad = [d for d in self.days if not 0 <= d <= 6]
            if bad:
                raise ValueError(f"days must be 0 (Monday) .. 6 (Sunday), got {bad}")
            zone(self.timezone, where="timezone")
            return self

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.schedule = Schedule(view.start, params.days, params.start_hour, params.end_hour,
                                 params.timezone)

    def active(self, now: float) -> bool:
        return self.p.enabled and self.schedule.active(now)

    def usage_weight(self, now: float, plan) -> float:
        if not self.active(now):
            return 1.0
        return self.p.usage_weight if self.p.usage_weight is not None else plan.peak_weight

    def limit_scale(self, now: float) -> float:
        return self.p.limit_scale if self.active(now) else 1.0

    def scaled_seconds(self, t0: float, t1: float, enough: float = float("inf")) -> float:
        """∫ limit scale dt over [t0, t1], minute by minute; stops once it reaches ``enough``."""
        s = self.p.limit_scale
        if not self.p.enabled or s == 1.0 or t1 <= t0:
            return max(0.0, t1 - t0)
        total, t = 0.0, t0
        while t < t1 and total < enough:
            nxt = min(t1, self.schedule.minute_end(t))
            total += (nxt - t) * (s if self.schedule.active(t) else 1.0)
            t = nxt
        return total
