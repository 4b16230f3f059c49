"""A serving replica with continuous batching and event skipping (docs/DESIGN.md §4).

Over 450 lines on purpose: the replica is one state machine whose parts share its private state.

Semantics (shared with the step-by-step reference in ``engine_reference.py``):

* **Steps.** Each step runs every decoding request (one token each) and then prefill chunks,
  FCFS, up to the token budget (``token_budget - decodes`` prefill tokens). The step in which a
  prompt's last chunk runs yields that request's first token; a request with one output token
  finishes there, the others decode one token per step until their last.
* **KV.** Admission allocates the whole prompt; each decode step writes one token per decoder.
  A request is admitted (FCFS; the head blocks the queue) while a batch slot is free and
  ``kv_used + prompt + decodes <= capacity``. When a step's decode writes would not fit, the most
  recently admitted request is preempted (recompute: its generated tokens join its prompt and it
  returns to the head of the queue).
* **Event skipping.** While membership is fixed, step ``u`` of a stretch takes
  ``max(c0 + c1·u, m0 + m1·u) + h`` (:class:`~agentsim.model.servicetime.Stretch`), so the replica arms
  one timer for the whole stretch, to the next membership change: a decode finishing, the front
  prompt's completing step, or KV running out. Decoders carry ``b = context - V`` against a
  virtual token clock ``V`` (decode steps done), so the batch's context sum is ``Σb + n·V`` and no
  per-step work grows with the batch.
* **Arrivals.** An arrival that could be admitted at once (it heads the queue, a free slot, enough KV)
  cuts the stretch: the step in progress finishes and the newcomer joins at that boundary. An
  arrival within ``1e-9·max(1, t)`` s after a boundary counts as at it and joins the step that
  starts there. Anything else provably waits for the stretch end, so it costs no event.
* **Same-time events** are processed in SimPy's FIFO order of scheduling.

The replica is a callback object on SimPy's queue, not a process. SimPy cannot cancel an event, so
a cut moves the stretch's timer instead: its queue entry is replaced in place by the entry of the
earlier end (``_move_earlier``), and no stale timer is left to pop. Where it is not moved (a queue
of more than ``MOVE_MAX_QUEUE`` events, where the search would cost more than the stale pop), the
timer is re-armed and the stale one is recognised by identity and ignored.
"""
from __future__ import annotations

import heapq
import math
from collections import deque

from simpy.events import Event

from .prefix_cache import PrefixCache, reserve
from .replica_base import ReplicaBase
from .request import Request
from .scheduling import ADMISSION_POLICIES, EPS, EngineConfig, PriorityQueue  # noqa: F401 (re-exported)
from .speculation import Speculation, surplus
from ..model.servicetime import StepCoeffs, Stretch, pairs
from ..util.events import MOVE_MAX_QUEUE, _move_earlier, _push  # noqa: F401  (MOVE_MAX_QUEUE: tests read it here)


def _by_rid(req: Request) -> int:
    return req.rid


