"""``spend_cap``: a monthly spend cap per tenant (``429_spend_cap``, no retry-after).

Spend is charged at list prices when a request completes; the month follows the scenario's
wall clock, so a cap reached on the 31st lifts on the 1st.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

from pydantic import Field

from ..limits import tier
from .base import Policy, PricedParams


def month_span(start: datetime, now: float) -> tuple[float, float, tuple[int, int]]:
    """(from, until, (year, month)): the month of the wall clock ``start + now`` and the simulated
    times from which until which every time is in it, kept a millisecond inside its edges (where
    the datetime arithmetic's rounding to microseconds decides, times are worked out each call)."""
    d = start + timedelta(seconds=now)
    first = d.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    after = first.replace(year=d.year + 1, month=1) if d.month == 12 else first.replace(month=d.month + 1)
    return (first - start).total_seconds() + 1e-3, (after - start).total_seconds() - 1e-3, (d.year, d.month)


class SpendCap(Policy):
    name = "spend_cap"

    class Params(PricedParams):
        cap_usd: float | None = Field(None, ge=0, description="cap for every tenant (default: its tier's cap)")
        start_spend_usd: float = Field(0.0, ge=0, description="spend already used this month at t = 0")

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.spend: dict[int, float] = {}
        self.month: dict[int, tuple[int, int]] = {}
        self._span = (0.0, -1.0, (0, 0))     # (from, until, month): simulated times well inside one month
        self._caps: dict = {}                # tier name -> cap

    def _cap(self, req) -> float:
        if self.p.cap_usd is not None:
            return self.p.cap_usd
        cap = self._caps.get(req.tier)
        if cap is None:
            cap = self._caps[req.tier] = self._tier_cap(req)
        return cap

    def _tier_cap(self, req) -> float:
        if req.tier is not None:
            return tier(req.tier).spend_cap_usd or math.inf
        return math.inf

    def _month(self, now: float) -> tuple[int, int]:
        """The (year, month) of the wall clock at ``now``: worked out with dates once a month (and for
        times within a millisecond of a month's edge, where timedelta's rounding decides)."""
        lo, hi, m = self._span
        if lo <= now < hi:
            return m
        self._span = span = month_span(self.view.start, now)
        return span[2]

    def _spent(self, tenant: int, now: float) -> float:
        m = self._month(now)
        if self.month.get(tenant) != m:
            first = tenant not in self.month
            self.month[tenant] = m
            self.spend[tenant] = self.p.start_spend_usd if first and m == month_span(self.view.start, 0.0)[2] else 0.0
        return self.spend[tenant]

    def admit(self, req, now):
        if self._spent(req.tenant, now) >= self._cap(req):
            return "429_spend_cap", math.nan
        return None

    def on_done(self, req, now):
        if req.outcome != "completed":
            return
        self._spent(req.tenant, now)
        cached = req.cached_gpu + req.cached_host
        self.spend[req.tenant] += self.price_list(req.model).usd(req.prompt - cached, cached, req.output)
