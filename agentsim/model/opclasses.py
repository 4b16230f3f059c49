"""What each measured op class is: its rooflines, the table rows it reads, its grid axes, its held-out family.

The datasheet-peak time of an op (its roofline) is what a fitted grid scales: the run-time step
model (:mod:`agentsim.model.servicetime`) prices ops with these and the shipped grids, and the fit
(:mod:`agentsim.model.opfit`, refit only) builds the grids from table rows with them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .hardware import GPU

#: one model family whose every shape is kept out of every fit (the Llama-3.1-70B geometry)
HOLDOUT_FAMILY = {
    "name": "Llama-3.1-70B",
    "attention": {(64 // tp, max(1, 8 // tp), 128) for tp in (1, 2, 4, 8)},
    "gemm": {(10240 // tp, 8192) for tp in (1, 2, 4, 8)} | {(8192, 8192 // tp) for tp in (1, 2, 4, 8)}
    | {(57344 // tp, 8192) for tp in (1, 2, 4, 8)} | {(8192, 28672 // tp) for tp in (1, 2, 4, 8)},
    # MoE: one family's expert geometry (hidden, inter, top-k, experts): Qwen3-235B-A22B
    "moe": {(4096, 1536, 8, 128)},
}

BF16 = 2.0


def _peak(gpu: GPU, dtype: str) -> float:
    if dtype == "nvfp4":
        return gpu.peak_flops("fp4") or gpu.peak_flops("fp8")
    return gpu.peak_flops("fp8" if dtype.startswith("fp8") else "bf16")


def _max_roof(flops, bytes_, gpu: GPU, dtype: str):
    return np.maximum(np.asarray(flops, float) / _peak(gpu, dtype), np.asarray(bytes_, float) / gpu.hbm_bytes_per_s)


# -- rooflines: datasheet-peak time of one op; the grid stores how far the measurement is from it ---
#: bytes per weight/activation element of a GEMM input; NVFP4 adds one fp8 scale per 16 values
GEMM_BYTES = {"bfloat16": BF16, "fp8": 1.0, "fp8_block": 1.0, "nvfp4": 0.5 + 1.0 / 16}


def gemm_roofline(m, n, k, gpu: GPU, dtype: str):
    eb = GEMM_BYTES.get(dtype, BF16)
    return _max_roof(2.0 * m * n * k, (m * k + k * n) * eb + m * n * BF16, gpu, dtype)


def context_attention_roofline(b, s, h, kvh, d, gpu: GPU, kv_dtype: str):
    flops = 2.0 * b * h * d * s * s          # QK^T and PV, causal half: 2 * 2 * b*h*d*s^2/2
    return _max_roof(flops, b * s * (2 * h + 2 * kvh) * d * BF16, gpu, "bf16")


def generation_attention_roofline(b, s, h, kvh, d, gpu: GPU, kv_dtype: str):
    kvb = 1.0 if kv_dtype == "fp8" else BF16
    return _max_roof(4.0 * b * h * d * s, b * s * 2 * kvh * d * kvb + 2 * b * h * d * BF16, gpu, "bf16")


#: DeepSeek-V3 MLA geometry (the only MLA family in the tables)
MLA = {"d": 7168, "q_lora": 1536, "kv_lora": 512, "rope": 64, "nope": 128, "v": 128}


def mla_projection_params(h):
    m = MLA
    return (m["d"] * m["q_lora"] + m["q_lora"] * h * (m["nope"] + m["rope"]) + m["d"] * (m["kv_lora"] + m["rope"])
            + m["kv_lora"] * h * (m["nope"] + m["v"]) + h * m["v"] * m["d"])


def mla_context_roofline(h, b, s, gpu: GPU, dtype: str):
    m = MLA
    flops = 2.0 * b * s * mla_projection_params(h) + 2.0 * b * h * s * s * (m["nope"] + m["rope"] + m["v"]) / 2 * 2
    return _max_roof(flops, mla_projection_params(h) * (1.0 if dtype.startswith("fp8") else BF16), gpu, dtype)


def mla_generation_roofline(h, b, s, gpu: GPU, dtype: str, kv_dtype: str):
    m = MLA
    kvb = 1.0 if kv_dtype == "fp8" else BF16
    lat = m["kv_lora"] + m["rope"]
    flops = 2.0 * b * mla_projection_params(h) + 2.0 * b * h * s * (lat + m["kv_lora"])
    bytes_ = b * s * lat * kvb + mla_projection_params(h) * (1.0 if dtype.startswith("fp8") else BF16)
    return _max_roof(flops, bytes_, gpu, dtype)


def moe_roofline(t, h, inter, k, e, tp, ep, gpu: GPU, dtype: str):
    eb = 1.0 if dtype.startswith("fp8") else BF16
    local = e / ep
    touched = local * -np.expm1(t * np.log1p(-np.minimum(k / e, 1 - 1e-12)))
    flops = 2.0 * 3 * t * k * h * inter / tp / ep
    bytes_ = touched * 3 * h * inter / tp * eb + 2 * t * h * BF16
    return _max_roof(flops, bytes_, gpu, dtype)


def allreduce_roofline(n, elements, gpu: GPU):
    """A ring all-reduce of ``elements`` bf16 values over ``n`` GPUs: each sends 2(n-1)/n of the message.

    The tables' ``message_size`` counts elements of ``allreduce_dtype`` (every row is bfloat16; the
    collector allocates a ``[size // 4096, 4096]`` tensor), not bytes.
    """
    return 2.0 * (n - 1) / n * elements * BF16 / gpu.link_bytes_per_s_per_direction + 1e-6


def alltoall_roofline(h, t, k, gpu: GPU):
    return t * k * h * BF16 / gpu.link_bytes_per_s_per_direction + 1e-6


@dataclass(frozen=True)
class OpClass:
    """How rows of one table become grids: which rows, which categories, which axes, which roofline."""

    name: str
    table: str
    category: Callable           # frame -> Series of category labels (a grid per label)
    axes: tuple[str, ...]        # size columns, in grid order
    roofline: Callable           # (frame, gpu) -> roofline seconds per row
    prepare: Callable            # frame -> frame (filter, derive columns, one row per size)
    family: Callable             # frame -> bool mask of the held-out family's rows
    tolerance: float             # acceptance: held-out median relative error
    curve_x: Callable | None = None   # collectives: frame -> bytes moved; fitted as a Curve per category


def _min_over_kernels(df, keys):
    return df.loc[df.groupby(keys, observed=True)["latency_s"].idxmin()].reset_index(drop=True)


def _prep_gemm(df):
    df = df[df["gemm_dtype"].isin(["bfloat16", "fp8", "nvfp4"])]
    return _min_over_kernels(df, ["gemm_dtype", "m", "n", "k"])


def _prep_ctx(df):
    if "window_size" in df.columns:
        df = df[df["window_size"] == 0]
    df = df[df["kernel_source"] != "vllm_flash_attn_fa4"]
    df = _min_over_kernels(df, ["kv_cache_dtype", "batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"])
    # prefill attention is compute-bound: its efficiency follows the parallel work (sequences x heads),
    # the sequence length and the head size; the KV-head count barely matters
    return df.assign(seq_heads=df["batch_size"] * df["num_heads"], group=df["num_heads"] // df["num_key_value_heads"])


def _prep_gen(df):
    if "window_size" in df.columns:
        df = df[df["window_size"] == 0]
    df = df.assign(context=df["step"] + 1)
    df = _min_over_kernels(df, ["kv_cache_dtype", "batch_size", "context", "num_heads", "num_key_value_heads",
                                "head_dim"])
    # decode attention streams each sequence's KV once per KV head: its efficiency follows the parallel
    # streams (sequences x KV heads), the context length, the head size and the query heads per KV head
    return df.assign(seq_kv_heads=df["batch_size"] * df["num_key_value_heads"],
                     group=df["num_heads"] // df["num_key_value_heads"])


def _prep_mla_ctx(df):
    df = df[df["tp_size"] == 1]
    return _min_over_kernels(df, ["gemm_type", "kv_cache_dtype", "num_heads", "batch_size", "isl"])


def _prep_mla_gen(df):
    df = df[df["tp_size"] == 1]
    df = df.assign(context=df["step"])
    return _min_over_kernels(df, ["gemm_type", "kv_cache_dtype", "num_heads", "batch_size", "context"])


def _prep_moe(df):
    df = df[(df["distribution"] == "balanced") & df["moe_dtype"].isin(["bfloat16", "fp8", "fp8_block"])]
    df = df.assign(dtype=np.where(df["moe_dtype"] == "bfloat16", "bfloat16", "fp8"))
    df = _min_over_kernels(df, ["dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
                                "moe_tp_size", "moe_ep_size"])
    # sizes the grid interpolates over: tokens per routed expert, one local expert's weights, local experts
    return df.assign(tokens_per_expert=df["num_tokens"] * df["topk"] / df["num_experts"],
                     expert_weights=3.0 * df["hidden_size"] * df["inter_size"] / df["moe_tp_size"],
                     local_experts=df["num_experts"] / df["moe_ep_size"])


def _prep_ar(df):
    if "backend" in df.columns:   # engines serve decode under CUDA graphs: their graph-mode rows
        graph = df["backend"].astype(str).str.endswith("_graph")
        if graph.any():
            df = df[graph]
    return _min_over_kernels(df, ["num_gpus", "message_size"])


def _prep_a2a(df):
    df = df[df["comm_backend"].isin(["deepep_ll", "deepep_ht"])]
    return _min_over_kernels(df, ["comm_backend", "phase", "hidden_size", "topk", "num_experts", "num_tokens"])


def _no_family(df):
    return np.zeros(len(df), dtype=bool)


def _attn_family(df):
    keys = list(zip(df["num_heads"], df["num_key_value_heads"], df["head_dim"]))
    return np.array([k in HOLDOUT_FAMILY["attention"] for k in keys], dtype=bool)


def _gemm_family(df):
    return np.array([k in HOLDOUT_FAMILY["gemm"] for k in zip(df["n"], df["k"])], dtype=bool)


def _moe_family(df):
    keys = zip(df["hidden_size"], df["inter_size"], df["topk"], df["num_experts"])
    return np.array([k in HOLDOUT_FAMILY["moe"] for k in keys], dtype=bool)


OP_CLASSES: dict[str, OpClass] = {op.name: op for op in (
    OpClass("gemm", "gemm", lambda d: d["gemm_dtype"], ("m", "n", "k"),
            lambda d, g: gemm_roofline(d["m"].to_numpy(float), d["n"].to_numpy(float), d["k"].to_numpy(float), g,
                                       d["gemm_dtype"].iloc[0]), _prep_gemm, _gemm_family, 0.07),
    OpClass("context_attention", "context_attention", lambda d: d["kv_cache_dtype"],
            ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"),
            lambda d, g: context_attention_roofline(*(d[c].to_numpy(float) for c in (
                "batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim")), g, d["kv_cache_dtype"].iloc[0]),
            _prep_ctx, _attn_family, 0.07),
    OpClass("generation_attention", "generation_attention", lambda d: d["kv_cache_dtype"],
            ("seq_kv_heads", "context", "head_dim", "group"),
            lambda d, g: generation_attention_roofline(*(d[c].to_numpy(float) for c in (
                "batch_size", "context", "num_heads", "num_key_value_heads", "head_dim")), g,
                d["kv_cache_dtype"].iloc[0]),
            _prep_gen, _attn_family, 0.07),
    OpClass("mla_context", "mla_context", lambda d: d["gemm_type"] + "/" + d["kv_cache_dtype"],
            ("num_heads", "batch_size", "isl"),
            lambda d, g: mla_context_roofline(*(d[c].to_numpy(float) for c in ("num_heads", "batch_size", "isl")), g,
                                              d["gemm_type"].iloc[0]),
            _prep_mla_ctx, _no_family, 0.07),
    OpClass("mla_generation", "mla_generation", lambda d: d["gemm_type"] + "/" + d["kv_cache_dtype"],
            ("num_heads", "batch_size", "context"),
            lambda d, g: mla_generation_roofline(*(d[c].to_numpy(float) for c in ("num_heads", "batch_size", "context")),
                                                 g, d["gemm_type"].iloc[0], d["kv_cache_dtype"].iloc[0]),
            _prep_mla_gen, _no_family, 0.07),
    OpClass("moe", "moe", lambda d: d["dtype"], ("num_tokens", "topk", "expert_weights", "local_experts"),
            lambda d, g: moe_roofline(*(d[c].to_numpy(float) for c in (
                "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size")), g,
                d["dtype"].iloc[0]),
            _prep_moe, _moe_family, 0.12),
    # one grid per GPU count over the message size: a held-out size is interpolated between its
    # neighbours of the same count (measured: 0.9-4.4 % median, against 2-9 % for a smooth curve)
    OpClass("all_reduce", "all_reduce", lambda d: d["num_gpus"].astype(str), ("message_size",),
            lambda d, g: allreduce_roofline(d["num_gpus"].to_numpy(float), d["message_size"].to_numpy(float), g),
            _prep_ar, _no_family, 0.07),
    OpClass("all_to_all", "all_to_all", lambda d: d["comm_backend"] + "/" + d["phase"],
            ("num_tokens",),
            lambda d, g: alltoall_roofline(d["hidden_size"].to_numpy(float), d["num_tokens"].to_numpy(float),
                                           d["topk"].to_numpy(float), g),
            _prep_a2a, _no_family, 0.12,
            curve_x=lambda d: (d["num_tokens"] * d["topk"] * d["hidden_size"] * BF16).to_numpy(float)),
)}
