"""``usage_windows``: rolling 5-hour and weekly usage budgets per user of a subscription plan.

Usage is weighted like spend at list prices (1 unit = $1; cache reads weigh 0.1× input) and
charged when a request ends; inside peak hours the ``peak_throttle`` policy makes it weigh more.
A user at or over either budget gets ``429_window`` with ``retry-after`` = the time until old
usage ages out of the window. Requests already in flight when the budget is reached still
complete — that is the only overshoot.
"""
from __future__ import annotations

import math

from pydantic import Field

from ..limits import RollingUsage, plan
from .base import Policy, PricedParams

FIVE_HOURS_S = 5 * 3600.0
WEEK_S = 7 * 86400.0


class UsageWindows(Policy):
    name = "usage_windows"

    class Params(PricedParams):
        budget_scale: float = Field(1.0, gt=0, description="multiply every plan's 5-hour budget (e.g. 2 = doubled)")

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.users: dict[int, tuple] = {}   # user -> (plan, 5 h window, weekly window)

    def _user(self, req):
        st = self.users.get(req.user)
        if st is None:
            if req.plan is None:
                return None
            st = self.users[req.user] = (plan(req.plan), RollingUsage(FIVE_HOURS_S), RollingUsage(WEEK_S))
        return st

    def admit(self, req, now):
        st = self._user(req)
        if st is None:
            return None
        p, w5, w7 = st
        w5.expire(now)
        w7.expire(now)
        b5, b7 = p.window_5h_usd * self.p.budget_scale, p.weekly_usd
        if w5.total >= b5 or w7.total >= b7:
            wait = max(w5.time_until_below(b5, now), w7.time_until_below(b7, now))
            return "429_window", wait if wait < math.inf else math.nan
        return None

    def on_done(self, req, now):
        if req.outcome != "completed":
            return
        st = self._user(req)
        if st is None:
            return
        p, w5, w7 = st
        cached = req.cached_gpu + req.cached_host
        usage = self.price_list(req.model).usd(req.prompt - cached, cached, req.output)
        peak = self.view.peak
        if peak is not None:
            usage *= peak.usage_weight(now, p)
        w5.add(now, usage)
        w7.add(now, usage)
