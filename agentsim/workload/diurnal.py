"""Diurnal and weekly arrival profiles, and the non-homogeneous Poisson process they drive."""
from __future__ import annotations

import tomllib
from functools import lru_cache

import numpy as np

from ..model.catalog import data_path
from ..util.errors import unknown_name

WEEK_S = 7 * 86400.0


@lru_cache(maxsize=1)
def _shipped() -> dict:
    with open(data_path("diurnal.toml"), "rb") as f:
        return tomllib.load(f)["profiles"]


def profile_names() -> list[str]:
    return list(_shipped())


class WeeklyProfile:
    """Hourly multipliers over a week, normalised to a weekly mean of 1.

    ``rate(t)`` is piecewise constant per hour; ``t = 0`` falls on ``start_weekday`` (0 = Monday)
    at ``start_hour`` UTC.
    """

    def __init__(self, weekday, weekend, start_weekday: int = 0, start_hour: float = 0.0) -> None:
        week = np.array([weekday if d < 5 else weekend for d in range(7)], float).ravel()
        self.hourly = week / week.mean()
        self.offset_s = (start_weekday * 24 + start_hour) * 3600.0
        self.peak = float(self.hourly.max())

    @classmethod
    def named(cls, name: str, start_weekday: int = 0, start_hour: float = 0.0) -> "WeeklyProfile":
        shipped = _shipped()
        if name not in shipped:
            raise unknown_name("arrival profile", name, shipped)
        p = shipped[name]
        return cls(p["weekday"], p["weekend"], start_weekday, start_hour)

    def at(self, t: float) -> float:
        """Multiplier at simulated time ``t``."""
        return float(self.hourly[int(((t + self.offset_s) % WEEK_S) // 3600.0)])


def nhpp_next(t: float, base_rate: float, profile: WeeklyProfile, rng) -> float:
    """Next arrival after ``t`` of a Poisson process with rate ``base_rate·profile.at(t)``; ``inf`` at rate 0.

    Thinning (Lewis–Shedler): candidates at the peak rate, each kept with probability
    ``at(t) / peak``. Two draws per candidate, exponential then uniform, from ``rng``: the one
    place arrivals are drawn this way, so every population's arrival stream is the same process.
    """
    lam_max = base_rate * profile.peak
    if lam_max <= 0:
        return float("inf")
    while True:
        t += rng.exponential(1.0 / lam_max)
        if rng.random() * profile.peak <= profile.at(t):
            return t
