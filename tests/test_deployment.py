"""Deployment checks: what fits, what is rejected and why, and the KV capacity by hand."""
from __future__ import annotations

import math
import re

import pytest

from agentsim import Deployment, InputError

LLAMA3_8B_PARAMS = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336) + 2 * 128256 * 4096
LLAMA3_70B_PARAMS = 80 * (8192 * 8192 + 2 * 8192 * 1024 + 8192 * 8192 + 3 * 8192 * 28672) + 2 * 128256 * 8192



def _gb_figures(msg: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)\s*GB", msg)]


def test_weights_do_not_fit_names_needed_and_available(cat):
    with pytest.raises(InputError) as ei:
        Deployment.from_catalog(cat, "Llama-3.1-405B", "H100-SXM", tp=4)
    msg = str(ei.value)
    assert "do not fit" in msg
    figures = _gb_figures(msg)
    need_total = cat.model("Llama-3.1-405B").params * 2 / 1e9        # ~811.7 GB of bf16 weights
    need_per_gpu = need_total / 4 + 2.0                               # + 2 GB reserve
    usable = 80 * 0.90                                                # 72.0 GB per H100
    assert need_total == pytest.approx(811.7, abs=0.1)
    assert any(abs(f - need_total) < 0.06 for f in figures), figures
    assert any(abs(f - need_per_gpu) < 0.06 for f in figures), figures
    assert any(abs(f - usable) < 0.06 for f in figures), figures


def test_weights_fit_with_enough_gpus(cat):
    dep = Deployment.from_catalog(cat, "Llama-3.1-405B", "H100-SXM", tp=8, precision="fp8")
    assert dep.weight_bytes_per_gpu == pytest.approx(cat.model("Llama-3.1-405B").params / 8)
    dep = Deployment.from_catalog(cat, "Llama-3.1-405B", "H100-SXM", tp=8, pp=2)
    assert dep.n_gpus == 16


def test_tp_beyond_node_rejected(cat):
    g = cat.gpu("H100-SXM")
    with pytest.raises(InputError, match=r"tp=16") as ei:
        Deployment.from_catalog(cat, "Llama-3-70B", "H100-SXM", tp=2 * g.gpus_per_node)
    assert str(g.gpus_per_node) in str(ei.value)
    # the same 16 GPUs as tp=8 x pp=2 are fine
    assert Deployment.from_catalog(cat, "Llama-3-70B", "H100-SXM", tp=8, pp=2).n_gpus == 16


@pytest.mark.parametrize("tp, pp", [(0, 1), (1, 0), (-2, 1)])
def test_nonpositive_parallelism_rejected(cat, tp, pp):
    with pytest.raises(InputError, match="tp and pp"):
        Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", tp=tp, pp=pp)


def test_pp_beyond_layers_rejected(cat):
    with pytest.raises(InputError, match="layers"):
        Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", tp=1, pp=33)


def test_unsupported_precision_rejected(cat):
    with pytest.raises(InputError) as ei:
        Deployment.from_catalog(cat, "Llama-3-8B", "A100-SXM-80GB", precision="fp8")
    assert "fp8" in str(ei.value) and "A100-SXM-80GB" in str(ei.value)
    with pytest.raises(InputError, match="fp4"):
        Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", precision="fp4")
    assert Deployment.from_catalog(cat, "Llama-3-8B", "B200", precision="fp4").weight_element_bytes == 0.5


def test_unknown_precision_and_kv_dtype_rejected(cat):
    with pytest.raises(InputError, match="int3"):
        Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", precision="int3")
    with pytest.raises(InputError, match="kv_dtype"):
        Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", kv_dtype="fp4")


@pytest.mark.parametrize("mem_util", [0.0, 1.5, -0.1])
def test_bad_mem_util_rejected(cat, mem_util):
    with pytest.raises(InputError, match="mem_util"):
        Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", mem_util=mem_util)


def test_kv_capacity_llama3_8b_one_h100(cat):
    dep = Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM")
    assert dep.gpu.hbm_gb == 80
    expected = math.floor((80e9 * 0.9 - 2 * LLAMA3_8B_PARAMS - 2e9) / 131072)
    assert dep.kv_capacity_tokens == expected
    assert 400_000 < expected < 420_000  # ~54 GB of KV at 128 KiB per token


def test_kv_capacity_fp8_kv_doubles_tokens(cat):
    bf16 = Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM")
    fp8 = Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", kv_dtype="fp8")
    assert fp8.kv_capacity_tokens == math.floor((80e9 * 0.9 - 2 * LLAMA3_8B_PARAMS - 2e9) / 65536)
    assert fp8.kv_capacity_tokens in (2 * bf16.kv_capacity_tokens, 2 * bf16.kv_capacity_tokens + 1)


def test_kv_capacity_llama3_70b_tp4_and_pp2(cat):
    dep = Deployment.from_catalog(cat, "Llama-3-70B", "H100-SXM", tp=4)
    per_gpu_kv = 2 * 80 * (8 // 4) * 128 * 2
    free = 80e9 * 0.9 - 2 * LLAMA3_70B_PARAMS / 4 - 2e9
    assert dep.kv_capacity_tokens == math.floor(free / per_gpu_kv)
    # tp=4 x pp=2: each GPU holds half the layers' KV for a token and an eighth of the weights
    dep = Deployment.from_catalog(cat, "Llama-3-70B", "H100-SXM", tp=4, pp=2)
    free = 80e9 * 0.9 - 2 * LLAMA3_70B_PARAMS / 8 - 2e9
    assert dep.kv_capacity_tokens == math.floor(free / (per_gpu_kv / 2))


def test_kv_capacity_mem_util_and_reserve(cat):
    dep = Deployment.from_catalog(cat, "Llama-3-8B", "H100-SXM", mem_util=0.5, reserve_gb_per_gpu=4)
    assert dep.kv_capacity_tokens == math.floor((80e9 * 0.5 - 2 * LLAMA3_8B_PARAMS - 4e9) / 131072)


def test_too_little_kv_left_rejected(cat):
    # 70B bf16 on 2x A100-80GB: 70.6 GB per GPU of weights + 2 GB > 72 GB usable
    with pytest.raises(InputError, match="do not fit"):
        Deployment.from_catalog(cat, "Llama-3-70B", "A100-SXM-80GB", tp=2)
    # with a tiny reserve the weights fit but not one full context of KV
    with pytest.raises(InputError, match="KV tokens"):
        Deployment.from_catalog(cat, "Llama-3-70B", "A100-SXM-80GB", tp=2, reserve_gb_per_gpu=0.0, mem_util=0.8825)


def test_label_and_gpus(cat):
    dep = Deployment.from_catalog(cat, "Llama-3-70B", "H100-SXM", tp=4, pp=2, precision="fp8")
    assert dep.n_gpus == 8
    assert dep.label == f"{dep.model.name}/H100-SXM/tp4pp2/fp8"
