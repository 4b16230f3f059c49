"""Populations: who starts sessions, when, and with which client.

* ``open`` populations start sessions as a non-homogeneous Poisson process:
  ``size × sessions_per_user_day / 86400 × diurnal profile(t)`` per second; user ``i`` of the
  population belongs to tenant ``i mod tenants``.
* ``fleet`` populations are closed loops of autonomous workers: each worker takes the next task
  from a backlog (or, with ``task_rate = 0``, always has one) and runs it as a session; an
  autoscaler adds workers while the backlog exceeds ``scale_up_backlog × workers`` (up to
  ``size``) and retires idle ones when the backlog is empty (down to ``workers_min``).

Each distribution of the profile draws from its own RNG stream (``pop/<name>/<field>``), so one
change to a profile leaves every other draw — and so every other session — as it was.
"""
from __future__ import annotations

import math
from array import array
from collections import deque

import numpy as np
from simpy.events import Event

from .client import CallStats, Client
from ..provider.clock import weekday_hour
from ..provider.limits import tier
from .diurnal import WeeklyProfile, nhpp_next
from .distributions import Dist, Sampler
from .profiles import get_profile
from .retry import make_retry_policy
from .sessions import SESSION_OUTCOMES, SessionState, session
from ..util.events import call_later

INTEGER_FIELDS = {"turns", "initial_context", "first_message", "user_message", "steps_per_turn", "output_tokens",
                  "new_context", "compact_summary", "tool_calls", "subagent_count", "subagent_task", "subagent_steps",
                  "subagent_returns"}


