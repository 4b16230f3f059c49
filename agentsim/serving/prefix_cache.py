"""Prefix caching in GPU KV memory with a second tier in host memory.

A finished request leaves its context (prompt + output) behind as a cache entry under its
``prefix_key`` (a session, or a shared system prompt). A later request with the same key reuses
``min(entry, prefix_len)`` leading tokens: from the GPU tier it skips their prefill; from the
host tier it pays a host-to-GPU transfer instead (added to the step that runs its first chunk).

GPU entries live in the KV memory that running requests do not use, so the replica evicts them
(to the host tier, LRU) before it would block an admission or preempt a request. Retention is a
policy chosen by name:

* ``lru`` — least recently used first; entries expire ``ttl_s`` after their last use.
* ``pin_session`` — an entry is pinned for ``ttl_s`` after its last use (across a session's tool
  calls) and evicted only when expired, or when the replica would otherwise sit idle with work
  waiting.
* ``none`` — no prefix caching.

The TTL is the replica's ``ttl_s`` unless the request asks for its own (``Request.cache_ttl``),
as a provider's prompt-cache API lets a client choose 5 min or 1 h per request. Entries store
their expiry time, refreshed on every use.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from itertools import count

from ..util.errors import InputError

RETENTION_POLICIES = ("lru", "pin_session", "none")


@dataclass(frozen=True)
class CacheConfig:
    retention: str = "lru"
    ttl_s: float = 300.0
    host_tokens: int = 0          # host-tier capacity in tokens (0 = no host tier)

    def __post_init__(self) -> None:
        if self.retention not in RETENTION_POLICIES:
            raise InputError(f"engine.retention {self.retention!r} unknown; allowed: {', '.join(RETENTION_POLICIES)}")
        if self.ttl_s < 0:
            raise InputError(f"engine.prefix_ttl_s must be >= 0, got {self.ttl_s}")
        if self.host_tokens < 0:
            raise InputError(f"engine.host_kv_gb must be >= 0, got {self.host_tokens} tokens")


class GpuTier:
    """What both caches share: GPU entries ``key -> (tokens, expires_at)`` in ``gpu`` (LRU first),
    ``gpu_used`` tokens, the replica's config ``cfg`` and whether retention ``pinning``."""

    cfg: CacheConfig
    pinning: bool
    gpu: OrderedDict
    gpu_used: int

    def expiry(self, now: float, ttl: float | None) -> float:
        """When an entry used now expires: ``ttl`` if the request set one, else the replica's."""
        return now + (self.cfg.ttl_s if ttl is None else ttl)

    def evictable(self, now: float, force: bool = False) -> int:
        """GPU tokens that ``evict`` could free now."""
        if not self.pinning or force:
            return self.gpu_used
        return sum(t for t, expires in self.gpu.values() if now > expires)

    def next_expiry(self, now: float) -> float:
        """When the earliest pinned entry stops being pinned (inf if none): admission may change then."""
        if not self.pinning:
            return float("inf")
        return min((expires for _, expires in self.gpu.values() if now <= expires), default=float("inf"))


