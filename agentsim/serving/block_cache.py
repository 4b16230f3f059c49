"""A prefix cache of fixed-size KV blocks named by hash, shared by every request of a replica.

Where :class:`~agentsim.serving.prefix_cache.PrefixCache` keeps one entry per session, this cache keeps
the blocks themselves, as vLLM's automatic prefix caching and Mooncake's KV store do: a request's
``prefix_key`` is the tuple of its prompt's block hashes (a Mooncake trace's ``hash_ids``, one per
512 tokens), and two requests share a block exactly when they carry the same hash (the hashes are
chained: a block's hash stands for its whole prefix, as in vLLM and Mooncake). Selected with
``engine.prefix_cache = "blocks"``.

* **Hits.** A request reuses the longest run of *leading* blocks that are cached: ``512`` tokens
  a block, capped by its ``prefix_len`` (its input length). Blocks of the run held in GPU memory
  are GPU hits (no prefill); blocks of the run found in the host tier are host hits (a
  host-to-GPU transfer in its first step). A lookup does not consume blocks (``take`` releases
  nothing): many requests read the same block. It refreshes their LRU position and TTL.
* **Inserts.** When a request finishes, its blocks enter the GPU tier (a block already there is
  refreshed; one in the host tier moves back). Block ``i`` holds ``min(512, tokens - 512·i)`` of
  the request's ``tokens`` KV tokens, so what the cache gains never exceeds what the request
  frees and the engine's ``kv_used + gpu_used <= capacity`` holds after every event. Blocks are
  refreshed last-block-first, so a prompt's leading blocks — the ones every later hit needs —
  are the last to be evicted (vLLM frees a request's blocks in reverse order for the same reason).
* **Memory and eviction.** Cached blocks occupy ``gpu_used`` tokens of the replica's KV memory
  that running requests do not use. A request's whole prompt is allocated at admission, hit or
  not, so a hit block is counted once in the cache and once in the request while it runs (a
  conservative model of sharing). Eviction is LRU to the host tier (``cfg.host_tokens``, LRU
  itself); retention is the engine's: ``lru`` (blocks expire ``ttl_s``, or the request's own
  ``cache_ttl``, after their last use:
  expired blocks count as misses and are dropped, not moved to host), ``pin_session`` (unexpired
  blocks are evicted only when forced), ``none``.

The interface is :class:`PrefixCache`'s (``take``, ``peek_gpu``, ``lookup_shared``,
``put_shared``, ``put``, ``evictable``, ``evict``, ``next_expiry``, ``clear``), so both engines and
:func:`agentsim.serving.prefix_cache.reserve` use it unchanged.
"""
from __future__ import annotations

from collections import OrderedDict

from .prefix_cache import CacheConfig, GpuTier

#: tokens per KV block (Mooncake's hash_ids are per 512 tokens)
BLOCK_TOKENS = 512