def tenant_slice(tenants: np.ndarray, count: int) -> np.ndarray:
    """The slice of each tenant: a fixed integer hash (splitmix64), independent of the seed."""
    x = (np.asarray(tenants, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(count)).astype(np.int64)


class Samplers:
    """One draw function per distribution of a profile (``S.turns()``), each on its own stream."""

    def __init__(self, profile, rng_for) -> None:
        for name, value in profile:
            if isinstance(value, Dist):
                setattr(self, name, Sampler(value, rng_for(name), integer=name in INTEGER_FIELDS).next)


class SessionRecorder:
    """One row per session (sub-agents included, with their parent's id)."""

    INT = ("session_id", "parent_id", "population", "user", "tenant", "kind", "turns", "calls", "attempts", "retries",
           "failed_calls", "input_tokens", "cached_tokens", "output_tokens", "compactions", "subagents", "outcome")
    FLOAT = ("start_s", "end_s", "engaged_s")

    def __init__(self) -> None:
        self.cols = {c: array("q") for c in self.INT}
        self.cols.update({c: array("d") for c in self.FLOAT})

    def record(self, s: SessionState, population: int, now: float) -> None:
        c = self.cols
        end = s.end if s.end == s.end else now
        for name, v in (("session_id", s.sid), ("parent_id", s.parent), ("population", population),
                        ("user", s.user), ("tenant", s.tenant), ("kind", s.kind), ("turns", s.turns), ("calls", s.calls),
                        ("attempts", s.attempts), ("retries", s.retries), ("failed_calls", s.failed_calls),
                        ("input_tokens", s.input_tokens), ("cached_tokens", s.cached_tokens),
                        ("output_tokens", s.output_tokens), ("compactions", s.compactions),
                        ("subagents", s.subagents), ("outcome", SESSION_OUTCOMES.index(s.outcome))):
            c[name].append(v)
        c["start_s"].append(s.start)
        c["end_s"].append(s.end)
        c["engaged_s"].append(max(0.0, end - s.start - s.idle_excess))

    def columns(self) -> dict[str, np.ndarray]:
        return {k: np.frombuffer(v, dtype=np.int64 if v.typecode == "q" else np.float64) if len(v)
                else np.empty(0, np.int64 if v.typecode == "q" else np.float64) for k, v in self.cols.items()}


class Population:
    """A population's runtime: its profile, samplers, shared retry policy and sessions."""

    def __init__(self, front, index: int, name: str, cfg, model: str | None, *, rng, start, slice_,
                 recorder: SessionRecorder, user_base: int = 0, tenant_base: int = 0,
                 call_models: dict | None = None) -> None:
        """``front`` is the run's request front door (``env``, ``new_request``, ``submit``, ``cancel``,
        ``new_call_id``, ``new_session_id``, ``add_deadline``, ``end_unsent``); ``rng`` names streams;
        ``start`` is the wall clock at t = 0 and ``slice_`` the scenario's slice; ``call_models`` maps a
        kind of call (trigger code, e.g. sub-agent steps) to the model it goes to (others: ``model``)."""
        self.front, self.env, self.index, self.name, self.cfg, self.model = front, front.env, index, name, cfg, model
        self.slice, self.recorder = slice_, recorder
        self.call_models = call_models or None
        self.user_base, self.tenant_base = user_base, tenant_base
        if cfg.priority is not None:
            self.priority = cfg.priority
        else:
            self.priority = tier(cfg.tier).priority if cfg.tier else 0
        self.profile = get_profile(cfg.profile, cfg.params, where=f"populations.{name}")
        self.samplers = Samplers(self.profile, lambda field: rng(f"pop/{name}/{field}"))
        self._client_rng = rng(f"pop/{name}/client")
        self._arrival_rng = rng(f"pop/{name}/arrivals")
        policy_name = cfg.retry_policy or self.profile.retry_policy
        self.policy = make_retry_policy(policy_name, where=f"populations.{name}.retry_policy",
                                        max_wait_s=cfg.retry_max_wait_s)
        self.timeout_s = cfg.timeout_s or self.profile.timeout_s
        self.shared_key = ("system", index) if self.profile.shared_prefix_tokens else None
        mix = [(k, v) for k, v in cfg.plan_mix.items() if v > 0]
        self._plan_cdf = list(zip([k for k, _ in mix], np.cumsum([v for _, v in mix]) / sum(v for _, v in mix))) if mix else []
        self.stats = CallStats()
        self.open: dict[int, SessionState] = {}
        self.sessions_started = 0
        wd, hour = weekday_hour(start)
        wd = wd if cfg.start_weekday is None else cfg.start_weekday
        hour = hour if cfg.start_hour is None else cfg.start_hour
        self.weekly = (WeeklyProfile(cfg.weekday, cfg.weekend, wd, hour)
                       if cfg.arrival == "custom" else WeeklyProfile.named(cfg.arrival, wd, hour))
        # fleet state
        self.backlog: deque = deque()
        self.workers = 0
        self.idle_workers: list[Event] = []
        self.worker_series: list[tuple[float, int, int]] = []
        self._retire = 0

    # -- sessions ---------------------------------------------------------------------------------
    def new_session_id(self) -> int:
        return self.front.new_session_id()

    def tenant_of(self, user: int) -> int:
        """Global tenant id of a global user id (users spread over the tenants round robin)."""
        return self.tenant_base + (user - self.user_base) % self.cfg.tenants

    def make_client(self, tenant: int, user: int) -> Client:
        p = self.profile
        return Client(self.front, self.policy, self._client_rng, timeout_s=self.timeout_s, model=self.model,
                      tenant=tenant, user=user, population=self.index, stats=self.stats,
                      abandon_ttft_s=p.abandon_ttft_s, abandon_prob=p.abandon_prob, priority=self.priority,
                      cache_ttl_s=p.cache_ttl_s, tier=self.cfg.tier, plan=self.plan_of(user), call_models=self.call_models)

    def plan_of(self, user: int) -> str | None:
        """A user's subscription plan: the population's ``plan``, else its ``plan_mix`` share by share —
        a fixed hash of the global user id picks the plan, the same in every run, seed and slice."""
        if self.cfg.plan is not None or not self.cfg.plan_mix:
            return self.cfg.plan
        plans = self._plan_cdf
        u = float(tenant_slice(np.array([user]), 1 << 30)[0]) / (1 << 30)
        for name, edge in plans:
            if u < edge:
                return name
        return plans[-1][0]

    def open_session(self, sid: int, parent: int, tenant: int, user: int, kind: int) -> SessionState:
        s = SessionState(sid, parent, tenant, user, self.env.now, kind)
        self.open[sid] = s
        return s

    def close_session(self, s: SessionState, outcome: str) -> None:
        s.outcome = outcome
        s.end = self.env.now
        del self.open[s.sid]
        self.recorder.record(s, self.index, self.env.now)

    def start_session(self, user: int) -> None:
        sid = self.new_session_id()
        self.sessions_started += 1
        self.env.process(session(self, sid, self.user_base + user))

    def finish(self, now: float) -> None:
        """Record the sessions still running at the end as ``in_flight``."""
        for s in sorted(self.open.values(), key=lambda s: s.sid):
            self.recorder.record(s, self.index, now)
        self.open.clear()

    # -- arrivals ---------------------------------------------------------------------------------
    def slice_users(self) -> np.ndarray:
        """This slice's users (local indices): those whose tenant hashes to the slice."""  # noqa: D401
        sl = self.slice
        users = np.arange(self.cfg.size)
        if sl.count == 1:
            return users
        # a one-tenant population (consumer plans: limits are per user) is split by user instead
        keys = self.tenant_base + users % self.cfg.tenants if self.cfg.tenants > 1 else 1_000_000_007 + self.user_base + users
        return users[tenant_slice(keys, sl.count) == sl.index]

    def start(self) -> None:
        self.users = self.slice_users()
        if self.cfg.kind == "open":
            self._rate = len(self.users) * self.profile.sessions_per_user_day / 86400.0
            self._schedule_next(0.0)
        else:
            self._task_rate = self.cfg.task_rate
            for _ in range(self.cfg.workers):
                self._add_worker()
            if self._task_rate > 0:
                self._schedule_task(0.0)
            self.env.process(self._autoscaler())

    def _schedule_arrival(self, t: float, rate: float, callback) -> None:
        """Call ``callback`` at the next arrival after ``t`` of this population's weekly-profiled
        Poisson process at ``rate`` (nothing at rate 0); one event, no process."""
        t = nhpp_next(t, rate, self.weekly, self._arrival_rng)
        if t == math.inf:
            return
        call_later(self.env, t - self.env.now, callback)

    def _schedule_next(self, t: float) -> None:
        self._schedule_arrival(t, self._rate, self._arrive)

    def _arrive(self, ev) -> None:
        user = int(self.users[self._arrival_rng.integers(len(self.users))])
        self.start_session(user)
        self._schedule_next(self.env.now)

    # -- fleets -----------------------------------------------------------------------------------
    def _schedule_task(self, t: float) -> None:
        self._schedule_arrival(t, self._task_rate, self._task_arrives)

    def _task_arrives(self, ev) -> None:
        self.backlog.append(self.env.now)
        if self.idle_workers:
            self.idle_workers.pop(0).succeed()
        self._schedule_task(self.env.now)

    def _add_worker(self) -> None:
        self.workers += 1
        self.env.process(self._worker(self.workers - 1))

    def _worker(self, w: int):
        while True:
            if self._retire > 0:
                self._retire -= 1
                self.workers -= 1
                if self.backlog and self.idle_workers:   # it may have been woken for a task: pass it on
                    self.idle_workers.pop(0).succeed()
                return
            if self._task_rate > 0:
                if not self.backlog:
                    wake = Event(self.env)
                    self.idle_workers.append(wake)
                    yield wake
                    continue
                self.backlog.popleft()
            sid = self.new_session_id()
            self.sessions_started += 1
            began = self.env.now
            yield self.env.process(session(self, sid, self.user_base + w))
            if self.env.now == began:
                # the whole task was turned away at once (spend cap, request too large): wait for the
                # next autoscaler period instead of starting the next task at the same instant
                yield self.env.timeout(self.cfg.scale_interval_s)

    def _autoscaler(self):
        cfg = self.cfg
        while True:
            self.worker_series.append((self.env.now, self.workers, len(self.backlog)))
            yield self.env.timeout(cfg.scale_interval_s)
            backlog = len(self.backlog)
            if backlog > cfg.scale_up_backlog * self.workers and self.workers < cfg.size:
                add = min(cfg.size - self.workers, max(1, int(backlog / cfg.scale_up_backlog) - self.workers))
                for _ in range(add):
                    self._add_worker()
            elif backlog == 0 and self.idle_workers and self.workers - self._retire > cfg.workers_min:
                n = min(len(self.idle_workers), self.workers - self._retire - cfg.workers_min)
                self._retire += n
                for _ in range(n):
                    self.idle_workers.pop().succeed()
