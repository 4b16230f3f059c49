"""The step-by-step reference replica: one event per step, plain per-request loops.

It implements the semantics documented in ``engine.py`` the obvious way — every step rebuilds
the batch from the list of running requests and sums their contexts — so it shares no
bookkeeping with the event-skipping :class:`~agentsim.serving.engine.Replica`. Tests hold the two to the
same per-request timestamps (1e-9 relative); benchmarks measure what event skipping saves.
"""
from __future__ import annotations

import math

from simpy.events import Event

from .engine import ADMISSION_POLICIES, EPS, EngineConfig
from .prefix_cache import PrefixCache, reserve
from .replica_base import ReplicaBase
from .request import Request
from .speculation import Speculation, surplus
from ..model.servicetime import StepCoeffs, pairs
from ..util.events import call_later


class SteppingReplica(ReplicaBase):
    """Same interface as :class:`~agentsim.serving.engine.Replica`; ``req.kv`` is the KV it holds."""

    def __init__(self, env, coeffs: StepCoeffs, config: EngineConfig, *, index: int = 0, on_done=None,
                 cache: PrefixCache | None = None, speculation: Speculation | None = None) -> None:
        self.spec = speculation
        self.env, self.c, self.cfg, self.index, self.on_done = env, coeffs, config, index, on_done
        self.cache = cache if cache is not None and cache.enabled else None
        self.waiting = ADMISSION_POLICIES[config.admission]()
        self.running: list[Request] = []   # admission order
        self.up = True
        self._timer = None
        self._t0 = 0.0
        self._plan_data = None
        self._to_cancel: list = []
        self.pending = 0
        self.steps = self.tokens_out = self.preemptions = 0
        self.busy_time = self.energy_j = 0.0

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running) + self.pending

    @property
    def n_running(self) -> int:
        return len(self.running)

    @property
    def kv_used(self) -> int:
        return sum(r.kv for r in self.running)

    def accounted(self, now: float) -> tuple[float, float]:
        """(busy seconds, server joules) so far, the step in progress prorated to ``now``."""
        dur = now - self._t0
        if self._timer is None or dur <= 0:
            return self.busy_time, self.energy_j
        decoders, chunks, step = self._plan_data
        tokens = len(decoders) + sum(ch for _, ch in chunks)
        kernel = self.c.kernel_part(step, len(decoders), tokens) * min(1.0, dur / step)
        return self.busy_time + dur, self.energy_j + self.c.energy(dur, kernel)

    def _drop_running(self) -> list[Request]:
        victims, self.running = self.running, []
        return victims

    def _at_boundary(self) -> bool:
        return self.env.now - self._t0 <= EPS * max(1.0, self.env.now)

    def _cut_for_cancel(self) -> None:
        if self._at_boundary():
            self._step(self._t0)   # at the boundary: re-plan the step without it

    def _new_head(self) -> None:
        if self._at_boundary():
            self._step(self._t0)

    def _enqueue(self, req: Request) -> None:
        now = self.env.now
        req.ready = now
        self.waiting.append(req)
        if self._timer is None:
            self._step(now)
        elif self.waiting[0] is req and now - self._t0 <= EPS * max(1.0, now):
            decoders = sum(1 for r in self.running if r.pf_done >= r.prompt_len)
            if len(self.running) < self.cfg.max_batch and self.kv_used + decoders + req.prompt_len <= self.cfg.kv_capacity:
                self._step(self._t0)   # it arrived at the boundary: re-plan the step that starts there

    def _step(self, t: float) -> None:
        """Plan the one step that starts at ``t``."""
        self._drop_cancelled()
        self._make_room(t)
        decoders = [r for r in self.running if r.pf_done >= r.prompt_len]
        self._admit(t, len(decoders))
        self._t0 = t
        prefilling = [r for r in self.running if r.pf_done < r.prompt_len]
        if not decoders and not prefilling:
            self._timer = None
            return
        chunks = self._chunks(prefilling, len(decoders))
        done = sum(1 for r, ch in chunks if r.pf_done + ch >= r.prompt_len)
        context = sum(r.kv + 1 for r in decoders)
        dur = self.c.step_time(sum(ch for _, ch in chunks), sum(pairs(ch, r.pf_done) for r, ch in chunks),
                               sum(r.pf_done + ch for r, ch in chunks), len(decoders), context, len(decoders) + done)
        dur += sum(r.load for r, _ in chunks) * self.c.t_host_load
        self._plan_data = (decoders, chunks, dur)
        self._timer = call_later(self.env, max(0.0, t + dur - self.env.now), self._on_timer)

    def _drop_cancelled(self) -> None:
        """Requests cancelled while running leave at this boundary."""
        for req, outcome in self._to_cancel:
            if req.running:
                self.running.remove(req)
                req.running = False
                req.removed = True
                self._end(req, outcome)
        self._to_cancel.clear()

    def _make_room(self, t: float) -> None:
        """Evict cached prefixes, then preempt the latest admitted, until this step's decode writes fit."""
        cap, cache = self.cfg.kv_capacity, self.cache
        while True:
            cached = cache.gpu_used if cache is not None else 0
            over = self.kv_used + sum(1 for r in self.running if r.pf_done >= r.prompt_len) + cached - cap
            if over <= 0:
                break
            if cached:
                cache.evict(over, t, force=True)
            else:
                self._preempt(self.running[-1])

    def _admit(self, t: float, n_decoders: int) -> None:
        """Admit from the queue head (FCFS) while a slot is free and KV holds the prompt."""
        cache = self.cache
        while self.waiting and len(self.running) < self.cfg.max_batch:
            req = self.waiting[0]
            if not reserve(cache, req, self.kv_used, n_decoders, self.cfg.kv_capacity, t, not self.running):
                break
            self.waiting.popleft()
            if math.isnan(req.admitted):
                req.admitted = t
            req.running = True
            if req.preemptions == 0:
                req.pf_done = min(req.cached_gpu + req.cached_host, req.prompt_len - 1)
                req.load = req.cached_host
            else:
                req.pf_done = req.load = 0
            req.kv = req.prompt_len
            self.running.append(req)

    def _chunks(self, prefilling: list, n_decoders: int) -> list:
        """This step's prefill chunks, FCFS within the token budget left by the decodes."""
        left = self.cfg.token_budget - n_decoders * self.c.q   # each decode verifies q tokens
        chunks = []
        for r in prefilling:
            if left <= 0:
                break
            need = r.prompt_len - r.pf_done
            if need > left and not self.cfg.chunked_prefill and (chunks or r.prompt_len <= self.cfg.token_budget):
                break   # unchunked: a prompt waits for a step with room for all of it (one longer than the budget is chunked)
            ch = min(need, left)
            chunks.append((r, ch))
            left -= ch
        return chunks

    def _on_timer(self, ev: Event) -> None:
        if ev is not self._timer:
            return
        now = self.env.now
        decoders, chunks, dur = self._plan_data
        self.steps += 1
        self.busy_time += now - self._t0
        tokens = len(decoders) + sum(ch for _, ch in chunks)
        self.energy_j += self.c.energy(now - self._t0, self.c.kernel_part(dur, len(decoders), tokens))
        finished = []
        for r in decoders:
            r.kv += 1
            r.out_left -= 1
            self.tokens_out += 1
            if r.out_left == 0:
                finished.append(r)
        for r, ch in chunks:
            r.pf_done += ch
            r.prefill_tokens += ch
            r.load = 0
            if r.pf_done >= r.prompt_len:
                self.tokens_out += 1
                if math.isnan(r.first_token):
                    r.first_token = now
                r.out_left -= 1
                if r.out_left == 0:
                    finished.append(r)
                elif r.tps > 1.0:        # speculative decoding: the surplus is reserved as its decode starts
                    extra = surplus(r.out_left, r.tps)
                    r.kv += extra
                    r.out_left -= extra
                    self.tokens_out += extra
        for r in sorted(finished, key=lambda r: r.rid):
            self._retire(r, now)
        self._step(now)

    def _retire(self, r: Request, t: float) -> None:
        self.running.remove(r)
        cache = self.cache
        if cache is not None:
            cache.put(r.prefix_key, r.kv, t, r.cache_ttl)
            if r.shared_key is not None:
                cache.put_shared(r.shared_key, r.shared_len, t, self.cfg.kv_capacity - self.kv_used - cache.gpu_used,
                                 r.cache_ttl)
        r.running = False
        r.finish = t
        self._end(r, "completed")

    def _preempt(self, victim: Request) -> None:
        self.running.remove(victim)
        victim.running = False
        if victim.pf_done >= victim.prompt_len:
            victim.prompt_len = victim.kv + 1
        victim.pf_done = 0
        victim.kv = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)
