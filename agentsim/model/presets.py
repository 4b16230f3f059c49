"""Engine presets: each serving engine's batching defaults and time outside the GPU, as data.

``data/presets.toml`` holds one table per engine (``vllm``, ``sglang``, ``trtllm``), every value
with a source. A scenario picks one with ``engine.preset``; its values fill the engine fields the
user left unset (explicit fields win), and the overheads it carries replace the GPU generation's.
Fitted overheads come from the catalog's ``[engines.<name>]`` tables (``data/calibrated.toml``,
written by ``agentsim calibrate``). Without a preset nothing here applies: the engine runs vLLM V1
limits with the generation's overheads, as before presets existed.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from functools import lru_cache

from ..util.paths import data_path
from ..util.errors import InputError

PRESETS = ("vllm", "sglang", "trtllm")
OVERHEADS = ("step_overhead_ms", "per_seq_us", "request_overhead_ms")
TRTLLM_KV_FRACTION = 0.90  # trtllm-bench's --kv_cache_free_gpu_mem_fraction default (for its heuristic)


@lru_cache(maxsize=1)
def load_presets() -> dict[str, dict]:
    """The shipped presets (values and ``sources``), read once."""
    return tomllib.loads(data_path("presets.toml").read_text(encoding="utf-8"))


def preset(name: str) -> dict:
    """One preset's table; an unknown name is an InputError naming the allowed ones."""
    table = load_presets()
    if name not in table:
        raise InputError(f"engine.preset: {name!r} unknown; allowed: {', '.join(table)}")
    return table[name]


def _big(gpu) -> bool:
    """vLLM's split: >= 70 GiB and not an A100 (the same test build.default_limits makes)."""
    return gpu.hbm_gb >= 70 and gpu.generation != "ampere"


def limits(name: str, dep) -> tuple[int, int]:
    """(max_batch, token_budget) the preset sets on ``dep``'s GPU.

    With data-parallel attention each of the ``dp`` ranks schedules its own batch and its own
    prefill chunk (vLLM runs one engine core per DP rank; SGLang one scheduler per rank), so the
    replica's batch and token budget are dp times the engine's (the step model spreads a step's
    tokens over the ranks: :func:`agentsim.servicetime.build_tables`).
    """
    p = preset(name)
    big = _big(dep.gpu)
    batch = (p["max_batch"] if big else p["max_batch_small"]) * dep.dp
    budget = p["token_budget"] if big else p["token_budget_small"]
    if "token_budget_huge" in p and dep.gpu.hbm_gb >= 160 * 1.073741824:  # SGLang's 160 GiB, in GB
        budget = p["token_budget_huge"]
    return batch, budget * dep.dp


def kv_dtype(name: str, precision: str) -> str:
    """The KV element type the preset's engine picks for weights at ``precision``."""
    p = preset(name)
    choice = p["kv_dtype_quantized"] if precision in ("fp8", "fp4") else p["kv_dtype"]
    return "bf16" if choice == "auto" else choice


def settings(s, precision: str):
    """``EngineSettings`` with the preset's kernels, KV dtype and chunking where the user left them unset."""
    if s.preset is None:
        return s
    p, fill = preset(s.preset), {}
    if "kernels" not in s.model_fields_set:
        fill["kernels"] = p["kernels"]
    if "kv_dtype" not in s.model_fields_set:
        fill["kv_dtype"] = kv_dtype(s.preset, precision)
    if "chunked_prefill" not in s.model_fields_set:
        fill["chunked_prefill"] = p["chunked_prefill"]
    return s.model_copy(update=fill)


def overheads(name: str, catalog) -> dict[str, float]:
    """The preset's time outside the GPU: the catalog's fitted ``[engines.<name>]`` over the priors."""
    p = preset(name)
    fitted = catalog.engines.get(name, {}) if catalog is not None else {}
    return {k: float(fitted.get(k, p[k])) for k in OVERHEADS}


def with_overheads(dep, name: str, catalog):
    """``dep`` with the preset's overheads in place of its generation's."""
    return replace(dep, efficiency=dep.efficiency.model_copy(update=overheads(name, catalog)))


