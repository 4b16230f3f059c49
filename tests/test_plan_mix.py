"""A population's plan mix: users split over subscription plans by share, each user's plan fixed.

The default scenario's coders are 75 % Pro, 20 % Max 5x and 5 % Max 20x (sources in
``agentsim/scenarios/default.toml``); the usage windows read each request's plan, so the mix
must put the stated share of users on each plan, the same users whatever the seed.
"""
from __future__ import annotations

import pytest

from agentsim.run.build import build
from agentsim.run.scenario import parse
from agentsim.util.errors import InputError
from agentsim.util.stats import proportion_interval

MIX = {"pro_post_2026_05_06": 0.75, "max5_post_2026_05_06": 0.20, "max20_post_2026_05_06": 0.05}
N_USERS = 20_000


def _sim(seed: int = 1, **pop):
    data = {"name": "plan-mix", "duration_s": 60, "sample_s": 60,
            "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B"}},
            "policies": [{"name": "usage_windows"}],
            "populations": {"coders": {"profile": "interactive_coding_agent", "size": N_USERS, **pop}}}
    return build(parse(data), seed=seed)


def test_each_plan_gets_its_share_of_users():
    pop = _sim(plan_mix=MIX).populations[0]
    plans = [pop.plan_of(u) for u in range(N_USERS)]
    for name, share in MIX.items():
        k = sum(p == name for p in plans)
        _, lo, hi = proportion_interval(k, N_USERS)
        assert lo <= share <= hi, (name, k / N_USERS, lo, hi)


def test_a_users_plan_is_the_same_in_every_seed_and_on_every_call():
    a, b = _sim(1, plan_mix=MIX).populations[0], _sim(2, plan_mix=MIX).populations[0]
    users = range(0, N_USERS, 7)
    assert [a.plan_of(u) for u in users] == [b.plan_of(u) for u in users]
    # the client stamps the user's plan on its requests (the usage windows read it there)
    assert all(a.make_client(0, u).plan == a.plan_of(u) for u in range(50))
    assert len({a.plan_of(u) for u in range(200)}) == 3


def test_a_single_plan_overrides_the_mix():
    pop = _sim(plan="pro", plan_mix=MIX).populations[0]
    assert {pop.plan_of(u) for u in range(500)} == {"pro"}
    assert {_sim().populations[0].plan_of(u) for u in range(10)} == {None}


@pytest.mark.parametrize("mix, words", [
    ({"pro": 0.5, "max7": 0.5}, ["plan_mix", "max7"]),
    ({"pro": 0.5, "max5": 0.4}, ["plan_mix", "sum to 1"]),
    ({"pro": 1.5, "max5": -0.5}, ["plan_mix", ">= 0"]),
])
def test_a_bad_plan_mix_is_one_clear_input_error(mix, words):
    with pytest.raises(InputError) as e:
        _sim(plan_mix=mix)
    assert all(w in str(e.value) for w in words), str(e.value)
