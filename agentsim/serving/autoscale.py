"""Provider autoscaling: a pool grows and shrinks between min and max replicas on a target.

A pool that scales is built with its ``max`` replicas; those beyond the starting count begin
*parked* — not provisioned: down, drawing nothing and costing nothing. Every ``period_s`` the
scaler reads its target, averaged over the pool's routable replicas:

* ``queue_delay_s`` — how long the request at the head of each queue has waited (0 when none);
* ``kv_occupancy`` — KV tokens held by running requests / the KV capacity;
* ``batch_occupancy`` — running requests / ``max_batch``;
* ``capacity_utilisation`` — output tokens/s the pool served since the last check over
  ``capacity_output_tokens_per_s`` x the routable replicas (the capacity one replica carries is
  given, e.g. from ``agentsim estimate --max-load``: a running engine cannot measure it).

With ``ratio = value / target_value`` (Kubernetes' horizontal pod autoscaler rule): above
``1 + hysteresis`` it provisions up to ``ceil(n x ratio)`` replicas (``n`` = routable + starting),
below ``1 - hysteresis`` it drains one (none while a new one is starting) once every check for
``scale_in_stable_s`` has been below
(Kubernetes' scale-down stabilisation window; 0 = at once), within the band nothing changes;
always within ``[min, max]``. A queue-delay target reads 0 whenever the pool keeps up, so it
scales in until queues form again: the window sets how often that happens.

A provisioned replica is paid for and draws idle power from the moment it is requested, and
takes no traffic for its **cold start**: the weight bytes one of its nodes loads over the load
bandwidth of where the weights come from, plus the engine's start (``data/coldstart.toml``). It
comes up with empty caches (parking cleared them). **Scale-in drains**: the replica takes no new
requests, finishes what it holds (nothing is dropped), and is parked when it is empty; it is paid
for and draws power until then. GPU-hours, energy and cost (the pool table's ``cost_usd``, energy
columns and ``down_frac``) therefore count cold starts and draining, and not parked time.
"""
from __future__ import annotations

import math
import tomllib
from functools import lru_cache

from ..model.catalog import data_path
from ..model.deployment import Deployment
from .routing_guard import head_wait


@lru_cache(maxsize=1)
def _coldstart_data() -> dict:
    with open(data_path("coldstart.toml"), "rb") as f:
        return tomllib.load(f)


def cold_start_s(dep: Deployment, weights_from: str, engine_start_s: float | None = None) -> float:
    """Seconds from provisioning a replica of ``dep`` to its first request: the weight bytes of the
    GPUs on one node over that node's load bandwidth (nodes load in parallel) + the engine start."""
    data = _coldstart_data()
    per_node = dep.weight_bytes_per_gpu * min(dep.n_gpus, dep.gpu.gpus_per_node)
    start = data["engine"]["start_s"] if engine_start_s is None else engine_start_s
    return per_node / (data["load_gbps"][weights_from] * 1e9) + start


def _queue_delay(replicas: list, now: float) -> float:
    return sum(head_wait(r, now) for r in replicas) / len(replicas)


def _kv_occupancy(replicas: list, now: float) -> float:
    return sum(r.kv_used / r.cap for r in replicas) / len(replicas)


def _batch_occupancy(replicas: list, now: float) -> float:
    return sum(r.n_running / r.max_batch for r in replicas) / len(replicas)


TARGETS = {"queue_delay_s": _queue_delay, "kv_occupancy": _kv_occupancy, "batch_occupancy": _batch_occupancy}


def desired_replicas(value: float, target: float, hysteresis: float, n: int, lo: int, hi: int) -> int:
    """How many replicas to have after a check: the HPA rule with a tolerance band, scaling in one
    replica at a time (see the module docstring)."""
    ratio = value / target
    if ratio > 1 + hysteresis:
        want = max(n + 1, math.ceil(n * ratio)) if math.isfinite(ratio) else hi
    elif ratio < 1 - hysteresis:
        want = n - 1
    else:
        want = n
    return min(hi, max(lo, want))


class PoolScaler:
    """Scales pool ``pool`` of ``cluster`` (its replicas' ids ``rids``; the first ``start`` provisioned)."""

    DRAIN_POLL_S = 1.0     # a draining replica is checked for emptiness this often

    def __init__(self, env, cluster, pool: str, rids: list[int], start: int, cfg, cold_s: float) -> None:
        self.env = env
        self.pool = pool
        self.cluster = cluster
        self.cfg = cfg
        self.cold_s = cold_s
        self.metric = TARGETS.get(cfg.target, self._capacity_utilisation)
        self._tokens = 0                       # output tokens the pool had served at the last check
        self._rids = list(rids)
        self.active = list(rids[:start])       # routable
        self.starting: list[int] = []          # provisioned, cold-starting
        self.draining: list[int] = []          # provisioned, finishing what they hold
        self.parked = list(rids[start:])       # not provisioned
        self.low_since = math.nan              # since when every check has been below the band
        self.log: list[tuple[float, str, int]] = []     # (time, "provision" | "ready" | "drain" | "park", rid)
        for rid in self.parked:
            cluster.park(rid)

    def start(self) -> None:
        self.env.process(self._run())

    def _run(self):
        cfg = self.cfg
        while True:
            yield self.env.timeout(cfg.period_s)
            n = len(self.active) + len(self.starting)
            reps = [self.cluster.replicas[rid] for rid in self.active]
            value = self.metric(reps, self.env.now) if reps else math.inf
            want = desired_replicas(value, cfg.target_value, cfg.hysteresis, n, cfg.min_replicas, cfg.max_replicas)
            now = self.env.now
            if want >= n:
                self.low_since = math.nan
            elif self.low_since != self.low_since:      # nan: the first check below the band
                self.low_since = now
            for _ in range(min(want - n, len(self.parked))):
                self._provision(self.parked.pop(0))
            # no scale-in while a scale-out is starting (want >= min then keeps a routable replica)
            if want < n and not self.starting and now - self.low_since >= cfg.scale_in_stable_s:
                self._drain(self.active.pop())
                self.low_since = now                    # the next drain waits a whole window again

    def _capacity_utilisation(self, replicas: list, now: float) -> float:
        tokens = sum(self.cluster.replicas[rid].tokens_out for rid in self._rids)
        served = (tokens - self._tokens) / self.cfg.period_s
        self._tokens = tokens
        return served / (self.cfg.capacity_output_tokens_per_s * len(replicas))

    def _provision(self, rid: int) -> None:
        self.cluster.unpark(rid)
        self.starting.append(rid)
        self.log.append((self.env.now, "provision", rid))
        self.env.process(self._cold_start(rid))

    def _cold_start(self, rid: int):
        yield self.env.timeout(self.cold_s)
        self.starting.remove(rid)
        self.active.append(rid)
        self.cluster.set_routable(rid, True)
        self.log.append((self.env.now, "ready", rid))

    def _drain(self, rid: int) -> None:
        self.cluster.set_routable(rid, False)
        self.draining.append(rid)
        self.log.append((self.env.now, "drain", rid))
        self.env.process(self._park_when_empty(rid))

    def _park_when_empty(self, rid: int):
        replica = self.cluster.replicas[rid]
        while replica.outstanding:
            yield self.env.timeout(self.DRAIN_POLL_S)
        self.draining.remove(rid)
        self.cluster.park(rid)
        self.parked.append(rid)
        self.log.append((self.env.now, "park", rid))
