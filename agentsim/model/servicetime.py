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

import math
from dataclasses import dataclass

import numpy as np

from .deployment import Deployment
from .opmodel import OpModel
from . import opfit

T_MAX = 32768      # tokens per step with a table entry (larger steps: extended linearly)
N_MAX = 4096       # decodes / sampled tokens per step with a table entry
#: the all-to-all curves answer in ms, not s: the DeepEP tables' latency column is in microseconds
#: while optables converts every table as if in ms. Read as seconds the H200 low-latency dispatch
#: would have a 51 ms floor at 146 MB/s; read as ms it is 51 us at 146 GB/s, DeepEP's published
#: scale (README: ~77 us low-latency dispatch at EP8, ~150 GB/s intranode normal kernels).
A2A_CURVE_TO_S = 1e-3
_CONTEXTS = np.unique(np.round(np.geomspace(16, 131072, 28)))   # where decode attention is fitted by a line


def _points(top: int) -> np.ndarray:
    """Sizes where ops are evaluated (every integer to 1,024, then ~1.5 % steps); others interpolated."""
    return np.unique(np.concatenate([np.arange(0, 1025), np.round(np.geomspace(1025, top, 360))])).astype(float)


def _dense_table(points: np.ndarray, values: np.ndarray, top: int) -> np.ndarray:
    return np.interp(np.arange(top + 1, dtype=float), points, values)


