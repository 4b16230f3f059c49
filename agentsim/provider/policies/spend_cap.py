"""``spend_cap``: a monthly spend cap per tenant (``429_spend_cap``, no retry-after).

Spend is charged at list prices when a request completes; the month follows the scenario's
wall clock, so a cap reached on the 31st lifts on the 1st.
"""
from __future__ import annotations

import math
from datetime import timedelta

from pydantic import Field

from ..limits import tier
from .base import Policy, PricedParams


class SpendCap(Policy):
    name = "spend_cap"

    class Params(PricedParams):
        cap_usd: float | None = Field(None, ge=0, description="cap for every tenant (default: its tier's cap)")
        start_spend_usd: float = Field(0.0, ge=0, description="spend already used this month at t = 0")

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.spend: dict[int, float] = {}
        self.month: dict[int, tuple[int, int]] = {}

    def _cap(self, req) -> float:
        if self.p.cap_usd is not None:
            return self.p.cap_usd
        if req.tier is not None:
            return tier(req.tier).spend_cap_usd or math.inf
        return math.inf

    def _month(self, now: float) -> tuple[int, int]:
        d = self.view.start + timedelta(seconds=now)
        return d.year, d.month

    def _spent(self, tenant: int, now: float) -> float:
        m = self._month(now)
        if self.month.get(tenant) != m:
            first = tenant not in self.month
            self.month[tenant] = m
            self.spend[tenant] = self.p.start_spend_usd if first and m == self._month(0.0) else 0.0
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
        self.spend[req.tenant] += self.p.price_list(req.model).usd(req.prompt - cached, cached, req.output)
