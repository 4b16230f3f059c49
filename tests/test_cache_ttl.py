"""Per-request prompt-cache TTL (``Request.cache_ttl``): exact expiry semantics of both caches.

A provider's prompt-cache API lets the client choose the TTL per request (5 min or 1 h); the
replica's ``ttl_s`` applies when the request sets none. Entries expire at last use + TTL, and a
use of a shared entry never shortens its life.
"""
from __future__ import annotations

import pytest

from agentsim.serving.block_cache import BlockPrefixCache
from agentsim.serving.prefix_cache import CacheConfig, PrefixCache


@pytest.mark.parametrize("ttl, alive_at, dead_at", [(None, 300.0, 300.5), (3600.0, 3600.0, 3600.5), (60.0, 60.0, 60.5)])
def test_session_entry_expires_at_its_own_ttl(ttl, alive_at, dead_at):
    for at, hit in ((alive_at, 1000), (dead_at, 0)):
        c = PrefixCache(CacheConfig(retention="lru", ttl_s=300.0))
        c.put("s", 1000, 0.0, ttl)
        assert c.take("s", 1200, at) == (hit, 0, 1000)


def test_pinned_entry_pins_for_its_own_ttl():
    c = PrefixCache(CacheConfig(retention="pin_session", ttl_s=300.0))
    c.put("short", 100, 0.0, 60.0)
    c.put("long", 200, 0.0, 3600.0)
    c.put("default", 400, 0.0)
    assert c.next_expiry(0.0) == 60.0
    assert c.evictable(100.0) == 100                # only the 60 s entry has expired
    assert c.next_expiry(100.0) == 300.0
    assert c.evictable(1000.0) == 500
    assert c.evict(10_000, 1000.0) == 500            # expired entries go; the 1 h one stays pinned
    assert list(c.gpu) == ["long"] and c.gpu_used == 200


def test_host_tier_keeps_the_entry_expiry():
    c = PrefixCache(CacheConfig(retention="lru", ttl_s=300.0, host_tokens=10_000))
    c.put("s", 1000, 0.0, 3600.0)
    c.evict(1000, 10.0)                              # to the host tier, still 1 h from its last use
    assert "s" in c.host
    assert c.take("s", 1000, 3000.0) == (0, 1000, 0)
    c.put("t", 1000, 0.0, 3600.0)
    c.evict(1000, 10.0)
    assert c.take("t", 1000, 3600.5) == (0, 0, 0)


def test_a_short_ttl_use_never_shortens_a_shared_prefix():
    c = PrefixCache(CacheConfig(retention="lru", ttl_s=300.0))
    c.put_shared("sys", 500, 0.0, free=10_000, ttl=3600.0)
    assert c.lookup_shared("sys", 500, 100.0, ttl=60.0) == (500, 0)
    assert c.gpu["sys"][1] == 3600.0
    assert c.lookup_shared("sys", 500, 3500.0, ttl=300.0) == (500, 0)
    assert c.gpu["sys"][1] == 3800.0                 # refreshed by the later expiry
    assert c.lookup_shared("sys", 500, 3800.5) == (0, 0)


def test_block_cache_per_request_ttl():
    c = BlockPrefixCache(CacheConfig(retention="lru", ttl_s=300.0), block_tokens=100)
    c.put([1, 2, 3], 300, 0.0, 3600.0)
    assert c.take([1, 2, 3, 4], 400, 1000.0, 60.0) == (300, 0, 0)   # alive: 1 h from t = 0
    assert c.gpu[1][1] == 3600.0                     # the 60 s use did not shorten it
    c.put([1, 2], 200, 3500.0, 600.0)                # blocks 1 and 2 now live to 4100, block 3 to 3600
    assert c.take([1, 2, 3], 300, 3800.0) == (200, 0, 0)
    assert c.next_expiry(0.0) == float("inf")        # lru: nothing is pinned
    p = BlockPrefixCache(CacheConfig(retention="pin_session", ttl_s=300.0), block_tokens=100)
    p.put([7, 8], 200, 0.0, 30.0)
    p.put([9], 100, 0.0)
    assert p.next_expiry(0.0) == 30.0
    assert p.evictable(100.0) == 200
