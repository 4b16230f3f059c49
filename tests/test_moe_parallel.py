"""Expert parallelism and data-parallel attention (issue 16): memory, KV and all-to-all by hand.

DeepSeek-V3 (data/models.toml): 61 layers, d_model 7168, MLA latent 512 + rope 64, 3 dense
layers, 58 MoE layers of 256 routed experts (d_ff_expert 2048, top-8) + 1 shared.
Routed expert parameters: 58 x 256 x 3 x 7168 x 2048 = 653,908,770,816; all parameters
671,025,397,760 (so 17,116,626,944 are attention, dense layers, shared experts, router, embeddings).
"""
from __future__ import annotations

import numpy as np
import pytest

from agentsim import Deployment, InputError, load_catalog
from agentsim.model.opmodel import OpModel
from agentsim.model.servicetime import StepCoeffs, _Ops, _token_ops, build_tables

ALL = 671_025_397_760
ROUTED = 58 * 256 * 3 * 7168 * 2048
REPLICATED = ALL - ROUTED
KV_FP8 = 61 * (512 + 64) * 1          # MLA latent bytes per token per GPU, fp8: 35,136
H200_USABLE = 141e9 * 0.90 - 2e9      # HBM x mem_util - reserve
GB200_USABLE = 186e9 * 0.90 - 2e9


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


def _dsv3(cat, gpu, **kw):
    kw.setdefault("precision", "fp8")
    return Deployment.from_catalog(cat, "DeepSeek-V3", gpu, kv_dtype="fp8", **kw)


def test_hand_numbers_match_the_model(cat):
    m = cat.model("DeepSeek-V3")
    assert ROUTED == 653_908_770_816 and m.routed_expert_params == ROUTED and m.params == ALL
    assert KV_FP8 == 35_136 and m.kv_bytes_per_token("fp8", 8) == KV_FP8