class BlockPrefixCache(GpuTier):
    """GPU and host tiers of hashed KV blocks for one replica; ``gpu_used`` counts GPU tokens."""

    def __init__(self, config: CacheConfig, block_tokens: int = BLOCK_TOKENS) -> None:
        self.cfg = config
        self.block = block_tokens
        self.pinning = config.retention == "pin_session"
        self.enabled = config.retention != "none"
        self.gpu: OrderedDict = OrderedDict()    # block hash -> (tokens, expires_at); LRU first
        self.host: OrderedDict = OrderedDict()   # block hash -> tokens; LRU first
        self.gpu_used = 0
        self.host_used = 0
        self.hits_gpu = self.hits_host = self.lookups = 0

    # -- lookups ----------------------------------------------------------------------------------
    def _run(self, blocks, length: int, now: float, ttl: float | None) -> tuple[int, int]:
        """(GPU, host) tokens of the leading cached run of ``blocks``, capped by ``length``; refreshes it.

        A use never shortens a block's life (blocks are shared): its expiry becomes the later one.
        """
        gpu, host, B = self.gpu, self.host, self.block
        hit_gpu = hit_host = 0
        on_gpu = []
        on_host = []
        for i, h in enumerate(blocks):
            size = length - i * B
            if size <= 0:
                break
            if size > B:
                size = B
            entry = gpu.get(h)
            if entry is not None:
                if now > entry[1]:                # expired: the provider dropped it
                    del gpu[h]
                    self.gpu_used -= entry[0]
                    break
                hit_gpu += size
                on_gpu.append(h)
                continue
            if h in host:
                hit_host += size
                on_host.append(h)
                continue
            break
        expires = self.expiry(now, ttl)
        for h in reversed(on_gpu):                # leading blocks end up most recently used
            gpu.move_to_end(h)
            size, old = gpu[h]
            gpu[h] = (size, old if old > expires else expires)
        for h in reversed(on_host):
            host.move_to_end(h)
        return hit_gpu, hit_host

    def take(self, key, prefix_len: int, now: float, ttl: float | None = None) -> tuple[int, int, int]:
        """(GPU hit tokens, host hit tokens, GPU tokens released = 0): blocks stay shared."""
        if not self.enabled or not key:
            return 0, 0, 0
        self.lookups += 1
        hit_gpu, hit_host = self._run(key, prefix_len, now, ttl)
        self.hits_gpu += hit_gpu > 0
        self.hits_host += hit_gpu == 0 and hit_host > 0
        return hit_gpu, hit_host, 0

    def lookup_shared(self, key, length: int, now: float, ttl: float | None = None) -> tuple[int, int]:
        """(GPU, host) hit tokens of a shared prefix given as block hashes; blocks stay."""
        if not self.enabled or not key or length <= 0:
            return 0, 0
        return self._run(key, length, now, ttl)

    def put_shared(self, key, length: int, now: float, free: int, ttl: float | None = None) -> None:
        """Cache the blocks of a shared prefix if ``free`` GPU tokens allow all of them."""
        if not self.enabled or not key or length <= 0:
            return
        new = sum(min(self.block, length - i * self.block) for i, h in enumerate(key)
                  if length - i * self.block > 0 and h not in self.gpu)
        if new <= free:
            self._insert(key, length, self.expiry(now, ttl))

    def gpu_hit(self, key, now: float) -> int:
        """0: routers do not look into block caches (a trace's blocks are shared across keys)."""
        return 0

    def held(self, blocks, length: int, now: float) -> tuple[int, int]:
        """(GPU, host) tokens of the leading run of ``blocks`` held here (unexpired on the GPU),
        capped by ``length``; reads only, unlike :meth:`take` (a router's question)."""
        if not self.enabled or not blocks or length <= 0:
            return 0, 0
        gpu, host, B = self.gpu, self.host, self.block
        hit_gpu = hit_host = 0
        for i, h in enumerate(blocks):
            size = min(B, length - i * B)
            if size <= 0:
                break
            entry = gpu.get(h)
            if entry is not None and now <= entry[1]:
                hit_gpu += size
            elif entry is None and h in host:
                hit_host += size
            else:
                break
        return hit_gpu, hit_host

    def peek_gpu(self, key) -> int:
        """GPU tokens :meth:`take` would release: none, blocks are shared."""
        return 0

    def put(self, key, tokens: int, now: float, ttl: float | None = None) -> None:
        """A request finished with ``tokens`` KV tokens: its blocks join (or refresh in) the GPU tier."""
        if not self.enabled or not key or tokens <= 0:
            return
        self._insert(key, tokens, self.expiry(now, ttl))

    def _insert(self, blocks, tokens: int, expires: float) -> None:
        gpu, host, B = self.gpu, self.host, self.block
        n = min(len(blocks), -(-tokens // B))
        for i in range(n - 1, -1, -1):            # last block first: leading blocks end up MRU
            h = blocks[i]
            entry = gpu.get(h)
            if entry is not None:
                gpu.move_to_end(h)
                gpu[h] = (entry[0], entry[1] if entry[1] > expires else expires)
                continue
            stale = host.pop(h, None)
            if stale is not None:
                self.host_used -= stale
            size = min(B, tokens - i * B)
            gpu[h] = (size, expires)
            self.gpu_used += size

    # -- eviction ---------------------------------------------------------------------------------
    def evict(self, need: int, now: float, force: bool = False) -> int:
        """Free at least ``need`` GPU tokens, LRU first (pinned blocks only if ``force``); returns freed."""
        freed = 0
        gpu = self.gpu
        if not self.pinning or force:
            while freed < need and gpu:
                h, (tokens, expires) = gpu.popitem(last=False)
                self.gpu_used -= tokens
                freed += tokens
                if now <= expires:
                    self._to_host(h, tokens)
            return freed
        for h in [h for h, (_, expires) in gpu.items() if now > expires]:
            if freed >= need:
                break
            tokens, _ = gpu.pop(h)
            self.gpu_used -= tokens
            freed += tokens
        return freed

    def _to_host(self, h, tokens: int) -> None:
        cap = self.cfg.host_tokens
        if tokens > cap:
            return
        host = self.host
        while self.host_used + tokens > cap:
            _, t = host.popitem(last=False)
            self.host_used -= t
        host[h] = tokens
        self.host_used += tokens

    def clear(self) -> None:
        self.gpu.clear()
        self.host.clear()
        self.gpu_used = self.host_used = 0
