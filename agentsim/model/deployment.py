"""A deployment: one model served on ``tp x dp x pp`` GPUs of one type at one precision.

It answers the memory questions (do the weights fit, how many KV tokens are left) and carries
everything the step-time model needs. Tensor parallelism stays inside a scale-up domain (an
NVLink node, or a 72-GPU NVL72 rack: the catalog's ``gpus_per_node``); pipeline stages span nodes
and pay scale-out transfers.

**Expert and data parallelism** (how DeepSeek-V3-class MoE models are served: SGLang's large-EP
deployment, DeepSeek's own, TensorRT-LLM's ``enable_attention_dp``). One pipeline stage holds
``tp x dp`` GPUs: ``dp`` attention ranks (``dp_attention``), each a tensor-parallel group of ``tp``
GPUs with its own sequences and its own KV, and the MoE layers spread over all of them — ``ep``
expert ranks, each holding ``n_experts / ep`` experts split over ``tp x dp / ep`` GPUs (expert
tensor parallelism). Why a degree rather than a flag for DP attention: SGLang's ``--dp`` may be
smaller than its ``--tp`` (attention TP = tp/dp), and the degree states the GPU count outright.
Attention, dense layers, shared experts and embeddings are replicated per attention rank; only the
routed experts are divided over every GPU, so KV capacity grows with ``dp``.
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
    ep: int = 1                   # expert-parallel ranks over the stage's tp x dp GPUs
    dp: int = 1                   # data-parallel attention ranks (each tp GPUs, its own KV)
    redundant_experts: int = 0    # EPLB's extra expert replicas: ep divides n_experts + these
    mtp: int = 0                  # draft tokens per step (multi-token prediction / speculative decoding)

    def __post_init__(self) -> None:
        where = f"deployment {self.model.name} on {self.n_gpus}x {self.gpu.name}"
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
        self._check_ep_dp(where)
        if not 0 <= self.mtp <= 8:
            raise InputError(f"{where}: mtp (draft tokens per step) must be 0..8, got {self.mtp}")
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
        if self.kv_capacity_tokens // self.dp < min(self.model.max_context, 4096):
            raise InputError(
                f"{where}: only {self.kv_capacity_tokens // self.dp} KV tokens fit per attention rank after the weights; "
                f"need at least one full context ({min(self.model.max_context, 4096)} tokens)")

    def _check_ep_dp(self, where: str) -> None:
        """ep and dp: whole numbers that tile the stage's GPUs and the model's experts."""
        m, stage = self.model, self.tp * self.dp
        if self.ep < 1 or self.dp < 1:
            raise InputError(f"{where}: ep and dp_attention must be >= 1 (got ep={self.ep}, dp_attention={self.dp})")
        if self.ep > 1 and not m.is_moe:
            raise InputError(f"{where}: ep={self.ep} needs an MoE model; {m.name} is dense; allowed ep: 1")
        if self.redundant_experts < 0 or (self.redundant_experts and self.ep == 1):
            raise InputError(f"{where}: redundant_experts={self.redundant_experts} needs ep > 1 and must be >= 0 "
                             "(EPLB replicates hot experts across expert-parallel ranks)")
        slots = self.expert_slots
        if self.ep > 1 and slots % self.ep:
            ok = [e for e in range(1, slots + 1) if not slots % e and not stage % e]
            extra = (f" + {self.redundant_experts} redundant = {slots} expert slots" if self.redundant_experts
                     else " experts")
            need = -slots % self.ep
            raise InputError(f"{where}: ep={self.ep} does not divide the model's {m.n_experts}{extra}; "
                             f"allowed ep for tp x dp_attention = {stage}: {', '.join(map(str, ok))} "
                             f"(or redundant_experts = {self.redundant_experts + need}, EPLB's spare slots)")
        if stage % self.ep:
            ok = [e for e in range(1, stage + 1) if not stage % e and (not m.n_experts or not m.n_experts % e)]
            raise InputError(f"{where}: ep={self.ep} does not divide the stage's tp x dp_attention = "
                             f"{self.tp} x {self.dp} = {stage} GPUs; allowed ep: {', '.join(map(str, ok))}")

    @classmethod
    def from_catalog(cls, catalog: Catalog, model: str, gpu: str, *, tp: int = 1, pp: int = 1,
                     precision: str = "bf16", kv_dtype: str = "bf16", mem_util: float = 0.90,
                     reserve_gb_per_gpu: float = 2.0, engine: str = "vllm", ep: int = 1,
                     dp: int = 1, redundant_experts: int = 0, mtp: int = 0) -> "Deployment":
        g = catalog.gpu(gpu)
        return cls(model=catalog.model(model), gpu=g, efficiency=catalog.efficiency(g), tp=tp, pp=pp,
                   precision=precision, kv_dtype=kv_dtype, mem_util=mem_util, reserve_gb_per_gpu=reserve_gb_per_gpu,
                   engine=engine, ep=ep, dp=dp, redundant_experts=redundant_experts, mtp=mtp)

    @property
    def n_gpus(self) -> int:
        """GPUs of one replica: ``tp x dp`` per pipeline stage, ``pp`` stages."""
        return self.tp * self.dp * self.pp

    @property
    def expert_slots(self) -> int:
        """Routed experts held across the EP ranks: the model's plus EPLB's redundant replicas."""
        return self.model.n_experts + self.redundant_experts

    @property
    def moe_tp(self) -> int:
        """GPUs each expert is split over (expert tensor parallelism): the stage's GPUs / ep."""
        return self.tp * self.dp // self.ep

    @property
    def parallelism(self) -> str:
        """``tp8`` / ``tp8pp2`` / ``tp1dp8ep8``: the shape, the trivial degrees left out."""
        parts = [f"tp{self.tp}"] + [f"{k}{v}" for k, v in (("pp", self.pp), ("dp", self.dp), ("ep", self.ep)) if v > 1]
        return "".join(parts)

    @property
    def label(self) -> str:
        shape = f"tp{self.tp}pp{self.pp}" + (f"dp{self.dp}" if self.dp > 1 else "") + (f"ep{self.ep}" if self.ep > 1 else "")
        return f"{self.model.name}/{self.gpu.name}/{shape}/{self.precision}"

    @cached_property
    def routed_weight_bytes(self) -> float:
        """Bytes of the routed experts (redundant replicas included): the only weights divided over
        every GPU of a stage."""
        base = self.model.routed_expert_params * BYTES_PER_ELEMENT[self.precision]
        return base * self.expert_slots / self.model.n_experts if self.redundant_experts else base

    @cached_property
    def weight_bytes_per_gpu(self) -> float:
        """Replicated weights (attention, dense layers, shared experts, embeddings) split over one
        attention rank's ``tp x pp`` GPUs, plus the routed experts split over all ``n_gpus``; with
        MTP, one more decoder layer's worth (the draft module: one transformer block sharing the
        embedding and head; DeepSeek-V3 lists 14 B MTP parameters, one layer of 671 B/61 is 11 B)."""
        total = self.model.weight_bytes(self.precision)
        if self.dp == 1 and not self.redundant_experts:
            w = total / self.n_gpus
        else:
            routed = self.routed_weight_bytes
            base = self.model.routed_expert_params * BYTES_PER_ELEMENT[self.precision]
            w = (total - base) / (self.tp * self.pp) + routed / self.n_gpus
        return w * (1 + 1 / self.model.layers) if self.mtp else w

    def alltoall_bytes_per_step(self, tokens: float) -> float:
        """Bytes the MoE all-to-alls move across GPUs in a step of ``tokens`` (0 without EP).

        Per MoE layer a token goes to ``top_k`` experts (dispatch) and comes back (combine), each a
        ``d_model`` bf16 activation; a share ``(ep-1)/ep`` of them lives on another rank.
        """
        m = self.model
        if self.ep == 1:
            return 0.0
        return m.moe_layers * 2 * tokens * m.top_k * m.d_model * 2.0 * (self.ep - 1) / self.ep

    @cached_property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """KV bytes one token occupies on one GPU (its stage's share of the layers)."""
        return self.model.kv_bytes_per_token(self.kv_dtype, self.tp) / self.pp

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes one token's KV occupies in the replica: on every GPU of its attention rank."""
        return self.kv_bytes_per_token_per_gpu * self.tp * self.pp

    @cached_property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV the replica holds: ``dp x (HBM*mem_util - weights - reserve) / kv_per_token``
        (each attention rank keeps its own sequences' KV; MLA's latent is not split by tp)."""
        free = self.gpu.hbm_bytes * self.mem_util - self.weight_bytes_per_gpu - self.reserve_gb_per_gpu * 1e9
        return self.dp * max(0, int(free // self.kv_bytes_per_token_per_gpu))

    @property
    def weight_element_bytes(self) -> float:
        return BYTES_PER_ELEMENT[self.precision]
