"""A cluster-wide KV tier (CXL, SSD or pooled remote memory; Mooncake's KV store): session prefixes
any replica can load instead of recomputing.

Besides each replica's GPU and host tiers, the tier keeps the context of every finished request
under its session key (per model: KV layouts differ), up to ``capacity`` bytes, least recently used
first out (a use refreshes an entry; there is no TTL). When the router sends a request to a replica
that holds less of its prefix than the tier does, the replica loads the difference from the tier
first: ``latency + bytes / bandwidth``; the loaded tokens land in the replica's host tier and reach
the GPU at admission as a host hit (one more copy than a GPUDirect load: conservative). Writes are
write-back and free (they overlap the next requests). Not modelled: bandwidth shared between
concurrent loads.

Prefill replicas of disaggregated pools load the same way (the prefill leg waits for the load);
prefill legs leave their prompt and decode legs the whole context under the session key. A cancel
or a failure of the replica during a load ends the request like a transfer's
(:mod:`~agentsim.serving.disagg`); the Cluster asks :meth:`KvTier.cancel` and :meth:`KvTier.replica_down`.
"""
from __future__ import annotations

from collections import OrderedDict

from ..util.events import _push
from .request import Request


def _submit(req: Request, replica) -> None:
    replica.submit(req)


class KvTier:
    """Session prefixes by (model, key), LRU within ``capacity_bytes``; loads cost latency + bytes / bandwidth."""

    def __init__(self, env, capacity_bytes: float, bytes_per_s: float, latency_s: float) -> None:
        self.env, self.capacity, self.bytes_per_s, self.latency_s = env, capacity_bytes, bytes_per_s, latency_s
        self.entries: OrderedDict = OrderedDict()    # (model, key) -> (tokens, bytes); LRU first
        self.used = 0.0
        self.loading: dict[int, tuple] = {}   # request id -> (request, replica, tokens, end)
        self.loads = self.loaded_tokens = self.evictions = 0
        #: how a loaded request enters its replica: the cluster's ``enter`` (which counts it), set by the cluster
        self.enter = _submit

    # -- entries ----------------------------------------------------------------------------------------
    def put(self, model: str, key, tokens: int, bytes_per_token: float) -> None:
        """A request of ``model`` finished with ``tokens`` of context under ``key``: keep it (LRU)."""
        if key is None or tokens <= 0:
            return
        nbytes = tokens * bytes_per_token
        old = self.entries.pop((model, key), None)
        if old is not None:
            self.used -= old[1]
        if nbytes > self.capacity:
            return
        while self.used + nbytes > self.capacity:
            _, (_, b) = self.entries.popitem(last=False)
            self.used -= b
            self.evictions += 1
        self.entries[(model, key)] = (tokens, nbytes)
        self.used += nbytes

    def ended(self, req: Request, *, model: str, bytes_per_token: float, then) -> None:
        """A replica's ``on_done``: keep a completed request's context, then pass it on to ``then``."""
        if req.outcome == "completed":
            self.put(model, req.prefix_key, req.kv or req.prompt + req.output, bytes_per_token)
        then(req)

    def tokens(self, model: str, key) -> int:
        entry = self.entries.get((model, key)) if key is not None else None
        return entry[0] if entry is not None else 0

    # -- loads ------------------------------------------------------------------------------------------
    def cost(self, req: Request, replica, model: str, bytes_per_token: float) -> tuple[float, int]:
        """(seconds, tokens) to load what ``replica`` lacks of ``req``'s prefix from the tier ((0, 0):
        nothing to load, or a replica without a session cache and host tier to load into). Reads only."""
        key = req.prefix_key
        entry = self.entries.get((model, key)) if key is not None else None
        cache = replica.cache
        if entry is None or not hasattr(cache, "stage") or not cache.cfg.host_tokens:
            return 0.0, 0
        want = min(entry[0], req.prefix_len)
        g, h = cache.held(key, want, self.env.now)
        if g + h >= want:
            return 0.0, 0
        return self.latency_s + (want - g - h) * bytes_per_token / self.bytes_per_s, want

    def plan(self, req: Request, replica, model: str, bytes_per_token: float) -> tuple[float, int]:
        """:meth:`cost`, the entry refreshed (it is about to be used)."""
        seconds, tokens = self.cost(req, replica, model, bytes_per_token)
        if tokens:
            self.entries.move_to_end((model, req.prefix_key))
        return seconds, tokens

    def load(self, req: Request, replica, seconds: float, tokens: int, end) -> None:
        """Load ``tokens`` of ``req``'s prefix into ``replica``'s host tier, then submit it there;
        ``end(req)`` if it ends during the load (the cluster's end, or the hand-off's for a leg)."""
        req.replica = replica.index
        self.loading[req.rid] = (req, replica, tokens, end)
        _push(self.env, self._loaded, req, seconds)

    def _loaded(self, ev) -> None:
        req = ev.value
        got = self.loading.get(req.rid)
        if got is None or got[0] is not req:
            return             # it ended during the load (a cancel, a failure)
        del self.loading[req.rid]
        _, replica, tokens, _ = got
        replica.cache.stage(req.prefix_key, tokens, self.env.now, req.cache_ttl)
        self.loads += 1
        self.loaded_tokens += tokens
        self.enter(req, replica)

    def cancel(self, req: Request, outcome: str) -> bool:
        """The client gives up on ``req``: True if it was loading (then it ended here)."""
        got = self.loading.get(req.rid)
        if got is None or got[0] is not req:
            return False
        self._end(got, outcome)
        return True

    def replica_down(self, rid: int) -> None:
        """Replica ``rid`` failed: the loads into it fail back."""
        for got in [v for v in self.loading.values() if v[1].index == rid]:
            self._end(got, "replica_failed")

    def _end(self, got: tuple, outcome: str) -> None:
        req, _, _, end = got
        del self.loading[req.rid]
        req.outcome, req.finish = outcome, self.env.now
        end(req)
