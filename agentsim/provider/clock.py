"""Simulated seconds to wall-clock time, and weekly schedules (peak hours) in a time zone."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..util.errors import InputError

DEFAULT_START = datetime(2026, 6, 1, tzinfo=timezone.utc)   # a Monday, 00:00 UTC


def zone(name: str, where: str = "timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"{where}: unknown time zone {name!r} (use an IANA name such as 'UTC', "
                         f"'America/Los_Angeles', 'Europe/London')") from None


class Schedule:
    """Hours ``[start_hour, end_hour)`` on the given weekdays (0 = Monday), local to ``tz``.

    ``active(t)`` is memoised per simulated minute, so asking on every request is cheap.
    """

    def __init__(self, start: datetime, days, start_hour: float, end_hour: float, tz: str) -> None:
        self.start = start
        self.days = frozenset(days)
        self.start_hour, self.end_hour = start_hour, end_hour
        self.tz = zone(tz)
        self._t0 = start.timestamp()
        self._memo: dict[int, bool] = {}

    def minute_end(self, t: float) -> float:
        """Simulated time at which the UTC minute holding ``t`` ends (the state is constant within it)."""
        return (math.floor((self._t0 + t) / 60) + 1) * 60 - self._t0

    def active(self, t: float) -> bool:
        # memoised per absolute UTC minute: zone offsets and (validated) hours are whole minutes,
        # so the answer is constant within one, whatever second the scenario starts on
        minute = math.floor((self._t0 + t) / 60)
        hit = self._memo.get(minute)
        if hit is None:
            local = datetime.fromtimestamp(minute * 60, self.tz)
            h = local.hour + local.minute / 60
            hit = local.weekday() in self.days and self.start_hour <= h < self.end_hour
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[minute] = hit
        return hit


def weekday_hour(start: datetime, t: float = 0.0) -> tuple[int, float]:
    """UTC weekday (0 = Monday) and hour at simulated time ``t``."""
    d = (start + timedelta(seconds=t)).astimezone(timezone.utc)
    return d.weekday(), d.hour + d.minute / 60 + d.second / 3600