def trtllm_bench_limits(dep, isl: int, osl: int) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) that ``trtllm-bench throughput`` picks when given neither.

    TensorRT-LLM ``bench/build/tuning.py`` (calc_engine_setting, finetune_setting): the requests of
    ``isl + osl`` tokens that fit a KV pool of TRTLLM_KV_FRACTION of the memory left after the
    weights, capped at 4096 and divided by pp, rounded up (to 32 below 256, 128 below 1024, else
    256; at least 64); tokens = that x (1 + isl/osl), capped at 32768 and rounded up (at least 2048).
    ``bench/benchmark/utils/general.py`` (get_settings) leaves chunked prefill off, so max_num_tokens
    is raised to isl + max_batch_size. Memory here is the catalog's HBM, not the GPU's reported GiB.
    """
    kv_per_token = dep.model.kv_bytes_per_token(dep.kv_dtype, dep.tp) * dep.tp  # whole replica
    cache = TRTLLM_KV_FRACTION * (dep.n_gpus * dep.gpu.hbm_bytes - dep.model.weight_bytes(dep.precision))
    raw_bs = min(cache / (kv_per_token * (isl + osl)), 4096) / dep.pp
    raw_tokens = min(raw_bs * (1 + isl / osl), 32768)
    step = 32 if raw_bs < 256 else 128 if raw_bs < 1024 else 256
    max_bs = max(64, step * math.ceil(raw_bs / step)) if step == 32 else step * math.ceil(raw_bs / step)
    step = 256 if raw_tokens < 4096 else 512 if raw_tokens < 8192 else 1024
    max_tokens = max(2048, step * math.ceil(raw_tokens / step))
    return max_bs, max(max_tokens, isl + max_bs)


def _constant(dist) -> int | None:
    return int(dist.value) if dist is not None and dist.kind == "constant" else None


def _mean_length(dist) -> float | None:
    """The mean of a constant or uniform integer length (None for other kinds)."""
    if dist is None:
        return None
    if dist.kind == "constant":
        return float(dist.value)
    if dist.kind == "uniform" and dist.round == "floor":      # integers low .. min(high - 1, max)
        return (dist.low + min(dist.high - 1, dist.max)) / 2
    return None


def mean_request(streams) -> float | None:
    """Tokens (input + output) of the largest stream's mean request (None if a length is not constant or uniform)."""
    sizes = [(_mean_length(st.input_tokens), _mean_length(st.output_tokens)) for st in streams]
    if not sizes or any(i is None or o is None for i, o in sizes):
        return None
    return max(i + o for i, o in sizes)


def fixed_lengths(streams) -> list[tuple[int, int, str]]:
    """(input, output, kind) of every stream with constant lengths (None if any stream varies)."""
    out = []
    for st in streams:
        isl, osl = _constant(st.input_tokens), _constant(st.output_tokens)
        if isl is None or osl is None:
            return None
        out.append((isl, osl, st.kind))
    return out


def preset_limits(name: str, dep, streams, s) -> tuple[int, int, list[str]]:
    """(max_batch, token_budget, notes) of a pool under preset ``name``; explicit settings win.

    * ``offline_limits = "trtllm-bench"``: when every stream is all-at-once with constant lengths
      (an offline run), trtllm-bench's heuristic picks both limits, as it did for the measured points.
    * ``no_evict``: TRT-LLM's GUARANTEED_NO_EVICT admits a request only when its whole input+output
      fits the KV pool; with constant lengths that is max_batch <= KV tokens // (input+output). With
      uniform lengths it admits by each request's own size, so a full pool holds KV // the mean
      request in steady state: that is the cap. Other length distributions leave it unexpressed.
    """
    p = preset(name)
    batch, budget = limits(name, dep)
    notes = [f"{name} defaults: max_batch {batch}, token_budget {budget}"]
    fixed = fixed_lengths(streams) if streams else None
    if fixed and p["offline_limits"] == "trtllm-bench" and all(k == "all_at_once" for _, _, k in fixed):
        isl, osl = max(f[0] for f in fixed), max(f[1] for f in fixed)
        batch, budget = trtllm_bench_limits(dep, isl, osl)
        notes = [f"trtllm-bench's heuristic for {isl}/{osl} tokens: max_batch_size {batch}, "
                 f"max_num_tokens {budget} (chunked prefill off)"]
    batch = s.max_batch or batch
    budget = s.token_budget or budget
    need = mean_request(streams) if streams else None
    if need and p["no_evict"]:
        need = int(round(need))
        fit = dep.kv_capacity_tokens // need
        if 1 <= fit < batch:
            batch = fit
            notes.append(f"max_batch {fit} = KV {dep.kv_capacity_tokens} tokens // {need}: GUARANTEED_NO_EVICT")
    return batch, budget, notes
