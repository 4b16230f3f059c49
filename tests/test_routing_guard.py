"""The layers every shipped router runs behind (serving/routing_guard.py): stranded pins are
released when a session moves, and the opt-in queue guard re-routes a pick whose queue head has
waited too long. The default scenario's acceptance (peak utilisation balance and paired SLO
attainment) is tests/test_mixed_fleet_balance.py (slow)."""
from __future__ import annotations

from collections import deque
from functools import partial
from types import SimpleNamespace

import pytest

from agentsim.run.scenario import Scenario
from agentsim.run.build import build
from agentsim.serving.prefix_cache import CacheConfig, PrefixCache
from agentsim.serving.replica_base import ReplicaBase
from agentsim.serving.request import Request
from agentsim.serving.routing_guard import OBJECTIVES, PinRelease, QueueGuard, guarded, head_wait
from agentsim.serving.cluster import ROUTERS


class Fixed:
    """A router stub: picks the replica it is told to."""

    def __init__(self) -> None:
        self.pick = None

    def __call__(self, cands, req):
        return self.pick


def replica(name, retention="pin_session", waiting=(), step_s=0.01):
    cache = PrefixCache(CacheConfig(retention=retention, ttl_s=3600))
    c = SimpleNamespace(step_time=lambda *a, **k: step_s)
    r = SimpleNamespace(name=name, cache=cache, waiting=deque(waiting), pending=0, queued=len(waiting), n_running=0,
                        c=c)
    r.route_view = partial(ReplicaBase.route_view, r)     # over the attributes above, as a replica's
    return r


def req(key=("s", 1), prompt=1000, output=10):
    return Request(0, 0.0, prompt, output, prefix_key=key)


def test_every_shipped_router_says_what_it_optimises():
    assert set(OBJECTIVES) == set(ROUTERS)


def test_a_session_moving_releases_its_pin_on_the_last_replica():
    a, b = replica("a"), replica("b")
    a.cache.put(("s", 1), 5000, now=0.0)
    b.cache.put(("s", 2), 7000, now=0.0)
    inner = Fixed()
    router = PinRelease(inner)
    inner.pick = a
    assert router([a, b], req()) is a                  # first call: nothing to release
    a.cache.put(("s", 1), 5000, now=1.0)              # its context stays pinned on a
    assert router([a, b], req()) is a and a.cache.gpu_used == 5000
    inner.pick = b
    assert router([a, b], req()) is b                  # the session moves: a drops it
    assert a.cache.gpu_used == 0 and ("s", 1) not in a.cache.gpu
    assert b.cache.gpu_used == 7000                    # b's other sessions untouched
    assert router.released == 1


def test_lru_caches_keep_their_copy():
    a, b = replica("a", "lru"), replica("b", "lru")
    a.cache.put(("s", 1), 5000, now=0.0)
    inner = Fixed()
    router = PinRelease(inner)
    inner.pick = a
    router([a, b], req())
    inner.pick = b
    router([a, b], req())
    assert a.cache.gpu_used == 5000 and router.released == 0


def test_queue_guard_keeps_the_pick_until_its_head_has_waited_over_the_limit():
    env = SimpleNamespace(now=100.0)
    slow_queue = [SimpleNamespace(ready=100.0 - 3.0)]          # head waiting 3 s
    a, b = replica("a", waiting=slow_queue), replica("b")
    inner = Fixed()
    inner.pick = a
    assert head_wait(a, env.now) == 3.0 and head_wait(b, env.now) == 0.0
    assert QueueGuard(inner, 5.0, env)([a, b], req()) is a      # 3 s <= 5 s: the policy's pick
    g = QueueGuard(inner, 2.5, env)
    r = req()
    assert g([a, b], r) is b and g.spills == 1                  # 3 s > 2.5 s: b finishes first
    assert r.cache_ttl == 0.0                                   # a one-off visit pins nothing there
    # when the pick is still the fastest despite its wait, it stays (nothing spilled)
    b.c = SimpleNamespace(step_time=lambda *a, **k: 10.0)
    assert g([a, b], req()) is a and g.spills == 1


def test_guarded_wires_what_the_settings_ask_for():
    cfg = lambda **kw: Scenario.model_validate({"name": "x", "router": kw, "pools": {"a": {  # noqa: E731
        "gpu": "H100-SXM", "model": "Llama-3-8B"}}, "streams": {"s": {"rate": 1}}}).router
    inner = Fixed()
    assert isinstance(guarded(inner, cfg(), 5.0, None), PinRelease)                       # the default
    assert guarded(inner, cfg(release_moved_pins=False), 5.0, None) is inner
    g = guarded(inner, cfg(release_moved_pins=False, queue_guard=True), 5.0, None)
    assert isinstance(g, QueueGuard) and g.limit_s == 2.5                                # half the TTFT SLO
    assert guarded(inner, cfg(queue_guard=True, queue_limit_s=1.0), 5.0, None).limit_s == 1.0


def test_negative_queue_limit_is_refused_with_its_field():
    with pytest.raises(Exception, match="queue_limit_s"):
        Scenario.model_validate({"name": "x", "router": {"queue_limit_s": -1}, "pools": {"a": {
            "gpu": "H100-SXM", "model": "Llama-3-8B"}}, "streams": {"s": {"rate": 1}}})


def test_a_built_run_routes_through_the_layers():
    sc = Scenario.model_validate({"name": "x", "router": {"queue_guard": True}, "pools": {"a": {
        "gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": 2}}, "streams": {"s": {"rate": 5}}, "duration_s": 20})
    sim = build(sc, 1)
    assert isinstance(sim.cluster.router, QueueGuard) and isinstance(sim.cluster.router.router, PinRelease)
    assert sim.run().summary()["completed"] > 50


def test_the_layers_let_the_wrapped_routers_state_through():
    inner = Fixed()
    inner.free_at = {1: 0.0}
    layered = QueueGuard(PinRelease(inner), 1.0, SimpleNamespace(now=0.0))
    layered.free_at[1] = 2.0
    assert inner.free_at == {1: 2.0} and layered.pick is None
