"""A model mix on one fleet (issue 18): calls go to the model their kind names, and the per-model
summaries add up to the fleet's."""
from __future__ import annotations

from functools import lru_cache

import pytest

from agentsim.run.api import simulate
from agentsim.util.errors import InputError

SHORT = ["duration_s=1500", "warmup_s=300"]


@lru_cache(maxsize=None)
def run():
    return simulate("model_mix", seed=2, overrides=SHORT)


def test_each_kind_of_call_goes_to_its_model():
    df = run().requests
    placed = df[df["pool"].notna()]
    pools = placed.groupby("trigger", observed=True)["pool"].agg(lambda p: set(p.astype(str)))
    assert pools["subagent"] == {"small"}                 # coders' sub-agents: call_models.subagent
    assert "small" not in pools["tool"] and "small" not in pools["user"]
    coders = placed[placed["population"] == "coders"]
    assert set(coders.loc[coders["trigger"] != "subagent", "pool"].astype(str)) == {"frontier"}
    chat = placed[placed["population"] == "chat"]
    assert set(chat["pool"].astype(str)) == {"mid"}


def test_per_model_summaries_add_up_to_the_fleet_exactly():
    res = run()
    s = res.summary()
    models = s["models"]
    assert set(models) >= {"DeepSeek-V3", "Llama-3-70B", "Llama-3-8B"}
    assert all(m["requests"] > 0 for m in models.values())
    total = lambda key: sum(m[key] for m in models.values())  # noqa: E731
    assert total("requests") == s["requests"]
    assert total("completed") == s["completed"]
    warm = res.meta["warmup_s"]
    done = res.requests[(res.requests["arrival_s"] >= warm) & (res.requests["outcome"] == "completed")]
    assert total("output_tokens") == int(done["output_tokens"].sum())
    assert total("input_tokens") == int(done["input_tokens"].sum())
    # goodput: the requests within both SLOs add up, so the attainment is their weighted mean
    assert total("within_slo") / s["requests"] == s["slo_attainment"]
    assert total("goodput_rps") == pytest.approx(s["goodput_rps"], rel=1e-12)
    # energy and cost: each model's pools, every pool in exactly one model
    assert sorted(p for m in models.values() for p in m["pools"]) == sorted(res.pools["pool"])
    assert total("energy_j") == pytest.approx(s["energy_j"], rel=1e-12)
    assert total("cost_usd") == pytest.approx(s["cost_usd"], rel=1e-12)


def test_one_model_fleets_have_no_per_model_block():
    assert "models" not in simulate("engine_mixed", seed=1, overrides=["duration_s=60", "warmup_s=10"]).summary()


def test_a_call_model_no_pool_serves_is_named():
    with pytest.raises(InputError, match=r"populations.coders.call_models.subagent.*Llama-3.1-405B.*no pool serves it"):
        simulate("model_mix", seed=1, overrides=SHORT + ['populations.coders.call_models={"subagent": "Llama-3.1-405B"}'])
