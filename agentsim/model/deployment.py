"""A deployment: one model served on ``tp x pp`` GPUs of one type at one precision.

It answers the memory questions (do the weights fit, how many KV tokens are left) and carries
everything the step-time model needs. Tensor parallelism stays inside a node (NVLink domain);
pipeline stages span nodes and pay scale-out transfers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .catalog import Catalog
from ..util.errors import InputError
from .hardware import BYTES_PER_ELEMENT, GPU, PRECISIONS, Efficiency
from .llm import ModelSpec

KV_DTYPES = ("bf16", "fp8")
#: serving engines whose measured kernel tables can price a step (agentsim.model.opmodel)
ENGINES = ("vllm", "sglang", "trtllm")


def _tp_problem(model: ModelSpec, tp: int) -> str:
    """Why an engine (vLLM, SGLang) would refuse ``tp`` for ``model`` ('' if it would not).

    Attention heads are split evenly across the tp ranks; GQA KV heads are split when there are
    at least tp of them (so tp must divide them) and replicated when there are fewer (so they
    must divide tp). MLA's latent KV is not split by head.
    """
    if model.n_heads % tp:
        return f"does not divide the model's {model.n_heads} attention heads"
    if model.attention == "gqa" and model.n_kv_heads % tp and tp % model.n_kv_heads:
        return f"is neither a multiple nor a divisor of the model's {model.n_kv_heads} KV heads"
    return ""


@dataclass(frozen=True)
class Deployment:
    model: ModelSpec
    gpu: GPU
    efficiency: Efficiency
    tp: int = 1
    pp: int = 1
    precision: str = "bf16"
    kv_dtype: str = "bf16"
    mem_util: float = 0.90
    reserve_gb_per_gpu: float = 2.0
    engine: str = "vllm"          # whose measured kernels price the steps

    def __post_init__(self) -> None:
        where = f"deployment {self.model.name} on {self.tp * self.pp}x {self.gpu.name}"
        if self.precision not in PRECISIONS:
            raise InputError(f"{where}: precision {self.precision!r} unknown; allowed: {', '.join(PRECISIONS)}")
        if self.kv_dtype not in KV_DTYPES:
            raise InputError(f"{where}: kv_dtype {self.kv_dtype!r} unknown; allowed: {', '.join(KV_DTYPES)}")
        if self.gpu.peak_flops(self.precision) <= 0:
            raise InputError(f"{where}: {self.gpu.name} has no {self.precision} support "
                             f"(bf16 {self.gpu.bf16_tflops:g}, fp8 {self.gpu.fp8_tflops:g}, fp4 {self.gpu.fp4_tflops:g} TFLOP/s)")
        if self.engine not in ENGINES:
            raise InputError(f"{where}: engine {self.engine!r} unknown; allowed: {', '.join(ENGINES)}")
        if self.tp < 1 or self.pp < 1:
            raise InputError(f"{where}: tp and pp must be >= 1 (got tp={self.tp}, pp={self.pp})")
        if self.tp > self.gpu.gpus_per_node:
            raise InputError(f"{where}: tp={self.tp} exceeds the {self.gpu.gpus_per_node} GPUs of one "
                             f"{self.gpu.name} node; use pp for more")
        bad = _tp_problem(self.model, self.tp)
        if bad:
            ok = [t for t in range(1, self.gpu.gpus_per_node + 1) if not _tp_problem(self.model, t)]
            raise InputError(f"{where}: tp={self.tp} {bad}; allowed tp: {', '.join(map(str, ok))}")
        if self.pp > self.model.layers:
            raise InputError(f"{where}: pp={self.pp} exceeds the model's {self.model.layers} layers")
        if not 0 < self.mem_util <= 1:
            raise InputError(f"{where}: mem_util must be in (0, 1], got {self.mem_util}")
        need = self.weight_bytes_per_gpu + self.reserve_gb_per_gpu * 1e9
        have = self.gpu.hbm_bytes * self.mem_util
        if need > have:
            raise InputError(
                f"{where}: weights do not fit: {self.model.name} at {self.precision} needs "
                f"{self.model.weight_bytes(self.precision) / 1e9:.1f} GB ({need / 1e9:.1f} GB per GPU with "
                f"{self.reserve_gb_per_gpu:g} GB reserve) but each GPU has {have / 1e9:.1f} GB usable "
                f"({self.gpu.hbm_gb:g} GB x mem_util {self.mem_util}); raise tp/pp or lower the precision")
        if self.kv_capacity_tokens < min(self.model.max_context, 4096):
            raise InputError(
                f"{where}: only {self.kv_capacity_tokens} KV tokens fit after the weights; "
                f"need at least one full context ({min(self.model.max_context, 4096)} tokens)")

    @classmethod
    def from_catalog(cls, catalog: Catalog, model: str, gpu: str, *, tp: int = 1, pp: int = 1,
                     precision: str = "bf16", kv_dtype: str = "bf16", mem_util: float = 0.90,
                     reserve_gb_per_gpu: float = 2.0, engine: str = "vllm") -> "Deployment":
        g = catalog.gpu(gpu)
        return cls(model=catalog.model(model), gpu=g, efficiency=catalog.efficiency(g), tp=tp, pp=pp,
                   precision=precision, kv_dtype=kv_dtype, mem_util=mem_util, reserve_gb_per_gpu=reserve_gb_per_gpu,
                   engine=engine)

    @property
    def n_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.gpu.name}/tp{self.tp}pp{self.pp}/{self.precision}"

    @cached_property
    def weight_bytes_per_gpu(self) -> float:
        return self.model.weight_bytes(self.precision) / self.n_gpus

    @cached_property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV bytes one token occupies on one GPU (its stage's share of the layers)."""
        return self.model.kv_bytes_per_token(self.kv_dtype, self.tp) / self.pp

    @cached_property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV the replica holds: ``(HBM*mem_util - weights - reserve) / kv_per_token``."""
        free = self.gpu.hbm_bytes * self.mem_util - self.weight_bytes_per_gpu - self.reserve_gb_per_gpu * 1e9
        return max(0, int(free // self.kv_bytes_per_token_per_gpu))

    @property
    def weight_element_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.precision]