def test_h200_kv_per_gpu_without_and_with_dp_attention(cat):
    # tp 8: every GPU holds 1/8 of all weights and the whole latent of every sequence
    tp = _dsv3(cat, "H200", tp=8)
    assert tp.weight_bytes_per_gpu == pytest.approx(ALL / 8)                   # 83.88 GB
    per_gpu_free = H200_USABLE - ALL / 8                                       # 41.02 GB
    assert tp.kv_capacity_tokens == int(per_gpu_free // KV_FP8) == 1_167_515   # the replica's
    # dp 8 x tp 1, ep 8: replicated weights whole on each GPU, the experts over all 8
    dp = _dsv3(cat, "H200", tp=1, dp=8, ep=8)
    assert dp.n_gpus == 8
    assert dp.weight_bytes_per_gpu == pytest.approx(REPLICATED + ROUTED / 8)   # 98.86 GB
    free = H200_USABLE - (REPLICATED + ROUTED / 8)                             # 26.04 GB
    assert dp.kv_capacity_tokens == 8 * int(free // KV_FP8) == 8 * 741_256
    # per GPU: 145,939 tokens without DP attention, 741,256 with it (5.1x)
    assert tp.kv_capacity_tokens / 8 == pytest.approx(145_939.4, abs=0.1)
    assert dp.kv_capacity_tokens / dp.n_gpus == 741_256


def test_gb200_domain_kv_per_gpu_without_and_with_dp_attention(cat):
    # fp4 weights (0.5 byte). Without DP: the domain as 18 replicas of tp 4
    tp = _dsv3(cat, "GB200", tp=4, precision="fp4")
    free = GB200_USABLE - ALL * 0.5 / 4                                        # 81.52 GB
    assert tp.kv_capacity_tokens == int(free // KV_FP8) == 2_320_179
    assert 18 * tp.kv_capacity_tokens / 72 == pytest.approx(580_044.75)        # tokens per GPU
    # the whole 72-GPU NVL72 domain as one replica: 72 attention ranks, experts over 72 GPUs
    dp = _dsv3(cat, "GB200", tp=1, dp=72, ep=8, precision="fp4")
    assert dp.n_gpus == 72 and dp.moe_tp == 9
    per_gpu = (REPLICATED + ROUTED / 72) * 0.5                                 # 13.10 GB
    assert dp.weight_bytes_per_gpu == pytest.approx(per_gpu)
    assert dp.kv_capacity_tokens == 72 * int((GB200_USABLE - per_gpu) // KV_FP8) == 72 * 4_334_604
    assert dp.kv_capacity_tokens / 72 > 7 * 18 * tp.kv_capacity_tokens / 72    # ~7x the KV per GPU


def test_ep_spreads_expert_weights_and_keeps_the_rest_per_rank(cat):
    h100 = _dsv3(cat, "H100-SXM", tp=1, dp=16, ep=16)
    assert h100.weight_bytes_per_gpu == pytest.approx(REPLICATED + ROUTED / 16)      # 57.99 GB
    # the same 16 GPUs as tp 8 x pp 2 hold 1/16 of everything: EP does not save memory, DP costs some
    tppp = _dsv3(cat, "H100-SXM", tp=8, pp=2)
    assert tppp.weight_bytes_per_gpu == pytest.approx(ALL / 16)                       # 41.94 GB
    # ep without dp: experts and the rest split 8 ways, as tp 8
    assert _dsv3(cat, "H200", tp=8, ep=8).weight_bytes_per_gpu == pytest.approx(ALL / 8)
    # 8 H200s cannot hold DP attention on H100s' 80 GB: weights alone exceed the usable 70 GB
    with pytest.raises(InputError, match="do not fit"):
        _dsv3(cat, "H100-SXM", tp=1, dp=8, ep=8)


def test_alltoall_bytes_per_step(cat):
    dep = _dsv3(cat, "H100-SXM", tp=1, dp=16, ep=16)
    # 58 MoE layers x (dispatch + combine) x 4096 tokens x top-8 x 7168 x 2 bytes x 15/16 off-rank
    assert dep.alltoall_bytes_per_step(4096) == 58 * 2 * 4096 * 8 * 7168 * 2 * 15 / 16 == pytest.approx(51.1e9, rel=1e-3)
    assert _dsv3(cat, "H200", tp=8).alltoall_bytes_per_step(4096) == 0.0


def test_alltoall_is_in_the_token_ops_and_priced_from_the_measured_curves(cat):
    om = OpModel.load()
    dep = _dsv3(cat, "H200", tp=1, dp=8, ep=8, engine="vllm")
    ops = _Ops(dep, om)
    t = np.array([512.0, 4096.0])
    a2a = ops.all_to_all(t)
    # DeepEP on H200: tens to hundreds of microseconds per layer, growing with the bytes
    assert 20e-6 < a2a[0] < a2a[1] < 2e-3
    assert "all_to_all" not in ops.outside                   # 8 ranks fit one NVLink node
    # F(T) prices tp 8 with and without EP (EP adds the all-to-all and prices experts per rank)
    no_ep = _token_ops(_Ops(_dsv3(cat, "H200", tp=8, dp=1, ep=1, engine="vllm"), om), t)
    ep8 = _token_ops(_Ops(_dsv3(cat, "H200", tp=8, dp=1, ep=8, engine="vllm"), om), t)
    assert np.all(ep8 > 0) and np.all(no_ep > 0)
    # beyond a node the bytes leaving it ride 50 GB/s scale-out links: extrapolated, and slower
    wide = _Ops(_dsv3(cat, "H100-SXM", tp=1, dp=16, ep=16, engine="vllm"), om)
    # 8192 tokens over 16 ranks: 512 per rank, 512 x 8 x 7168 x 2 bytes each way, half of it off-node
    assert wide.all_to_all(np.array([8192.0]))[0] >= 2 * 512 * 8 * 7168 * 2 * (8 / 16) / 50e9
    assert "all_to_all" in wide.outside
    assert build_tables(wide.dep).label in ("extrapolated", "transferred")


def test_dp_attention_spreads_decodes_over_ranks(cat):
    """A step of n decodes on dp ranks costs what ceil(n/dp) decodes cost on one rank's attention."""
    one = StepCoeffs.of(_dsv3(cat, "H200", tp=1, dp=8, ep=8))
    # 8 decodes over 8 ranks: attention as one sequence per rank, so A(8) = A(1)
    assert one.dec_a[8] == one.dec_a[1]
    assert one.dec_a[9] >= one.dec_a[8]
    # n·B(n) is the busiest rank's share: ceil(n/dp) sequences at the mean context
    assert one.dec_b[64] * 64 == pytest.approx(one.dec_b[8] * 8 * 8, rel=0.3)


def test_dp_ep_steps_are_faster_per_gpu_at_large_batch_than_tp_only(cat):
    tp = StepCoeffs.of(_dsv3(cat, "H200", tp=8, engine="sglang"))
    dp = StepCoeffs.of(_dsv3(cat, "H200", tp=1, dp=8, ep=8, engine="sglang"))
    n = 2048
    assert dp.step_time(decodes=n, decode_context=n * 2000) < tp.step_time(decodes=n, decode_context=n * 2000)


def test_ep_one_dp_one_is_unchanged(cat):
    """The shapes before issue 16 price exactly as before (same tables, bit for bit)."""
    a = build_tables(_dsv3(cat, "H200", tp=8))
    b = build_tables(_dsv3(cat, "H200", tp=8, ep=1, dp=1))
    assert np.array_equal(a.fixed, b.fixed) and np.array_equal(a.dec_b, b.dec_b)


def test_redundant_experts_make_sglangs_ep72_expressible(cat):
    """SGLang's H100 decode: 72 ranks over 256 experts + 32 EPLB replicas = 288 slots, 4 per GPU."""
    with pytest.raises(InputError, match=r"ep=72 does not divide the model's 256 experts.*redundant_experts = 32"):
        _dsv3(cat, "H100-SXM", tp=1, dp=72, ep=72)
    dep = _dsv3(cat, "H100-SXM", tp=1, dp=72, ep=72, redundant_experts=32)
    assert dep.n_gpus == 72 and dep.expert_slots == 288
    # routed bytes grow by 288/256; each GPU: the replicated 17.1 GB + 4 experts x 58 layers
    per_gpu = REPLICATED + ROUTED * 288 / 256 / 72                                  # 27.33 GB
    assert dep.weight_bytes_per_gpu == pytest.approx(per_gpu)
    assert dep.weight_bytes_per_gpu == pytest.approx(REPLICATED + 4 * 58 * 3 * 7168 * 2048)
    with pytest.raises(InputError, match="needs ep > 1"):
        _dsv3(cat, "H200", tp=8, redundant_experts=8)
