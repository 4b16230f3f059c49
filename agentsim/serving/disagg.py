"""Prefill/decode disaggregation: a request prefills on a prefill replica, its KV moves to a decode
replica over the link between the two pools, and it decodes there (docs/DESIGN.md §7.1).

The hand-off lives at the cluster level; the engines are unchanged. A disaggregated request runs as
two *legs*, each a :class:`Request` of its own that a replica serves like any other:

* the **prefill leg**: the prompt with one output token (the first token, which the client
  receives from the prefill replica); it looks up and leaves the session's prefix in the prefill
  replica's cache like a mixed replica's request;
* the **transfer**: ``latency + bytes / bandwidth`` (:func:`transfer_s`), no replica involved;
* the **decode leg**: the prompt plus the first token, already resident (``cached_gpu``: its KV
  arrived, so the engine computes only the first token's own step) and ``output - 1`` tokens to
  generate. Its KV occupies the decode replica from admission like any request's.

The client sees one request (the *parent*): arrival, queueing, admission and first token from the
prefill leg; finish and outcome from the decode leg. A leg that fails, is refused or cancelled ends
the parent with that outcome; a failure of either replica during the transfer ends it as
``replica_failed``. Every parent ends exactly once, through the cluster's ``on_done``.

Not modelled: contention between concurrent transfers on a NIC, the prefill replica holding the
KV until the transfer ends (it frees or caches it when the first token is out), layer-by-layer
overlap of transfer and prefill (the transfer starts after the prefill: conservative).
"""
from __future__ import annotations

import math

from ..model.hardware import BYTES_PER_ELEMENT
from ..util.events import _push
from .request import Request

PREFILL, TRANSFER, DECODE = 0, 1, 2


# -- the link and the bytes ------------------------------------------------------------------------
def kv_wire_bytes_per_token(src, dst) -> float:
    """Bytes one token's KV puts on the wire from deployment ``src`` to ``dst``.

    The token's distinct KV over all layers (the model's KV elements at tp = 1: GQA heads once, the
    MLA latent once, however the tp group replicates or splits it), at the narrower of the two KV
    dtypes: a cast to the decode layout happens on whichever side keeps the wire smaller.
    """
    elements = src.model.kv_elements_per_token(1)
    return elements * min(BYTES_PER_ELEMENT[src.kv_dtype], BYTES_PER_ELEMENT[dst.kv_dtype])


def link(src_pool, dst_pool) -> tuple[str, float]:
    """(kind, bytes/s) of the path a sequence's KV takes from a ``src_pool`` replica to a ``dst_pool`` one.

    ``scale-up`` (NVLink) when both pools are at one site on one GPU type and together fit in one
    scale-up domain (``gpus_per_node``: an 8-GPU HGX node, a 72-GPU NVL72 rack); else ``scale-out``
    (the GPUs' NICs). A sequence's KV lives on one attention rank (``tp x pp`` GPUs; with
    ``dp_attention`` each rank holds its own sequences), so the lanes are the smaller rank's GPUs,
    each at the slower side's per-GPU, per-direction bandwidth.
    """
    a, b = src_pool.deployment, dst_pool.deployment
    lanes = min(a.tp * a.pp, b.tp * b.pp)
    same_domain = (src_pool.site == dst_pool.site and a.gpu.name == b.gpu.name
                   and src_pool.n_gpus + dst_pool.n_gpus <= a.gpu.gpus_per_node)
    if same_domain:
        return "scale-up", lanes * a.gpu.link_bytes_per_s_per_direction
    return "scale-out", lanes * min(a.gpu.scaleout_gbps, b.gpu.scaleout_gbps) * 1e9


def transfer_s(tokens: int, src_pool, dst_pool, latency_s: float) -> tuple[float, float]:
    """(seconds, bytes) to move ``tokens`` tokens of KV from a ``src_pool`` replica to a ``dst_pool`` one."""
    nbytes = tokens * kv_wire_bytes_per_token(src_pool.deployment, dst_pool.deployment)
    return latency_s + nbytes / link(src_pool, dst_pool)[1], nbytes


# -- the legs ----------------------------------------------------------------------------------------
def _leg(req: Request, arrival: float, prompt: int, output: int, **kw) -> Request:
    leg = Request(req.rid, arrival, prompt, output, session=req.session, tenant=req.tenant, user=req.user,
                  stream=req.stream, population=req.population, priority=req.priority, **kw)
    leg.model, leg.tier, leg.plan = req.model, req.tier, req.plan
    leg.call, leg.attempt, leg.trigger = req.call, req.attempt, req.trigger
    return leg


def prefill_leg(req: Request) -> Request:
    leg = _leg(req, req.arrival, req.prompt, 1, prefix_key=req.prefix_key, prefix_len=req.prefix_len)
    leg.shared_key, leg.shared_len, leg.cache_ttl = req.shared_key, req.shared_len, req.cache_ttl
    leg.cached_gpu, leg.cached_host = req.cached_gpu, req.cached_host
    return leg


def decode_leg(req: Request, now: float) -> Request:
    """The prompt and the first token, resident (transferred); ``output - 1`` tokens to go."""
    leg = _leg(req, now, req.prompt + 1, req.output - 1)
    leg.cached_gpu = req.prompt + 1
    return leg


class Flight:
    """One disaggregated request between its entry and its end."""

    __slots__ = ("req", "leg", "stage", "src", "dst")

    def __init__(self, req: Request, leg: Request, src) -> None:
        self.req, self.leg, self.stage, self.src, self.dst = req, leg, PREFILL, src, None


