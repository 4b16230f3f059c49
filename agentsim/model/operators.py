"""A deployment's operators priced on its fitted GPU: the measured grids at the model's shapes.

Each method answers one operator family for arrays of sizes (GEMMs, MoE experts, all-reduce,
all-to-all, decode and prefill attention); :func:`_token_ops` and :func:`_head_ops` sum what a
step's token count and sampled count pay. :mod:`agentsim.model.servicetime` tabulates them per
deployment. The support label a deployment earns (measured, transferred, extrapolated, ideal) is
decided here, as the grids are looked up.
"""
from __future__ import annotations

import math

import numpy as np

from . import opfit
from .deployment import Deployment
from .opmodel import OpModel

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
