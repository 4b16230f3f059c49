"""Drive an engine replica (fast :class:`~agentsim.serving.engine.Replica` or the step-by-step
:class:`~agentsim.serving.engine_reference.SteppingReplica`) through a fixed workload.

Used by the engine tests and ``benchmarks/engine.py``. Workloads are plain numpy arrays drawn up
front, so every engine sees the identical input.

**Arrivals** are one callback chain on SimPy's queue: a single pending ``Event`` at a time; when it
fires it submits its request and schedules the next arrival. That costs exactly **one SimPy event
per request** and keeps the heap small. Arrival events are pushed at their *exact* float time
(``Environment.schedule`` computes ``now + (t - now)``, which can miss ``t`` by an ulp — that
matters for the step-boundary tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from heapq import heappush

import numpy as np
import simpy
from simpy.events import NORMAL, Event

from agentsim.model.catalog import load_catalog
from agentsim.model.deployment import Deployment
from agentsim.serving.checked import CheckedReplica
from agentsim.serving.engine import EngineConfig, Replica
from agentsim.serving.engine_reference import SteppingReplica
from agentsim.serving.request import Request
from agentsim.serving.speculation import Speculation
from agentsim.model.servicetime import StepCoeffs

#: named deployments used across the engine tests: (model, gpu, keyword arguments)
DEPLOYMENTS: dict[str, tuple[str, str, dict]] = {
    "llama8b-h100": ("Llama-3-8B", "H100-SXM", {}),
    "llama70b-4xh100-fp8": ("Llama-3-70B", "H100-SXM", {"tp": 4, "precision": "fp8", "kv_dtype": "fp8"}),
    "deepseekv3-8xh200-fp8": ("DeepSeek-V3", "H200", {"tp": 8, "precision": "fp8", "kv_dtype": "fp8"}),
    "mixtral-2xh100": ("Mixtral-8x7B", "H100-SXM", {"tp": 2}),
    # issue 16: 16 H100s as 16 attention ranks, 256 experts over 16 EP ranks across two nodes
    "deepseekv3-16xh100-dp16ep16": ("DeepSeek-V3", "H100-SXM", {"tp": 1, "dp": 16, "ep": 16, "precision": "fp8",
                                                                "kv_dtype": "fp8"}),
    # issue 16: one MTP draft per step (each decode puts 2 tokens through the GEMMs and the budget)
    "deepseekv3-8xh200-fp8-mtp1": ("DeepSeek-V3", "H200", {"tp": 8, "precision": "fp8", "kv_dtype": "fp8", "mtp": 1}),
}


@lru_cache(maxsize=None)
def deployment(name: str) -> Deployment:
    model, gpu, kw = DEPLOYMENTS[name]
    return Deployment.from_catalog(load_catalog(), model, gpu, **kw)


@lru_cache(maxsize=None)
def coeffs(name: str, request_overhead: float | None = None) -> StepCoeffs:
    """Step coefficients of a named deployment (optionally with another per-request overhead)."""
    c = StepCoeffs.of(deployment(name))
    return c if request_overhead is None else c.with_(request_overhead=request_overhead)


@dataclass
class Workload:
    """Arrays of one workload, one element per request (arrival times must be non-decreasing)."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    cached: np.ndarray | None = None      # prefix tokens already in GPU KV (``req.cached_gpu``)
    priority: np.ndarray | None = None
    cached_host: np.ndarray | None = None  # prefix tokens to load from the host tier (``req.cached_host``)

    def __len__(self) -> int:
        return len(self.arrival)

    def requests(self) -> list[Request]:
        arr, pr, out = self.arrival.tolist(), self.prompt.tolist(), self.output.tolist()
        pri = self.priority.tolist() if self.priority is not None else None
        reqs = [Request(i, arr[i], pr[i], out[i], priority=pri[i] if pri else 0) for i in range(len(arr))]
        if self.cached is not None:
            for r, c in zip(reqs, self.cached.tolist()):
                r.cached_gpu = c
        if self.cached_host is not None:
            for r, c in zip(reqs, self.cached_host.tolist()):
                r.cached_host = c
        return reqs


