"""A serving replica with continuous batching and event skipping (docs/DESIGN.md §4).

Over 800 lines on purpose: the replica is one state machine whose parts share its private state,
and its hot path (issue 20: Python work per event) is written out rather than factored into calls.

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
  starts there. Anything else provably waits for the stretch end, so it costs no event. A request
  is ready (can be queued) ``request_overhead`` after it reaches the replica; with FCFS admission
  that moment costs no event either while the replica runs (see :class:`Replica`).
* **Same-time events** are processed in SimPy's FIFO order of scheduling.

The replica is a callback object on SimPy's queue, not a process. SimPy cannot cancel an event, so
a cut moves the stretch's timer instead: its queue entry is replaced in place by the entry of the
earlier end (``_move_earlier``), and no stale timer is left to pop. Where it is not moved (a queue
of more than ``MOVE_MAX_QUEUE`` events, where the search would cost more than the stale pop), the
timer is re-armed and the stale one is recognised by identity and ignored.

Per event the replica does no allocation it can avoid: a pure-decode stretch is planned from
per-deployment tables (:class:`_Decode`) into three floats ``(c0, c1, h)`` rather than a
:class:`~agentsim.model.stretch.Affine` object, and its closed form is evaluated inline (the same
expressions in the same order as :func:`~agentsim.model.stretch.affine_elapsed`, so the same bits).
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
from ..model.servicetime import N_MAX, T_MAX, StepCoeffs, Stretch
from ..model.stretch import affine_elapsed, affine_steps_done_by
from ..util.events import MOVE_MAX_QUEUE, _move_earlier, _push  # noqa: F401  (MOVE_MAX_QUEUE: tests read it here)

_heappush, _heappop = heapq.heappush, heapq.heappop
_BIG = 1 << 62

#: the kinds of stretch in progress
MIXED, AFFINE, GENERAL = 0, 1, 2


def _by_rid(req: Request) -> int:
    return req.rid


class _Decode:
    """Per-deployment constants of a pure-decode stretch, by batch size ``n`` (filled on first use).

    ``base[n]`` is ``F(n·q) + H(n) + A(n)``, the part of ``c0`` that does not depend on the context:
    :meth:`StepCoeffs.stretch` adds the same terms left to right, so the sum is the same bits.
    ``ovh[n]`` is the per-step overhead ``overhead + per_seq·n``. Why: the engine plans a stretch per
    membership change, and these lookups and sums were a fifth of its planning time.
    """

    __slots__ = ("c", "base", "ovh", "dec_b")

    def __init__(self, c: StepCoeffs) -> None:
        self.c = c
        self.base: list = [None] * (N_MAX + 1)
        self.ovh: list = [None] * (N_MAX + 1)
        self.dec_b = c.dec_b

    def fill(self, n: int) -> None:
        c = self.c
        t = n * c.q
        fixed = c.fixed[t] if t <= T_MAX else c.F(t)
        self.base[n] = fixed + c.head[n] + c.dec_a[n]
        self.ovh[n] = c.overhead + c.per_seq * n


_DECODE: dict[int, _Decode] = {}


def _delay_to(now: float, at: float) -> float:
    """A delay ``d`` with ``now + d == at`` exactly (SimPy schedules at ``now + d``); 0 if ``at <= now``."""
    d = at - now
    if d <= 0.0:
        return 0.0
    for _ in range(64):
        s = now + d
        if s == at:
            break
        d = math.nextafter(d, math.inf if s < at else -math.inf)
    return d


def _decode_tables(c: StepCoeffs) -> _Decode:
    """The shared :class:`_Decode` of ``c`` (one per StepCoeffs object, however many replicas use it)."""
    d = _DECODE.get(id(c))
    if d is None or d.c is not c:
        if len(_DECODE) > 256:
            _DECODE.clear()
        d = _DECODE[id(c)] = _Decode(c)
    return d


class Replica(ReplicaBase):
    """One deployment serving requests; ``on_done(req)`` is called when a request leaves.

    **Ready without an event.** A request becomes schedulable ``request_overhead`` after it arrives.
    With FCFS admission the replica needs no event for that moment while it runs a stretch: what
    the ready event would do there — join the queue, and cut the stretch if it heads the queue and
    could join at the next boundary — is decided when the request arrives (or, if the stretch ends
    first, when the next one is planned), and each step boundary takes the requests ready by then.
    The timer of a cut is moved to exactly the time the ready event would have moved it to, so
    results are the same bits; an idle replica still wakes at the ready time, and a request ready
    within ``EPS`` of a step boundary keeps its ready event (its order among the events there
    decides when the boundary's requests end, and so when their clients come back). Observers
    (``waiting``, ``pending``) see the queue as the ready events would have left it. ``LAZY_READY = False`` (or priority admission) keeps one event per request.
    """

    LAZY_READY = True
    #: a request without a prefix key skips the prefix cache's calls where they cannot change anything
    #: (no GPU entries to evict at admission, nothing to keep at its end); False: every request makes
    #: them (tests compare the two)
    KEYLESS_SHORTCUT = True
    # the state in slots, next to the object rather than in a dict: at a thousand replicas each
    # event's replica is a cold object, and fewer cache lines per event count there (with the slotted
    # timers, 1.16x less CPU a request on the engine benchmark's 1,024-replica row, 1.05x on one
    # replica); a subclass may still add attributes (it gets a dict)
    __slots__ = (
        "env", "spec", "cache", "c", "cfg", "index", "on_done", "cap", "budget", "max_batch",
        "_waiting", "prefilling", "live", "heap", "n_dec", "sum_b", "V", "kv_used", "up",
        "_seq", "_to_cancel", "_npending", "_pend", "_lazy", "_wake", "_out", "_applying",
        "_dec", "_pw", "_idle", "_busy_share", "_q", "_overhead", "_timer", "_entry", "_t0",
        "_k", "_kind", "_c0", "_c1", "_h", "_el", "_law", "_chunk", "_mixed", "_mixed_dur",
        "steps", "busy_time", "energy_j", "tokens_out", "preemptions")

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
        self._waiting = ADMISSION_POLICIES[config.admission]()
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
        self._npending = 0                  # requests in their per-request overhead delay (ready events)
        # without ready events (FCFS with a per-request overhead): requests in their overhead delay as
        # (ready time, request) in ready order; each step boundary takes those ready by then
        self._pend: deque = deque()
        self._lazy = self.LAZY_READY and config.admission == "fcfs" and coeffs.request_overhead > 0
        self._wake: Event | None = None     # an idle replica's timer for its first pending request
        self._out = 0                       # requests here: pending + queued + running (``outstanding``)
        self._applying = False              # inside _apply: callbacks may submit, the caller plans next
        # constants of the hot path, read once (the energy split of StepCoeffs.energy, the decode tables)
        self._dec = _decode_tables(coeffs)
        self._pw = coeffs.power_w
        self._idle = coeffs.idle_fraction
        self._busy_share = 1 - coeffs.idle_fraction
        self._q = coeffs.q
        self._overhead = coeffs.request_overhead
        # the stretch in progress: MIXED (one step, ``_mixed``), AFFINE (step u takes c0 + c1·u + h)
        # or GENERAL (``_law``, a two-piece Stretch); ``_el`` = duration of its ``_k`` steps
        self._timer: Event | None = None
        self._entry: tuple | None = None   # the timer's entry in SimPy's queue
        self._t0 = 0.0
        self._k = 0
        self._kind = MIXED
        self._c0 = self._c1 = self._h = 0.0
        self._el = 0.0
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
        """Requests queued or running here (what load-aware routers compare): a running total, one
        up when a request reaches the replica, one down when it ends here (``_retire``, ``_end``)."""
        return self._out

    @property
    def waiting(self):
        """The queue of ready requests (FCFS deque or PriorityQueue), as of now."""
        pend = self._pend
        if pend and pend[0][0] < self.env.now:
            self._take_ready(False)
        return self._waiting

    @waiting.setter
    def waiting(self, queue) -> None:
        self._waiting = queue

    @property
    def pending(self) -> int:
        """Requests in their per-request overhead delay, as of now."""
        pend = self._pend
        if pend and pend[0][0] < self.env.now:
            self._take_ready(False)
        return len(pend) + self._npending

    @property
    def queued(self) -> int:
        """``len(waiting) + pending`` without bringing the queue up to now (the sum is the same either
        way): routers read it for every candidate."""
        return len(self._waiting) + len(self._pend) + self._npending

    @pending.setter
    def pending(self, n: int) -> None:
        self._npending = n

    def _take_ready(self, inclusive: bool) -> None:
        """Move the pending requests whose ready events would have fired by now into the queue: those
        ready before now (an observer's view) or also at now (a plan at a boundary, ``inclusive``)."""
        pend, waiting = self._pend, self._waiting
        now = self.env.now
        while pend:
            r = pend[0][0]
            if r > now or (r == now and not inclusive):
                break
            req = pend.popleft()[1]
            req.ready = r
            waiting.append(req)

    @property
    def n_running(self) -> int:
        return len(self.live)

    def route_view(self, key, now: float) -> tuple[int, int, int]:
        """:meth:`ReplicaBase.route_view` with ``n_running`` and ``queued`` read in place."""
        cache = self.cache
        hit = cache.gpu_hit(key, now) if key is not None and cache is not None else 0
        return len(self.live), len(self._waiting) + len(self._pend) + self._npending, hit

    def submit(self, req: Request) -> None:
        """A request arrives; it becomes schedulable after the per-request overhead
        (:meth:`ReplicaBase.submit`, with the common case's checks in one place)."""
        self._out += 1               # a refusal below ends it at once (``_end`` counts it out)
        req.replica = self.index
        if self.spec is not None:
            req.tps = self.spec.tokens_per_step()   # drawn on arrival: fixed for its whole decode
        if not self.up:
            return self._end(req, "replica_failed")
        if req.prompt + req.output > self.cap:
            return self._end(req, "request_too_large")
        if not self._lazy:
            if self._overhead > 0:
                self._npending += 1
                _push(self.env, self._on_ready, req, self._overhead)
            else:
                self._enqueue(req)
            return
        delay = self._overhead
        r = self.env.now + delay     # the ready event's time, as SimPy computes it
        pend = self._pend
        pend.append((r, req))
        if self._applying:
            return                   # a boundary is being applied: the plan after it looks at the pending
        if self._timer is None:
            if self._wake is None:
                self._wake = _push(self.env, self._on_wake, None, delay)[3]
        elif len(pend) == 1 and not self._waiting:
            self._cut_for(r, req)

    def _on_wake(self, ev: Event) -> None:
        """An idle replica's first pending request is ready (what its ready event would do)."""
        if ev is not self._wake:
            return
        self._wake = None
        now = self.env.now
        if self.up:
            if self._timer is None:
                self._plan(now)
            return
        pend = self._pend
        while pend and pend[0][0] <= now:
            self._end(pend.popleft()[1], "replica_failed")
        self._arm_wake()

    def _arm_wake(self) -> None:
        """Wake at the first pending request's ready time, exactly (idle replica)."""
        if self._pend and self._wake is None:
            now = self.env.now
            self._wake = _push(self.env, self._on_wake, None, _delay_to(now, self._pend[0][0]))[3]

    def _cut_for(self, r: float, req: Request) -> None:
        """``req`` will head the queue when it is ready at ``r``: cut the stretch now as its ready
        event would at ``r`` (:meth:`_maybe_cut`), the timer moved to the same time."""
        n = self.n_dec
        if n + len(self.prefilling) >= self.max_batch:
            return
        tau = r - self._t0
        eps = EPS * max(1.0, r)
        if self._kind == AFFINE:      # _where, inlined
            c0, c1, h = self._c0, self._c1, self._h
            j = affine_steps_done_by(c0, c1, h, tau + eps)
            at_boundary = (c0 * j + c1 * (j - 1) * j / 2 + h * j if j > 0 else 0.0 + h * j) >= tau - eps
        else:
            j, at_boundary = self._where(tau, eps)
        if at_boundary:
            # ready within EPS of a step boundary: what its ready event does there depends on the order
            # of the events at that moment, so it gets its ready event (rare), as without lazy readiness
            _push(self.env, self._on_boundary_ready, req, _delay_to(self.env.now, r))
            return
        jb = j + 1
        if jb >= self._k:
            return  # the stretch ends at or before that boundary: the next plan takes it
        if self.kv_used + n * (jb + 1) + req.prompt_len > self.cap:
            return  # would not fit there: it waits for the stretch end like everything else
        self._k = jb
        if self._kind == AFFINE:      # affine_elapsed(jb), jb >= 1
            self._el = el = c0 * jb + c1 * (jb - 1) * jb / 2 + h * jb
        else:
            self._el = el = self._elapsed(jb)
        t_end = self._t0 + el
        # the ready event at r moves the timer to r + (t_end - r)
        self._rearm(t_end, r + (t_end - r))

    def _on_boundary_ready(self, ev: Event) -> None:
        """The ready event of a request ready within EPS of a step boundary (see :meth:`_cut_for`):
        it joins the queue with those ready by now, and cuts the stretch there as ``_enqueue`` does."""
        req = ev.value
        pend = self._pend
        if not self.up or not pend or pend[0][1] is not req:
            return     # a plan took it already, it was cancelled, or the replica failed (``_on_wake``)
        self._take_ready(True)
        if self._timer is None:
            self._plan(self.env.now)
        elif self._waiting and self._waiting[0] is req:
            self._maybe_cut(req, self.env.now)

    def fail(self) -> None:
        super().fail()
        self._arm_wake()     # requests still in their overhead delay fail when they would be ready

    def cancel(self, req: Request, outcome: str = "cancelled") -> None:
        """:meth:`ReplicaBase.cancel`, with requests in their overhead delay held in ``_pend``."""
        if not self._lazy or req.running or req.finish == req.finish or req.removed:
            return super().cancel(req, outcome)
        pend = self._pend
        if req in self.waiting or not any(q is req for _, q in pend):
            super().cancel(req, outcome)
            if pend and not self._waiting and self._timer is not None and not self._applying:
                self._cut_for(*pend[0])   # the queue emptied: the first pending request will head it
            return
        req.removed = True
        first = pend[0][1] is req
        for i, (_, q) in enumerate(pend):
            if q is req:
                del pend[i]
                break
        self._end(req, outcome)
        if first and pend and not self._waiting and self._timer is not None and not self._applying:
            self._cut_for(*pend[0])   # the next pending request will head the queue when ready

    def _on_ready(self, ev: Event) -> None:
        req = ev.value
        if req.removed:
            return          # cancelled during its overhead delay (cancel() already uncounted it)
        self._npending -= 1
        if self.up:
            self._enqueue(req)
        else:
            self._end(req, "replica_failed")

    def _end(self, req: Request, outcome: str) -> None:
        """:meth:`ReplicaBase._end`, counted out of ``outstanding``."""
        self._out -= 1
        req.outcome = outcome
        if req.finish != req.finish:   # nan
            req.finish = self.env.now
        if self.on_done is not None:
            self.on_done(req)

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

    # -- the stretch's closed form -------------------------------------------------------------------
    def _elapsed(self, k: int) -> float:
        """Duration of the first ``k`` steps of the stretch in progress (0 for a mixed step)."""
        kind = self._kind
        if kind == AFFINE:
            return affine_elapsed(self._c0, self._c1, self._h, k)
        if kind == GENERAL:
            return self._law.elapsed(k)
        return 0.0

    def _where(self, tau: float, eps: float) -> tuple[int, bool]:
        """(steps done by ``tau`` after the stretch start, whether ``tau`` is at that boundary)."""
        kind = self._kind
        if kind == AFFINE:
            c0, c1, h = self._c0, self._c1, self._h
            j = affine_steps_done_by(c0, c1, h, tau + eps)
            return j, affine_elapsed(c0, c1, h, j) >= tau - eps
        if kind == GENERAL:
            j = self._law.steps_done_by(tau + eps)
            return j, self._law.elapsed(j) >= tau - eps
        return 0, tau <= eps

    # -- arrivals ----------------------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        now = self.env.now
        req.ready = now
        waiting = self._waiting
        waiting.append(req)
        if self._applying:
            # submitted from the callback of a request ending at this step boundary (a closed-loop
            # client without think time): the boundary being applied plans next and admits it there
            return
        if self._timer is None:
            self._plan(now)
        elif waiting[0] is req:   # it heads the queue, so it could join at the next boundary
            self._maybe_cut(req, now)

    def _maybe_cut(self, req: Request, now: float) -> None:
        """Shorten the stretch so ``req`` joins at the next step boundary, if it could join there."""
        n = self.n_dec
        if n + len(self.prefilling) >= self.max_batch:
            return
        tau = now - self._t0
        eps = EPS * max(1.0, now)
        if self._kind == AFFINE:      # _where, inlined
            c0, c1, h = self._c0, self._c1, self._h
            j = affine_steps_done_by(c0, c1, h, tau + eps)
            at_boundary = (c0 * j + c1 * (j - 1) * j / 2 + h * j if j > 0 else 0.0 + h * j) >= tau - eps
        else:
            j, at_boundary = self._where(tau, eps)
        jb = j if at_boundary else j + 1
        if jb >= self._k and not at_boundary:
            return  # the stretch ends at that boundary anyway
        if self.kv_used + n * (jb + 1) + req.prompt_len > self.cap:
            return  # would not fit there: it waits for the stretch end like everything else
        if at_boundary:
            el = self._elapsed(j)
            t_b = self._t0 + el
            self._apply(j, t_b, el)
            self._plan(t_b)
        else:
            self._k = jb
            self._el = el = self._elapsed(jb)
            self._rearm(self._t0 + el)

    def _cut_to_boundary(self, now: float) -> None:
        """End the stretch at the next step boundary (at once if ``now`` is at one)."""
        if self._timer is None:
            return
        tau = now - self._t0
        j, at_boundary = self._where(tau, EPS * max(1.0, now))
        if at_boundary:
            el = self._elapsed(j)
            t_b = self._t0 + el
            self._apply(j, t_b, el)
            self._plan(t_b)
        elif j + 1 < self._k:
            self._k = j + 1
            self._el = el = self._elapsed(j + 1)
            self._rearm(self._t0 + el)

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

    def _rearm(self, t_end: float, at: float | None = None) -> None:
        """The stretch was shortened: move its timer to the new, earlier end (no stale timer), at
        ``now + (t_end - now)`` as SimPy computes it, or at exactly ``at`` if given."""
        now = self.env.now
        if at is None:
            delay = t_end - now
            delay = delay if delay > 0.0 else 0.0
        else:
            delay = at - now
            if now + delay != at or delay <= 0.0:
                delay = _delay_to(now, at)
        entry = _move_earlier(self.env, self._entry, delay)
        if entry is None:
            self._entry = entry = _push(self.env, self._on_timer, None, delay)
            self._timer = entry[3]
        else:
            self._entry = entry

    def _on_timer(self, ev: Event) -> None:
        if ev is not self._timer:
            return  # stale: a cut that could not move the timer re-armed the stretch
        now = self._entry[0]         # the time SimPy fires it at (env.now), without the property call
        self._applying = True        # _apply, inlined: this is the path of most events
        try:
            if self._kind == MIXED:
                self.busy_time += now - self._t0
                self.steps += 1
                self._apply_mixed(now)
            else:                    # _apply_steps, inlined
                k = self._k
                dur = now - self._t0
                self.busy_time += dur
                self.steps += k
                self.energy_j += self._pw * (self._idle * dur + self._busy_share * (self._el - k * self._h))
                V = self.V = self.V + k
                nk = self.n_dec * k
                self.kv_used += nk
                self.tokens_out += nk
                c = self._chunk
                if c:
                    front = self.prefilling[0]
                    front.pf_done += c * k
                    front.prefill_tokens += c * k
                heap = self.heap
                if heap and heap[0][0] <= V:
                    self._finish_decoders(now, [])
        finally:
            self._applying = False
        self._plan(now)

    def _apply(self, k: int, t: float, el: float) -> None:
        """Account for ``k`` completed steps (lasting ``el``) of the current stretch, ending at time ``t``.

        Every caller plans the next stretch right after (``_plan(t)``), so a request submitted by
        the callback of a request that ends here only joins the queue (see ``_enqueue``).
        """
        self._applying = True
        try:
            if k == 0:
                self.busy_time += t - self._t0
            elif self._kind == MIXED:
                self.busy_time += t - self._t0
                self.steps += k
                self._apply_mixed(t)
            else:
                self._apply_steps(k, t, el)
        finally:
            self._applying = False

    def _apply_steps(self, k: int, t: float, el: float) -> None:
        """``k`` >= 1 steps of a uniform stretch, lasting ``el`` (= its closed form's elapsed(k))."""
        dur = t - self._t0
        self.busy_time += dur
        self.steps += k
        n = self.n_dec
        busy = el - k * self._h
        self.energy_j += self._pw * (self._idle * dur + self._busy_share * busy)
        V = self.V = self.V + k
        nk = n * k
        self.kv_used += nk
        self.tokens_out += nk
        c = self._chunk
        if c:
            front = self.prefilling[0]
            front.pf_done += c * k
            front.prefill_tokens += c * k
        heap = self.heap
        if heap and heap[0][0] <= V:
            self._finish_decoders(t, [])

    def _apply_mixed(self, t: float) -> None:
        chunks, sampled, busy = self._mixed
        self.energy_j += self._pw * (self._idle * self._mixed_dur + self._busy_share * busy)
        n = self.n_dec
        V = self.V = self.V + 1
        self.kv_used += n
        self.tokens_out += n
        done = []
        prefilling = self.prefilling
        for req, c in chunks:
            req.pf_done += c
            req.prefill_tokens += c
            req.load = 0
            if req.pf_done >= req.prompt_len:   # prompt complete: first (or next) token out
                prefilling.popleft()
                self.tokens_out += 1
                if req.first_token != req.first_token:  # nan: first time
                    req.first_token = t
                out_left = req.out_left = req.out_left - 1
                if out_left == 0:
                    req.kv = req.prompt_len
                    done.append(req)
                else:
                    if req.tps > 1.0:               # speculative decoding: the surplus is reserved now
                        extra = surplus(out_left, req.tps)
                        out_left = req.out_left = out_left - extra
                        self.kv_used += extra
                        self.tokens_out += extra
                    else:
                        extra = 0
                    seq = self._seq = self._seq + 1
                    req.seq = seq
                    req.v_join = V
                    b = req.b = req.prompt_len + 1 + extra - V
                    fv = req.finish_v = V + out_left
                    self.n_dec += 1
                    self.sum_b += b
                    _heappush(self.heap, (fv, seq, req))
        heap = self.heap
        if done or (heap and heap[0][0] <= V):
            self._finish_decoders(t, done)

    def _finish_decoders(self, t: float, done: list) -> None:
        """Retire the decoders whose last token came out at ``V`` (and ``done``, finished prompts)."""
        heap, V = self.heap, self.V
        n_dec, sum_b = self.n_dec, self.sum_b
        while heap and heap[0][0] <= V:
            _, seq, req = _heappop(heap)
            if seq != req.seq or not req.running:
                continue
            n_dec -= 1
            sum_b -= req.b
            req.kv = req.b + V - 1
            done.append(req)
        self.n_dec, self.sum_b = n_dec, sum_b
        if len(done) > 1:
            done.sort(key=_by_rid)   # one canonical order for the cache and the callbacks
        cache, live, on_done = self.cache, self.live, self.on_done
        every = cache is not None and not self.KEYLESS_SHORTCUT
        for req in done:
            if cache is not None and (every or req.prefix_key is not None or req.shared_key is not None):
                self._retire(req, t)
                continue
            self.kv_used -= req.kv   # _retire inlined: no cache, or nothing of this request to keep
            del live[req.rid]
            req.running = False
            req.finish = t
            req.outcome = "completed"
            self._out -= 1
            if on_done is not None:
                on_done(req)

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
        req.outcome = "completed"         # _end, inlined (finish is set)
        self._out -= 1
        on_done = self.on_done
        if on_done is not None:
            on_done(req)

    def accounted(self, now: float) -> tuple[float, float]:
        """(busy seconds, server joules) so far, the stretch in progress prorated to ``now``."""
        busy, energy = self.busy_time, self.energy_j
        dur = now - self._t0
        if self._timer is None or dur <= 0:
            return busy, energy
        if self._kind == MIXED:
            kernel = self._mixed[2] * min(1.0, dur / self._mixed_dur) if self._mixed_dur > 0 else 0.0
        else:
            law = self._law if self._kind == GENERAL else _Affine(self._c0, self._c1, self._h)
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
        self._waiting.appendleft(victim)

    def _admit(self, t: float) -> None:
        waiting, cap, cache, live = self._waiting, self.cap, self.cache, self.live
        max_batch, n_dec, prefilling = self.max_batch, self.n_dec, self.prefilling
        kv_used = self.kv_used
        shortcut = self.KEYLESS_SHORTCUT
        while waiting and len(live) < max_batch:
            req = waiting[0]
            if cache is None or (shortcut and req.prefix_key is None and not cache.gpu_used):
                if kv_used + req.prompt_len + n_dec > cap:     # what reserve() decides here
                    break
            elif not reserve(cache, req, kv_used, n_dec, cap, t, not live):
                break
            waiting.popleft()
            if req.admitted != req.admitted:   # nan: first admission
                req.admitted = t
            req.running = True
            if req.preemptions == 0:
                pl = req.prompt_len
                cached = req.cached_gpu + req.cached_host
                req.pf_done = cached if cached < pl - 1 else pl - 1
                req.load = req.cached_host
            else:
                req.pf_done = req.load = 0
            kv_used += req.prompt_len
            live[req.rid] = req
            prefilling.append(req)
        self.kv_used = kv_used

    def _after_plan(self) -> None:
        """A stretch was planned (or the replica went idle) with requests in their overhead delay:
        the first of them may cut it when ready, or wakes the idle replica."""
        if self._timer is None:
            self._arm_wake()
        elif not self._waiting and not self._applying:
            self._cut_for(*self._pend[0])

    def _plan(self, t: float) -> None:
        """At a step boundary at time ``t``: take the requests ready by then, preempt, admit, and arm
        the next stretch (each way out ends with ``_after_plan`` if requests are still pending)."""
        if self._pend:
            self._take_ready(True)
        if self._to_cancel:
            self._applying = True          # a callback of a cancelled request may submit here: it waits
            try:
                self._drop_cancelled()
            finally:
                self._applying = False
        cache = self.cache
        if cache is None:
            if self.kv_used + self.n_dec > self.cap:
                while self.kv_used + self.n_dec > self.cap:
                    self._preempt()
        else:
            while self.kv_used + self.n_dec + cache.gpu_used > self.cap:
                if cache.gpu_used:
                    cache.evict(self.kv_used + self.n_dec + cache.gpu_used - self.cap, t, force=True)
                else:
                    self._preempt()
        if self._waiting:
            self._admit(t)
        n = self.n_dec
        prefilling = self.prefilling
        self._t0 = t
        if prefilling:
            left = self.budget - n * self._q
            if left > 0:
                front = prefilling[0]
                r = front.prompt_len - front.pf_done
                if r > left and not self.cfg.chunked_prefill and front.prompt_len <= self.budget:
                    pass      # unchunked: the prompt waits until a finish leaves room for it
                elif r <= left or front.load:
                    return self._plan_mixed(t, n, self.sum_b + n * self.V, left)
                else:
                    k = -(-r // left) - 1   # steps in which the front prompt does not complete
                    if n:
                        k_finish = self.heap[0][0] - self.V
                        k_kv = (self.cap - self.kv_used - (cache.gpu_used if cache is not None else 0)) // n
                        k = min(k_finish, k_kv, k)
                    law = self.c.stretch(n, self.sum_b + n * self.V, left, front.pf_done)
                    return self._plan_law(t, law, k, left)
        elif not n:
            self._timer = None
            self._kind = MIXED
            if self._pend:
                self._after_plan()
            return
        # a pure-decode stretch, until the first decoder finishes or decode writes fill the KV
        V = self.V
        S = self.sum_b + n * V
        k = self.heap[0][0] - V
        k_kv = (self.cap - self.kv_used - (cache.gpu_used if cache is not None else 0)) // n
        if k_kv < k:
            k = k_kv
        dec = self._dec
        if n > N_MAX or (cache is not None and self._waiting and cache.pinning):
            return self._plan_law(t, self.c.stretch(n, S, 0, 0), k, 0)
        base = dec.base[n]      # StepCoeffs.stretch's sums from the per-deployment tables
        if base is None:
            dec.fill(n)
            base = dec.base[n]
        b = dec.dec_b[n]
        c0 = base + b * S
        c1 = b * n
        if not (c0 > 0 and c1 >= 0):
            return self._plan_law(t, self.c.stretch(n, S, 0, 0), k, 0)
        h = dec.ovh[n]
        self._kind = AFFINE
        self._c0 = c0
        self._c1 = c1
        self._h = h
        self._chunk = 0
        self._k = k
        el = self._el = c0 * k + c1 * (k - 1) * k / 2 + h * k    # affine_elapsed(k), k >= 1
        delay = t + el - self.env.now
        self._entry = entry = _push(self.env, self._on_timer, None, delay if delay > 0.0 else 0.0)
        self._timer = entry[3]
        if self._pend:
            self._after_plan()

    def _plan_law(self, t: float, law: Stretch, k: int, chunk: int) -> None:
        """Arm a uniform stretch of at most ``k`` steps under ``law`` (any StepCoeffs.stretch result)."""
        cache = self.cache
        if cache is not None and self._waiting and cache.pinning:
            # a pin expiring mid-stretch may let the queue head in at the next boundary
            k = min(k, law.steps_done_by(cache.next_expiry(t) - t) + 1)
        if type(law) is _Affine:
            self._kind = AFFINE
            self._law = None
        else:
            self._kind = GENERAL
            self._law = law
        self._c0, self._c1, self._h = law.c0, law.c1, law.h
        self._chunk = chunk
        self._k = k
        self._el = el = law.elapsed(k)
        self._arm(t + el)
        if self._pend:
            self._after_plan()

    def _plan_mixed(self, t: float, n: int, S: int, left: int) -> None:
        """One step in which at least one prompt completes (its composition is not uniform)."""
        prefilling = self.prefilling
        if len(prefilling) == 1:    # the loop below for one prompt (the same sums: 0 + x is x)
            req = prefilling[0]
            r = req.prompt_len - req.pf_done
            load = req.load
            ch = r if r < left else left
            chunks = [(req, ch)]
            pf_tokens = ch
            attn = 0.0 + (ch * req.pf_done + ch * ch / 2)
            done = 1 if ch == r else 0
            return self._arm_mixed(t, n, S, chunks, pf_tokens, attn, done, load)
        chunks = []
        pf_tokens = 0
        attn = 0.0
        done = 0
        load = 0
        chunked = self.cfg.chunked_prefill
        for req in prefilling:
            if left <= 0:
                break
            r = req.prompt_len - req.pf_done
            if r > left and chunks and not chunked:
                break
            load += req.load
            ch = r if r < left else left
            chunks.append((req, ch))
            pf_tokens += ch
            attn += ch * req.pf_done + ch * ch / 2      # servicetime.pairs
            left -= ch
            if ch == r:
                done += 1
        self._arm_mixed(t, n, S, chunks, pf_tokens, attn, done, load)

    def _arm_mixed(self, t: float, n: int, S: int, chunks: list, pf_tokens: int, attn: float, done: int,
                   load: int) -> None:
        c = self.c
        sampled = n + done
        t_tok = pf_tokens + n * self._q
        if t_tok <= T_MAX and sampled <= N_MAX and n <= N_MAX:
            # StepCoeffs.kernel_time, inlined: the same lookups and additions in the same order
            pc = pf_tokens if pf_tokens <= T_MAX else T_MAX
            kernel = (c.fixed[t_tok] + c.head[sampled] + c.dec_a[n] + c.dec_b[n] * S + c.pf_a[pc]
                      + c.pf_pair[pc] * attn)
        else:
            kernel = c.kernel_time(pf_tokens, attn, n, S, sampled)
        busy = kernel + load * c.t_host_load
        dur = busy + (c.overhead + c.per_seq * n)
        self._mixed = (chunks, sampled, busy)
        self._mixed_dur = dur
        self._kind = MIXED
        self._law = None
        self._chunk = 0
        self._k = 1
        now = self.env.now
        delay = t + dur - now
        self._entry = entry = _push(self.env, self._on_timer, None, delay if delay > 0.0 else 0.0)
        self._timer = entry[3]
        if self._pend:
            self._after_plan()


from ..model.stretch import Affine as _Affine  # noqa: E402  (the law type StepCoeffs.stretch builds)
