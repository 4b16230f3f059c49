"""[Benchmark baseline: the step model before the per-operator fit, kept only to time it against.]

The service-time core: how long one engine step takes, in two forms of one model.

A step mixes prefill chunks (``c_i`` new tokens after ``p_i`` cached ones) and decodes (one token
each at context ``s_j``). Only aggregates matter (docs/DESIGN.md §5, hardware-roofline.md §3.2)::

    T       = Σc_i + n_dec                                   tokens through the weights
    compute = [2·P_active·T + attn·(Σ(c_i·p_i + c_i²/2) + Σs_j) + 2·d·V·sampled] / (tp·F·mfu)
    memory  = [W_fixed + W_experts·(1-(1-k/E)^T) + kv_tok·(Σs_j + Σ(p_i+c_i))] / (tp·B·mbu)
    step    = max(compute, memory) + comm(T) + overhead
    comm(T) = 2L·[α + 2(tp-1)/tp·T·d·2B/(link·η)]  +  (pp-1)·[α + T·d·2B/(scale-out·η)]

Pipeline stages run one after another for a micro-batch, so ``pp`` divides the per-GPU weights
but not the step time (no micro-batch overlap is modelled). Energy per step is the deployment's
server power, idle share for the whole step plus the dynamic share while kernels run.

* :func:`step_cost` is the **vectorized form**: numpy arrays in, arrays out, any broadcastable
  shapes — many steps of many deployments in one call (calibration, tables, reference engine).
* :class:`StepCoeffs` is the **closed form** for the engine's hot path: plain floats, and
  :class:`Stretch` sums a run of steps whose aggregates are affine in the step index in O(1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from agentsim.model.deployment import Deployment

ACT_BYTES = 2.0  # activations travel in 16-bit


@dataclass(frozen=True)
class StepCoeffs:
    """Per-deployment coefficients of the step-time model (seconds per unit). Floats or arrays."""

    t_token: float        # s per token through the active weights (compute)
    t_attn: float         # s per attended (query, key) pair (compute)
    t_sample: float       # s per sampled token (LM head, compute)
    t_weights: float      # s to read the always-read weights (memory)
    t_experts: float      # s to read every routed expert once (memory)
    expert_keep: float    # 1 - k/E: chance one token leaves a given expert untouched (1 for dense)
    t_kv: float           # s per KV token read or written (memory)
    comm_fixed: float     # s of collective latency per step (0 on one GPU)
    comm_token: float     # s of collective transfer per token in the step
    overhead: float       # fixed s per step (scheduling, launches)
    request_overhead: float  # s per request before its first step (tokenise, schedule)
    t_host_load: float    # s per KV token loaded from the host tier (each GPU loads its shard)
    power_w: float        # server wall power of the deployment's GPUs at full load
    idle_fraction: float  # share of power_w drawn when idle

    @classmethod
    def of(cls, dep: Deployment) -> "StepCoeffs":
        m, g, e = dep.model, dep.gpu, dep.efficiency
        flops = dep.tp * g.peak_flops(dep.precision) * e.mfu(dep.precision)
        bw = dep.tp * g.hbm_bytes_per_s * e.mbu
        b = dep.weight_element_bytes
        input_embedding = 0 if m.tied_embeddings else m.vocab * m.d_model  # only rows are gathered
        fixed_params = m.params - input_embedding - m.routed_expert_params
        alpha = e.allreduce_latency_us * 1e-6
        comm_fixed = comm_token = 0.0
        if dep.tp > 1:
            n_ar = 2 * m.layers
            comm_fixed += n_ar * alpha
            comm_token += n_ar * 2 * (dep.tp - 1) / dep.tp * m.d_model * ACT_BYTES / (
                g.link_bytes_per_s_per_direction * e.link_efficiency)
        if dep.pp > 1:
            comm_fixed += (dep.pp - 1) * alpha
            comm_token += (dep.pp - 1) * m.d_model * ACT_BYTES / (g.scaleout_gbps * 1e9 * e.link_efficiency)
        return cls(
            t_token=2 * m.active_nonembedding_params / flops,
            t_attn=m.attention_flops_per_pair / flops,
            t_sample=m.lm_head_flops / flops,
            t_weights=fixed_params * b / bw,
            t_experts=m.routed_expert_params * b / bw,
            expert_keep=1 - m.top_k / m.n_experts if m.is_moe else 1.0,
            t_kv=m.kv_bytes_per_token(dep.kv_dtype, dep.tp) * dep.tp / bw,
            comm_fixed=comm_fixed, comm_token=comm_token,
            overhead=e.step_overhead_ms * 1e-3,
            request_overhead=e.request_overhead_ms * 1e-3,
            t_host_load=dep.kv_bytes_per_token_per_gpu / (g.host_link_gbps * 1e9),
            power_w=dep.n_gpus * g.server_w_per_gpu,
            idle_fraction=g.idle_power_fraction,
        )

    @classmethod
    def stack(cls, coeffs: list["StepCoeffs"]) -> "StepCoeffs":
        """Struct of arrays over many deployments (shape ``(D,)``), for :func:`step_cost`."""
        return cls(**{f.name: np.array([getattr(c, f.name) for c in coeffs], dtype=float) for f in fields(cls)})

    def column(self) -> "StepCoeffs":
        """Arrays reshaped to ``(D, 1)`` so they broadcast against ``(N,)`` step arrays -> ``(D, N)``."""
        return StepCoeffs(**{f.name: np.asarray(getattr(self, f.name), dtype=float)[:, None] for f in fields(self)})

    # -- scalar form (plain Python floats; the reference engine and the loop baseline) ----------
    def step_time(self, prefill_tokens: float = 0, prefill_attn: float = 0, prefill_kv: float = 0,
                  decodes: float = 0, decode_context: float = 0, sampled: float | None = None) -> float:
        tokens = prefill_tokens + decodes
        if sampled is None:
            sampled = decodes
        compute = (self.t_token * tokens + self.t_attn * (prefill_attn + decode_context)
                   + self.t_sample * sampled)
        memory = self.t_weights + self.t_kv * (decode_context + prefill_kv)
        if self.expert_keep < 1.0:
            memory += self.t_experts * (1.0 - self.expert_keep ** tokens)
        comm = self.comm_fixed + self.comm_token * tokens if self.comm_fixed else 0.0
        return (compute if compute > memory else memory) + comm + self.overhead


@dataclass(frozen=True)
class StepCost:
    """Vectorized result: one element per evaluated step."""

    time_s: np.ndarray
    compute_s: np.ndarray
    memory_s: np.ndarray
    comm_s: np.ndarray
    energy_j: np.ndarray


def prefill_attention_pairs(chunk, cached):
    """Attended (query, key) pairs of a causal chunk of ``chunk`` tokens after ``cached`` ones."""
    chunk = np.asarray(chunk, dtype=float)
    return chunk * np.asarray(cached, dtype=float) + chunk * chunk / 2


# Steps per block (D rows x _BLOCK // D steps for (D, N) outputs): a block's working arrays (~2-4 MB)
# stay in cache across the numpy passes, and the fixed cost of a numpy call (~0.5 µs) stays small per
# step. Measured on the benchmark: 64k fastest for both forms (16k-32k slower, 128k the same).
_BLOCK = 65536


def step_cost(c: StepCoeffs, prefill_tokens=0, prefill_attn=0, prefill_kv=0, decodes=0, decode_context=0,
              sampled=None) -> StepCost:
    """Step time, its parts and its energy for arrays of step aggregates (broadcasting).

    ``prefill_attn`` is Σ(c·p + c²/2) over the step's chunks (see :func:`prefill_attention_pairs`),
    ``prefill_kv`` is Σ(p + c), ``decode_context`` is Σs over decodes; ``sampled`` defaults to the
    number of decodes (add one per prompt that completes in the step). :func:`step_times` gives the
    same ``time_s`` alone, about twice as fast.
    """
    return StepCost(*_blocked(c, (prefill_tokens, prefill_attn, prefill_kv, decodes, decode_context), sampled,
                              parts=True))


def step_times(c: StepCoeffs, prefill_tokens=0, prefill_attn=0, prefill_kv=0, decodes=0, decode_context=0,
               sampled=None) -> np.ndarray:
    """Only the step times of :func:`step_cost` (same arguments, bit-identical ``time_s``).

    The vectorized counterpart of :meth:`StepCoeffs.step_time`, for callers that need no breakdown
    (sweeps, tables of latency): one output array and ~40 % fewer numpy passes.
    """
    return _blocked(c, (prefill_tokens, prefill_attn, prefill_kv, decodes, decode_context), sampled, parts=False)[0]


def _blocked(c: StepCoeffs, inputs: tuple, sampled, parts: bool) -> list[np.ndarray]:
    """Allocate the outputs once and fill them in place, a block of steps (last axis) at a time.

    Why: a plain numpy expression makes a fresh full-size temporary for every operator and streams it
    through main memory; here each block's temporaries are reused while still in cache. Every element
    goes through the same operations whatever the block, so results do not depend on ``_BLOCK``.
    """
    steps = [np.asarray(x, dtype=float) for x in inputs]
    steps.append(steps[3] if sampled is None else np.asarray(sampled, dtype=float))
    k = _Coeffs(c)
    shape = np.broadcast_shapes(*(x.shape for x in steps), *k.shapes)
    outs = [np.empty(shape)]
    if parts:   # compute, memory, comm, energy; comm's zeros come pre-cleared from the allocator
        outs += [np.empty(shape), np.empty(shape), np.empty(shape) if k.comm else np.zeros(shape), np.empty(shape)]
    n = shape[-1] if shape else 1
    width = max(1, _BLOCK // max(1, math.prod(shape[:-1])))    # (D, N) outputs: D rows per block
    if n <= width or any(s and s[-1] == n for s in k.shapes):     # small, or coefficients vary along N
        _evaluate(k, *steps, outs, _scratch(steps, shape))
        return outs
    for start in range(0, n, width):
        stop = min(start + width, n)
        blk = [x[..., start:stop] if x.ndim and x.shape[-1] == n else x for x in steps]
        if start == 0 or stop - start < width:                    # first block, and the shorter last one
            scratch = _scratch(blk, shape[:-1] + (stop - start,))
        _evaluate(k, *blk, [o[..., start:stop] for o in outs], scratch)
    return outs


class _Coeffs:
    """The coefficients as :func:`_evaluate` uses them, derived terms folded in once per call.

    Scalars stay 0-d arrays, not floats: numpy dispatches an array operand faster (~0.3 µs a call).
    """

    def __init__(self, c: StepCoeffs) -> None:
        f = {x.name: np.asarray(getattr(c, x.name), dtype=float) for x in fields(StepCoeffs)}
        self.shapes = [a.shape for a in f.values()]
        self.t_token, self.t_attn, self.t_sample = f["t_token"], f["t_attn"], f["t_sample"]
        self.t_weights, self.t_kv, self.overhead = f["t_weights"], f["t_kv"], f["overhead"]
        keep = f["expert_keep"]
        self.moe = bool(keep.ndim or keep < 1.0)          # dense deployments (keep == 1) read no routed experts
        self.log_keep = np.log(np.maximum(keep, 1e-300))  # the clamp keeps keep = 0 (top_k = E) finite
        self.neg_t_experts = np.negative(f["t_experts"])
        cf = f["comm_fixed"]
        self.comm = bool(cf.ndim or cf > 0)               # comm is 0 wherever comm_fixed is (one GPU)
        self.no_comm = ~(cf > 0) if cf.ndim and not np.all(cf > 0) else None
        self.comm_fixed, self.comm_token = cf, f["comm_token"]
        self.power_w = f["power_w"]
        self.idle_energy = f["power_w"] * f["idle_fraction"] * f["overhead"]


def _scratch(steps: list[np.ndarray], out_shape: tuple) -> tuple[np.ndarray, ...]:
    """Two temporaries shaped like the steps (before the coefficients broadcast in), two like the output."""
    shape = np.broadcast_shapes(*(x.shape for x in steps))
    return np.empty(shape), np.empty(shape), np.empty(out_shape), np.empty(out_shape)


def _evaluate(k: _Coeffs, pt, pa, pk, nd, ctx, sm, outs: list[np.ndarray], scratch: tuple) -> None:
    """The model of the module docstring for one block, written in place into the output views.

    ``outs`` is ``[time]`` or ``[time, compute, memory, comm, energy]``; without the parts, compute
    lives in scratch and memory is built in ``time`` itself. ``time`` is summed in the same order
    either way, so both forms give the same bits.
    """
    tok, acc, tmp, spare = scratch
    time = outs[0]
    parts = len(outs) > 1
    compute, memory = (outs[1], outs[2]) if parts else (spare, time)
    np.add(pt, nd, out=tok)                              # T: tokens through the weights
    np.add(pa, ctx, out=acc)                             # attended (query, key) pairs
    np.multiply(acc, k.t_attn, out=compute)
    np.multiply(tok, k.t_token, out=tmp)
    compute += tmp
    np.multiply(sm, k.t_sample, out=tmp)
    compute += tmp
    np.add(ctx, pk, out=acc)                             # KV tokens read or written
    np.multiply(acc, k.t_kv, out=memory)
    memory += k.t_weights
    if k.moe:
        # experts touched: 1 - keep**T as -expm1(T·ln keep); np.power with an array exponent has no SIMD loop
        np.multiply(tok, k.log_keep, out=tmp)
        np.expm1(tmp, out=tmp)
        tmp *= k.neg_t_experts
        memory += tmp
    np.maximum(compute, memory, out=time)
    if k.comm:
        comm = outs[3] if parts else tmp
        np.multiply(tok, k.comm_token, out=comm)
        comm += k.comm_fixed
        if k.no_comm is not None:
            np.copyto(comm, 0.0, where=k.no_comm)
        time += comm                                     # busy: kernels and collectives
    if parts:   # energy = P·(idle·time + (1 - idle)·busy) = P·busy + P·idle·overhead
        np.multiply(time, k.power_w, out=outs[4])
        outs[4] += k.idle_energy
    time += k.overhead


# the closed form is shared with the current model (same class, nothing to compare)
from agentsim.model.servicetime import Stretch  # noqa: E402,F401
