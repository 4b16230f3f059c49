"""Model architectures and what follows from them: parameters, weight and KV bytes, FLOPs.

Formulas: ``docs/reference/hardware-roofline.md`` §3.2 (dense SwiGLU, GQA, MoE, MLA). A model is
data (``data/models.toml``); parametric "frontier" models are built from total/active sizes by
:func:`frontier_model`, so closed models of unknown size can be swept as bands.
"""
from __future__ import annotations

import math
import re
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..util.errors import InputError
from .hardware import BYTES_PER_ELEMENT


class ModelSpec(BaseModel):
    """Transformer geometry. Derived sizes are properties, computed once."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = ""
    description: str = ""
    layers: int = Field(ge=1)
    d_model: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    n_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    d_ff: int = Field(ge=1, description="dense FFN width (MoE models: the dense layers')")
    vocab: int = Field(ge=1)
    tied_embeddings: bool = False
    max_context: int = Field(ge=1)
    # MoE
    n_experts: int = Field(0, ge=0)
    top_k: int = Field(0, ge=0)
    n_shared_experts: int = Field(0, ge=0)
    d_ff_expert: int = Field(0, ge=0)
    n_dense_layers: int = Field(0, ge=0)
    # attention kind; MLA fields only for "mla"
    attention: Literal["gqa", "mla"] = "gqa"
    q_lora_rank: int = Field(0, ge=0)
    kv_lora_rank: int = Field(0, ge=0)
    qk_nope_head_dim: int = Field(0, ge=0)
    qk_rope_head_dim: int = Field(0, ge=0)
    v_head_dim: int = Field(0, ge=0)
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.n_experts and not (1 <= self.top_k <= self.n_experts and self.d_ff_expert > 0):
            raise ValueError("an MoE model needs 1 <= top_k <= n_experts and d_ff_expert > 0")
        if self.n_dense_layers > self.layers:
            raise ValueError("n_dense_layers exceeds layers")
        if self.attention == "mla" and not (self.kv_lora_rank and self.qk_rope_head_dim):
            raise ValueError("MLA attention needs kv_lora_rank and qk_rope_head_dim")
        if self.attention == "gqa" and self.n_heads % self.n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        return self

    # -- parameters ---------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @cached_property
    def attention_params(self) -> int:
        d, h = self.d_model, self.n_heads
        if self.attention == "mla":
            q = d * self.q_lora_rank + self.q_lora_rank * h * (self.qk_nope_head_dim + self.qk_rope_head_dim) \
                if self.q_lora_rank else d * h * (self.qk_nope_head_dim + self.qk_rope_head_dim)
            kv = d * (self.kv_lora_rank + self.qk_rope_head_dim) \
                + self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv + h * self.v_head_dim * d
        return d * h * self.head_dim + 2 * d * self.n_kv_heads * self.head_dim + h * self.head_dim * d

    @property
    def moe_layers(self) -> int:
        return self.layers - self.n_dense_layers if self.is_moe else 0

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert in one layer (SwiGLU: 3 matrices)."""
        return 3 * self.d_model * self.d_ff_expert

    @cached_property
    def embedding_params(self) -> int:
        return (1 if self.tied_embeddings else 2) * self.vocab * self.d_model

    @cached_property
    def nonembedding_params(self) -> int:
        dense_layer = self.attention_params + 3 * self.d_model * self.d_ff
        if not self.is_moe:
            return self.layers * dense_layer
        moe_layer = (self.attention_params + (self.n_experts + self.n_shared_experts) * self.expert_params
                     + self.d_model * self.n_experts)
        return self.n_dense_layers * dense_layer + self.moe_layers * moe_layer

    @cached_property
    def active_nonembedding_params(self) -> int:
        """Parameters one token touches (MoE: top_k routed + shared experts)."""
        if not self.is_moe:
            return self.nonembedding_params
        dense_layer = self.attention_params + 3 * self.d_model * self.d_ff
        moe_layer = (self.attention_params + (self.top_k + self.n_shared_experts) * self.expert_params
                     + self.d_model * self.n_experts)
        return self.n_dense_layers * dense_layer + self.moe_layers * moe_layer

    @property
    def params(self) -> int:
        return self.nonembedding_params + self.embedding_params

    @property
    def active_params(self) -> int:
        return self.active_nonembedding_params + self.embedding_params

    def weight_bytes(self, precision: str) -> float:
        """Bytes of all weights at ``precision`` (embeddings included)."""
        return self.params * BYTES_PER_ELEMENT[precision]

    @property
    def routed_expert_params(self) -> int:
        """Routed-expert parameters over all MoE layers (read only when a token picks them)."""
        return self.moe_layers * self.n_experts * self.expert_params

    # -- KV cache ------------------------------------------------------------------------------
    def kv_elements_per_token(self, tp: int = 1) -> int:
        """KV elements one token stores on ONE GPU of a tp group, over all layers.

        GQA heads split across tp (replicated when tp > n_kv_heads); the MLA latent is not split.
        """
        if self.attention == "mla":
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        return 2 * self.layers * math.ceil(self.n_kv_heads / tp) * self.head_dim

    def kv_bytes_per_token(self, kv_dtype: str = "bf16", tp: int = 1) -> float:
        return self.kv_elements_per_token(tp) * BYTES_PER_ELEMENT[kv_dtype]

    # -- FLOPs ---------------------------------------------------------------------------------
    @cached_property
    def attention_flops_per_pair(self) -> int:
        """FLOPs for one (query token, key token) pair over all layers: QK^T plus PV.

        MLA is counted in its non-absorbed form (qk = nope + rope width, v = v_head_dim).
        """
        if self.attention == "mla":
            return self.layers * 2 * self.n_heads * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
        return self.layers * 4 * self.n_heads * self.head_dim

    @property
    def lm_head_flops(self) -> int:
        """FLOPs to produce one token's logits."""
        return 2 * self.d_model * self.vocab

    def flops_per_token(self, context: int = 0, sampled: bool = True) -> float:
        """FLOPs for one token attending to ``context`` earlier tokens."""
        return (2 * self.active_nonembedding_params + self.attention_flops_per_pair * context
                + (self.lm_head_flops if sampled else 0))


