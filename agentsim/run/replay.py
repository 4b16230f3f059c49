"""Replay of a public trace through the simulator (traces are read by :mod:`agentsim.workload.trace_readers`).

:class:`OpenLoopReplay` submits a trace's requests at their arrival times; :class:`SessionReplay`
runs TraceLab sessions as closed loops. :func:`prepare_scenario` puts a trace on a scenario's
cluster (its streams and populations are replaced by the trace; without a scenario, a default
cluster sized for the trace) and :func:`replay` runs it until the trace's last request ends.
"""
from __future__ import annotations

import math
from pathlib import Path

from simpy.core import StopSimulation
from simpy.events import Event

from . import scenario as scn
from ..model.catalog import load_catalog
from ..model.deployment import Deployment
from ..model.servicetime import StepCoeffs
from ..util.errors import InputError
from ..serving.request import TRIGGERS
from ..workload.trace_readers import Trace, TraceSession
from .api import load_scenario
from .build import build
from ..util.events import call_later

REQUEST, USER, TOOL = (TRIGGERS.index(t) for t in ("request", "user", "tool"))


def _at(env, delay: float, callback) -> None:
    call_later(env, max(0.0, delay), callback)


class _Drain:
    """Ends the run (StopSimulation) once every trace source is done and no request is open."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.sources: list = []
        self.stopping = False

    def check(self, _req=None) -> None:
        if self.stopping or self.sim.open or not all(s.finished for s in self.sources):
            return
        self.stopping = True
        _at(self.sim.env, 0.0, StopSimulation.callback)


class OpenLoopReplay:
    """Submits a trace's requests at their arrival times (one event per distinct arrival time).

    Mooncake requests carry their ``hash_ids`` as ``prefix_key`` (``prefix_len`` = input length)
    for the block cache; Azure requests carry no prefix. Each request is its own call
    (``trigger = request``).
    """

    def __init__(self, sim, trace: Trace, stream: int, model: str | None = None, drain: _Drain | None = None) -> None:
        self.sim, self.env, self.trace, self.stream, self.model, self.drain = sim, sim.env, trace, stream, model, drain
        groups: list[tuple[float, list]] = []
        for r in trace.requests:
            if groups and groups[-1][0] == r.arrival_s:
                groups[-1][1].append(r)
            else:
                groups.append((r.arrival_s, [r]))
        self._groups = groups
        self._g = 0
        self.sent = 0

    @property
    def finished(self) -> bool:
        return self._g >= len(self._groups)

    def start(self) -> None:
        if self._groups:
            _at(self.env, self._groups[0][0] - self.env.now, self._arrive)
        elif self.drain is not None:
            self.drain.check()

    def _arrive(self, ev) -> None:
        sim = self.sim
        _, rows = self._groups[self._g]
        self._g += 1
        on_done = self.drain.check if self.drain is not None else None
        for r in rows:
            key = r.hash_ids if r.hash_ids else None
            req = sim.new_request(r.input_tokens, r.output_tokens, stream=self.stream, prefix_key=key,
                                  prefix_len=r.input_tokens, on_done=on_done)
            req.call = sim.new_call_id()
            req.trigger = REQUEST
            self.sent += 1
            sim.submit(req, self.model)
        if self._g < len(self._groups):
            _at(self.env, self._groups[self._g][0] - self.env.now, self._arrive)
        elif self.drain is not None:
            self.drain.check()


class SessionReplay:
    """TraceLab sessions as SimPy processes, each replaying its rounds in a closed loop.

    A session starts at its ``arrival_s``; round ``k+1`` is sent ``tool_wait_s`` of round ``k``
    after round ``k`` ends. Requests carry ``session = sid``, ``prefix_key = ("tracelab", sid)``,
    ``prefix_len`` = the round's ``prefix_len``, one call each, ``trigger`` user (round 0) or tool.
    """

    def __init__(self, sim, trace: Trace, stream: int, model: str | None = None, drain: _Drain | None = None) -> None:
        self.sim, self.env, self.trace, self.stream, self.model, self.drain = sim, sim.env, trace, stream, model, drain
        self.ended = 0
        self.sent = 0

    @property
    def finished(self) -> bool:
        return self.ended >= len(self.trace.sessions)

    def start(self) -> None:
        for s in self.trace.sessions:
            self.env.process(self._session(s))
        if not self.trace.sessions and self.drain is not None:
            self.drain.check()

    def _session(self, s: TraceSession):
        sim, env = self.sim, self.env
        if s.arrival_s > env.now:
            yield env.timeout(s.arrival_s - env.now)
        key = ("tracelab", s.sid)
        last = len(s.rounds) - 1
        for k, r in enumerate(s.rounds):
            req = sim.new_request(r.prompt, r.output_len, session=s.sid, stream=self.stream, prefix_key=key,
                                  prefix_len=r.prefix_len)
            req.call = sim.new_call_id()
            req.trigger = USER if k == 0 else TOOL
            done = Event(env)
            req.on_done = done.succeed
            self.sent += 1
            sim.submit(req, self.model)
            yield done
            if req.outcome != "completed":
                break                       # upstream's runner stops a session at a failed round
            if k < last and r.tool_wait_s > 0:
                yield env.timeout(r.tool_wait_s)
        self.ended += 1
        if self.drain is not None:
            self.drain.check()


# -- the default cluster and the run ----------------------------------------------------------------
DEFAULT_MODEL = "Llama-3.1-8B"     # Llama-3-8B's architecture with a 128k context (Mooncake prompts reach 126k)
DEFAULT_GPU = "H100-SXM"
TARGET_UTILISATION = 0.5
UNBOUNDED_HOST_KV_GB = 1e6         # a host tier no trace fills
UNBOUNDED_TTL_S = 1e12             # no block expires within a run


def estimated_busy_s(trace: Trace, coeffs, hit_rate: float = 0.0, batch: int = 32) -> float:
    """Rough replica-seconds of work in ``trace`` on one replica with step coefficients ``coeffs``.

    Each request: the uncached part of its prompt as one prefill step after the cached part, plus
    its decode tokens at a batch of ``batch`` with its own context. Used only to size the default
    cluster.
    """
    if trace.format == "tracelab":
        items = [(r.prompt, r.output_len, r.prefix_len / r.prompt) for s in trace.sessions for r in s.rounds]
    else:
        items = [(r.input_tokens, r.output_tokens, hit_rate) for r in trace.requests]
    busy = 0.0
    for p, o, h in items:
        cached = int(p * h)
        u = max(1, p - cached)
        busy += coeffs.step_time(u, u * cached + u * u / 2, p, 0, 0, 1) - coeffs.overhead
        ctx = p + o / 2
        busy += (o - 1) * coeffs.step_time(decodes=batch, decode_context=batch * ctx) / batch
    return busy


def default_scenario(trace: Trace, catalog=None) -> dict:
    """The cluster a replay runs on without ``--scenario`` (as a scenario dict).

    One pool of Llama-3.1-8B (bf16) on H100-SXM, sized from :func:`estimated_busy_s` so the
    replicas are about half busy over the trace's span:

    * mooncake: **one** replica (there is no prefix-aware router, and a block cache split over
      replicas would lose the hits the trace is about), with the smallest TP of 1, 2, 4, 8 that
      keeps it about half busy (TP 8 if none does: the replica then runs busier than half); ``engine.prefix_cache = "blocks"``. Engine defaults otherwise: no
      host tier, 300 s TTL (``--unbounded-cache`` gives the ideal-cache setting).
    * azure: TP 1 replicas, as many as the load needs, least-outstanding routing.
    * tracelab: TP 1 replicas (at most one per session), session-affinity routing (a session's
      rounds stay with its cache).
    """
    catalog = catalog or load_catalog()
    span = max(trace.last_arrival_s, 1.0)
    if trace.format == "tracelab":
        span = max(span + sum(r.tool_wait_s for s in trace.sessions for r in s.rounds) / max(len(trace.sessions), 1),
                   1.0)
    ideal = trace.ideal_hit_rate() if trace.format == "mooncake" else 0.0
    tp, replicas = 1, 1
    for tp in ((1, 2, 4, 8) if trace.format == "mooncake" else (1,)):
        c = StepCoeffs.of(Deployment.from_catalog(catalog, DEFAULT_MODEL, DEFAULT_GPU, tp=tp))
        util = estimated_busy_s(trace, c, ideal or 0.0) / span
        replicas = max(1, math.ceil(util / TARGET_UTILISATION))
        if trace.format != "mooncake" or replicas == 1:
            break
    if trace.format == "mooncake":          # one replica even when no TP gets it half busy (the busiest TP)
        replicas = 1
    if trace.format == "tracelab":          # a closed-loop session runs on one replica at a time
        replicas = min(replicas, len(trace.sessions))
    pool = {"gpu": DEFAULT_GPU, "model": DEFAULT_MODEL, "tp": tp, "replicas": replicas}
    engine: dict = {}
    router = {"policy": "least_outstanding"}
    if trace.format == "mooncake":
        engine["prefix_cache"] = "blocks"
    elif trace.format == "tracelab":
        router = {"policy": "session_affinity"}
    name = Path(trace.path).stem
    return {"name": f"replay-{name}", "description": f"replay of {trace.path} ({trace.format})",
            "engine": engine, "pools": {"replay": pool}, "router": router}


def prepare_scenario(trace: Trace, scenario=None, overrides=(), *, unbounded_cache: bool = False,
                     duration_s: float | None = None):
    """The scenario a replay runs: ``scenario`` (or :func:`default_scenario`) with the trace as its workload.

    Streams and populations are dropped (the trace is the workload). Mooncake replays use the
    block cache unless ``[engine] prefix_cache`` is set explicitly; TraceLab replays need the
    session cache. ``unbounded_cache`` sets ``host_kv_gb`` to 1e6 GB (a host tier no trace fills)
    and ``prefix_ttl_s`` to 1e12 s (no block expires) for every pool, after ``overrides``: the
    setting of the ideal hit rate, where nothing cached is ever lost (GPU evictions go to host). ``duration_s`` (default: the trace's last arrival + 1
    day) only bounds the run: it ends when the trace's last request ends.
    """
    if scenario is None:
        data = default_scenario(trace)
    else:
        sc = load_scenario(scenario)
        data = sc.model_dump(mode="json", exclude_unset=False)
        if trace.format == "mooncake" and "prefix_cache" not in sc.engine.model_fields_set:
            data["engine"]["prefix_cache"] = "blocks"
    base = data
    data = scn.apply_overrides(data, list(overrides))
    data["streams"] = {}
    data["populations"] = {}
    if unbounded_cache:
        data.setdefault("engine", {})
        data["engine"]["host_kv_gb"] = UNBOUNDED_HOST_KV_GB
        data["engine"]["prefix_ttl_s"] = UNBOUNDED_TTL_S
        for pool in data.get("pools", {}).values():
            eng = pool.get("engine") or {}
            for k in ("host_kv_gb", "prefix_ttl_s"):
                eng.pop(k, None)
            pool["engine"] = eng
    horizon = duration_s if duration_s is not None else trace.last_arrival_s + 86400.0
    if horizon <= 0:
        raise InputError(f"--duration must be > 0 s, got {horizon}")
    data["duration_s"] = horizon
    data["warmup_s"] = min(float(data.get("warmup_s", 0.0)), horizon)
    sc = scn.parse(data, where=str(scenario) if isinstance(scenario, (str, Path)) else "scenario",
                   overrides=overrides, base=base)
    if trace.format == "tracelab":
        for name in sc.pools:
            if sc.pool_engine(name).prefix_cache == "blocks":
                raise InputError(f"pools.{name}: a tracelab trace has no block hashes; use engine.prefix_cache = "
                                 "\"session\" (the round's prefix is the session's context)")
    return sc


def replay(trace: Trace, scenario=None, *, seed: int | None = None, overrides=(), unbounded_cache: bool = False,
           duration_s: float | None = None, check_invariants: bool = False, step_mode: bool = False,
           progress=None):
    """Run ``trace`` on ``scenario`` (default: :func:`default_scenario`); the Result.

    ``Result.meta["trace"]`` holds the trace figures (see :func:`trace_summary`); ``progress``
    is called with the simulated time now and then (as ``Simulation.run``'s). The run ends
    when the trace's last request ends (or at ``duration_s``); ``meta["duration_s"]`` is then
    the simulated time actually covered.
    """
    sc = prepare_scenario(trace, scenario, overrides, unbounded_cache=unbounded_cache, duration_s=duration_s)
    cls = SessionReplay if trace.format == "tracelab" else OpenLoopReplay
    drains = []

    def trace_source(sim, index):
        drain = _Drain(sim)
        source = cls(sim, trace, index, drain=drain)
        drain.sources.append(source)
        drains.append(drain)
        return source

    sim = build(sc, seed, check_invariants=check_invariants, step_mode=step_mode, sources={"trace": trace_source})
    res = sim.run(progress)
    res.meta["duration_s"] = float(sim.env.now)
    res.meta["trace"] = trace_summary(res, trace)
    return res


def trace_summary(res, trace: Trace) -> dict:
    """``trace_format``, ``trace_file``, ``trace_requests``, ``ideal_hit_rate``, ``hit_rate``
    (token-weighted cached share of the input over completed requests)."""
    df = res.requests
    done = df[df["outcome"] == "completed"]
    inp = float(done["input_tokens"].sum())
    cached = float(done["cached_gpu_tokens"].sum() + done["cached_host_tokens"].sum())
    return {"trace_format": trace.format, "trace_file": trace.path, "trace_requests": trace.n_requests,
            "ideal_hit_rate": trace.ideal_hit_rate(), "hit_rate": cached / inp if inp else math.nan}