class PrefixCache(GpuTier):
    """GPU and host tiers of one replica; ``gpu_used`` counts tokens held in GPU KV memory."""

    def __init__(self, config: CacheConfig) -> None:
        self.cfg = config
        self.pinning = config.retention == "pin_session"
        self.enabled = config.retention != "none"
        self.gpu: OrderedDict = OrderedDict()    # key -> (tokens, expires_at); LRU first
        self.host: OrderedDict = OrderedDict()   # key -> tokens; LRU first
        self.host_expiry: dict = {}              # key -> expires_at (the TTL holds on both tiers)
        self.gpu_used = 0
        self.host_used = 0
        self.hits_gpu = self.hits_host = self.lookups = 0
        # pinned retention: the GPU tokens of expired entries as a running sum (``evictable``, asked on
        # every blocked admission, was a sum over all entries): a heap of (expiry, seq, key), one item
        # per entry update (stale ones skipped), and the entries already counted expired
        self._exp_heap: list = []
        self._exp_seq = count()
        self._expired: dict = {}     # key -> tokens counted in _expired_tokens
        self._stamp: dict = {}       # key -> seq of its last insert or move to the LRU end (LRU order)
        self._exp_lru: list = []     # (stamp, key) of the entries counted expired: eviction's order
        self._expired_tokens = 0
        self._exp_now = float("-inf")

    # -- lookups ----------------------------------------------------------------------------------
    def take(self, key, prefix_len: int, now: float, ttl: float | None = None) -> tuple[int, int, int]:
        """Claim the entry for ``key``: (GPU hit tokens, host hit tokens, GPU tokens released).

        The entry leaves the cache: its KV becomes the new request's allocation (GPU) or is loaded
        into it (host). The caller accounts for ``released`` GPU tokens.
        """
        if not self.enabled or key is None:
            return 0, 0, 0
        self.lookups += 1
        entry = self.gpu.pop(key, None)
        if entry is not None:
            tokens, expires = entry
            self.gpu_used -= tokens
            if self.pinning:
                self._dropped(key)
            if now > expires:                      # expired: the provider dropped it
                return 0, 0, tokens
            hit = min(tokens, prefix_len)
            self.hits_gpu += hit > 0
            return hit, 0, tokens
        tokens = self.host.pop(key, None)
        if tokens is not None:
            self.host_used -= tokens
            if now > self.host_expiry.pop(key):
                return 0, 0, 0
            hit = min(tokens, prefix_len)
            self.hits_host += hit > 0
            return 0, hit, 0
        return 0, 0, 0

    def lookup_shared(self, key, length: int, now: float, ttl: float | None = None) -> tuple[int, int]:
        """(GPU, host) hit tokens of a shared prefix; the entry stays (many sessions read it).

        A use never shortens a shared entry's life: its expiry becomes the later of the two.
        """
        if not self.enabled or key is None or length <= 0:
            return 0, 0
        entry = self.gpu.get(key)
        if entry is not None:
            tokens, expires = entry
            if now > expires:
                return 0, 0
            self.gpu.move_to_end(key)
            self.gpu[key] = entry = (tokens, max(expires, self.expiry(now, ttl)))
            if self.pinning:
                self._track(key, entry[1])
            return min(tokens, length), 0
        tokens = self.host.get(key)
        if tokens is not None and now <= self.host_expiry[key]:
            self.host.move_to_end(key)
            self.host_expiry[key] = max(self.host_expiry[key], self.expiry(now, ttl))
            return 0, min(tokens, length)
        return 0, 0

    def put_shared(self, key, length: int, now: float, free: int, ttl: float | None = None) -> None:
        """Keep a copy of a shared prefix if it is not cached and ``free`` GPU tokens allow it."""
        if not self.enabled or key is None or length <= 0 or key in self.gpu or length > free:
            return
        self.gpu[key] = (length, expires := self.expiry(now, ttl))
        self.gpu_used += length
        if self.pinning:
            self._track(key, expires)

    def gpu_hit(self, key, now: float) -> int:
        """Unexpired GPU tokens held for ``key`` (what a router may count on; nothing changes)."""
        entry = self.gpu.get(key) if key is not None and self.enabled else None
        return entry[0] if entry is not None and now <= entry[1] else 0

    def held(self, key, length: int, now: float) -> tuple[int, int]:
        """(GPU, host) tokens of ``key``'s first ``length`` tokens held unexpired here; reads only
        (a router's question: :class:`~agentsim.serving.prefix_router.PrefixAware`)."""
        if not self.enabled or key is None or length <= 0:
            return 0, 0
        entry = self.gpu.get(key)
        if entry is not None and now <= entry[1]:
            return min(entry[0], length), 0
        tokens = self.host.get(key)
        if tokens is not None and now <= self.host_expiry[key]:
            return 0, min(tokens, length)
        return 0, 0

    def peek_gpu(self, key) -> int:
        """GPU tokens that :meth:`take` would release for ``key`` (0 if none)."""
        entry = self.gpu.get(key) if key is not None else None
        return entry[0] if entry else 0

    def release(self, key) -> int:
        """Drop ``key``'s entry from both tiers (its session now runs elsewhere); returns GPU tokens freed."""
        entry = self.gpu.pop(key, None) if key is not None else None
        freed = entry[0] if entry is not None else 0
        self.gpu_used -= freed
        if entry is not None and self.pinning:
            self._dropped(key)
        stale = self.host.pop(key, None) if key is not None else None
        if stale is not None:
            self.host_used -= stale
            del self.host_expiry[key]
        return freed

    def put(self, key, tokens: int, now: float, ttl: float | None = None) -> None:
        """A request finished: keep its context under ``key`` (it already occupies GPU KV)."""
        if not self.enabled or key is None or tokens <= 0:
            return
        old = self.gpu.pop(key, None)
        if old is not None:
            self.gpu_used -= old[0]
        stale = self.host.pop(key, None)
        if stale is not None:
            self.host_used -= stale
            del self.host_expiry[key]
        self.gpu[key] = (tokens, expires := self.expiry(now, ttl))
        self.gpu_used += tokens
        if self.pinning:
            self._track(key, expires)

    def stage(self, key, tokens: int, now: float, ttl: float | None = None) -> None:
        """``tokens`` of ``key`` were loaded from outside (the cluster's KV tier) into the host tier;
        a shorter GPU entry of the key gives way (a lookup would find it first)."""
        if not self.enabled or key is None or tokens <= 0:
            return
        old = self.gpu.pop(key, None)
        if old is not None:
            self.gpu_used -= old[0]
            if self.pinning:
                self._dropped(key)
        self._to_host(key, tokens, self.expiry(now, ttl))

    # -- eviction ---------------------------------------------------------------------------------
    def evict(self, need: int, now: float, force: bool = False) -> int:
        """Free at least ``need`` GPU tokens (LRU; pinned entries only if ``force``); returns freed."""
        if self.pinning and not force and now >= self._exp_now:
            return self._evict_expired(need, now)
        freed = 0
        victims = []                     # LRU first, only as far as needed (not a copy of every key)
        for key, (tokens, expires) in self.gpu.items():
            if freed >= need:
                break
            if self.pinning and not force and not now > expires:
                continue
            victims.append(key)
            freed += tokens
        for key in victims:
            tokens, expires = self.gpu.pop(key)
            expired = now > expires
            self.gpu_used -= tokens
            if self.pinning:
                self._dropped(key)
            if not expired:
                self._to_host(key, tokens, expires)
        return freed

    def _to_host(self, key, tokens: int, expires: float) -> None:
        old = self.host.pop(key, None)      # a shared prefix can be on both tiers: replace, not add
        if old is not None:
            self.host_used -= old
            del self.host_expiry[key]
        cap = self.cfg.host_tokens
        if tokens > cap:
            return
        while self.host_used + tokens > cap:
            k, t = self.host.popitem(last=False)
            self.host_used -= t
            del self.host_expiry[k]
        self.host[key] = tokens
        self.host_expiry[key] = expires
        self.host_used += tokens

    def clear(self) -> None:
        self.gpu.clear()
        self.host.clear()
        self.host_expiry.clear()
        self.gpu_used = self.host_used = 0
        self._exp_heap.clear()
        self._expired.clear()
        self._stamp.clear()
        self._exp_lru.clear()
        self._expired_tokens = 0

    # -- expired pinned tokens (pin_session) ---------------------------------------------------------
    def evictable(self, now: float, force: bool = False) -> int:
        """GPU tokens that ``evict`` could free now: :meth:`GpuTier.evictable`, from the running sum."""
        if not self.pinning or force:
            return self.gpu_used
        if now < self._exp_now:          # asked about a moment before the last one: count afresh
            return GpuTier.evictable(self, now)
        self._exp_now = now
        heap, gpu, expired = self._exp_heap, self.gpu, self._expired
        while heap and heap[0][0] < now:
            expires, _, key = heappop(heap)
            entry = gpu.get(key)
            if entry is not None and entry[1] == expires and key not in expired:
                expired[key] = entry[0]
                self._expired_tokens += entry[0]
                heappush(self._exp_lru, (self._stamp[key], key))
        return self._expired_tokens

    def _evict_expired(self, need: int, now: float) -> int:
        """:meth:`evict` under pinning: only expired entries may go, so walk those (in LRU order) rather
        than every entry; expired entries are dropped, not moved to the host tier."""
        self.evictable(now)
        freed = 0
        gpu, expired, stamp, lru = self.gpu, self._expired, self._stamp, self._exp_lru
        while lru and freed < need:
            seq, key = heappop(lru)
            if key not in expired or stamp[key] != seq:
                continue                 # stale: the entry was used again (or left) since it expired
            tokens = gpu.pop(key)[0]
            self.gpu_used -= tokens
            freed += tokens
            self._expired_tokens -= expired.pop(key)
            del stamp[key]
        return freed

    def _dropped(self, key) -> None:
        """``key``'s GPU entry left the cache."""
        del self._stamp[key]
        if self._expired:
            self._forget(key)

    def _forget(self, key) -> None:
        """``key``'s GPU entry left or changed: it is no longer counted expired."""
        tokens = self._expired.pop(key, None)
        if tokens is not None:
            self._expired_tokens -= tokens
            lru = self._exp_lru
            if len(lru) > 2 * len(self._expired) + 64:    # mostly stale items: rebuild
                stamp = self._stamp
                lru[:] = [(stamp[k], k) for k in self._expired]
                heapify(lru)

    def _track(self, key, expires: float) -> None:
        """``key``'s GPU entry now expires at ``expires`` (an update: any earlier count is dropped)."""
        if self._expired:
            self._forget(key)
        heap = self._exp_heap
        self._stamp[key] = seq = next(self._exp_seq)
        heappush(heap, (expires, seq, key))
        if len(heap) > 2 * len(self.gpu) + 64:     # mostly stale items: rebuild from the entries
            expired = self._expired
            heap[:] = [(e[1], next(self._exp_seq), k) for k, e in self.gpu.items() if k not in expired]
            heapify(heap)


