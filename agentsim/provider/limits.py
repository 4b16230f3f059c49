"""Limit mechanics and presets: token buckets, rolling usage windows, prices.

The presets (API tiers, subscription plans, list prices) are data in ``data/limits.toml``, each
with its source. The mechanisms are small classes with exact, testable semantics:

* :class:`TokenBucket` — level ``L ≤ capacity``, refilled at ``rate`` per second; a charge is
  admitted when ``L ≥ cost``; a refund credits at most up to the capacity; a correction may
  leave the level negative (a debt the refill pays back).
* :class:`RollingUsage` — the sum of usage charged in the last ``window_s`` seconds.
"""
from __future__ import annotations

import math
import tomllib
from collections import deque
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..model.catalog import data_path, format_validation_error
from ..util.errors import InputError, unknown_name


class Tier(BaseModel):
    """An API tier: per-tenant limits per minute and a monthly spend cap."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    rpm: float = Field(0, ge=0, description="requests per minute (0 = unlimited)")
    itpm: float = Field(0, ge=0, description="uncached input tokens per minute (0 = unlimited)")
    otpm: float = Field(0, ge=0, description="output tokens per minute, charged by max_tokens (0 = unlimited)")
    tpm: float = Field(0, ge=0, description="input + output tokens per minute (OpenAI-style; 0 = unlimited)")
    spend_cap_usd: float = Field(0, ge=0, description="monthly spend cap (0 = none)")
    priority: int = Field(0, ge=0, description="admission priority / shedding class (0 = highest)")
    source: str = ""


class Plan(BaseModel):
    """A subscription plan: per-user rolling windows of weighted usage (USD at list price)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    window_5h_usd: float = Field(gt=0)
    weekly_usd: float = Field(gt=0)
    peak_weight: float = Field(1.0, ge=1.0, description="usage multiplier inside peak hours (peak_throttle on)")
    source: str = ""


class Prices(BaseModel):
    """List prices in USD per million tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float = Field(ge=0)
    cache_write: float = Field(ge=0)
    source: str = ""

    def usd(self, uncached: float, cached: float, output: float) -> float:
        """Cost of one request. Uncached input counts as cache writes (agents cache their prompts)."""
        return (uncached * self.cache_write + cached * self.cache_read + output * self.output) / 1e6


@lru_cache(maxsize=1)
def _presets() -> dict:
    path = data_path("limits.toml")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    out = {}
    for section, model in (("tiers", Tier), ("plans", Plan), ("prices", Prices)):
        out[section] = {}
        for name, entry in raw.get(section, {}).items():
            try:
                out[section][name] = model(**entry)
            except ValidationError as e:
                raise InputError(format_validation_error(e, f"{path}: {section}.{name}")) from None
    return out


def tier(name: str, where: str = "tier") -> Tier:
    tiers = _presets()["tiers"]
    if name not in tiers:
        raise unknown_name("tier preset", name, tiers, where=where)
    return tiers[name]


def plan(name: str, where: str = "plan") -> Plan:
    plans = _presets()["plans"]
    if name not in plans:
        raise unknown_name("plan preset", name, plans, where=where)
    return plans[name]


def prices(name: str, where: str = "prices") -> Prices:
    table = _presets()["prices"]
    if name not in table:
        raise unknown_name("price list", name, table, where=where)
    return table[name]


def preset_names(section: str) -> list[str]:
    return list(_presets()[section])


class TokenBucket:
    """A token bucket with lazy refill. ``scale`` multiplies the refill rate (peak throttling)."""

    __slots__ = ("rate", "capacity", "level", "t")

    def __init__(self, per_minute: float, burst_window_s: float, min_capacity: float = 0.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(min_capacity, per_minute * burst_window_s / 60.0)
        self.level = self.capacity
        self.t = 0.0

    def refill(self, now: float, scale: float = 1.0) -> None:
        if now > self.t:
            self.level = min(self.capacity, self.level + self.rate * scale * (now - self.t))
            self.t = now

    def refill_for(self, now: float, seconds: float) -> None:
        """Refill by ``seconds`` of full-rate refill (a scaled interval) and move the clock to ``now``."""
        if now > self.t:
            self.level = min(self.capacity, self.level + self.rate * seconds)
            self.t = now

    def wait_for(self, cost: float, scale: float = 1.0) -> float:
        """Seconds until ``cost`` fits (after :meth:`refill`); 0 if it fits now."""
        short = cost - self.level
        return short / (self.rate * scale) if short > 0 else 0.0

    def charge(self, cost: float) -> None:
        self.level -= cost

    def credit(self, amount: float) -> None:
        """A refund: never above the capacity."""
        self.level = min(self.capacity, self.level + amount)


class RollingUsage:
    """Usage charged in the last ``window_s`` seconds (a sliding-window sum)."""

    __slots__ = ("window_s", "entries", "total")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.entries: deque = deque()
        self.total = 0.0

    def expire(self, now: float) -> None:
        cutoff = now - self.window_s
        e = self.entries
        while e and e[0][0] <= cutoff:
            self.total -= e.popleft()[1]
        if not e:
            self.total = 0.0   # no float drift once empty

    def add(self, now: float, amount: float) -> None:
        self.entries.append((now, amount))
        self.total += amount

    def time_until_below(self, budget: float, now: float) -> float:
        """Seconds until the usage falls below ``budget`` as old entries age out."""
        if self.total < budget:
            return 0.0
        remaining = self.total
        # the running total drifts by a few ulps as entries come and go: "below" means below by more
        # than that, so an entry whose expiry leaves usage exactly at the budget does not count
        below = budget - 1e-12 * max(budget, self.total)
        for t, amount in self.entries:
            remaining -= amount
            if remaining < below:
                # a hair past the entry's expiry, so that float rounding cannot leave it in
                return max(0.0, t + self.window_s - now) + 1e-6
        return math.inf
