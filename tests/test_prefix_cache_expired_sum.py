"""Under pinned retention ``PrefixCache`` keeps its expired entries' tokens as a running sum and walks
only those when it evicts, instead of scanning every entry on every blocked admission. After any
sequence of cache operations, at moments that mostly move forward and sometimes step back a little,
it must hold the same entries in the same LRU order, on both tiers, as the scanning version."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentsim.serving.prefix_cache import CacheConfig, GpuTier, PrefixCache


class ScanningCache(PrefixCache):
    """The cache as it was: ``evictable`` sums every entry, ``evict`` walks every entry in LRU order."""

    def evictable(self, now: float, force: bool = False) -> int:
        return GpuTier.evictable(self, now, force)

    def evict(self, need: int, now: float, force: bool = False) -> int:
        freed = 0
        for key in list(self.gpu):
            if freed >= need:
                break
            tokens, expires = self.gpu[key]
            expired = now > expires
            if self.pinning and not expired and not force:
                continue
            del self.gpu[key]
            self.gpu_used -= tokens
            freed += tokens
            if not expired:
                self._to_host(key, tokens, expires)
        return freed


KEYS = st.integers(0, 7)
OPS = st.one_of(
    st.tuples(st.just("put"), KEYS, st.integers(1, 500), st.sampled_from([None, 0.0, 5.0, 60.0])),
    st.tuples(st.just("take"), KEYS, st.integers(1, 500), st.sampled_from([None, 0.0, 5.0])),
    st.tuples(st.just("lookup_shared"), KEYS, st.integers(1, 500), st.sampled_from([None, 60.0])),
    st.tuples(st.just("put_shared"), KEYS, st.integers(1, 500), st.sampled_from([None, 0.0])),
    st.tuples(st.just("release"), KEYS, st.just(0), st.just(None)),
    st.tuples(st.just("stage"), KEYS, st.integers(1, 500), st.just(None)),
    st.tuples(st.just("evict"), st.just(0), st.integers(1, 2000), st.booleans()),
    st.tuples(st.just("evictable"), st.just(0), st.just(0), st.booleans()),
    st.tuples(st.just("clear"), st.just(0), st.just(0), st.just(None)),
)


def apply(cache: PrefixCache, op: str, key, n: int, extra, now: float):
    if op == "put":
        return cache.put(key, n, now, extra)
    if op == "take":
        return cache.take(key, n, now, extra)
    if op == "lookup_shared":
        return cache.lookup_shared(key, n, now, extra)
    if op == "put_shared":
        return cache.put_shared(key, n, now, 10_000, extra)
    if op == "release":
        return cache.release(key)
    if op == "stage":
        return cache.stage(key, n, now)
    if op == "evict":
        return cache.evict(n, now, force=extra)
    if op == "evictable":
        return cache.evictable(now, force=extra)
    return cache.clear()


def state(cache: PrefixCache):
    return list(cache.gpu.items()), list(cache.host.items()), dict(cache.host_expiry), cache.gpu_used, cache.host_used


@settings(max_examples=500, deadline=None)
@given(ops=st.lists(st.tuples(OPS, st.floats(-0.5, 20.0)), max_size=150))
def test_same_entries_as_the_scanning_cache(ops):
    cfg = CacheConfig(retention="pin_session", ttl_s=30.0, host_tokens=800)
    fast, ref = PrefixCache(cfg), ScanningCache(cfg)
    now = 0.0
    for (op, key, n, extra), dt in ops:
        now += dt                       # mostly forward; a small step back now and then
        assert apply(fast, op, key, n, extra, now) == apply(ref, op, key, n, extra, now), op
        assert state(fast) == state(ref), op
        assert fast.evictable(now) == GpuTier.evictable(ref, now)
    assert len(fast._exp_heap) <= 2 * len(fast.gpu) + 65
    assert set(fast._stamp) == set(fast.gpu)


def test_expired_entries_go_in_lru_order_not_expiry_order():
    """Entries expire in another order than they were used (per-request TTLs): eviction still takes
    the least recently used of the expired ones first."""
    for cache in (PrefixCache(CacheConfig(retention="pin_session", ttl_s=30.0)),
                  ScanningCache(CacheConfig(retention="pin_session", ttl_s=30.0))):
        cache.put("a", 100, 0.0, 60.0)     # used first, expires last
        cache.put("b", 100, 1.0, 0.0)
        cache.put("c", 100, 2.0, 5.0)
        assert cache.evictable(100.0) == 300
        assert cache.evict(150, 100.0) == 200
        assert list(cache.gpu) == ["c"]