class Handoff:
    """The prefill -> transfer -> decode path of every disaggregated request.

    Replicas of prefill and decode pools report their legs to :meth:`leg_done`; ``on_done(parent)``
    is the cluster's end of a request. ``router`` picks the decode replica.
    """

    def __init__(self, env, router, latency_s: float, on_done) -> None:
        self.env, self.router, self.latency_s, self.on_done = env, router, latency_s, on_done
        self.cluster = None
        self.flights: dict[int, Flight] = {}
        self.moving: dict[int, Flight] = {}      # flights in transfer, by request id
        self.pool_of: list = []                  # replica index -> Pool
        self._links: dict = {}                   # (src pool, dst pool) -> (kind, bytes/s)
        #: request id -> (decode replica, transfer seconds, bytes): the requests table's extra columns
        self.records: dict[int, tuple[int, float, float]] = {}
        self.sent_tokens = self.arrived_tokens = self.dropped_tokens = 0   # KV conservation counters

    def bind(self, cluster) -> None:
        self.cluster = cluster
        self.pool_of = [p for p in cluster.pools for _ in p.replicas]

    def is_prefill(self, replica) -> bool:
        return self.pool_of[replica.index].role == "prefill"

    # -- the path ---------------------------------------------------------------------------------
    def start(self, req: Request, replica) -> None:
        """``req`` was routed to the prefill replica ``replica``."""
        leg = prefill_leg(req)
        self.flights[req.rid] = Flight(req, leg, replica)
        req.replica = replica.index
        self.cluster.submit_to(leg, replica, self.leg_done)      # after a load from the KV tier, if any

    def leg_done(self, leg: Request) -> None:
        """A replica of a prefill or decode pool ended ``leg`` (its ``on_done``)."""
        f = self.flights.get(leg.rid)
        if f is None or f.leg is not leg:
            raise RuntimeError(f"request {leg.rid}: a leg ended that the hand-off does not know")
        req = f.req
        if f.stage == PREFILL:
            req.ready, req.admitted, req.first_token = leg.ready, leg.admitted, leg.first_token
            req.cached_gpu, req.cached_host = leg.cached_gpu, leg.cached_host
            req.prefill_tokens, req.preemptions = leg.prefill_tokens, leg.preemptions
            if leg.outcome == "completed":
                self._keep(f.src, req.prefix_key, leg.kv or req.prompt)
                if req.output > 1:
                    return self._transfer(f)
        else:
            req.preemptions += leg.preemptions
            req.prefill_tokens += max(0, leg.prefill_tokens - 1)   # beyond the first token's step: recomputes
            if leg.outcome == "completed":
                self._keep(f.dst, req.prefix_key, leg.kv or leg.prompt + leg.output)
        self._finish(f, leg.outcome, leg.finish)

    def _keep(self, replica, key, tokens: int) -> None:
        """Leave a finished leg's KV in the cluster's KV tier (if there is one) under the session key."""
        tier = self.cluster.kv_tier
        if tier is not None and key is not None:
            dep = self.pool_of[replica.index].deployment
            tier.put(dep.model.name, key, tokens, dep.model.kv_bytes_per_token(dep.kv_dtype, 1))

    def _transfer(self, f: Flight) -> None:
        req, now = f.req, self.env.now
        model = self.pool_of[f.src.index].deployment.model.name
        cands = self.cluster.candidates(model, decode=True)
        if not cands:
            return self._finish(f, "replica_failed", now)
        dst = self.router(cands, decode_leg(req, now))
        src_pool, dst_pool = self.pool_of[f.src.index], self.pool_of[dst.index]
        key = (src_pool.index, dst_pool.index)
        path = self._links.get(key)
        if path is None:
            path = self._links[key] = link(src_pool, dst_pool)
        nbytes = req.prompt * kv_wire_bytes_per_token(src_pool.deployment, dst_pool.deployment)
        dt = self.latency_s + nbytes / path[1]
        f.stage, f.dst, f.leg = TRANSFER, dst, None
        self.moving[req.rid] = f
        self.sent_tokens += req.prompt
        self.records[req.rid] = (dst.index, dt, nbytes)
        _push(self.env, self._arrived, f, dt)

    def _arrived(self, ev) -> None:
        f = ev.value
        req = f.req
        if self.moving.get(req.rid) is not f:
            return            # it ended during the transfer (a failure, a cancel)
        del self.moving[req.rid]
        self.arrived_tokens += req.prompt
        f.stage = DECODE
        f.leg = leg = decode_leg(req, self.env.now)
        self.cluster.enter(leg, f.dst)

    def _finish(self, f: Flight, outcome: str, t: float) -> None:
        req = f.req
        del self.flights[req.rid]
        if self.moving.pop(req.rid, None) is not None:
            self.dropped_tokens += req.prompt
        req.outcome = outcome
        req.finish = t if not math.isnan(t) else self.env.now
        self.on_done(req)

    # -- the cluster's events -----------------------------------------------------------------------
    def cancel(self, req: Request, outcome: str) -> bool:
        """The client gives up on ``req``: True if it is a disaggregated request (handled here)."""
        f = self.flights.get(req.rid)
        if f is None or f.req is not req:
            return False
        if f.stage == TRANSFER:
            self._finish(f, outcome, self.env.now)
        elif self.cluster.kv_tier is not None and self.cluster.kv_tier.cancel(f.leg, outcome):
            pass                  # the prefill leg was loading its prefix: it ended there (leg_done)
        else:
            (f.src if f.stage == PREFILL else f.dst).cancel(f.leg, outcome)
        return True

    def replica_down(self, rid: int) -> None:
        """Replica ``rid`` failed: transfers from or to it fail back to their clients."""
        for f in [f for f in self.moving.values() if f.src.index == rid or f.dst.index == rid]:
            self._finish(f, "replica_failed", self.env.now)
