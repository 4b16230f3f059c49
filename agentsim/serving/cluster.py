"""Pools of replicas on sites, routing between them, faults, and power and cost accounting.

A pool is a set of identical replicas (one deployment) at one site. The router picks a replica
for each request among the pools that serve its model; routers are small objects chosen by name
(:data:`ROUTERS`). Faults take replicas down (MTBF/MTTR per pool, scheduled outages of a pool or
a whole site); whatever they held fails back to its client as ``replica_failed``.

Power: a replica draws ``n_gpus·server_w_per_gpu·(idle + (1 - idle)·busy share)`` while up (the
engine integrates this step by step), nothing while down; a site adds its other IT load and
multiplies by its PUE.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from ..model.deployment import Deployment
from .engine import EngineConfig, Replica
from .prefix_router import PrefixAware
from ..util.errors import unknown_name
from .request import Request
from ..model.servicetime import StepCoeffs


@dataclass
class Pool:
    name: str
    index: int
    site: str
    facility_multiplier: float   # facility power per server watt at this pool's site: (1 + other IT) x PUE
    deployment: Deployment
    coeffs: StepCoeffs
    config: EngineConfig
    usd_per_gpu_hour: float
    replicas: list = field(default_factory=list)
    role: str = "mixed"          # mixed | prefill | decode (serving/disagg.py)

    @property
    def n_gpus(self) -> int:
        return self.deployment.n_gpus * len(self.replicas)

    @property
    def idle_power_w(self) -> float:
        """Server wall power of one idle replica."""
        return self.coeffs.power_w * self.coeffs.idle_fraction

    def facility_factor(self) -> float:
        return self.facility_multiplier


# -- routers -------------------------------------------------------------------------------------
class RoundRobin:
    def __init__(self, rng, cfg) -> None:
        self._n = itertools.count()

    def __call__(self, cands: list, req: Request):
        return cands[next(self._n) % len(cands)]


class LeastOutstanding:
    """Fewest requests queued or running (ties: the first candidate, i.e. the lowest index).

    On the cluster's :class:`Candidates` it asks their ordered view (O(log R) per request, R
    candidates); on a plain list it scans (O(R)); both pick the same replica.
    """

    def __init__(self, rng, cfg) -> None:
        pass

    def __call__(self, cands: list, req: Request):
        if len(cands) == 1:
            return cands[0]           # what the scan returns; no heap kept for a single replica
        if type(cands) is Candidates:
            return cands.least()
        return least_outstanding_scan(cands)


def least_outstanding_scan(cands: list):
    """The replica with the fewest outstanding requests, the first of equals: the O(R) reference."""
    best = cands[0]
    best_n = best.outstanding
    for r in cands:
        n = r.outstanding
        if n < best_n:
            best, best_n = r, n
    return best


class PowerOfTwo:
    """Two replicas drawn at random (routing stream); the less loaded wins."""

    def __init__(self, rng, cfg) -> None:
        self.rng = rng
        self._buf = np.empty(0)
        self._i = 0

    def __call__(self, cands: list, req: Request):
        if len(cands) == 1:
            return cands[0]
        if self._i + 2 > len(self._buf):
            self._buf = self.rng.random(4096)
            self._i = 0
        a = cands[int(self._buf[self._i] * len(cands))]
        b = cands[int(self._buf[self._i + 1] * len(cands))]
        self._i += 2
        return a if a.outstanding <= b.outstanding else b


class SpeedAware:
    """Lowest expected finish time from the service-time model — the choice for a mixed fleet.

    Expected finish = the prefills queued ahead (each about one prefill of this size) + this
    request's own prefill step + its decode steps at batch + 1, each slowed by the prefill chunks
    the running and queued requests will add over its lifetime (spread over its output tokens;
    for calls that reuse a prefix, chunks the size of this call's uncached part).
    On a replica whose GPU cache holds the request's prefix, its own prefill is only the new tokens
    (so a session's next call goes back to its cache unless that replica is busier by more).
    """

    def __init__(self, rng, cfg) -> None:
        pass

    def __call__(self, cands: list, req: Request):
        best, best_t = cands[0], float("inf")
        if len(cands) == 1:
            return best               # the only candidate wins whatever its time
        P, O = req.prompt, req.output
        ctx = P + O / 2
        key = req.prefix_key
        # the prompts others will bring: like this one's uncached part when calls reuse a prefix
        typ = max(1, P - req.prefix_len) if key is not None else P
        done = P - typ
        steps: dict = {}    # (pool coefficients, batch) -> their three step times: replicas of a pool share them
        seen = set()        # (pool, batch, queue) already scored: a later twin cannot win the tie
        now = cands[0].env.now
        O1 = O - 1
        for r in cands:
            n, q, hit = r.route_view(key, now)
            c = r.c
            if hit:
                s = steps.get((c, n))
                if s is None:
                    s = steps[c, n] = c.router_times(P, typ, done, n, ctx)
                prefill, decode, extra = s
                hit = min(hit, req.prefix_len, P - 1)
                new = P - hit
                own = c.step_time(new, new * hit + new * new / 2, P, n, n * ctx, n + 1)
            else:
                sig = (c, n, q)
                if sig in seen:
                    continue
                seen.add(sig)
                s = steps.get((c, n))
                if s is None:
                    s = steps[c, n] = c.router_times(P, typ, done, n, ctx)
                prefill, decode, extra = s
                own = prefill
            t = q * prefill + own + O1 * (decode + (n + q + 1) * extra / O)
            if t < best_t:
                best, best_t = r, t
        return best


class SessionAffinity:
    """Keep a session on one replica (prefix-cache hits) unless it is overloaded.

    A session's home is the replica with the lowest expected finish time (speed-aware, so a mixed
    fleet's faster pools get their share) when it first appears; it moves the same way when its
    home holds more than ``bound × mean + 1`` requests or is down.
    """

    def __init__(self, rng, cfg) -> None:
        self.bound = cfg.affinity_load_bound
        self.home: dict = {}
        self._least = SpeedAware(rng, cfg)

    def __call__(self, cands: list, req: Request):
        key = req.prefix_key if req.prefix_key is not None else req.session
        home = self.home.get(key)
        if home is not None and _contains(cands, home):
            n = home.outstanding      # the mean is >= 0, so n <= 1 never needs it
            if n <= 1 or n <= self.bound * outstanding_total(cands) / len(cands) + 1:
                return home
        home = self._least(cands, req)
        self.home[key] = home
        return home


def outstanding_total(cands: list) -> int:
    """Requests queued or running over ``cands``: the cluster's running total, else a sum."""
    if type(cands) is Candidates:
        return cands.total
    return sum(r.outstanding for r in cands)


def _contains(cands: list, replica) -> bool:
    if type(cands) is Candidates:
        pos = cands.pos_of.get(replica.index)
        return pos is not None and cands[pos] is replica
    return replica in cands


ROUTERS = {"round_robin": RoundRobin, "least_outstanding": LeastOutstanding, "power_of_two": PowerOfTwo,
           "speed_aware": SpeedAware, "session_affinity": SessionAffinity, "prefix_aware": PrefixAware}


def make_router(name: str, rng, cfg):
    try:
        return ROUTERS[name](rng, cfg)
    except KeyError:
        raise unknown_name("router", name, ROUTERS, where="router.policy") from None


# -- running totals ------------------------------------------------------------------------------
class Candidates(list):
    """The up, routable replicas a request may enter by (a list, in replica order) with their load
    kept current by the cluster, so that routers and policies decide in O(1) or O(log R):

    * ``total``: requests queued or running over them (``sum(r.outstanding for r in self)``);
    * :meth:`least`: the first of those with the fewest (a heap of ``(outstanding, position)``
      entries, made on the first call; an entry whose count is no longer the replica's is stale
      and dropped when it reaches the top).

    The cluster counts a request on a replica from its submit to its end (the replica's
    ``on_done``), which is what ``Replica.outstanding`` counts; tests check that they agree.
    """

    __slots__ = ("total", "pos_of", "_out", "_rids", "_heap")

    def __init__(self, replicas: list, out: list[int]) -> None:
        super().__init__(replicas)
        self._out = out                               # the cluster's count per replica id (shared)
        self._rids = [r.index for r in replicas]
        self.pos_of = {rid: pos for pos, rid in enumerate(self._rids)}
        self.total = sum(out[rid] for rid in self._rids)
        self._heap: list | None = None

    def least(self):
        """The candidate with the fewest outstanding requests; ties: the first (lowest position)."""
        h = self._heap
        if h is None:
            h = self._rebuild()
        out, rids = self._out, self._rids
        while True:
            n, pos = h[0]
            if out[rids[pos]] == n:
                return self[pos]
            heapq.heappop(h)        # stale: that replica's count has moved since

    def _rebuild(self) -> list:
        out = self._out
        h = self._heap = [(out[rid], pos) for pos, rid in enumerate(self._rids)]
        heapq.heapify(h)
        return h

    def _moved(self, pos: int, n: int) -> None:
        """The replica at ``pos`` now counts ``n`` (the heap's side of a change)."""
        h = self._heap
        if len(h) > 4 * len(self._rids) + 64:   # stale entries bounded: rebuild (O(R), amortised O(1))
            self._rebuild()
        else:
            heapq.heappush(h, (n, pos))


# -- the cluster -----------------------------------------------------------------------------------
class Cluster:
    """All pools, the router and the health of every replica.

    With ``handoff`` (:class:`~agentsim.serving.disagg.Handoff`) pools may be disaggregated: requests
    enter by mixed and prefill pools, and a request routed to a prefill replica takes the hand-off's
    path; decode pools get requests only from it.
    """

    def __init__(self, env, pools: list[Pool], router, on_done, handoff=None, kv_tier=None) -> None:
        self.env = env
        self.pools = pools
        self.router = router
        self.on_done = on_done
        self.replicas = [r for p in pools for r in p.replicas]
        self._by_model: dict[str, list[Pool]] = {}
        self._decoders: dict[str, list[Pool]] = {}
        for p in pools:
            (self._decoders if p.role == "decode" else self._by_model).setdefault(p.deployment.model.name, []).append(p)
        self._entry_pools = [p for p in pools if p.role != "decode"]
        self.handoff = handoff
        if handoff is not None:
            handoff.bind(self)
        self.kv_tier = kv_tier           # serving/kv_tier.py: mixed replicas load session prefixes from it
        self._pool_of = [p for p in pools for _ in p.replicas]
        if kv_tier is not None and hasattr(router, "attach_tier"):
            router.attach_tier(kv_tier, self._tier_terms)
        self._down: dict[int, int] = {}          # replica id -> reasons it is down
        self.down_since: dict[int, float] = {}
        self.down_time = [0.0] * len(self.replicas)
        self._cands_cache: dict = {}
        # running totals: requests submitted to each replica and not yet ended (its ``outstanding``),
        # and the candidate sets each replica is in, updated on every submit and end
        self.outstanding = [0] * len(self.replicas)
        self._member: list[list] = [[] for _ in self.replicas]     # replica id -> [(Candidates, position)]
        for r in self.replicas:
            r.on_done = self._counted_end(r.index, r.on_done)
        if kv_tier is not None:
            kv_tier.enter = self.enter
        # autoscaling (serving/autoscale.py): a routable replica takes new requests (not while it
        # cold-starts or drains); a parked one is not provisioned: down, drawing and costing nothing
        self.routable = [True] * len(self.replicas)
        self.parked_time = [0.0] * len(self.replicas)
        self.parked_since: dict[int, float] = {}

    def _tier_terms(self, replica) -> tuple[str, float]:
        """(model, KV tier bytes a token) of ``replica``'s deployment."""
        dep = self._pool_of[replica.index].deployment
        return dep.model.name, kv_tier_bytes_per_token(dep)

    def candidates(self, model: str | None, decode: bool = False) -> list:
        """Up replicas a request for ``model`` (None: any) may enter by, or with ``decode`` those of its decode pools."""
        key = ("decode", model) if decode else model
        cands = self._cands_cache.get(key)
        if cands is None:
            if decode:
                pools = self._decoders.get(model, [])
            else:
                pools = self._entry_pools if model is None else self._by_model.get(model, [])
            cands = Candidates([r for p in pools for r in p.replicas if r.up and self.routable[r.index]],
                               self.outstanding)
            self._cands_cache[key] = cands
            for pos, r in enumerate(cands):
                self._member[r.index].append((cands, pos))
        return cands

    def _forget_candidates(self) -> None:
        """Replicas went down, came up or changed routability: candidate sets are made afresh."""
        self._cands_cache.clear()
        for m in self._member:
            m.clear()

    def _counted_end(self, rid: int, then):
        """Replica ``rid``'s ``on_done``: uncount the request, then ``then(req)``."""
        out, member = self.outstanding, self._member[rid]

        def ended(req: Request) -> None:
            n = out[rid] = out[rid] - 1
            for cands, pos in member:
                cands.total -= 1
                if cands._heap is not None:
                    cands._moved(pos, n)
            if then is not None:
                then(req)
        return ended

    def enter(self, req: Request, replica) -> None:
        """Submit ``req`` to ``replica`` now (every submit goes through here, so the totals count it)."""
        rid = replica.index
        n = self.outstanding[rid] = self.outstanding[rid] + 1
        for cands, pos in self._member[rid]:
            cands.total += 1
            if cands._heap is not None:
                cands._moved(pos, n)
        replica.submit(req)

    def check_totals(self) -> None:
        """Raise AssertionError unless every running total equals the sum it replaces (tests)."""
        for r in self.replicas:
            assert self.outstanding[r.index] == r.outstanding, (r.index, self.outstanding[r.index], r.outstanding)
        for cands in self._cands_cache.values():
            assert cands.total == sum(r.outstanding for r in cands), (cands.total, [r.outstanding for r in cands])

    def report(self, now: float) -> list[dict]:
        """One row per pool at ``now``: its deployment, limits, busy and down shares, energy and cost
        (what a Result's pool table is made of; read here so results never reach into replicas)."""
        rows = []
        rid = 0
        for p in self.pools:
            energy = busy = down = parked = 0.0
            for r in p.replicas:
                parked += self.parked_s(rid)
                d = self.replica_downtime(rid)
                energy += replica_energy_j(r, p, d, now)
                busy += r.accounted(now)[0]
                down += d
                rid += 1
            n = len(p.replicas)
            rows.append({
                "pool": p.name, "site": p.site, "gpu": p.deployment.gpu.name, "model": p.deployment.model.name,
                "tp": p.deployment.tp, "pp": p.deployment.pp, "ep": p.deployment.ep, "dp_attention": p.deployment.dp,
                "parallelism": p.deployment.parallelism, "precision": p.deployment.precision,
                "kv_dtype": p.deployment.kv_dtype, "kernels": p.deployment.engine, "support": p.coeffs.label,
                "replicas": n, "gpus": p.n_gpus, "kv_capacity_tokens": p.config.kv_capacity,
                "max_batch": p.config.max_batch, "token_budget": p.config.token_budget,
                "busy_frac": busy / (n * now) if now > 0 else 0.0, "down_frac": down / (n * now) if now > 0 else 0.0,
                "energy_j": energy, "facility_energy_j": energy * p.facility_factor(),
                # provisioned GPU time: cold starts and draining count, parked (scaled-in) time does not
                "usd_per_gpu_hour": p.usd_per_gpu_hour, "cost_usd": p.n_gpus * p.usd_per_gpu_hour * now / 3600
                - p.deployment.n_gpus * p.usd_per_gpu_hour * parked / 3600,
                "preemptions": sum(r.preemptions for r in p.replicas),
            })
            if self.handoff is not None:      # a column only where disaggregation is configured
                rows[-1]["role"] = p.role
        return rows

    def load(self, model: str | None) -> "FleetLoad | None":
        """How loaded the up replicas serving ``model`` are (None when none is up): the question a
        gateway policy may ask of the fleet, answered here so no policy reads replica internals."""
        cands = self.candidates(model)
        return FleetLoad(cands) if cands else None

    # the single-candidate short cut: a router that keeps no state per request picks the one
    # candidate there is without being asked (RoundRobin, SessionAffinity, PrefixAware and PinRelease
    # with a prefix key update state, so they are still asked); worked out once per router object
    _one_for = None              # the router _one was worked out for (tests swap in spies)
    _one = 0                     # 0: always ask it, 1: never with one candidate, 2: only for a prefix key

    @staticmethod
    def _one_rule(router) -> int:
        from .routing_guard import PinRelease, QueueGuard
        rule = 1
        while type(router) in (QueueGuard, PinRelease):   # the guard asks its router and, with one candidate, nothing else
            if type(router) is PinRelease:
                rule = 2
            router = router.router
        return rule if type(router) in (LeastOutstanding, SpeedAware, PowerOfTwo) else 0

    def route(self, req: Request, model: str | None = None) -> None:
        cands = self.candidates(model)
        if len(cands) == 1:
            if self._one_for is not self.router:
                self._one_for, self._one = self.router, self._one_rule(self.router)
            one = self._one
            replica = cands[0] if one == 1 or (one == 2 and req.prefix_key is None) else self.router(cands, req)
        elif not cands:
            req.finish = self.env.now
            req.outcome = "replica_failed"
            self.on_done(req)
            return
        else:
            replica = self.router(cands, req)
        if self.handoff is not None and self.handoff.is_prefill(replica):
            self.handoff.start(req, replica)
        elif self.kv_tier is None:
            self.enter(req, replica)            # submit_to without a KV tier to load from
        else:
            self.submit_to(req, replica, self.on_done)

    def submit_to(self, req: Request, replica, end) -> None:
        """Submit ``req`` to ``replica``, first loading from the KV tier (if any) what the replica lacks
        of its prefix; ``end(req)`` if it ends during that load."""
        if self.kv_tier is not None:
            dep = self._pool_of[replica.index].deployment
            seconds, tokens = self.kv_tier.plan(req, replica, dep.model.name, kv_tier_bytes_per_token(dep))
            if tokens:
                return self.kv_tier.load(req, replica, seconds, tokens, end)
        self.enter(req, replica)

    def cancel(self, req: Request, outcome: str) -> None:
        """The client gives up on ``req``, which reached a replica."""
        if self.handoff is not None and self.handoff.cancel(req, outcome):
            return
        if self.kv_tier is not None and self.kv_tier.cancel(req, outcome):
            return
        self.replicas[req.replica].cancel(req, outcome)

    def take_down(self, rid: int) -> None:
        n = self._down.get(rid, 0)
        self._down[rid] = n + 1
        if n == 0:
            self.down_since[rid] = self.env.now
            self._forget_candidates()
            self.replicas[rid].fail()
            if self.handoff is not None:
                self.handoff.replica_down(rid)
            if self.kv_tier is not None:
                self.kv_tier.replica_down(rid)

    def bring_up(self, rid: int) -> None:
        n = self._down.get(rid, 0)
        if n <= 0:
            return
        self._down[rid] = n - 1
        if n == 1:
            self.down_time[rid] += self.env.now - self.down_since.pop(rid)
            self._forget_candidates()
            self.replicas[rid].repair()

    def set_routable(self, rid: int, routable: bool) -> None:
        """Let a replica take new requests, or stop sending it any (what it holds runs on)."""
        if self.routable[rid] != routable:
            self.routable[rid] = routable
            self._forget_candidates()

    def park(self, rid: int) -> None:
        """Release a replica (scaled in, or never provisioned yet): down, unpaid, its caches lost."""
        self.set_routable(rid, False)
        self.parked_since[rid] = self.env.now
        self.take_down(rid)

    def unpark(self, rid: int) -> None:
        """Provision a parked replica again: up (paid, drawing idle power) but not routable until
        its cold start is over (:meth:`set_routable`)."""
        self.parked_time[rid] += self.env.now - self.parked_since.pop(rid)
        self.bring_up(rid)

    def parked_s(self, rid: int) -> float:
        t = self.parked_time[rid]
        if rid in self.parked_since:
            t += self.env.now - self.parked_since[rid]
        return t

    def replica_downtime(self, rid: int) -> float:
        t = self.down_time[rid]
        if rid in self.down_since:
            t += self.env.now - self.down_since[rid]
        return t


def kv_tier_bytes_per_token(dep: Deployment) -> float:
    """Bytes of one token's KV in the shared tier: the model's distinct KV (tp = 1) in the pool's KV dtype."""
    return dep.model.kv_bytes_per_token(dep.kv_dtype, 1)


def fault_process(env, cluster: Cluster, rid: int, mtbf_s: float, mttr_s: float, rng):
    """Alternating exponential up and repair times of one replica (its own RNG stream)."""
    while True:
        yield env.timeout(rng.exponential(mtbf_s))
        cluster.take_down(rid)
        yield env.timeout(rng.exponential(mttr_s))
        cluster.bring_up(rid)


def outage_process(env, cluster: Cluster, rids: list[int], start: float, end: float):
    """A scheduled outage of a pool or a site."""
    yield env.timeout(start)
    for rid in rids:
        cluster.take_down(rid)
    yield env.timeout(end - start)
    for rid in rids:
        cluster.bring_up(rid)


def replica_energy_j(replica: Replica, pool: Pool, downtime: float, now: float) -> float:
    """Server energy of one replica so far: engine steps (the one in progress prorated) + idle
    time while up (a down replica draws nothing)."""
    busy, energy = replica.accounted(now)
    idle = max(0.0, now - busy - downtime)
    return energy + pool.idle_power_w * idle


class FleetLoad:
    """Load of a set of up replicas, each figure computed when asked (shedding asks one or two)."""

    __slots__ = ("_replicas",)

    def __init__(self, replicas: list) -> None:
        self._replicas = replicas

    @property
    def outstanding_per_replica(self) -> float:
        """Queued plus running requests per up replica."""
        return outstanding_total(self._replicas) / len(self._replicas)

    def queue_delay_s(self) -> float:
        """Estimated queueing delay at the least-loaded replica: the prefill time of its queued
        prompts, each priced as one step of the service-time model (chunking overheads left out)."""
        return min(sum(r.c.step_time(q.prompt_len, q.prompt_len * q.prompt_len / 2) for q in r.waiting)
                   for r in self._replicas)