_FRONTIER = re.compile(r"^frontier-(dense|moe)-(\d+(?:p\d+)?)([bt])(?:-a(\d+(?:p\d+)?)([bt]))?$", re.I)


def _size(num: str, unit: str) -> float:
    return float(num.replace("p", ".")) * (1e12 if unit.lower() == "t" else 1e9)


def frontier_model(total_params: float, active_params: float | None = None, *, moe: bool = True,
                   name: str = "") -> ModelSpec:
    """A parametric frontier model with the given total (and active) parameter counts.

    Geometry follows published frontier-scale shapes: d_model grows with size, GQA with 8 KV heads,
    128-wide heads, FFN 4x d_model (dense) and 16 experts with top-2 (or more experts when the
    active share is small) for MoE. Sizes are matched by solving for the layer count and expert
    width; the result is within a few percent of the request (exact values in ``params``).
    """
    if total_params <= 0 or (active_params is not None and not 0 < active_params <= total_params):
        raise InputError(f"frontier model: need 0 < active ({active_params}) <= total ({total_params}) parameters")
    d = 8192 if total_params < 2e11 else 12288 if total_params < 8e11 else 16384
    heads, kv_heads, head_dim, vocab = d // 128, 8, 128, 131072
    attn = d * heads * head_dim * 2 + 2 * d * kv_heads * head_dim
    emb = 2 * vocab * d
    if not moe or active_params is None or active_params >= total_params:
        d_ff = 4 * d
        layers = max(1, round((total_params - emb) / (attn + 3 * d * d_ff)))
        return ModelSpec(name=name, description=f"parametric dense frontier model, {total_params/1e9:.0f}B",
                         layers=layers, d_model=d, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
                         d_ff=d_ff, vocab=vocab, max_context=200_000,
                         sources={"geometry": "agentsim.model.llm.frontier_model (hardware-roofline.md §5.1)"})
    # per layer: attn + E*3*d*f ; active: attn + k*3*d*f  ->  solve both for layers L and width f
    # total - emb = L*(attn + E*c), active - emb = L*(attn + k*c) with c = 3*d*f
    a, t = active_params - emb, total_params - emb
    if a <= 0:
        raise InputError(f"frontier model: active {active_params:.3g} does not exceed the embeddings ({emb:.3g})")
    share = a / t  # non-embedding active share: the one the layer equations see
    n_experts = 16 if share >= 0.1 else 64 if share >= 0.03 else 256
    # routed experts carry about 3/4 of the active layer weights (attention the rest), so
    # k/E < share strictly and a*E - t*k stays well away from 0 (no degenerate 1-layer solutions)
    top_k = max(1, math.floor(0.75 * share * n_experts))
    denom = a * n_experts - t * top_k
    if denom <= 0:
        raise InputError(f"frontier model: cannot match total {total_params:.3g} / active {active_params:.3g} "
                         f"with {n_experts} experts")
    c = attn * (t - a) / denom
    layers = max(1, round(t / (attn + n_experts * c)))
    d_ff_expert = max(128, round(c / (3 * d) / 128) * 128)
    return ModelSpec(name=name, description=(f"parametric MoE frontier model, {total_params/1e9:.0f}B total, "
                                             f"{active_params/1e9:.0f}B active"),
                     layers=layers, d_model=d, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
                     d_ff=4 * d, vocab=vocab, max_context=200_000, n_experts=n_experts, top_k=top_k,
                     d_ff_expert=d_ff_expert,
                     sources={"geometry": "agentsim.model.llm.frontier_model (hardware-roofline.md §5.1)"})


def parse_frontier_name(name: str) -> ModelSpec | None:
    """``frontier-moe-2t-a200b`` / ``frontier-dense-400b`` -> a parametric model, else None."""
    m = _FRONTIER.match(name.strip())
    if not m:
        return None
    kind, total, tu, active, au = m.groups()
    total_p = _size(total, tu)
    active_p = _size(active, au) if active else None
    if kind.lower() == "moe" and active_p is None:
        raise InputError(f"model {name!r}: a parametric MoE name needs an active size, e.g. frontier-moe-2t-a200b")
    return frontier_model(total_p, active_p, moe=kind.lower() == "moe", name=name)
