"""The layers every shipped router runs behind (``guarded``): pin release and the queue guard.

Each router optimises one thing (:data:`OBJECTIVES`). Two things go wrong on a mixed fleet serving
agents, whatever the router:

* **Stranded pins.** Under ``pin_session`` retention a call leaves its session's context pinned on
  the replica it ran on for the TTL. A router that sends the session's next call elsewhere strands
  that pin; stranded pins fill the KV and queues wait for them to expire while the replica runs a
  small batch — one generation sits nearly idle with a long queue. :class:`PinRelease` (on by
  default, ``router.release_moved_pins``) makes the last replica drop the entry when a session
  moves. On the default scenario it brought speed-aware routing's peak SLO attainment from 0.58 to
  0.88 and left the default router's unchanged within its interval (README, "Routing").
* **A long queue at the pick.** :class:`QueueGuard` (opt-in, ``router.queue_guard``) asks one
  observable question of the pick: how long has the request at the head of its queue waited
  (``now - head.ready``; 0 with an empty queue), the queue time an engine reports whatever holds
  the queue up. Past ``limit_s`` the request goes to the replica with the lowest expected finish
  time counting each queue's observed wait (:func:`expected_finish`). ``limit_s`` is the trade-off
  between the policy's objective (cache hits, the fastest or cheapest pool) and latency. Off by
  default: on agent traffic a spilled call recomputes its whole context elsewhere, and on the
  default scenario the guard lowered SLO attainment (0.985 -> 0.929 over the day).

The check costs O(1) per request; the candidates are scanned only for a pick over the limit.
"""
from __future__ import annotations

import math

from .request import Request

#: what each shipped router optimises, alone (README "Routers"; the guard adds the queue bound)
OBJECTIVES: dict[str, str] = {
    "round_robin": "nothing: equal shares of requests per replica, blind to speed, load and cache",
    "least_outstanding": "balance: fewest queued + running requests (latency on a fleet of one generation)",
    "power_of_two": "balance at O(1) per request: the less loaded of two random replicas",
    "speed_aware": "latency: lowest expected finish time from the service-time model, counting a GPU-cached prefix",
    "session_affinity": "prefix-cache hits: a session stays on its replica (compute, energy and cost per "
                        "token) until it holds more than affinity_load_bound x the mean",
    "prefix_aware": "latency with cache hits: expected finish time counting the prefix each replica holds on any "
                    "tier (session entries or shared blocks), no session table",
}


def head_wait(replica, now: float) -> float:
    """How long the request at the head of ``replica``'s queue has waited (0 when none waits)."""
    waiting = replica.waiting
    if not waiting:
        return 0.0
    return now - waiting[0].ready


def expected_finish(r, req: Request, now: float) -> float:
    """Expected time to finish ``req`` on replica ``r``: how long its queue head has waited (a lower
    bound on what is still ahead, whatever holds the queue) + the queued prefills + its own prefill
    (only the uncached part when ``r``'s GPU cache holds its prefix) + its decode at batch + 1, slowed
    by the prefill chunks of the requests running and queued there —
    :class:`~agentsim.serving.cluster.SpeedAware`'s estimate with the observed wait added."""
    c = r.c
    key = req.prefix_key
    n, q, held = r.route_view(key, now)
    P, O = req.prompt, req.output
    ctx = P + O / 2
    prefill = c.step_time(P, P * P / 2, P, n, n * ctx, n + 1)
    own = prefill
    if held:
        hit = min(held, req.prefix_len, P - 1)
        if hit > 0:
            new = P - hit
            own = c.step_time(new, new * hit + new * new / 2, P, n, n * ctx, n + 1)
    decode = c.step_time(decodes=n + 1, decode_context=(n + 1) * ctx)
    # the prefill chunks the running and queued requests will add over its decode (SpeedAware's term)
    typ = max(1, P - req.prefix_len) if key is not None else P
    base = c.step_time(decodes=n, decode_context=n * ctx)
    extra = c.step_time(typ, typ * (P - typ) + typ * typ / 2, P, n, n * ctx, n + 1) - base
    return head_wait(r, now) + q * prefill + own + (O - 1) * (decode + (n + q + 1) * extra / O)


class RouterLayer:
    """A router wrapped by a layer: anything the layer does not define is the wrapped router's (its
    state stays readable through the layer)."""

    router = None

    def __getattr__(self, name: str):
        if name == "router":
            raise AttributeError(name)
        return getattr(self.router, name)


class QueueGuard(RouterLayer):
    """``router``, except that a pick whose queue head has waited over ``limit_s`` is re-made by
    expected finish time with the observed waits counted (see the module docstring)."""

    def __init__(self, router, limit_s: float, env) -> None:
        if not (limit_s >= 0 and math.isfinite(limit_s)):
            raise ValueError(f"limit_s must be a finite number >= 0, got {limit_s!r}")
        self.router = router
        self.limit_s = limit_s
        self.env = env
        self.spills = 0          # requests moved off the router's first pick

    def __call__(self, cands: list, req: Request):
        pick = self.router(cands, req)
        now = self.env.now
        if head_wait(pick, now) <= self.limit_s or len(cands) == 1:
            return pick
        best, best_t = pick, expected_finish(pick, req, now)
        for r in cands:
            t = expected_finish(r, req, now)
            if t < best_t:
                best, best_t = r, t
        if best is not pick:
            self.spills += 1
            if req.prefix_key is not None:
                req.cache_ttl = 0.0      # a one-off visit: its context is not pinned there (LRU only)
        return best


class PinRelease(RouterLayer):
    """``router``, and when it sends a session's call to another replica than its last call, the
    last replica drops the session's prefix entry if it pins (``pin_session`` retention; LRU caches
    evict a stale copy before it blocks anything and keep it): pinned, that entry would
    otherwise stay pinned for its TTL where the session no longer goes, holding KV that blocks the
    queue there (routers that move sessions freely strand one pin per move)."""

    def __init__(self, router) -> None:
        self.router = router
        self.last: dict = {}         # prefix key -> replica of its last call
        self.released = 0            # entries dropped

    def __call__(self, cands: list, req: Request):
        pick = self.router(cands, req)
        key = req.prefix_key
        if key is not None:
            last = self.last.get(key)
            if last is not pick:
                if last is not None and getattr(last.cache, "pinning", False) and hasattr(last.cache, "release"):
                    self.released += last.cache.release(key) > 0
                self.last[key] = pick
        return pick


def guarded(router, cfg, slo_ttft_s: float, env):
    """``router`` with what the router settings add: stranded pins released when a session moves
    (``cfg.release_moved_pins``), then the queue guard (``cfg.queue_guard``, ``cfg.queue_limit_s``;
    default limit: half the TTFT SLO; off without a finite TTFT SLO to derive it from). A spill of
    the guard is a one-off visit, not a move: it releases nothing."""
    if cfg.release_moved_pins:
        router = PinRelease(router)
    if not cfg.queue_guard:
        return router
    limit = cfg.queue_limit_s
    if limit is None:
        if not math.isfinite(slo_ttft_s):
            return router
        limit = slo_ttft_s / 2
    return QueueGuard(router, limit, env)
