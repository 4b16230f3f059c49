"""The service-time core: how long one engine step takes, as a sum of measured operators.

A step mixes prefill chunks (``c_i`` new tokens after ``p_i`` cached ones) and decodes (one token
each at context ``s_j``). Its kernel time is the sum of its operators, each priced by the grids
fitted to measured op tables (:mod:`agentsim.model.opmodel`)::

    kernel = F(T) + H(sampled) + A(n) + B(n)·Σs_j + P(c) + Q(c)·Σ(c_i·p_i + c_i²/2)
    step   = kernel + overhead

* ``F(T)``: every op whose size is the step's token count ``T = Σc_i + n``: QKV/O and MLP GEMMs,
  MoE experts (measured grouped GEMMs at ``T·k/E`` tokens per expert), all-reduce of ``T·d``
  activations per layer (tp > 1), pipeline hand-offs, norms and residuals (roofline);
* ``H(s)``: the LM head GEMM and sampling for ``s`` sampled tokens;
* ``A(n) + B(n)·S``: decode attention of ``n`` sequences over ``S = Σs_j`` context tokens, the
  measured kernel at each context length fitted by a line in ``S`` per batch size (MLA: the
  measured attention module, projections included);
* ``P(c) + Q(c)·pairs``: prefill attention of a ``c``-token chunk, its efficiency taken at the
  chunk size and its work proportional to the attended pairs (the cached prefix adds pairs).

**Why this shape.** Inside a run of steps with the same batch (an engine *stretch*) ``T``, ``n``,
``c`` and the sampled count are fixed while ``S`` and the pairs grow by a constant each step, so
the step time is exactly affine in the step index and :class:`Stretch` sums it in O(1). Every
efficiency that depends on context is therefore carried by the line in ``S`` (fitted per batch
size, not per context), never evaluated at a context that changes within the stretch.

The tables ``F, H, A, B, P, Q`` are built once per deployment (a few ms) at every integer size up
to :data:`T_MAX` / :data:`N_MAX` and extended linearly beyond. :class:`StepCoeffs` holds them as
Python lists for the engines' scalar path and as arrays for :func:`step_times` / :func:`step_cost`
(vectorized over many steps and deployments).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .deployment import Deployment
from .opmodel import OpModel
from .operators import A2A_CURVE_TO_S, _CONTEXTS, _Ops, _dense_table, _head_ops, _points, _token_ops  # noqa: F401
from .stretch import Affine, Stretch  # noqa: F401  (re-exported: the engines and tests name them here)

T_MAX = 32768      # tokens per step with a table entry (larger steps: extended linearly)
N_MAX = 4096       # decodes / sampled tokens per step with a table entry
@dataclass(frozen=True)
class Tables:
    """The six per-deployment tables (seconds), indexed by size, plus their linear extensions."""

    fixed: np.ndarray       # F(T), T = 0..T_MAX
    head: np.ndarray        # H(s), s = 0..N_MAX
    dec_a: np.ndarray       # A(n), n = 0..N_MAX
    dec_b: np.ndarray       # B(n)
    pf_a: np.ndarray        # P(c), c = 0..T_MAX
    pf_pair: np.ndarray     # Q(c)
    label: str
    outside: tuple[str, ...]
    q: int = 1              # tokens each decode puts through the GEMMs: 1, or 1 + drafts verified (MTP)


def build_tables(dep: Deployment, om: OpModel | None = None) -> Tables:
    om = om or OpModel.load()
    ops = _Ops(dep, om)
    pt = _points(T_MAX)
    pn = _points(N_MAX)
    pn = pn[pn <= N_MAX]
    L = dep.model.layers
    fixed = np.maximum.accumulate(_dense_table(pt, _token_ops(ops, pt), T_MAX))
    head = np.maximum.accumulate(_dense_table(pn, _head_ops(ops, pn), N_MAX))
    # dp attention ranks: the busiest holds ceil(n/dp) of the n decodes, at the batch's mean context
    # (so its share of S is m/n); dp = 1 leaves m = n
    m_rank = np.ceil(pn / dep.dp) if dep.dp > 1 else pn
    a, b = ops.decode_attention(np.maximum(m_rank, 1))
    # A(n) and n·B(n) non-decreasing: one more decode at the batch's mean context never shortens a
    # step. B(n) itself falls with n (a lone sequence streams its KV with few thread blocks), so a
    # decode much shorter than the others can: the aggregate Σs does not say how it is spread.
    dec_a = np.maximum.accumulate(_dense_table(pn, np.where(pn > 0, L * a, 0.0), N_MAX))
    n_all = np.arange(N_MAX + 1, dtype=float)
    nb = np.maximum.accumulate(_dense_table(pn, np.where(pn > 0, L * b * m_rank, 0.0), N_MAX))
    dec_b = np.divide(nb, n_all, out=np.zeros_like(nb), where=n_all > 0)
    if dep.dp > 1:
        # dp ranks each prefill their own chunk: a step's c prefill tokens are priced as the busiest
        # rank's ceil(c/dp), its pairs as 1/dp of the step's (exact for the c·p part, which dominates
        # agent prompts behind a cached prefix; the c²/2 part is over-counted dp times). A lone
        # prompt's TTFT is understated: an engine chunks it on one rank (see README)
        pa, pq = ops.prefill_attention(np.ceil(pt / dep.dp))
        pq = pq / dep.dp
    else:
        pa, pq = ops.prefill_attention(pt)
    pf_a = _dense_table(pt, L * pa, T_MAX)
    pf_pair = _dense_table(pt, L * pq, T_MAX)
    q = 1
    if dep.mtp:
        head, dec_a, dec_b, q = _with_drafts(ops, pn, head, dec_a, dec_b, dep.mtp, L)
    label = "extrapolated" if ops.outside and ops.label == "measured" else ops.label
    return Tables(fixed, head, dec_a, dec_b, pf_a, pf_pair, label, tuple(sorted(ops.outside)), q)


def _with_drafts(ops, pn, head, dec_a, dec_b, k: int, L: int):
    """The decode tables of a step that verifies ``k`` drafts per sequence and drafts the next ``k``.

    Verify: each decode puts ``q = k+1`` tokens through every GEMM (the engines index ``F`` at
    ``prefill + q·decodes``) and the head samples ``q`` positions; its attention reads the same KV
    once (memory-bound: the ``k`` extra queries are priced as free). Draft: ``k`` sequential passes
    of the one-layer MTP module (a ``1/L`` share of the token-sized ops and of decode attention)
    and its head, at ``n`` tokens each. Indexed by decodes ``n``, so the engines' lookups stay as
    they are.
    """
    q = k + 1
    draft_layer = _dense_table(pn, np.where(pn > 0, _token_ops(ops, np.maximum(pn, 1)), 0.0), N_MAX) / L
    verify_head = _dense_table(pn, _head_ops(ops, pn * q), N_MAX)
    head = np.maximum.accumulate(verify_head + k * (head + draft_layer))
    scale = 1 + k / L
    return head, dec_a * scale, dec_b * scale, q



_TABLES: dict[tuple, Tables] = {}
#: the tables that hold seconds (scaled by ``Efficiency.step_time_scale``)
_TIMED = ("fixed", "head", "dec_a", "dec_b", "pf_a", "pf_pair")


def _cached_tables(dep: Deployment) -> Tables:
    """Tables per distinct geometry (a scenario's pools, a sweep's points share them)."""
    key = (dep.model.model_dump_json(exclude={"sources", "description"}),
           dep.gpu.model_dump_json(exclude={"sources", "description"}), dep.tp, dep.pp, dep.precision, dep.kv_dtype,
           dep.engine, dep.ep, dep.dp, dep.redundant_experts, dep.mtp)
    tables = _TABLES.get(key)
    if tables is None:
        if len(_TABLES) > 256:
            _TABLES.clear()
        tables = _TABLES[key] = build_tables(dep)
    return tables


class StepCoeffs:
    """One deployment's step-time tables, as lists for the scalar hot path and arrays for numpy.

    ``overhead`` (s per step: scheduler and launches outside the kernels) and ``request_overhead``
    (s per request before its first step) come from the calibrated efficiency of the GPU generation
    or the engine preset; ``per_seq`` (s per running decode per step) lets the scheduler's time grow
    with the batch — constant within a stretch, so the closed form stays exact.
    Collectives are kernels here (inside ``fixed``): ``comm_fixed``/``comm_token`` stay 0 so code
    that separated them keeps its meaning.
    """

    __slots__ = ("fixed", "head", "dec_a", "dec_b", "pf_a", "pf_pair", "f_slope", "h_slope", "a_slope", "b_slope",
                 "arrays", "overhead", "per_seq", "request_overhead", "t_host_load", "power_w", "idle_fraction", "comm_fixed",
                 "comm_token", "label", "outside", "q", "_by_batch")

    def __init__(self, tables: Tables, *, overhead: float, request_overhead: float, t_host_load: float,
                 power_w: float, idle_fraction: float, per_seq: float = 0.0) -> None:
        self.arrays = tables
        self.fixed = tables.fixed.tolist()
        self.head = tables.head.tolist()
        self.dec_a = tables.dec_a.tolist()
        self.dec_b = tables.dec_b.tolist()
        self.pf_a = tables.pf_a.tolist()
        self.pf_pair = tables.pf_pair.tolist()
        # beyond the tables: the last 1/16 of each table's growth per unit, held constant
        self.f_slope = _slope(tables.fixed)
        self.h_slope = _slope(tables.head)
        self.a_slope = _slope(tables.dec_a)
        self.b_slope = _slope(tables.dec_b)
        self.overhead = overhead
        self.per_seq = per_seq
        self.request_overhead = request_overhead
        self.t_host_load = t_host_load
        self.power_w = power_w
        self.idle_fraction = idle_fraction
        self.comm_fixed = 0.0
        self.comm_token = 0.0
        self.label = tables.label
        self.outside = tables.outside
        self.q = tables.q
        self._by_batch: dict = {}     # router_times' parts that depend on the batch size alone

    @classmethod
    def of(cls, dep: Deployment) -> "StepCoeffs":
        e, g = dep.efficiency, dep.gpu
        k = e.step_time_scale
        tables = _cached_tables(dep)
        if k != 1.0:   # the sensitivity knob: every table and the per-step overheads scaled alike
            tables = replace(tables, **{f: getattr(tables, f) * k for f in _TIMED})
        return cls(tables, overhead=e.step_overhead_ms * 1e-3 * k,
                   request_overhead=e.request_overhead_ms * 1e-3, per_seq=e.per_seq_us * 1e-6 * k,
                   t_host_load=dep.kv_bytes_per_token_per_gpu / (g.host_link_gbps * 1e9),
                   power_w=dep.n_gpus * g.server_w_per_gpu, idle_fraction=g.idle_power_fraction)

    def with_(self, **changes) -> "StepCoeffs":
        """A copy with some scalar fields changed (e.g. another per-request overhead)."""
        kw = dict(overhead=self.overhead, request_overhead=self.request_overhead, t_host_load=self.t_host_load,
                  power_w=self.power_w, idle_fraction=self.idle_fraction, per_seq=self.per_seq)
        kw.update(changes)
        return StepCoeffs(self.arrays, **kw)

    @staticmethod
    def stack(coeffs: list["StepCoeffs"]) -> "Stacked":
        """Many deployments for one vectorized call: results come back shaped ``(D, N)``."""
        return Stacked(list(coeffs))

    # -- lookups (scalar; integers inside the tables, linear beyond) ----------------------------------
    def F(self, t: int) -> float:
        return self.fixed[t] if t <= T_MAX else self.fixed[T_MAX] + (t - T_MAX) * self.f_slope

    def H(self, s: int) -> float:
        return self.head[s] if s <= N_MAX else self.head[N_MAX] + (s - N_MAX) * self.h_slope

    def decode_line(self, n: int) -> tuple[float, float]:
        if n <= N_MAX:
            return self.dec_a[n], self.dec_b[n]
        return self.dec_a[N_MAX] + (n - N_MAX) * self.a_slope, self.dec_b[N_MAX] + (n - N_MAX) * self.b_slope

    def prefill_line(self, c: int) -> tuple[float, float]:
        c = c if c <= T_MAX else T_MAX
        return self.pf_a[c], self.pf_pair[c]

    def kernel_time(self, prefill_tokens: int = 0, prefill_attn: float = 0, decodes: int = 0,
                    decode_context: float = 0, sampled: int | None = None) -> float:
        """Seconds of kernels in one step (the scalar form of the module's formula)."""
        prefill_tokens, decodes = int(prefill_tokens), int(decodes)
        sampled = decodes if sampled is None else int(sampled)
        # the engine prices every mixed step here: the table lookups are inlined (same values, same
        # order of additions, so the same bits)
        if decodes <= N_MAX:
            a, b = self.dec_a[decodes], self.dec_b[decodes]
        else:
            a, b = self.decode_line(decodes)
        t = prefill_tokens + decodes * self.q
        c = prefill_tokens if prefill_tokens <= T_MAX else T_MAX
        fixed = self.fixed[t] if t <= T_MAX else self.F(t)
        head = self.head[sampled] if sampled <= N_MAX else self.H(sampled)
        return fixed + head + a + b * decode_context + self.pf_a[c] + self.pf_pair[c] * prefill_attn

    def step_time(self, prefill_tokens: int = 0, prefill_attn: float = 0, prefill_kv: float = 0,
                  decodes: int = 0, decode_context: float = 0, sampled: int | None = None) -> float:
        """Kernel time plus the per-step overhead. ``prefill_kv`` is accepted for callers that pass
        it; the KV a chunk reads and writes is inside the measured attention time."""
        return (self.kernel_time(prefill_tokens, prefill_attn, decodes, decode_context, sampled)
                + self.step_overhead(int(decodes)))

    def router_times(self, P: int, typ: int, done: int, n: int, ctx: float) -> tuple[float, float, float]:
        """What a load-aware router prices per pool and batch size ``n`` (mean context ``ctx``):
        (a ``P``-token prefill step beside ``n`` decodes, a decode step at ``n + 1``, the time a
        ``typ``-token chunk after ``done`` tokens adds to a step of ``n`` decodes). The same bits as
        the four :meth:`step_time` calls it stands for, in one call: routers score every
        candidate's batch size for every new session. What depends on ``n`` alone (table lookups,
        overheads and the sums that start each step's additions) is worked out once per batch size."""
        parts = self._by_batch.get(n)
        if parts is None:
            parts = self._by_batch[n] = self._batch_parts(n)
        a, b, b1, hm, ovh, ovh_m, dec_lead, base_lead = parts
        fixed_, pf_a, pf_pair, q = self.fixed, self.pf_a, self.pf_pair, self.q
        m = n + 1
        ctx_n = n * ctx
        t = P + n * q
        c = P if P <= T_MAX else T_MAX
        prefill = (((fixed_[t] if t <= T_MAX else self.F(t)) + hm + a + b * ctx_n + pf_a[c]
                    + pf_pair[c] * (P * P / 2)) + ovh)
        decode = ((dec_lead + b1 * (m * ctx) + pf_a[0] + pf_pair[0] * 0) + ovh_m)
        base = (base_lead + b * ctx_n + pf_a[0] + pf_pair[0] * 0) + ovh
        t = typ + n * q
        c = typ if typ <= T_MAX else T_MAX
        queued = (((fixed_[t] if t <= T_MAX else self.F(t)) + hm + a + b * ctx_n + pf_a[c]
                   + pf_pair[c] * (typ * done + typ * typ / 2)) + ovh)
        return prefill, decode, queued - base

    def _batch_parts(self, n: int) -> tuple:
        """:meth:`router_times`' parts for batch size ``n``; the leading sums are the first additions of
        the decode (at ``n + 1``) and base (at ``n``) steps, left to right as :meth:`kernel_time` adds."""
        q = self.q
        a, b = (self.dec_a[n], self.dec_b[n]) if n <= N_MAX else self.decode_line(n)
        m = n + 1
        a1, b1 = (self.dec_a[m], self.dec_b[m]) if m <= N_MAX else self.decode_line(m)
        hn = self.head[n] if n <= N_MAX else self.H(n)
        hm = self.head[m] if m <= N_MAX else self.H(m)
        t = m * q
        dec_lead = (self.fixed[t] if t <= T_MAX else self.F(t)) + hm + a1
        t = n * q
        base_lead = (self.fixed[t] if t <= T_MAX else self.F(t)) + hn + a
        return (a, b, b1, hm, self.overhead + self.per_seq * n, self.overhead + self.per_seq * m, dec_lead,
                base_lead)

    def step_overhead(self, decodes: int) -> float:
        """Scheduler time of a step with ``decodes`` running decodes (``overhead`` when per_seq is 0)."""
        return self.overhead + self.per_seq * decodes

    def comm_time(self, tokens: int) -> float:
        """Collective time of a step over ``tokens`` tokens (0 for a single-GPU deployment)."""
        return self.comm_fixed + self.comm_token * tokens if self.comm_fixed else 0.0

    def kernel_part(self, step: float, decodes: int, tokens: int) -> float:
        """The GPU-busy part of a step of length ``step``: less its scheduler overhead and collectives."""
        return step - self.step_overhead(decodes) - self.comm_time(tokens)

    def energy(self, dur: float, kernel: float) -> float:
        """Server joules over ``dur`` seconds of which ``kernel`` run kernels: idle power throughout,
        the rest of full power while kernels run (the one kernel/overhead energy split)."""
        return self.power_w * (self.idle_fraction * dur + (1 - self.idle_fraction) * kernel)

    def stretch(self, n: int, S: float, chunk: int, p: int) -> "Stretch":
        """The closed form of a run of steps: ``n`` decodes at total context ``S`` (+n per step) and a
        ``chunk`` of one prompt after ``p`` done tokens (+chunk per step); n sampled per step."""
        # called once per engine stretch: the lookups of F, H, decode_line and prefill_line are
        # inlined (same values, same order of additions, so the same bits)
        if n <= N_MAX:
            a, b, head = self.dec_a[n], self.dec_b[n], self.head[n]
        else:
            a, b = self.decode_line(n)
            head = self.H(n)
        t = n * self.q + chunk
        fixed = self.fixed[t] if t <= T_MAX else self.F(t)
        if chunk:
            c = chunk if chunk <= T_MAX else T_MAX
            pa, pq = self.pf_a[c], self.pf_pair[c]
            c0 = fixed + head + a + b * S + pa + pq * pairs(chunk, p)
            c1 = b * n + pq * chunk * chunk
        else:
            c0 = fixed + head + a + b * S
            c1 = b * n
        overhead = self.overhead + self.per_seq * n
        if c0 > 0 and c1 >= 0:
            return Affine(c0, c1, overhead)
        return Stretch(c0, c1, 0.0, 0.0, overhead)


def _slope(a: np.ndarray) -> float:
    k = max(1, len(a) // 16)
    return float(max(0.0, (a[-1] - a[-1 - k]) / k))


class Stacked:
    """Several deployments' tables for :func:`step_times` over ``(D, N)``."""

    def __init__(self, coeffs: list[StepCoeffs]) -> None:
        self.coeffs = coeffs

    def column(self) -> "Stacked":
        return self


@dataclass(frozen=True)
class StepCost:
    """Vectorized result: one element per evaluated step."""

    time_s: np.ndarray
    tokens_s: np.ndarray       # F: ops sized by the token count (GEMMs, MoE, collectives, elementwise)
    attention_s: np.ndarray    # decode and prefill attention
    sampling_s: np.ndarray     # H: logits and sampling
    energy_j: np.ndarray


def pairs(chunk, cached):
    """Attended (query, key) pairs of a causal chunk of ``chunk`` tokens after ``cached`` ones: the one
    formula of prefill attention's work (scalars in the engines, arrays below)."""
    return chunk * cached + chunk * chunk / 2


def prefill_attention_pairs(chunk, cached):
    """:func:`pairs` over arrays of chunks."""
    return pairs(np.asarray(chunk, dtype=float), np.asarray(cached, dtype=float))


def _index(x: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer table indices of sizes ``x`` (clipped at ``top``) and how far past ``top`` each lies
    (None when none does: the common case costs one pass for the conversion and one for the max)."""
    idx = x.astype(np.intp)
    if idx.size and idx.max() > top:
        over = np.maximum(x - top, 0.0)
        np.minimum(idx, top, out=idx)
        return idx, over
    return idx, None


def _gather(table: np.ndarray, idx: np.ndarray, over: np.ndarray | None, slope: float) -> np.ndarray:
    """Table value at integer sizes (exactly the scalar lookup), linear beyond the table."""
    out = np.take(table, idx)
    if over is not None:
        out += over * slope
    return out


def _one(c: StepCoeffs, pt, pa, nd, ctx, sm, parts: bool):
    """One deployment's steps. Why the index sharing and in-place sums: the gathers dominate, so the
    decode index serves A, B (and H when sampled = decodes), and no temporary outlives its pass.
    The sum runs in the scalar form's order, so both give the same bits."""
    pt = np.asarray(pt, dtype=float)
    nd = np.asarray(nd, dtype=float)
    ctx = np.asarray(ctx, dtype=float)
    pa = np.asarray(pa, dtype=float)
    tab = c.arrays
    shape = np.broadcast_shapes(pt.shape, nd.shape, ctx.shape, pa.shape, np.shape(sm) if sm is not None else ())
    ti, to = _index(np.broadcast_to(pt + nd * c.q, shape), T_MAX)
    ni, no = _index(np.broadcast_to(nd, shape), N_MAX)
    if sm is None:
        si, so = ni, no
    else:
        si, so = _index(np.broadcast_to(np.asarray(sm, dtype=float), shape), N_MAX)
    pi = np.broadcast_to(np.minimum(pt, T_MAX), shape).astype(np.intp)
    kernel = _gather(tab.fixed, ti, to, c.f_slope)
    head = _gather(tab.head, si, so, c.h_slope)
    a = _gather(tab.dec_a, ni, no, c.a_slope)
    b = _gather(tab.dec_b, ni, no, c.b_slope)
    pfa = np.take(tab.pf_a, pi)
    pfq = np.take(tab.pf_pair, pi)
    if parts:
        tokens = kernel.copy()
        attention = a + b * ctx + pfa + pfq * pa
    kernel += head
    kernel += a
    b *= ctx
    kernel += b
    kernel += pfa
    pfq *= pa
    kernel += pfq
    overhead = c.overhead + c.per_seq * nd if c.per_seq else c.overhead
    time = kernel + overhead
    if not parts:
        return time
    energy = c.energy(time, kernel)
    return StepCost(time, tokens, attention, head, energy)


def step_cost(c, prefill_tokens=0, prefill_attn=0, prefill_kv=0, decodes=0, decode_context=0,
              sampled=None) -> StepCost:
    """Step time, its parts and its energy for arrays of step aggregates (integers; broadcasting).

    ``prefill_attn`` is Σ(c·p + c²/2) over the step's chunks (:func:`prefill_attention_pairs`),
    ``decode_context`` is Σs over decodes; ``sampled`` defaults to the number of decodes (add one per
    prompt that completes in the step). ``prefill_kv`` is accepted and unused (see ``step_time``).
    With stacked deployments the result is ``(D, N)``.
    """
    if isinstance(c, Stacked):
        parts = [_one(x, prefill_tokens, prefill_attn, decodes, decode_context, sampled, True) for x in c.coeffs]
        return StepCost(*(np.stack([getattr(p, f) for p in parts]) for f in
                          ("time_s", "tokens_s", "attention_s", "sampling_s", "energy_j")))
    return _one(c, prefill_tokens, prefill_attn, decodes, decode_context, sampled, True)


def step_times(c, prefill_tokens=0, prefill_attn=0, prefill_kv=0, decodes=0, decode_context=0,
               sampled=None) -> np.ndarray:
    """Only the step times of :func:`step_cost` (same arguments, bit-identical ``time_s``)."""
    if isinstance(c, Stacked):
        return np.stack([_one(x, prefill_tokens, prefill_attn, decodes, decode_context, sampled, False)
                         for x in c.coeffs])
    return _one(c, prefill_tokens, prefill_attn, decodes, decode_context, sampled, False)
