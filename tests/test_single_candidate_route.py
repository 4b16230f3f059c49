"""Routing with one candidate: the cluster takes it without asking a router that keeps no state
per request (``Cluster._one_rule``). Asked or not, every result table must be the same bits; the
routers that keep state (round robin, session affinity, prefix aware, pin release with a prefix
key) are still asked."""
from __future__ import annotations

import pytest

from agentsim.run.build import build
from agentsim.run.scenario import load, parse
from agentsim.serving.cluster import Cluster
from agentsim.studies.estimate import estimate_scenario


def _tables(sc, seed: int = 4):
    res = build(sc, seed).run()
    return {name: getattr(res, name).to_csv(index=False) for name in ("requests", "pools", "timeseries", "sessions")}


def _estimate(policy: str):
    d = estimate_scenario(model="Llama-3-8B", gpu="H100-SXM", input_tokens=1024, output_tokens=128, rate=20.0,
                          requests=1500)
    d["router"] = {"policy": policy}
    d["sample_s"] = 5.0
    return parse(d)


def _agents_on_one_replica(policy: str):
    """The default scenario's agent traffic (sessions, prefix keys, pin release) on one H100 replica."""
    from pathlib import Path

    import agentsim
    d = load(Path(agentsim.__file__).parent / "scenarios" / "default.toml").model_dump(mode="json", exclude_unset=True)
    d["pools"] = {"h100": {**d["pools"]["h100"], "replicas": 1}}
    d.update(duration_s=300.0, warmup_s=0.0)
    d["router"] = {**d.get("router", {}), "policy": policy}
    return parse(d)


def _both(sc, monkeypatch):
    asked = []
    real = Cluster._one_rule
    monkeypatch.setattr(Cluster, "_one_rule", staticmethod(lambda router: asked.append(real(router)) or real(router)))
    short = _tables(sc)
    monkeypatch.setattr(Cluster, "_one_rule", staticmethod(lambda router: 0))     # always ask the router
    general = _tables(sc)
    return short, general, asked


@pytest.mark.parametrize("policy", ["least_outstanding", "speed_aware", "power_of_two", "round_robin"])
def test_short_cut_gives_the_same_tables_on_the_estimate_path(policy, monkeypatch):
    short, general, rules = _both(_estimate(policy), monkeypatch)
    assert short == general
    # pin release wraps every router by default: no prefix key here, so only round robin is asked
    assert rules == [0 if policy == "round_robin" else 2]


@pytest.mark.parametrize("policy", ["speed_aware", "session_affinity"])
def test_short_cut_gives_the_same_tables_with_prefix_keys(policy, monkeypatch):
    short, general, rules = _both(_agents_on_one_replica(policy), monkeypatch)
    assert short == general
    assert "requests" in short and short["requests"].count("\n") > 50
    assert rules == [0 if policy == "session_affinity" else 2]