class _Ops:
    """One deployment's operators on its fitted GPU, with the support label they earn."""

    def __init__(self, dep: Deployment, om: OpModel) -> None:
        self.dep, self.om = dep, om
        self.fitted, self.label = om.source(dep.gpu)
        self.engine = dep.engine
        self.ideal = dep.gpu.ideal
        if self.ideal:
            self.label = "ideal"
        self.outside: set[str] = set()
        self.gpu = dep.gpu
        self.gemm_cat = {"bf16": "bfloat16", "fp8": "fp8", "fp4": "nvfp4"}[dep.precision]
        if not self.ideal and not om.has(self.engine, self.fitted, "gemm", self.gemm_cat):
            if self.gemm_cat == "nvfp4":      # no measured NVFP4 GEMMs (pre-Blackwell): the fp8 grid
                self.gemm_cat = "fp8"
            self.label = "transferred"
        self.kv_cat = "fp8" if dep.kv_dtype == "fp8" else "bfloat16"

    def _grid(self, op: str, cat: str, *sizes):
        if self.ideal:      # roofline time exactly: log-efficiency 0
            return np.zeros(np.broadcast_shapes(*(np.shape(s) for s in sizes)))
        g = self.om.op(self.engine, self.fitted, op, cat)
        if not self.om.has(self.engine, self.fitted, op, cat):
            self.label = "transferred" if self.label == "measured" else self.label
        # extrapolated: the deployment's geometry (the scalar sizes: widths, heads) outside the measured
        # grid; the per-step sizes (tokens, batch, context) span every value the tables hold
        geometry = [(a, s) for a, s in zip(g.axes, sizes) if np.ndim(s) == 0] if hasattr(g, "axes") else []
        for a, s in geometry:
            p = math.log2(max(float(s), 1e-30))
            if not a[0] - 1e-9 <= p <= a[-1] + 1e-9:
                self.outside.add(op)
        return g(*sizes)

    def gemm(self, m, n, k):
        top = math.inf if self.ideal else 2.0 ** self.om.op(self.engine, self.fitted, "gemm", self.gemm_cat).axes[1][-1]
        if n > top:   # wider than any measured GEMM (an LM head over a big vocabulary): in measured slices
            pieces = math.ceil(n / top)
            return pieces * self.gemm(m, n / pieces, k)
        m = np.asarray(m, dtype=float)
        eff = self._grid("gemm", self.gemm_cat, np.maximum(m, 1), n, k)
        t = opfit.gemm_roofline(m, float(n), float(k), self.gpu, self.gemm_cat) / np.exp(eff)
        return np.where(m > 0, t, 0.0)

    def moe(self, t):
        """Routed experts of a step of ``t`` tokens (the whole stage's, over every attention rank): the
        measured grouped GEMMs at ``n_experts / ep`` local experts, each split over ``moe_tp`` GPUs.

        The tables' ``num_tokens`` is what each EP rank holds before dispatch (``t / ep``), not the
        group's total: on H100 the fp8 grid prices 4096 tokens at 5.3 ms with 256 local experts and
        2.8 ms with 16, where a global reading would put 16 local experts' roofline at 0.25 ms;
        per rank, each of the ep ranks computes ``num_tokens x top_k`` expert rows, as at ep = 1.
        """
        m, dep = self.dep.model, self.dep
        t = np.asarray(t, dtype=float)
        if dep.ep > 1:
            t = t / dep.ep
        tt = np.maximum(t, 1)
        cat = "fp8" if dep.precision != "bf16" else "bfloat16"
        mtp = dep.moe_tp
        slots = dep.expert_slots        # EPLB's redundant replicas: more, less loaded local experts
        eff = self._grid("moe", cat, tt, float(m.top_k), 3.0 * m.d_model * m.d_ff_expert / mtp,
                         float(slots / dep.ep))
        roof = opfit.moe_roofline(tt, m.d_model, m.d_ff_expert, m.top_k, slots, mtp, dep.ep, self.gpu, cat)
        return np.where(t > 0, roof / np.exp(eff), 0.0)

    def all_to_all(self, t):
        """Dispatch + combine of one MoE layer for a step of ``t`` tokens over ``ep`` ranks (``t/ep`` each).

        Timed by the measured DeepEP curves (over the bytes ``tokens x top_k x d_model x 2``; the faster
        of the high-throughput and low-latency kernels, as SGLang's ``--deepep-mode auto`` picks normal
        dispatch for prefill and low-latency for decode). The tables are vLLM's; another engine borrows
        them (``transferred``: SGLang and TensorRT-LLM use the same DeepEP kernels). A GPU without any
        prices a roofline over its scale-up link (``transferred``). Ranks beyond one scale-up domain
        send ``(ep - domain)/ep`` of the bytes over scale-out links, at least that roofline
        (``extrapolated``: the tables are single-domain).
        """
        m, dep = self.dep.model, self.dep
        per_rank = np.asarray(t, dtype=float) / dep.ep
        x = per_rank * m.top_k * m.d_model * opfit.BF16
        cats = set(self.om.categories(self.engine, self.fitted, "all_to_all"))
        if not cats:
            cats = {c for (e, g, o, c) in self.om.ops if o == "all_to_all" and g == self.fitted}
            self.label = "transferred" if self.label == "measured" else self.label
        modes = [b for b in ("deepep_ht", "deepep_ll") if {f"{b}/dispatch", f"{b}/combine"} <= cats]
        if self.ideal or not modes:
            if not self.ideal:
                self.label = "transferred" if self.label == "measured" else self.label
            t_layer = 2 * opfit.alltoall_roofline(m.d_model, per_rank, m.top_k, self.gpu)
        else:
            t_layer = A2A_CURVE_TO_S * np.min([self.om.op(self.engine, self.fitted, "all_to_all", f"{b}/dispatch")(x)
                                               + self.om.op(self.engine, self.fitted, "all_to_all", f"{b}/combine")(x)
                                               for b in modes], axis=0)
        domain = dep.gpu.gpus_per_node
        if dep.ep > domain:
            self.outside.add("all_to_all")
            across = 2 * x * (dep.ep - domain) / dep.ep / (dep.gpu.scaleout_gbps * 1e9) + 10e-6
            t_layer = np.maximum(t_layer, across)
        return np.where(per_rank > 0, t_layer, 0.0)

    def all_reduce(self, elements):
        """One all-reduce of ``elements`` bf16 activations across the tp group (the tables count elements)."""
        tp = self.dep.tp
        elements = np.asarray(elements, dtype=float)
        if self.ideal:
            return opfit.allreduce_roofline(float(tp), elements, self.gpu)
        cats = sorted(int(c) for c in self.om.categories(self.engine, self.fitted, "all_reduce"))
        if not cats:
            cats = sorted({int(c) for (e, g, o, c) in self.om.ops if o == "all_reduce"})
            self.label = "transferred" if self.label == "measured" else self.label
        n = min(cats, key=lambda c: abs(math.log(c / tp)))
        if n != tp:
            self.outside.add("all_reduce")
        grid = self.om.op(self.engine, self.fitted, "all_reduce", str(n))
        # a GPU count beyond the measured ones: the measured count's efficiency at this size, priced
        # with this count's roofline (the ring moves 2(n-1)/n of the message per GPU)
        return opfit.allreduce_roofline(float(tp), elements, self.gpu) / np.exp(grid(np.maximum(elements, 1.0)))

    def decode_attention(self, n: np.ndarray):
        """(A(n), B(n)) per layer: the measured kernel at each context fitted by ``A + B·n·s``."""
        m, dep = self.dep.model, self.dep
        nn = n[:, None]
        s = _CONTEXTS[None, :]
        if m.attention == "mla":
            heads = max(1, m.n_heads // dep.tp)
            cat = ("bfloat16" if dep.precision == "bf16" else "fp8_block") + "/" + self.kv_cat
            eff = self._grid("mla_generation", cat, heads, nn, s)
            t = opfit.mla_generation_roofline(heads, nn, s, self.gpu, cat.split("/")[0], self.kv_cat) / np.exp(eff)
        else:
            heads = max(1, m.n_heads // dep.tp)
            kvh = max(1, m.n_kv_heads // dep.tp)
            eff = self._grid("generation_attention", self.kv_cat, nn * kvh, s, float(m.head_dim), float(heads // kvh))
            t = opfit.generation_attention_roofline(nn, s, heads, kvh, m.head_dim, self.gpu, self.kv_cat) / np.exp(eff)
        # weighted least squares in relative error: t ≈ a + b·(n·s) over the fitted contexts
        x = nn * s
        w = 1.0 / t
        w2 = w * w
        s00, s01, s11 = w2.sum(1), (w2 * x).sum(1), (w2 * x * x).sum(1)
        r0, r1 = (w2 * t).sum(1), (w2 * x * t).sum(1)
        det = s00 * s11 - s01 * s01
        a = (r0 * s11 - r1 * s01) / det
        b = (s00 * r1 - s01 * r0) / det
        b = np.maximum(b, 0.0)
        a = np.maximum(a, 0.0)
        return a, b

    def _chunk_time(self, c: np.ndarray) -> np.ndarray:
        """Measured time of one causal chunk of ``c`` tokens with no prefix, per layer (MLA: module)."""
        m, dep = self.dep.model, self.dep
        heads = max(1, m.n_heads // dep.tp)
        if m.attention == "mla":
            cat = ("bfloat16" if dep.precision == "bf16" else "fp8_block") + "/" + self.kv_cat
            eff = self._grid("mla_context", cat, heads, 1.0, c)
            return opfit.mla_context_roofline(heads, 1.0, c, self.gpu, cat.split("/")[0]) / np.exp(eff)
        kvh = max(1, m.n_kv_heads // dep.tp)
        eff = self._grid("context_attention", self.kv_cat, 1.0, c, heads, kvh, float(m.head_dim))
        return opfit.context_attention_roofline(1.0, c, heads, kvh, m.head_dim, self.gpu, self.kv_cat) / np.exp(eff)

    def prefill_attention(self, c: np.ndarray):
        """(P(c), Q(c)) per layer: a ``c``-token chunk after a cached prefix costs ``P(c) + Q(c)·pairs``.

        The tables time chunks without a prefix, so the cost per attended pair is bounded below by two
        measured regimes: the best compute rate (long chunks, 4k-16k tokens) and, for short chunks, the
        KV stream of a decode — ``c`` queries read each cached key once, like one decode sequence, so a
        pair costs at least ``B(1)/c`` (B(1): decode attention per context token of one sequence).
        ``P(c)`` is what the measured prefix-free chunk costs beyond its pairs (launches, projections).
        """
        cc = np.maximum(c, 1)
        meas = self._chunk_time(cc)
        big = np.array([4096.0, 8192.0, 16384.0])
        q_compute = float(np.min(self._chunk_time(big) / (big * big / 2)))
        b1 = float(self.decode_attention(np.array([1.0]))[1][0])
        per_pair = np.maximum(q_compute, b1 / cc)
        fixed = np.maximum(meas - per_pair * cc * cc / 2, 0.0)
        zero = c <= 0
        return np.where(zero, 0.0, fixed), np.where(zero, 0.0, per_pair)


def _token_ops(ops: _Ops, t: np.ndarray) -> np.ndarray:
    """F(T): every op sized by the step's token count, over all layers, in seconds.

    With ``dp`` attention ranks the step's tokens are spread evenly, ``T/dp`` per rank, and every op
    but the routed experts runs per rank in parallel (attention GEMMs, dense layers and shared
    experts are replicated per rank); the experts see all ``T`` tokens over ``ep`` ranks and pay
    the dispatch/combine all-to-all. All of it depends on ``T`` only, so it stays in F(T).
    """
    dep, m = ops.dep, ops.dep.model
    tp, d = dep.tp, m.d_model
    t_all = t
    t = t / dep.dp if dep.dp > 1 else t
    per_layer_attn_gemms = 0.0
    if m.attention != "mla":                      # MLA projections live in the measured MLA module
        per_layer_attn_gemms = (ops.gemm(t, (m.n_heads + 2 * m.n_kv_heads) * m.head_dim / tp, d)
                                + ops.gemm(t, d, m.n_heads * m.head_dim / tp))
    dense_mlp = ops.gemm(t, 2 * m.d_ff / tp, d) + ops.gemm(t, d, m.d_ff / tp)
    total = m.layers * per_layer_attn_gemms
    if m.is_moe:
        moe_layer = ops.moe(t_all) + ops.gemm(t, m.n_experts, d)            # experts and the router
        if m.n_shared_experts:
            f = m.n_shared_experts * m.d_ff_expert
            moe_layer = moe_layer + ops.gemm(t, 2 * f / tp, d) + ops.gemm(t, d, f / tp)
        if dep.ep > 1:
            moe_layer = moe_layer + ops.all_to_all(t_all)
        total = total + m.n_dense_layers * dense_mlp + m.moe_layers * moe_layer
    else:
        total = total + m.layers * dense_mlp
    # norms, residual adds and the MLP activation: memory-bound elementwise passes (roofline, not in
    # the tables): two norms and two residual adds read+write T·d, the activation reads 2·T·f, writes T·f
    f_local = (m.d_ff if not m.is_moe else m.d_ff_expert * (m.top_k + m.n_shared_experts)) / tp
    total = total + m.layers * (8 * t * d + 3 * t * f_local) * 2.0 / dep.gpu.hbm_bytes_per_s
    if tp > 1:
        total = total + 2 * m.layers * ops.all_reduce(t * d)
    if dep.pp > 1:
        total = total + (dep.pp - 1) * (10e-6 + t * d * 2.0 / (dep.gpu.scaleout_gbps * 1e9))
    return np.where(t_all > 0, total, 0.0)


def _head_ops(ops: _Ops, s: np.ndarray) -> np.ndarray:
    """H(s): logits for ``s`` sampled tokens (vocabulary split over tp, ``s/dp`` per attention rank)."""
    m, dep = ops.dep.model, ops.dep
    s_all = s
    s = s / dep.dp if dep.dp > 1 else s
    logits = ops.gemm(s, m.vocab / dep.tp, m.d_model)
    return np.where(s_all > 0, logits + s * m.vocab * 4.0 / dep.gpu.hbm_bytes_per_s, 0.0)


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
    label = "extrapolated" if ops.outside and ops.label == "measured" else ops.label
    return Tables(fixed, head, dec_a, dec_b, pf_a, pf_pair, label, tuple(sorted(ops.outside)))


_TABLES: dict[tuple, Tables] = {}


def _cached_tables(dep: Deployment) -> Tables:
    """Tables per distinct geometry (a scenario's pools, a sweep's points share them)."""
    key = (dep.model.model_dump_json(exclude={"sources", "description"}),
           dep.gpu.model_dump_json(exclude={"sources", "description"}), dep.tp, dep.pp, dep.precision, dep.kv_dtype,
           dep.engine, dep.ep, dep.dp, dep.redundant_experts)
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
                 "comm_token", "label", "outside")

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

    @classmethod
    def of(cls, dep: Deployment) -> "StepCoeffs":
        e, g = dep.efficiency, dep.gpu
        return cls(_cached_tables(dep), overhead=e.step_overhead_ms * 1e-3,
                   request_overhead=e.request_overhead_ms * 1e-3, per_seq=e.per_seq_us * 1e-6,
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
        t = prefill_tokens + decodes
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

    def step_overhead(self, decodes: int) -> float:
        """Scheduler time of a step with ``decodes`` running decodes (``overhead`` when per_seq is 0)."""
        return self.overhead + self.per_seq * decodes

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
        t = n + chunk
        fixed = self.fixed[t] if t <= T_MAX else self.F(t)
        if chunk:
            c = chunk if chunk <= T_MAX else T_MAX
            pa, pq = self.pf_a[c], self.pf_pair[c]
            c0 = fixed + head + a + b * S + pa + pq * (chunk * p + chunk * chunk / 2)
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


def prefill_attention_pairs(chunk, cached):
    """Attended (query, key) pairs of a causal chunk of ``chunk`` tokens after ``cached`` ones."""
    chunk = np.asarray(chunk, dtype=float)
    return chunk * np.asarray(cached, dtype=float) + chunk * chunk / 2


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
    ti, to = _index(np.broadcast_to(pt + nd, shape), T_MAX)
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
    energy = c.power_w * kernel + c.power_w * c.idle_fraction * overhead
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


class Stretch:
    """Closed form over a run of steps whose compute and memory terms are affine in the index.

    Step ``u`` (0-based) takes ``max(c0 + c1·u, m0 + m1·u) + h``. Because the difference of two
    affine terms changes sign at most once, the run splits at one crossover into two arithmetic
    series: :meth:`elapsed` is O(1), and :meth:`steps_done_by` is one quadratic root per piece
    plus an exact ±1 fix-up. The per-operator model passes one affine term (``m0 = m1 = 0``); the
    two-term form stays for laws that need a maximum.
    """

    __slots__ = ("c0", "c1", "m0", "m1", "h", "split", "first_memory")

    def __init__(self, c0: float, c1: float, m0: float, m1: float, h: float) -> None:
        self.c0, self.c1, self.m0, self.m1, self.h = c0, c1, m0, m1, h
        d0, d1 = m0 - c0, m1 - c1          # memory minus compute at u = 0 and its slope
        self.first_memory = d0 >= 0         # which term rules the first piece
        # first index where the other term takes over (inf if never); exact fix-up after rounding
        if self.first_memory and d1 < 0:
            split = math.floor(-d0 / d1) + 1
        elif not self.first_memory and d1 > 0:
            split = math.ceil(-d0 / d1)
        else:
            split = math.inf
        if split != math.inf:
            while split > 0 and not self._rules_first(split - 1):
                split -= 1
            while self._rules_first(split):
                split += 1
        self.split = split

    def _rules_first(self, u: int) -> bool:
        mem = self.m0 + self.m1 * u
        com = self.c0 + self.c1 * u
        return mem >= com if self.first_memory else com > mem

    def step(self, u: int) -> float:
        """Duration of step ``u`` (the scalar form, for checks and the reference engine)."""
        mem = self.m0 + self.m1 * u
        com = self.c0 + self.c1 * u
        return (com if com > mem else mem) + self.h

    @staticmethod
    def _series(a: float, b: float, lo: int, hi: int) -> float:
        """Σ_{u=lo}^{hi-1} (a + b·u)."""
        n = hi - lo
        return a * n + b * (lo + hi - 1) * n / 2 if n > 0 else 0.0

    def elapsed(self, k: int) -> float:
        """Total duration of steps 0..k-1."""
        a1, b1, a2, b2 = (self.m0, self.m1, self.c0, self.c1) if self.first_memory else (self.c0, self.c1, self.m0, self.m1)
        s = self.split
        if k <= s:
            return self._series(a1, b1, 0, k) + self.h * k
        s = int(s)
        return self._series(a1, b1, 0, s) + self._series(a2, b2, s, k) + self.h * k

    def steps_done_by(self, tau: float) -> int:
        """The number of whole steps finished by ``tau`` after the stretch start: max j, elapsed(j) <= tau."""
        if tau <= 0:
            return 0
        if tau == math.inf:
            return 1 << 62
        if not (self.c0 or self.c1 or self.m0 or self.m1 or self.h):
            raise ValueError("a stretch whose steps take no time has no last step done by a time")
        a1, b1, a2, b2 = (self.m0, self.m1, self.c0, self.c1) if self.first_memory else (self.c0, self.c1, self.m0, self.m1)
        s = self.split
        t_split = self.elapsed(int(s)) if s != math.inf else math.inf
        if tau < t_split:
            j = self._solve(a1 + self.h, b1, tau)
        else:
            s = int(s)
            j = s + self._solve(a2 + b2 * s + self.h, b2, tau - t_split)
        while self.elapsed(j + 1) <= tau:
            j += 1
        while j > 0 and self.elapsed(j) > tau:
            j -= 1
        return j

    @staticmethod
    def _solve(a: float, b: float, tau: float) -> int:
        """Largest j with a·j + b·j(j-1)/2 <= tau (approximately; callers fix up by ±1)."""
        if b <= 1e-300:
            return int(tau / a) if a > 0 else 0
        # b/2·j² + (a - b/2)·j - tau = 0
        p = a - b / 2
        disc = p * p + 2 * b * tau
        return max(0, int((-p + math.sqrt(disc)) / b))


class Affine(Stretch):
    """A :class:`Stretch` with one affine term (``m0 = m1 = 0``, ``c0 > 0``, ``c1 >= 0``): what
    :meth:`StepCoeffs.stretch` builds for every engine stretch.

    The general form gives such a law a single piece (compute rules throughout, ``split`` is
    infinite); this class is that case with the piece selection and the crossover search left out.
    Each method computes the same expressions as the general one in the same order, so results
    are bit-identical; it only spends less interpreter time per call (the engine calls
    ``elapsed`` several times per stretch).
    """

    __slots__ = ()

    def __init__(self, c0: float, c1: float, h: float) -> None:
        self.c0, self.c1, self.m0, self.m1, self.h = c0, c1, 0.0, 0.0, h
        self.first_memory = False
        self.split = math.inf

    def step(self, u: int) -> float:
        com = self.c0 + self.c1 * u
        return (com if com > 0.0 else 0.0) + self.h

    def elapsed(self, k: int) -> float:
        if k > 0:
            return self.c0 * k + self.c1 * (k - 1) * k / 2 + self.h * k
        return 0.0 + self.h * k

    def steps_done_by(self, tau: float) -> int:
        if tau <= 0:
            return 0
        if tau == math.inf:
            return 1 << 62
        elapsed = self.elapsed
        j = self._solve(self.c0 + self.h, self.c1, tau)
        while elapsed(j + 1) <= tau:
            j += 1
        while j > 0 and elapsed(j) > tau:
            j -= 1
        return j