class Replica(ReplicaBase):
    """One deployment serving requests; ``on_done(req)`` is called when a request leaves."""

    def __init__(self, env, coeffs: StepCoeffs, config: EngineConfig, *, index: int = 0, on_done=None,
                 cache: PrefixCache | None = None, speculation: Speculation | None = None) -> None:
        self.env = env
        self.spec = speculation
        self.cache = cache if cache is not None and cache.enabled else None
        self.c = coeffs
        self.cfg = config
        self.index = index
        self.on_done = on_done
        self.cap = config.kv_capacity
        self.budget = config.token_budget
        self.max_batch = config.max_batch
        self.waiting = ADMISSION_POLICIES[config.admission]()
        self.prefilling: deque[Request] = deque()
        self.live: dict[int, Request] = {}  # running requests in admission order (LIFO preemption)
        self.heap: list = []                # (finish_v, seq, req) of decoders; stale if seq differs
        self.n_dec = 0
        self.sum_b = 0
        self.V = 0
        self.kv_used = 0
        self.up = True
        self._seq = 0
        self._to_cancel: list = []          # running requests to remove at the next boundary
        self.pending = 0                    # requests in their per-request overhead delay
        self._applying = False              # inside _apply: callbacks may submit, the caller plans next
        # the stretch in progress
        self._timer: Event | None = None
        self._entry: tuple | None = None   # the timer's entry in SimPy's queue
        self._t0 = 0.0
        self._k = 0
        self._law: Stretch | None = None
        self._chunk = 0           # prefill tokens per step for the front prompt (uniform stretch)
        self._mixed = None        # composition of a one-step mixed stretch
        self._mixed_dur = 0.0
        # counters
        self.steps = 0
        self.busy_time = 0.0
        self.energy_j = 0.0
        self.tokens_out = 0
        self.preemptions = 0

    # -- public interface ------------------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        """Requests queued or running here (what load-aware routers compare)."""
        return len(self.waiting) + len(self.live) + self.pending

    @property
    def n_running(self) -> int:
        return len(self.live)

    def _drop_running(self) -> list[Request]:
        victims = list(self.live.values())
        self.prefilling.clear()
        self.live.clear()
        self.heap.clear()
        self.n_dec = self.sum_b = self.kv_used = 0
        return victims

    def _cut_for_cancel(self) -> None:
        self._cut_to_boundary(self.env.now)

    def _new_head(self) -> None:
        self._maybe_cut(self.waiting[0], self.env.now)

    # -- arrivals ----------------------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        now = self.env.now
        req.ready = now
        self.waiting.append(req)
        if self._applying:
            # submitted from the callback of a request ending at this step boundary (a closed-loop
            # client without think time): the boundary being applied plans next and admits it there
            return
        if self._timer is None:
            self._plan(now)
        elif self.waiting[0] is req:   # it heads the queue, so it could join at the next boundary
            self._maybe_cut(req, now)

    def _maybe_cut(self, req: Request, now: float) -> None:
        """Shorten the stretch so ``req`` joins at the next step boundary, if it could join there."""
        if self.n_dec + len(self.prefilling) >= self.max_batch:
            return
        tau = now - self._t0
        eps = EPS * max(1.0, now)
        if self._law is None:   # a one-step mixed stretch
            j, at_boundary = 0, tau <= eps
        else:
            j = self._law.steps_done_by(tau + eps)
            at_boundary = self._law.elapsed(j) >= tau - eps
        jb = j if at_boundary else j + 1
        if jb >= self._k and not at_boundary:
            return  # the stretch ends at that boundary anyway
        if self.kv_used + self.n_dec * (jb + 1) + req.prompt_len > self.cap:
            return  # would not fit there: it waits for the stretch end like everything else
        if at_boundary:
            t_b = self._t0 + (self._law.elapsed(j) if self._law is not None else 0.0)
            self._apply(j, t_b)
            self._plan(t_b)
        else:
            self._k = jb
            self._rearm(self._t0 + self._law.elapsed(jb))

    def _cut_to_boundary(self, now: float) -> None:
        """End the stretch at the next step boundary (at once if ``now`` is at one)."""
        if self._timer is None:
            return
        tau = now - self._t0
        eps = EPS * max(1.0, now)
        if self._law is None:
            j, at_boundary = 0, tau <= eps
        else:
            j = self._law.steps_done_by(tau + eps)
            at_boundary = self._law.elapsed(j) >= tau - eps
        if at_boundary:
            t_b = self._t0 + (self._law.elapsed(j) if self._law is not None else 0.0)
            self._apply(j, t_b)
            self._plan(t_b)
        elif j + 1 < self._k:
            self._k = j + 1
            self._rearm(self._t0 + self._law.elapsed(j + 1))

    def _drop_cancelled(self) -> None:
        for req, outcome in self._to_cancel:
            if not req.running:
                continue   # it finished at this boundary
            del self.live[req.rid]
            req.running = False
            req.removed = True
            if req.pf_done >= req.prompt_len:
                self.kv_used -= req.b + self.V - 1
                self.n_dec -= 1
                self.sum_b -= req.b
                req.seq = -1
            else:
                self.kv_used -= req.prompt_len
                self.prefilling.remove(req)
            self._end(req, outcome)
        self._to_cancel.clear()

    # -- stretches ---------------------------------------------------------------------------------
    def _arm(self, t_end: float) -> None:
        delay = t_end - self.env.now
        self._entry = entry = _push(self.env, self._on_timer, None, delay if delay > 0.0 else 0.0)
        self._timer = entry[3]

    def _rearm(self, t_end: float) -> None:
        """The stretch was shortened: move its timer to the new, earlier end (no stale timer)."""
        delay = t_end - self.env.now
        entry = _move_earlier(self.env, self._entry, delay if delay > 0.0 else 0.0)
        if entry is None:
            self._arm(t_end)
        else:
            self._entry = entry

    def _on_timer(self, ev: Event) -> None:
        if ev is not self._timer:
            return  # stale: a cut that could not move the timer re-armed the stretch
        now = self.env.now
        self._applying = True        # _apply, inlined: this is the path of most events
        try:
            self._apply_steps(self._k, now)
        finally:
            self._applying = False
        self._plan(now)

    def _apply(self, k: int, t: float) -> None:
        """Account for ``k`` completed steps of the current stretch, ending at time ``t``.

        Every caller plans the next stretch right after (``_plan(t)``), so a request submitted by
        the callback of a request that ends here only joins the queue (see ``_enqueue``).
        """
        self._applying = True
        try:
            self._apply_steps(k, t)
        finally:
            self._applying = False

    def _apply_steps(self, k: int, t: float) -> None:
        dur = t - self._t0
        self.busy_time += dur
        if k == 0:
            return
        self.steps += k
        if self._law is None:
            self._apply_mixed(t)
            return
        n = self.n_dec
        c = self._chunk
        busy = self._law.elapsed(k) - k * self._law.h
        self.energy_j += self.c.energy(dur, busy)
        self.V += k
        self.kv_used += n * k
        self.tokens_out += n * k
        if c:
            front = self.prefilling[0]
            front.pf_done += c * k
            front.prefill_tokens += c * k
        self._finish_decoders(t)

    def _apply_mixed(self, t: float) -> None:
        chunks, sampled, busy = self._mixed
        self.energy_j += self.c.energy(self._mixed_dur, busy)
        n = self.n_dec
        self.V += 1
        self.kv_used += n
        self.tokens_out += n
        V = self.V
        done = []
        for req, c in chunks:
            req.pf_done += c
            req.prefill_tokens += c
            req.load = 0
            if req.pf_done >= req.prompt_len:   # prompt complete: first (or next) token out
                self.prefilling.popleft()
                self.tokens_out += 1
                if req.first_token != req.first_token:  # nan: first time
                    req.first_token = t
                req.out_left -= 1
                if req.out_left == 0:
                    req.kv = req.prompt_len
                    done.append(req)
                else:
                    if req.tps > 1.0:               # speculative decoding: the surplus is reserved now
                        extra = surplus(req.out_left, req.tps)
                        req.out_left -= extra
                        self.kv_used += extra
                        self.tokens_out += extra
                    else:
                        extra = 0
                    self._seq += 1
                    req.seq = self._seq
                    req.v_join = V
                    req.b = req.prompt_len + 1 + extra - V
                    req.finish_v = V + req.out_left
                    self.n_dec += 1
                    self.sum_b += req.b
                    heapq.heappush(self.heap, (req.finish_v, req.seq, req))
        self._finish_decoders(t, done)

    def _finish_decoders(self, t: float, done: list | None = None) -> None:
        heap, V = self.heap, self.V
        if not (heap and heap[0][0] <= V) and not done:
            return
        done = done or []
        while heap and heap[0][0] <= V:
            _, seq, req = heapq.heappop(heap)
            if seq != req.seq or not req.running:
                continue
            self.n_dec -= 1
            self.sum_b -= req.b
            req.kv = req.b + V - 1
            done.append(req)
        if len(done) > 1:
            done.sort(key=_by_rid)   # one canonical order for the cache and the callbacks
        for req in done:
            self._retire(req, t)

    def _retire(self, req: Request, t: float) -> None:
        self.kv_used -= req.kv
        cache = self.cache
        if cache is not None:
            cache.put(req.prefix_key, req.kv, t, req.cache_ttl)   # its KV stays behind as a prefix entry
            if req.shared_key is not None:
                cache.put_shared(req.shared_key, req.shared_len, t,
                                 self.cap - self.kv_used - cache.gpu_used, req.cache_ttl)
        del self.live[req.rid]
        req.running = False
        req.finish = t
        self._end(req, "completed")

    def accounted(self, now: float) -> tuple[float, float]:
        """(busy seconds, server joules) so far, the stretch in progress prorated to ``now``."""
        busy, energy = self.busy_time, self.energy_j
        dur = now - self._t0
        if self._timer is None or dur <= 0:
            return busy, energy
        if self._law is None:
            kernel = self._mixed[2] * min(1.0, dur / self._mixed_dur) if self._mixed_dur > 0 else 0.0
        else:
            law = self._law
            j = min(law.steps_done_by(dur), self._k)
            done = law.elapsed(j)
            kernel = done - j * law.h
            if j < self._k:
                step = law.step(j)
                kernel += (step - law.h) * min(1.0, (dur - done) / step)
        return busy + dur, energy + self.c.energy(dur, kernel)

    def _preempt(self) -> None:
        """Free KV by recomputing the most recently admitted request later."""
        victim = next(reversed(self.live.values()))
        del self.live[victim.rid]
        victim.running = False
        if victim.pf_done >= victim.prompt_len:       # decoding
            d = self.V - victim.v_join
            self.kv_used -= victim.b + self.V - 1
            self.n_dec -= 1
            self.sum_b -= victim.b
            victim.seq = -1                             # its heap entry is now stale
            victim.prompt_len = victim.b + self.V       # its KV (prompt, first token, surplus, d decoded) + 1
            victim.out_left -= d
        else:
            self.kv_used -= victim.prompt_len
            self.prefilling.remove(victim)
        victim.pf_done = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(victim)

    def _admit(self, t: float) -> None:
        waiting, cap, cache = self.waiting, self.cap, self.cache
        while waiting and len(self.live) < self.max_batch:
            req = waiting[0]
            if cache is None:
                if self.kv_used + req.prompt_len + self.n_dec > cap:
                    break
            elif not reserve(cache, req, self.kv_used, self.n_dec, cap, t, not self.live):
                break
            waiting.popleft()
            if math.isnan(req.admitted):
                req.admitted = t
            req.running = True
            if req.preemptions == 0:
                req.pf_done = min(req.cached_gpu + req.cached_host, req.prompt_len - 1)
                req.load = req.cached_host
            else:
                req.pf_done = req.load = 0
            self.kv_used += req.prompt_len
            self.live[req.rid] = req
            self.prefilling.append(req)

    def _plan(self, t: float) -> None:
        """At a step boundary at time ``t``: preempt, admit, and arm the next stretch."""
        if self._to_cancel:
            self._drop_cancelled()
        cache = self.cache
        while self.kv_used + self.n_dec + (cache.gpu_used if cache is not None else 0) > self.cap:
            if cache is not None and cache.gpu_used:
                cache.evict(self.kv_used + self.n_dec + cache.gpu_used - self.cap, t, force=True)
            else:
                self._preempt()
        if self.waiting:
            self._admit(t)
        n = self.n_dec
        self._t0 = t
        if n == 0 and not self.prefilling:
            self._timer = None
            self._law = None
            return
        c = self.c
        S = self.sum_b + n * self.V
        left = self.budget - n * c.q
        k_finish = self.heap[0][0] - self.V if n else 1 << 62
        free = self.cap - self.kv_used - (cache.gpu_used if cache is not None else 0)
        k_kv = free // n if n else 1 << 62   # steps until decode writes need cache eviction or preemption
        chunk = 0
        p = 0
        if self.prefilling and left > 0:
            front = self.prefilling[0]
            r = front.prompt_len - front.pf_done
            if r > left and not self.cfg.chunked_prefill and front.prompt_len <= self.budget:
                k = min(k_finish, k_kv)   # unchunked: the prompt waits until a finish leaves room for it
            elif r <= left or front.load:
                return self._plan_mixed(t, n, S, left)
            else:
                chunk = left
                p = front.pf_done
                k_pf = -(-r // left) - 1   # steps in which the front prompt does not complete
                k = min(k_finish, k_kv, k_pf)
        else:
            k = min(k_finish, k_kv)
        self._law = law = c.stretch(n, S, chunk, p)
        if cache is not None and self.waiting and cache.pinning:
            # a pin expiring mid-stretch may let the queue head in at the next boundary
            k = min(k, law.steps_done_by(cache.next_expiry(t) - t) + 1)
        self._chunk = chunk
        self._k = k
        self._arm(t + law.elapsed(k))

    def _plan_mixed(self, t: float, n: int, S: int, left: int) -> None:
        """One step in which at least one prompt completes (its composition is not uniform)."""
        chunks = []
        pf_tokens = 0
        attn = 0.0
        done = 0
        load = 0
        for req in self.prefilling:
            if left <= 0:
                break
            r = req.prompt_len - req.pf_done
            if r > left and chunks and not self.cfg.chunked_prefill:
                break
            load += req.load
            ch = r if r < left else left
            chunks.append((req, ch))
            pf_tokens += ch
            attn += pairs(ch, req.pf_done)
            left -= ch
            if ch == r:
                done += 1
        busy = self.c.kernel_time(pf_tokens, attn, n, S, n + done) + load * self.c.t_host_load
        dur = busy + (self.c.overhead + self.c.per_seq * n)
        self._mixed = (chunks, n + done, busy)
        self._mixed_dur = dur
        self._law = None
        self._chunk = 0
        self._k = 1
        self._arm(t + dur)
