"""Two shortcuts of the replica must answer as the long way does.

* ``Replica.route_view`` reads the queues in place; on every candidate of every speed-aware decision
  of a run it must equal ``(n_running, queued, cache.gpu_hit(key, now))``.
* A request without a prefix key skips the prefix cache's ``reserve`` and ``put`` where they cannot
  change anything; forcing them (the long way) must give the same result tables, with keyed agent
  traffic and keyless traffic on replicas that keep a prefix cache.
"""
from __future__ import annotations

from pathlib import Path

import agentsim
from agentsim.run.build import build
from agentsim.run.scenario import load, parse
from agentsim.serving import engine
from agentsim.serving.cluster import SpeedAware
from agentsim.serving.engine import Replica
from agentsim.studies.estimate import estimate_scenario


def _agents(replicas: int = 3, duration_s: float = 900.0):
    """The default scenario's agent traffic (sessions, prefix keys, speed-aware homes) on a few replicas."""
    d = load(Path(agentsim.__file__).parent / "scenarios" / "default.toml").model_dump(mode="json", exclude_unset=True)
    d["pools"] = {"h100": {**d["pools"]["h100"], "replicas": replicas}}
    d.update(duration_s=duration_s, warmup_s=0.0)
    return parse(d)


def _mixed():
    """Agent sessions (keyed, their prefixes filling the caches) and a keyless stream on the same two
    replicas: keyless requests meet GPU cache entries, so the shortcut must stand aside for them."""
    d = _agents(replicas=2, duration_s=600.0).model_dump(mode="json", exclude_unset=True)
    d["streams"] = {"plain": {"kind": "poisson", "rate": 3.0,
                              "input_tokens": {"kind": "lognormal", "median": 30000, "sigma": 0.5, "max": 120000},
                              "output_tokens": {"kind": "constant", "value": 200}}}
    return parse(d)


def _keyless():
    d = estimate_scenario(model="Llama-3-8B", gpu="H100-SXM", input_tokens=1024, output_tokens=128, rate=40.0,
                          requests=3000)
    d["sample_s"] = 5.0
    return parse(d)


def _tables(sc, seed: int = 2) -> dict:
    res = build(sc, seed).run()
    return {name: getattr(res, name).to_csv(index=False) for name in ("requests", "pools", "timeseries", "sessions")}


def test_route_view_is_what_the_properties_and_the_cache_say(monkeypatch):
    seen = []
    real = SpeedAware.__call__

    def checked(self, cands, req):
        now = cands[0].env.now
        for r in cands:
            cache = r.cache
            want = (r.n_running, r.queued,
                    cache.gpu_hit(req.prefix_key, now) if cache is not None and req.prefix_key is not None else 0)
            seen.append(r.route_view(req.prefix_key, now) == want)
            seen.append(want[2] > 0)
        return real(self, cands, req)

    monkeypatch.setattr(SpeedAware, "__call__", checked)
    build(_agents(), 3).run()
    checks, hits = seen[0::2], seen[1::2]
    assert checks and all(checks)
    assert any(hits), "no candidate held a prefix: the hit column was not exercised"


def test_keyless_requests_give_the_same_tables_without_the_cache_calls(monkeypatch):
    cases = [_mixed(), _keyless()]
    keyless_reserves = []
    real_reserve = engine.reserve

    def reserve(*args):
        keyless_reserves.append(args[1].prefix_key is None)
        return real_reserve(*args)

    monkeypatch.setattr(engine, "reserve", reserve)
    short = [_tables(sc) for sc in cases]
    short_calls = sum(keyless_reserves)
    keyless_reserves.clear()
    monkeypatch.setattr(Replica, "KEYLESS_SHORTCUT", False)     # every request through the cache's calls
    long = [_tables(sc) for sc in cases]
    assert sum(keyless_reserves) > short_calls, "the long way made no more cache calls: nothing was compared"
    assert short == long