def poisson_workload(seed: int, n: int, rate: float, prompt: int | tuple[float, float, int],
                     output: int | tuple[float, float, int], *, cached_frac: float = 0.0,
                     host_frac: float = 0.0, start: float = 0.0) -> Workload:
    """Poisson arrivals at ``rate`` req/s (``rate=inf``: all at ``start``).

    ``prompt``/``output`` are a fixed length or ``(median, sigma, max)`` of a lognormal, rounded and
    clipped to ``[1, max]``. With ``cached_frac > 0`` that share of requests has a random cached
    prefix of up to its whole prompt (the engine caps it at ``prompt - 1``); with ``host_frac > 0``
    that share of each hit is in the host tier instead (``req.cached_host``: loaded, not prefilled).
    """
    rng = np.random.default_rng(seed)
    if math.isinf(rate):
        arrival = np.full(n, float(start))
    else:
        arrival = start + np.cumsum(rng.exponential(1.0 / rate, n))

    def lengths(spec):
        if isinstance(spec, (int, np.integer)):
            return np.full(n, int(spec), dtype=np.int64)
        med, sigma, hi = spec
        return np.clip(np.rint(rng.lognormal(math.log(med), sigma, n)), 1, hi).astype(np.int64)

    p, o = lengths(prompt), lengths(output)
    cached = None
    if cached_frac > 0:
        hit = rng.random(n) < cached_frac
        cached = np.where(hit, np.floor(rng.random(n) * (p + 1)), 0).astype(np.int64)
    host = None
    if cached is not None and host_frac > 0:
        host = np.floor(cached * host_frac).astype(np.int64)
        cached = cached - host
    return Workload(arrival, p, o, cached, cached_host=host)


class ArrivalChain:
    """Submits requests at their arrival times: one pending Event at a time, one event per request.

    ``sink`` is a callable taking a :class:`Request` (``replica.submit`` or a router).
    """

    __slots__ = ("env", "reqs", "sink", "i")

    def __init__(self, env: simpy.Environment, reqs: list[Request], sink) -> None:
        self.env, self.reqs, self.sink, self.i = env, reqs, sink, 0
        if reqs:
            self._push(reqs[0])

    def _push(self, req: Request) -> None:
        ev = Event(self.env)
        ev._ok = True
        ev._value = req
        ev.callbacks.append(self._fire)
        env = self.env
        t = req.arrival if req.arrival >= env._now else env._now
        heappush(env._queue, (t, NORMAL, next(env._eid), ev))

    def _fire(self, ev: Event) -> None:
        self.sink(ev._value)
        self.i += 1
        if self.i < len(self.reqs):
            self._push(self.reqs[self.i])


def run(cls, co: StepCoeffs, config: EngineConfig, workload: Workload | list[Request], *,
        check_invariants: bool = False, until: float | None = None, at=None, on_done=None, cancels=None,
        speculation: tuple | None = None):
    """Run ``workload`` through one replica of class ``cls``; returns ``(requests, replica, env)``.

    ``at``: optional ``(time, callable(replica))`` actions (e.g. ``replica.fail``) run at those
    times; ``cancels``: optional ``(time, rid)`` pairs, ``replica.cancel(request)`` at that time.
    ``until``: stop the simulation there (default: run to the end). ``speculation``: ``(k, mean
    acceptance, concentration, seed)`` gives the replica a :class:`Speculation` (each engine its own
    generator from ``seed``: the same draws in submit order).
    """
    env = simpy.Environment()
    if check_invariants and cls is Replica:
        cls = CheckedReplica      # the fast replica with its books checked after every event
    spec = None
    if speculation is not None:
        k, mean, conc, seed = speculation
        spec = Speculation(k, mean, conc, np.random.default_rng(seed))
    rep = cls(env, co, config, on_done=on_done, speculation=spec)
    reqs = workload.requests() if isinstance(workload, Workload) else workload
    ArrivalChain(env, reqs, rep.submit)
    actions = list(at or ()) + [(t, lambda r, q=reqs[rid]: r.cancel(q)) for t, rid in (cancels or ())]
    for t, action in actions:
        ev = Event(env)
        ev._ok, ev._value = True, None
        ev.callbacks.append(lambda e, a=action: a(rep))
        heappush(env._queue, (t, NORMAL, next(env._eid), ev))
    env.run(until=until)
    return reqs, rep, env


def run_both(co: StepCoeffs, config: EngineConfig, workload: Workload, **kw):
    """The same workload through the fast replica (invariants checked) and the reference."""
    fast = run(Replica, co, config, workload, check_invariants=True, **kw)
    ref = run(SteppingReplica, co, config, workload, **kw)
    return fast, ref


