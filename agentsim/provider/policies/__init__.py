"""Gateway policies, chosen by name (``policies = [{name = ...}]`` in a scenario).

Each module holds one policy; :data:`POLICIES` is the registry the gateway reads.
"""
from __future__ import annotations

from .base import POLICY_OUTCOMES, REJECTIONS, Policy
from .chaos import Chaos
from .peak_throttle import PeakThrottle
from .rate_limits import RateLimits
from .shedding import OverloadShedding
from .spend_cap import SpendCap
from .usage_windows import UsageWindows

POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (Chaos, RateLimits, SpendCap, UsageWindows,
                                                                PeakThrottle, OverloadShedding)}

__all__ = ["POLICIES", "POLICY_OUTCOMES", "REJECTIONS", "Policy"]
