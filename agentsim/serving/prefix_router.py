"""``prefix_aware`` routing: the expected finish time at each replica, counting the prefix it holds.

Production routers score replicas by the KV blocks of a request's prefix that each one holds
(precise prefix scorers, as in llm-d's scheduler or Mooncake's conductor) together with their
load. This router does that with agentsim's service-time model, so the two terms share one unit,
seconds:

    t(r) = wait(r) + own(r) + (O − 1) · (decode(r) + (n + q + 1) · extra(r) / O)

* ``own(r)``: this request's prefill at ``r``: only the tokens ``r`` does not hold. Its cache is
  read, not touched (:meth:`~agentsim.serving.prefix_cache.PrefixCache.held`): GPU-tier tokens skip
  prefill; host-tier tokens skip it too but cost a host-to-GPU load each (``t_host_load``); the
  session's own prefix first, else the shared system prompt. Session entries or 512-token blocks
  (``engine.prefix_cache = "blocks"``, whose leading run is counted) alike. With a cluster KV tier
  (:mod:`~agentsim.serving.kv_tier`) that holds more than the replica, what the cluster will do:
  the load's seconds, then all of it as a host hit.
* ``wait(r)``: the prefill work this router has sent to ``r`` and not yet seen done — each choice
  adds its ``own`` to the replica's backlog, which drains at one second per second. It counts the
  long cold prompt a replica has admitted and is still prefilling, which its queue does not show.
  (Counting the queue instead — ``q`` prefills of this prompt's uncached size — sent warm calls
  behind admitted cold prompts and raised TTFT p99 on the coding workload by 3-12 s.)
* the decode term: ``O − 1`` decode steps at batch ``n + 1``, slowed by the prefill chunks the
  running and queued requests add over its lifetime — as :class:`~agentsim.serving.cluster.SpeedAware`.

Unlike ``session_affinity`` it needs no session table: a session goes back to wherever its KV is,
on any tier, unless that replica's queue costs more than recomputing elsewhere; a session whose
KV was evicted everywhere goes to the fastest replica.

**Cost per decision**: for each candidate replica one cache read — a dict lookup for session
entries, one per leading block for block caches (a 100 k-token prefix is ~200 lookups) — and one
step-time evaluation when it holds part of the prefix; the step times of a replica holding
nothing are computed once per (pool, batch size) and twins are skipped. So O(R) for R candidates
with session caches, O(R · B) with B blocks a prefix. Measured (this repository's 2-core
machine, timing the router calls of a run): 48 µs a decision over 16 replicas on the TraceLab
coding workload (``speed_aware`` 30 µs, ``session_affinity`` 4 µs: it looks up one home), 76 µs
over 16 replicas with block caches on the Mooncake conversation trace (24 blocks a prompt).
"""
from __future__ import annotations

from .request import Request


class PrefixAware:
    """Lowest expected finish time with each replica's held prefix (any tier) counted."""

    def __init__(self, rng, cfg) -> None:
        self.free_at: dict[int, float] = {}   # replica index -> when the prefills sent there should be done
        self.tier = None
        self.tier_terms = None

    def attach_tier(self, tier, tier_terms) -> None:
        """Count the cluster's KV tier too: ``tier_terms(replica)`` is (model, KV bytes a token)."""
        self.tier, self.tier_terms = tier, tier_terms

    def _held(self, r, req: Request, resident: int, now: float) -> tuple[int, int, float]:
        """(GPU tokens, host tokens) of the prompt replica ``r`` will hold when the request starts,
        and the seconds of loading them from the cluster's KV tier first (0 without one)."""
        g = h = 0
        cache = r.cache
        if cache is not None:
            if req.prefix_key is not None:
                g, h = cache.held(req.prefix_key, req.prefix_len, now)
            if not (g or h) and req.shared_key is not None:
                g, h = cache.held(req.shared_key, req.shared_len, now)
        if resident > g + h:
            return resident, 0, 0.0
        if self.tier is not None:
            seconds, tokens = self.tier.cost(req, r, *self.tier_terms(r))
            if tokens:
                return 0, tokens, seconds     # as the cluster will do: load, then a host hit of all of it
        return g, h, 0.0

    def __call__(self, cands: list, req: Request):
        P, O = req.prompt, req.output
        ctx = P + O / 2
        key, length = req.prefix_key, req.prefix_len
        resident = req.cached_gpu        # already in the replica's KV wherever it goes (a decode leg: all of it)
        typ = max(1, P - max(length if key is not None else 0, resident))
        done = P - typ
        now = cands[0].env.now
        steps: dict = {}    # replicas of one pool at one batch size share their step times
        seen = set()        # (pool, batch, queue, wait) of a replica holding nothing, already scored
        best, best_t, best_own = cands[0], float("inf"), 0.0
        for r in cands:
            c, n = r.c, r.n_running
            q = r.queued
            g, h, load = self._held(r, req, resident, now)
            wait = self.free_at.get(r.index, 0.0) - now
            if not (g or h):
                sig = (id(c), n, q, wait if wait > 0 else 0.0)
                if sig in seen:
                    continue    # a later twin cannot win the tie
                seen.add(sig)
            s = steps.get((id(c), n))
            if s is None:
                s = steps[id(c), n] = c.router_times(P, typ, done, n, ctx)
            prefill, decode, extra = s
            hit = min(g + h, P - 1)
            own = prefill
            if hit:
                new = P - hit
                own = (c.step_time(new, new * hit + new * new / 2, P, n, n * ctx, n + 1) + min(h, hit) * c.t_host_load
                       + load)
            t = (wait if wait > 0 else 0.0) + own + (O - 1) * (decode + (n + q + 1) * extra / O)
            if t < best_t:
                best, best_t, best_own = r, t, own - load    # the load is not the replica's work
        self.free_at[best.index] = max(now, self.free_at.get(best.index, 0.0)) + best_own
        return best