def reserve(cache: PrefixCache | None, req, kv_used: int, n_dec: int, cap: int, now: float, idle: bool) -> bool:
    """Try to admit ``req``: claim its prefix, make room in KV, set its cached-token counts.

    Shared by both engines so that admission is one decision. The request needs ``prompt_len``
    KV tokens while ``n_dec`` decoders each write one token in the coming step; cache entries
    give way (LRU; pinned ones only when the replica is ``idle``).
    """
    need = kv_used + req.prompt_len + n_dec
    if cache is None or not cache.enabled:
        return need <= cap
    key = req.prefix_key if req.preemptions == 0 else None   # a recompute does not look up
    release = cache.peek_gpu(key)
    others = cache.gpu_used - release
    if need + others > cap:
        room = cache.evictable(now, idle) - (release if _evictable(cache, key, now, idle) else 0)
        if need + others - room > cap:
            return False
    if key is not None:
        hit_gpu, hit_host, _ = cache.take(key, req.prefix_len, now, req.cache_ttl)
        if hit_gpu == 0 and hit_host == 0 and req.shared_key is not None:
            hit_gpu, hit_host = cache.lookup_shared(req.shared_key, req.shared_len, now, req.cache_ttl)
        limit = req.prompt_len - 1          # at least one token is computed to sample from
        req.cached_gpu = min(hit_gpu, limit)
        req.cached_host = min(hit_host, limit - req.cached_gpu)
    deficit = need + cache.gpu_used - cap
    if deficit > 0:
        cache.evict(deficit, now, force=idle)
    return True


def _evictable(cache: PrefixCache, key, now: float, force: bool) -> bool:
    entry = cache.gpu.get(key) if key is not None else None
    if entry is None:
        return False
    return not cache.pinning or force or now > entry[1]
