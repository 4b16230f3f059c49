"""Acceptance (issue 18, routing on a mixed fleet), on the default scenario at the daily peak.

1. Every pool's capacity utilisation is within [0.5, 2] x the fleet's (no generation idle while
   another queues), in every replication.
2. SLO attainment at the peak is no lower than with the router as it was before issue 18
   (session affinity alone, ``router.release_moved_pins = false``): paired replications with
   common random numbers (the same seed gives both arms identical arrivals and sizes), and the
   upper end of the 95 % interval of the paired difference new - old is >= 0 (the data do not
   show the new router worse).

The peak is the 3 whole hours with the most arrivals (agentsim.studies.peak). Slow: 10 full
days, ~12 min on the 2-core reference machine.
"""
from __future__ import annotations

from functools import lru_cache

import pytest

from agentsim.run.api import simulate
from agentsim.studies.peak import peak_balance
from agentsim.util.stats import paired_difference

SEEDS = (1, 2, 3, 4, 5)
BEFORE = ["router.release_moved_pins=false"]


@lru_cache(maxsize=None)
def peak(seed: int, before: bool) -> dict:
    return peak_balance(simulate("default", seed=seed, overrides=BEFORE if before else []))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_every_pool_is_within_half_and_twice_the_fleet_utilisation(seed):
    ratios = peak(seed, False)["pool_ratio"]
    assert all(0.5 <= r <= 2.0 for r in ratios.values()), ratios


@pytest.mark.slow
def test_peak_slo_attainment_is_no_lower_than_before():
    old = [peak(s, True)["slo_attainment"] for s in SEEDS]
    new = [peak(s, False)["slo_attainment"] for s in SEEDS]
    mean, low, high = paired_difference(old, new)
    print(f"\npeak SLO attainment new - old: {mean:+.4f}, 95 % CI [{low:+.4f}, {high:+.4f}]; old {old}, new {new}")
    assert high >= 0, (mean, low, high)
