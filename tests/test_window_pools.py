"""A warm run's energy, cost and busy shares are those of its measured window (issue 19): the
warm-up is simulated to fill the system, then left out of every figure, the pool table's included."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from agentsim.results.result import window_pools
from agentsim.run.api import simulate

SMALL = ["populations.coders.size=300", "populations.chat.size=200", "populations.api_agents.size=20"]


@lru_cache(maxsize=None)
def run(warm: float):
    return simulate("default", seed=3, overrides=SMALL + ["duration_s=5400", f"warmup_s={warm:g}"])


def test_window_energy_and_busy_are_the_samples_after_the_warm_up():
    res = run(1800.0)
    ts, pools = res.timeseries, res.window_pools()
    for row in pools.to_dict("records"):
        mine = ts[ts["pool"].astype(str) == row["pool"]]
        after = mine[mine["time_s"] > 1800.0]
        dt = np.diff(np.concatenate(([0.0], mine["time_s"].to_numpy())))[mine["time_s"].to_numpy() > 1800.0]
        assert row["energy_j"] == pytest.approx(float((after["power_w"] * dt).sum()), rel=1e-12)
        assert row["busy_frac"] == pytest.approx(float((after["busy_frac"] * dt).sum()) / 3600.0, rel=1e-12)
        whole = res.pools.set_index("pool").loc[row["pool"]]
        assert 0.0 <= row["busy_frac"] <= 1.0
        assert row["energy_j"] < whole["energy_j"]                 # the warm-up's energy is left out
        assert row["cost_usd"] == pytest.approx(whole["cost_usd"] * 3600.0 / 5400.0)


def test_summary_sets_window_energy_against_window_tokens():
    res = run(1800.0)
    s, rq = res.summary(), res.requests
    done = rq[(rq["outcome"] == "completed") & (rq["finish_s"] > 1800.0)]
    energy = float(res.window_pools()["facility_energy_j"].sum())
    assert s["energy_j"] == pytest.approx(energy)
    assert s["joules_per_token"] == pytest.approx(energy / float(done["output_tokens"].sum()))
    assert s["facility_power_mean_w"] == pytest.approx(energy / 3600.0, rel=1e-9)
    for name, p in s["pools"].items():
        assert p["busy_share"] == pytest.approx(float(res.window_pools().set_index("pool").loc[name, "busy_frac"]))


def test_without_a_warm_up_the_window_is_the_whole_run():
    res = run(0.0)
    assert window_pools(res.pools, res.timeseries, 0.0, 5400.0) is res.pools
    s = res.summary()
    assert s["energy_j"] == pytest.approx(float(res.pools["facility_energy_j"].sum()))
