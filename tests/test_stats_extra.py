"""The statistics module's tipping point and warm-up rule, by hand."""
from __future__ import annotations

import math

import numpy as np

from agentsim.util.stats import mser5, proportion_interval, tipping_point


def test_tipping_point_interpolates_the_shares_and_inverts_the_wilson_bounds():
    loads, k, n = [1.0, 2.0, 3.0], [0, 5, 10], [10, 10, 10]
    est, lo, hi = tipping_point(loads, k, n)
    assert est == 2.0                                   # the share reaches 0.5 exactly at load 2
    up1, up2 = proportion_interval(0, 10)[2], proportion_interval(5, 10)[2]
    assert lo == 1.0 + (0.5 - up1) / (up2 - up1)        # the upper bound crosses 0.5 between loads 1 and 2
    lo2, lo3 = proportion_interval(5, 10)[1], proportion_interval(10, 10)[1]
    assert hi == 2.0 + (0.5 - lo2) / (lo3 - lo2)        # the lower bound between loads 2 and 3
    assert lo < est < hi


def test_tipping_point_outside_the_sweep():
    assert tipping_point([1, 2], [0, 0], [10, 10])[0] == math.inf
    assert tipping_point([1, 2], [10, 10], [10, 10])[0] == -math.inf


def test_mser5_cuts_a_transient_and_leaves_a_stationary_series():
    rng = np.random.default_rng(1)
    flat = rng.normal(10, 1, 500)
    assert mser5(flat) <= 50                               # nothing much to cut (a little noise may be)
    warm = flat.copy()
    warm[:100] = np.linspace(0, 10, 100)                   # ramp from empty over the first 100 samples
    cut = mser5(warm)
    assert 60 <= cut <= 150 and cut % 5 == 0
    assert mser5(flat[:40]) == 0                           # too short to tell


def test_summary_states_the_warmup_rule_and_whether_the_run_is_steady():
    """Diurnal input needs a whole period of warm-up; constant input what MSER-5 says."""
    import pandas as pd

    from agentsim.results.steady import warmup_advice, warmup_check
    ts = pd.DataFrame({"time_s": np.repeat(np.arange(1, 201) * 60.0, 2), "pool": [0, 1] * 200,
                       "completed": np.concatenate([np.linspace(0, 50, 80), np.full(320, 50.0)])})
    flat = warmup_check({"warmup_s": 0.0, "scenario": {"populations": {"a": {"arrival": "flat"}}}}, ts)
    assert flat["warmup_rule"].startswith("MSER-5") and flat["warmup_needed_s"] > 0 and not flat["steady_state"]
    assert "warm-up" in warmup_advice(flat)
    ok = warmup_check({"warmup_s": flat["warmup_needed_s"], "scenario": {}}, ts)
    assert ok["steady_state"] and warmup_advice(ok) is None
    day = warmup_check({"warmup_s": 1800.0, "scenario": {"populations": {"a": {"arrival": "azure2024_coding"}}}}, ts)
    assert day["warmup_needed_s"] == 86400.0 and not day["steady_state"]


def test_planner_units_by_hand():
    """Two pools at 1 and 3 MW over a 2-h window after 1 h of warm-up; 500 engaged hours."""
    import pandas as pd

    from agentsim.results.result import planner_units
    t = np.arange(1, 13) * 900.0                                  # 3 h sampled every 15 min
    ts = pd.DataFrame({"time_s": np.repeat(t, 2), "pool": [0, 1] * 12,
                       "facility_power_w": np.tile([1e6, 3e6], 12) * np.repeat(np.where(t > 3600, 1.0, 9.0), 2)})
    summary = {"output_tokens_per_s": 8000.0, "engaged_user_hours": 500.0, "cost_usd": 900.0, "users": 250}
    u = planner_units(summary, ts, 3600.0, 3 * 3600.0, 3 * 3600.0)
    assert u["facility_mw_mean"] == 4.0                           # the warm-up's 36 MW left out
    assert u["output_tokens_per_s_per_mw"] == 2000.0
    assert u["energy_per_engaged_hour_kwh"] == 4.0 * 1e3 * 2 / 500     # 8 MWh over 500 h
    assert u["engaged_users_per_mw"] == 500 / 2 / 4.0
    assert u["usd_per_engaged_hour"] == 900.0 * (2 / 3) / 500
    assert math.isclose(u["usd_per_user_month"], 900.0 / 3 * 730 / 250)   # $300/h over a 730-h month, 250 users


def test_replicate_until_stops_when_precise_and_is_deterministic():
    from agentsim.studies.experiments import replicate_until, stat
    calls = []

    def run_seeds(ss):
        calls.append(list(ss))
        return [10.0 + (s % 3) for s in ss]          # values 10..12: a mean near 11, sd ~0.9

    res, ss, est = replicate_until(run_seeds, stat, 1, start=3, step=2, cap=20, rel_halfwidth=0.05)
    assert calls[0] == [1, 2, 3] and all(len(c) == 2 for c in calls[1:])
    assert (est.high - est.low) / 2 <= 0.05 * est.mean            # stopped because precise ...
    shorter = stat(res[:-2])
    assert (shorter.high - shorter.low) / 2 > 0.05 * shorter.mean  # ... and not a round earlier
    assert replicate_until(run_seeds, stat, 1, start=3, step=2, cap=20, rel_halfwidth=0.05)[1] == ss
    _, capped, _ = replicate_until(run_seeds, stat, 1, start=3, step=2, cap=6, rel_halfwidth=1e-9)
    assert capped == [1, 2, 3, 4, 5, 6]


def test_holds_for_needs_consecutive_values():
    from agentsim.util.stats import holds_for
    assert holds_for([False, True, True, True, False], 3)
    assert not holds_for([True, True, False, True, True], 3)     # four in all, never three in a row
    assert not holds_for([], 1)