def rel_close(a: float, b: float, rel: float = 1e-9) -> bool:
    """Equal within ``rel`` relative (``nan`` equals ``nan``); absolute below 1 s, like EPS."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def mismatches(fast: list[Request], ref: list[Request], rel: float = 1e-9) -> list[str]:
    """Human-readable differences between two runs of the same workload (empty if they agree)."""
    out = []
    for x, y in zip(fast, ref, strict=True):
        if x.outcome != y.outcome:
            out.append(f"rid {x.rid}: outcome {x.outcome} vs {y.outcome}")
        if x.preemptions != y.preemptions:
            out.append(f"rid {x.rid}: preemptions {x.preemptions} vs {y.preemptions}")
        for f in ("ready", "first_token", "finish"):
            u, v = getattr(x, f), getattr(y, f)
            if not rel_close(u, v, rel):
                out.append(f"rid {x.rid}: {f} {u!r} vs {v!r}")
        if not rel_close(x.admitted, y.admitted, 2 * rel):
            out.append(f"rid {x.rid}: admitted {x.admitted!r} vs {y.admitted!r}")
    return out


class StepLog:
    """Wraps a replica class so every planned step/stretch start time is recorded in ``starts``."""

    def __init__(self, cls):
        log = self.starts = []
        method = "_step" if cls is SteppingReplica or issubclass(cls, SteppingReplica) else "_plan"

        def wrapped(rep, t, *a, _orig=getattr(cls, method)):
            log.append(t)
            return _orig(rep, t, *a)

        self.cls = type(f"Logged{cls.__name__}", (cls,), {method: wrapped})


def arrival_for_ready(t_ready: float, overhead: float) -> float:
    """An arrival time ``a`` with ``a + overhead == t_ready`` exactly if one exists (else the nearest)."""
    if overhead <= 0:
        return t_ready
    a = t_ready - overhead
    best = a
    for direction in (math.inf, -math.inf):
        x = a
        for _ in range(8):
            if x + overhead == t_ready:
                return x
            if abs(x + overhead - t_ready) < abs(best + overhead - t_ready):
                best = x
            x = math.nextafter(x, direction)
    return best


def events_scheduled(env: simpy.Environment) -> int:
    """SimPy events scheduled so far: SimPy's id counter (every event, and each move of an engine
    timer to an earlier end, which draws an id as a re-arm would)."""
    return next(env._eid)   # the id the next event would get = events scheduled


def saturation_rate(co: StepCoeffs, config: EngineConfig, prompt, output, n: int = 10_000, seed: int = 0) -> float:
    """Requests/s one replica sustains (engine-performance.md §1.2): all ``n`` requests queued at
    t = 0, completions counted between the 10th and 90th percentile finish times."""
    reqs, _, _ = run(Replica, co, config, poisson_workload(seed, n, math.inf, prompt, output))
    fin = np.sort([r.finish for r in reqs])
    lo, hi = int(0.1 * n), int(0.9 * n)
    return (hi - lo) / (fin[hi] - fin[lo])


def busy_boundaries(dep: str, overhead, start: float):
    """Step starts of a light decode-heavy base run where the replica was already busy."""
    base = poisson_workload(11, 6, 4.0, (200.0, 0.5, 2000), (120.0, 0.3, 400), start=start)
    co = coeffs(dep, overhead)
    cfg = EngineConfig(kv_capacity=deployment(dep).kv_capacity_tokens, max_batch=256, token_budget=8192)
    ref_log, fast_log = StepLog(SteppingReplica), StepLog(Replica)
    reqs, _, _ = run(ref_log.cls, co, cfg, base)
    run(fast_log.cls, co, cfg, base)
    finishes = {r.finish for r in reqs}
    starts = sorted(set(ref_log.starts))
    busy = [t for prev, t in zip(starts, starts[1:]) if t - prev < 0.5]   # consecutive steps
    stretch_ends = [t for t in busy if any(rel_close(t, f, 1e-12) for f in finishes)]
    mid_stretch = [t for t in busy if not any(rel_close(t, s, 1e-12) for s in fast_log.starts)]
    picks = mid_stretch[1::max(1, len(mid_stretch) // 4)][:4] + stretch_ends[:2]
    return base, co, cfg, picks
