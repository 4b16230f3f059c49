"""The service-time core: hand-computed steps, MoE expert traffic, properties over the catalog,
and the closed form (``StepCoeffs`` / ``Stretch``) held equal to the vectorized form (``step_cost``).

Formulas: DESIGN.md §5 and shared/reference/hardware-roofline.md §3.2.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentsim import Deployment, InputError, StepCoeffs, Stretch, load_catalog, step_cost, step_times
from agentsim.servicetime import prefill_attention_pairs

CAT = load_catalog()
LLAMA3_8B_PARAMS = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336) + 2 * 128256 * 4096

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _catalog_deployments() -> list[Deployment]:
    deps = []
    for model in sorted(CAT.models) + ["frontier-moe-2t-a200b", "frontier-dense-400b"]:
        for gpu in sorted(CAT.gpus):
            for precision in ("bf16", "fp8", "fp4"):
                for tp in (1, 2, 4, 8):
                    for pp in (1, 2):
                        try:
                            deps.append(Deployment.from_catalog(CAT, model, gpu, tp=tp, pp=pp, precision=precision))
                        except InputError:
                            pass
    return deps


DEPS = _catalog_deployments()
COEFFS = {id(d): StepCoeffs.of(d) for d in DEPS}


def coeffs(dep: Deployment) -> StepCoeffs:
    return COEFFS[id(dep)] if id(dep) in COEFFS else StepCoeffs.of(dep)


def test_catalog_deployments_cover_the_interesting_cases():
    assert len(DEPS) > 500
    assert any(d.model.is_moe and d.model.attention == "mla" for d in DEPS)
    assert any(d.model.is_moe and d.model.attention == "gqa" for d in DEPS)
    assert {d.tp for d in DEPS} >= {1, 2, 4, 8} and {d.pp for d in DEPS} == {1, 2}
    assert {d.precision for d in DEPS} == {"bf16", "fp8", "fp4"}


# -- hand-computed steps -------------------------------------------------------------------------

def test_decode_batch1_llama3_8b_one_h100_by_hand():
    dep = Deployment.from_catalog(CAT, "Llama-3-8B", "H100-SXM")
    g, e = dep.gpu, dep.efficiency
    assert (g.hbm_tbps, g.bf16_tflops) == (3.35, 989.0)
    V, d, L = 128256, 4096, 32
    # every weight is streamed once except the input embedding table, of which only rows are gathered
    weight_bytes_read = (LLAMA3_8B_PARAMS - V * d) * 2
    kv_bytes = 131072 * 1                                     # one token of context
    memory = (weight_bytes_read + kv_bytes) / (3.35e12 * e.mbu)
    flops = 2 * (LLAMA3_8B_PARAMS - 2 * V * d) + 4 * L * 32 * 128 * 1 + 2 * d * V
    compute = flops / (989e12 * e.mfu_bf16)
    assert compute < memory / 10                             # batch 1 decode is memory-bound
    expected = memory + e.step_overhead_ms * 1e-3            # no all-reduce on one GPU

    c = StepCoeffs.of(dep)
    assert c.comm_fixed == 0 and c.comm_token == 0
    r = step_cost(c, decodes=1, decode_context=1)
    assert float(r.comm_s) == 0.0
    assert float(r.memory_s) == pytest.approx(memory, rel=1e-12)
    assert float(r.compute_s) == pytest.approx(compute, rel=1e-12)
    assert float(r.time_s) == pytest.approx(expected, rel=1e-12)
    assert c.step_time(decodes=1, decode_context=1) == pytest.approx(expected, rel=1e-12)
    # plausibility against the measured 6.48 ms TPOT (hardware-roofline.md §3.3)
    assert 4e-3 < expected < 12e-3
    # energy: idle share over the whole step + dynamic share while busy
    P, idle = 1 * g.server_w_per_gpu, g.idle_power_fraction
    assert float(r.energy_j) == pytest.approx(P * (idle * expected + (1 - idle) * memory), rel=1e-12)


@pytest.mark.parametrize("decodes, chunk", [(1, 0), (64, 0), (64, 512), (0, 8192)])
def test_tp2_allreduce_term_by_hand(decodes, chunk):
    dep = Deployment.from_catalog(CAT, "Llama-3-8B", "H100-SXM", tp=2)
    g, e = dep.gpu, dep.efficiency
    assert g.scaleup_gbps == 900.0
    L, d, t = 32, 4096, 2
    T = decodes + chunk
    alpha = e.allreduce_latency_us * 1e-6
    link_dir = 900e9 / 2
    comm = 2 * L * (alpha + 2 * (t - 1) / t * T * d * 2 / (link_dir * e.link_efficiency))
    ctx = 1000 * decodes
    r = step_cost(StepCoeffs.of(dep), prefill_tokens=chunk, prefill_attn=chunk * chunk / 2, prefill_kv=chunk,
                  decodes=decodes, decode_context=ctx)
    assert float(r.comm_s) == pytest.approx(comm, rel=1e-12)
    # the rest of the step splits over the two GPUs
    flops = (2 * (LLAMA3_8B_PARAMS - 2 * 128256 * d) * T + 4 * L * 32 * 128 * (chunk * chunk / 2 + ctx)
             + 2 * d * 128256 * decodes)
    compute = flops / (2 * 989e12 * e.mfu_bf16)
    memory = ((LLAMA3_8B_PARAMS - 128256 * d) * 2 + 131072 * (ctx + chunk)) / (2 * 3.35e12 * e.mbu)
    assert float(r.time_s) == pytest.approx(max(compute, memory) + comm + e.step_overhead_ms * 1e-3, rel=1e-12)


def test_pipeline_stage_transfer_by_hand():
    dep = Deployment.from_catalog(CAT, "Llama-3-70B", "H100-SXM", tp=4, pp=2)
    g, e = dep.gpu, dep.efficiency
    L, d, T = 80, 8192, 96
    alpha = e.allreduce_latency_us * 1e-6
    tp_term = 2 * L * (alpha + 2 * 3 / 4 * T * d * 2 / (g.scaleup_gbps * 1e9 / 2 * e.link_efficiency))
    pp_term = 1 * (alpha + T * d * 2 / (g.scaleout_gbps * 1e9 * e.link_efficiency))
    r = step_cost(StepCoeffs.of(dep), decodes=T, decode_context=T * 2000)
    assert float(r.comm_s) == pytest.approx(tp_term + pp_term, rel=1e-12)
    # pp divides the per-GPU weights but not the step: same busy time as tp=4 alone
    r4 = step_cost(StepCoeffs.of(Deployment.from_catalog(CAT, "Llama-3-70B", "H100-SXM", tp=4)),
                   decodes=T, decode_context=T * 2000)
    assert float(r.memory_s) == pytest.approx(float(r4.memory_s), rel=1e-12)
    assert float(r.compute_s) == pytest.approx(float(r4.compute_s), rel=1e-12)


def test_mla_kv_read_does_not_shrink_with_tp():
    """The MLA latent is replicated on every tp rank, so its read time is the same at any tp."""
    d8 = Deployment.from_catalog(CAT, "DeepSeek-V3", "H200", tp=8, precision="fp8")
    c = StepCoeffs.of(d8)
    assert c.t_kv == pytest.approx(61 * 576 * 2 / (d8.gpu.hbm_bytes_per_s * d8.efficiency.mbu), rel=1e-12)
    gqa = Deployment.from_catalog(CAT, "Llama-3-70B", "H200", tp=8)
    assert StepCoeffs.of(gqa).t_kv == pytest.approx(
        2 * 80 * 1 * 128 * 2 / (gqa.gpu.hbm_bytes_per_s * gqa.efficiency.mbu), rel=1e-12)


def test_sampled_tokens_cost_lm_head():
    dep = Deployment.from_catalog(CAT, "Llama-3-8B", "H100-SXM")
    c = StepCoeffs.of(dep)
    base = step_cost(c, prefill_tokens=2048, prefill_attn=2048 ** 2 / 2, prefill_kv=2048)
    done = step_cost(c, prefill_tokens=2048, prefill_attn=2048 ** 2 / 2, prefill_kv=2048, sampled=1)
    lm_head = 2 * 4096 * 128256 / (989e12 * dep.efficiency.mfu_bf16)
    assert float(done.compute_s - base.compute_s) == pytest.approx(lm_head, rel=1e-9)


def test_prefill_attention_pairs():
    assert float(prefill_attention_pairs(512, 0)) == 512 * 512 / 2
    assert float(prefill_attention_pairs(100, 1000)) == 100 * 1000 + 100 * 100 / 2
    np.testing.assert_array_equal(prefill_attention_pairs([1, 2], [3, 4]), [3.5, 10.0])


# -- MoE expert traffic --------------------------------------------------------------------------

@pytest.mark.parametrize("model, gpu, tp, precision", [
    ("Mixtral-8x7B", "H100-SXM", 2, "bf16"),
    ("DeepSeek-V3", "H200", 8, "fp8"),
])
def test_moe_experts_touched(model, gpu, tp, precision):
    dep = Deployment.from_catalog(CAT, model, gpu, tp=tp, precision=precision)
    m, b = dep.model, dep.weight_element_bytes
    E, k = m.n_experts, m.top_k
    bw = tp * dep.gpu.hbm_bytes_per_s * dep.efficiency.mbu
    fixed = (m.params - m.vocab * m.d_model - m.moe_layers * E * 3 * m.d_model * m.d_ff_expert) * b
    per_expert_all_layers = m.moe_layers * 3 * m.d_model * m.d_ff_expert * b
    c = StepCoeffs.of(dep)
    T = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 8192], dtype=float)
    memory = step_cost(c, decodes=T).memory_s
    touched = (memory * bw - fixed) / per_expert_all_layers
    np.testing.assert_allclose(touched, E * (1 - (1 - k / E) ** T), rtol=1e-9, atol=1e-6)
    assert touched[0] == pytest.approx(0, abs=1e-6)
    assert touched[1] == pytest.approx(k, rel=1e-9)
    assert np.all(np.diff(touched) >= 0) and np.all(touched <= E * (1 + 1e-12))
    assert touched[-1] == pytest.approx(E, rel=1e-6)        # saturates at all experts
    # the step time grows with tokens while experts are being picked up, then levels off
    if model == "DeepSeek-V3":                               # published: 8 / 57 / 163 / ~all 256
        assert [round(x) for x in touched[[1, 4, 6]]] == [8, 57, 163]
        assert touched[8] > 250


def test_dense_model_reads_weights_once_whatever_the_batch():
    c = StepCoeffs.of(Deployment.from_catalog(CAT, "Llama-3-70B", "H100-SXM", tp=4))
    assert c.expert_keep == 1.0 and c.t_experts == 0.0
    mem = step_cost(c, decodes=np.array([1.0, 8, 64, 512])).memory_s
    np.testing.assert_allclose(mem, c.t_weights, rtol=1e-15)


# -- properties over random aggregates and catalog deployments -----------------------------------

chunk_st = st.tuples(st.integers(1, 8192), st.integers(0, 65536))            # (new tokens c, cached p)
step_st = st.tuples(st.lists(chunk_st, max_size=3), st.lists(st.integers(1, 131072), max_size=48))


def aggregates(chunks, contexts, completing: int = 0) -> dict:
    return dict(
        prefill_tokens=float(sum(c for c, _ in chunks)),
        prefill_attn=float(sum(c * p + c * c / 2 for c, p in chunks)),
        prefill_kv=float(sum(p + c for c, p in chunks)),
        decodes=float(len(contexts)),
        decode_context=float(sum(contexts)),
        sampled=float(len(contexts) + completing),
    )


def _parts(c, agg):
    r = step_cost(c, **agg)
    return float(r.time_s), float(r.compute_s), float(r.memory_s), float(r.comm_s)


def _no_faster(new, old):
    for a, b in zip(new, old):
        assert a >= b * (1 - 1e-13), (new, old)


@PROPS
@given(dep=st.sampled_from(DEPS), step=step_st, extra=st.integers(1, 4096), which=st.integers(0, 10_000),
       kind=st.sampled_from(["add_chunk", "grow_chunk", "add_decode", "longer_decode", "longer_prefix"]))
def test_more_work_never_makes_a_step_faster(dep, step, extra, which, kind):
    chunks, contexts = [list(x) for x in step[0]], list(step[1])
    c = coeffs(dep)
    before = _parts(c, aggregates(chunks, contexts))
    if kind == "add_chunk":
        chunks.append([extra, which])
    elif kind == "grow_chunk":
        assume(chunks)
        chunks[which % len(chunks)][0] += extra
    elif kind == "add_decode":
        contexts.append(extra)
    elif kind == "longer_decode":
        assume(contexts)
        contexts[which % len(contexts)] += extra
    else:
        assume(chunks)
        chunks[which % len(chunks)][1] += extra
    after = _parts(c, aggregates(chunks, contexts))
    _no_faster(after, before)
    if kind in ("add_chunk", "grow_chunk", "add_decode"):
        assert after[1] > before[1]                          # more tokens: strictly more compute


@PROPS
@given(dep=st.sampled_from(DEPS), step=step_st,
       hbm=st.floats(1.0, 4.0), flops=st.floats(1.0, 4.0), link=st.floats(1.0, 4.0))
def test_faster_hardware_never_makes_a_step_slower(dep, step, hbm, flops, link):
    g = dep.gpu
    faster = g.model_copy(update=dict(hbm_tbps=g.hbm_tbps * hbm, bf16_tflops=g.bf16_tflops * flops,
                                      fp8_tflops=g.fp8_tflops * flops, fp4_tflops=g.fp4_tflops * flops,
                                      scaleup_gbps=g.scaleup_gbps * link, scaleout_gbps=g.scaleout_gbps * link))
    dep2 = Deployment(model=dep.model, gpu=faster, efficiency=dep.efficiency, tp=dep.tp, pp=dep.pp,
                      precision=dep.precision, kv_dtype=dep.kv_dtype)
    agg = aggregates(*step)
    old, new = _parts(coeffs(dep), agg), _parts(StepCoeffs.of(dep2), agg)
    for a, b in zip(new, old):
        assert a <= b * (1 + 1e-13), (new, old)
    # each resource scales its own term exactly
    assert new[2] == pytest.approx(old[2] / hbm, rel=1e-12)
    assert new[1] == pytest.approx(old[1] / flops, rel=1e-12)


def test_more_bandwidth_strictly_helps_a_memory_bound_step():
    dep = Deployment.from_catalog(CAT, "Llama-3-70B", "H100-SXM", tp=4)
    fast = Deployment(model=dep.model, gpu=dep.gpu.model_copy(update={"hbm_tbps": 2 * dep.gpu.hbm_tbps}),
                      efficiency=dep.efficiency, tp=4)
    slow_t = step_cost(StepCoeffs.of(dep), decodes=8, decode_context=8 * 4000)
    fast_t = step_cost(StepCoeffs.of(fast), decodes=8, decode_context=8 * 4000)
    assert float(slow_t.time_s - fast_t.time_s) == pytest.approx(float(slow_t.memory_s) / 2, rel=1e-12)


def _random_steps(rng: np.random.Generator, n: int) -> dict:
    chunk = np.where(rng.random(n) < 0.5, rng.integers(1, 8192, n), 0).astype(float)
    cached = rng.integers(0, 100_000, n).astype(float)
    decodes = rng.integers(0, 512, n).astype(float)
    return dict(prefill_tokens=chunk, prefill_attn=prefill_attention_pairs(chunk, cached),
                prefill_kv=np.where(chunk > 0, cached + chunk, 0.0), decodes=decodes,
                decode_context=decodes * rng.integers(1, 32_768, n),
                sampled=decodes + (rng.random(n) < 0.3) * (chunk > 0))


def _scalar(c: StepCoeffs, steps: dict, i: int) -> float:
    return c.step_time(**{k: float(v[i]) for k, v in steps.items()})


@PROPS
@given(dep=st.sampled_from(DEPS), seed=st.integers(0, 2**32 - 1))
def test_vectorized_equals_scalar_loop(dep, seed):
    steps = _random_steps(np.random.default_rng(seed), 64)
    c = coeffs(dep)
    vec = step_cost(c, **steps).time_s
    assert vec.shape == (64,)
    for i in range(64):
        assert vec[i] == pytest.approx(_scalar(c, steps, i), rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(deps=st.lists(st.sampled_from(DEPS), min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 300), block=st.sampled_from([1, 7, 64, 1024]))
def test_step_times_is_step_cost_time_bit_for_bit(deps, seed, n, block):
    """The time-only form skips the breakdown, not any term: same bits, any block size or stacking."""
    import agentsim.servicetime as sv
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sv, "_BLOCK", block)
        _check_step_times(deps, seed, n)


def _check_step_times(deps, seed, n):
    steps = _random_steps(np.random.default_rng(seed), n)
    for c in [coeffs(d) for d in deps] + [StepCoeffs.stack([coeffs(d) for d in deps]).column()]:
        fast = step_times(c, **steps)
        np.testing.assert_array_equal(fast, step_cost(c, **steps).time_s)
    single = coeffs(deps[0])
    for i in range(min(n, 20)):
        assert step_times(single, **steps)[i] == pytest.approx(_scalar(single, steps, i), rel=1e-12)
    assert step_times(single, decodes=3, decode_context=300).shape == ()


@settings(max_examples=25, deadline=None)
@given(deps=st.lists(st.sampled_from(DEPS), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_vectorized_stacked_deployments_equal_scalar_loop(deps, seed):
    steps = _random_steps(np.random.default_rng(seed), 40)
    cs = [coeffs(d) for d in deps]
    res = step_cost(StepCoeffs.stack(cs).column(), **steps)
    assert res.time_s.shape == (len(deps), 40)
    for di, c in enumerate(cs):
        for i in range(40):
            assert res.time_s[di, i] == pytest.approx(_scalar(c, steps, i), rel=1e-12)
        single = step_cost(c, **steps)
        np.testing.assert_allclose(res.energy_j[di], single.energy_j, rtol=1e-12)
        np.testing.assert_allclose(res.comm_s[di], single.comm_s, rtol=1e-12)


@PROPS
@given(dep=st.sampled_from(DEPS), seed=st.integers(0, 2**32 - 1))
def test_energy_at_least_idle_power_times_time(dep, seed):
    steps = _random_steps(np.random.default_rng(seed), 32)
    c = coeffs(dep)
    r = step_cost(c, **steps)
    assert c.power_w == dep.n_gpus * dep.gpu.server_w_per_gpu
    idle_power = c.power_w * c.idle_fraction
    assert np.all(r.energy_j >= idle_power * r.time_s * (1 - 1e-12))
    assert np.all(r.energy_j <= c.power_w * r.time_s * (1 + 1e-12))
    # the gap to full power is exactly the per-step overhead, spent idle
    np.testing.assert_allclose(c.power_w * r.time_s - r.energy_j,
                               c.power_w * (1 - c.idle_fraction) * c.overhead, rtol=1e-6)


# -- closed form (Stretch) vs step sums ----------------------------------------------------------

coef_st = st.one_of(st.just(0.0), st.integers(0, 20).map(float), st.floats(1e-6, 10.0))
stretch_st = st.tuples(coef_st, coef_st, coef_st, coef_st, coef_st)


def _prefix_sums(s: Stretch, k: int) -> list[float]:
    """Running sums of the scalar steps (all terms >= 0, so the rounding error stays <= k·eps)."""
    return [0.0, *itertools.accumulate(s.step(u) for u in range(k))]


def _check_elapsed(s: Stretch, k: int) -> None:
    ref = _prefix_sums(s, k)
    for j in range(k + 1):
        assert s.elapsed(j) == pytest.approx(ref[j], rel=1e-9, abs=1e-300), (j, s.elapsed(j), ref[j])


CROSSINGS = [
    (1.0, 2.0, 10.0, 0.5, 0.1),      # memory first, compute overtakes; tie exactly at u = 6
    (10.0, 0.5, 1.0, 2.0, 0.1),      # compute first, memory overtakes; tie exactly at u = 6
    (1.0, 2.0, 10.0, 0.7, 0.0),      # memory first, crossing between integers
    (10.0, 0.3, 1.0, 2.0, 0.0),      # compute first, crossing between integers
    (3.0, 1.0, 5.0, 1.0, 0.2),       # equal slopes, memory above
    (5.0, 1.0, 3.0, 1.0, 0.2),       # equal slopes, compute above
    (4.0, 1.0, 4.0, 1.0, 0.0),       # identical terms
    (4.0, 0.0, 4.0, 0.0, 1.0),       # constant, tied
    (0.0, 1.0, 0.0, 2.0, 0.0),       # both start at zero (first step takes 0 s)
    (0.0, 0.0, 1e-3, 1e-7, 1e-3),    # decode-like: memory-bound, KV growing
    (1e-3, 1e-6, 5e-4, 1e-6 + 1e-12, 1e-4),  # nearly parallel, crossing far away
    (2.0, 0.0, 0.0, 1.0, 0.0),       # compute flat, memory overtakes at u = 2 (tie) -> 3
]


@pytest.mark.parametrize("c0, c1, m0, m1, h", CROSSINGS)
def test_stretch_elapsed_across_crossovers(c0, c1, m0, m1, h):
    s = Stretch(c0, c1, m0, m1, h)
    _check_elapsed(s, 40)
    assert s.elapsed(10_000) == pytest.approx(math.fsum(s.step(u) for u in range(10_000)), rel=1e-9)


def test_stretch_crossover_pieces_by_hand():
    s = Stretch(1.0, 2.0, 10.0, 0.5, 0.0)     # steps: 10, 10.5, ..., 13 (u=6, tie), then 15, 17, ...
    assert [s.step(u) for u in (0, 6, 7, 8)] == [10.0, 13.0, 15.0, 17.0]
    assert s.elapsed(7) == sum(10 + 0.5 * u for u in range(7))
    assert s.elapsed(9) == s.elapsed(7) + 15.0 + 17.0


@settings(max_examples=150, deadline=None)
@given(p=stretch_st, k=st.integers(0, 400))
def test_stretch_elapsed_equals_sum_of_steps(p, k):
    _check_elapsed(Stretch(*p), k)


def _ref_done(s: Stretch, tau: float) -> int:
    """max j with elapsed(j) <= tau, by doubling and bisection on the (monotone) closed form."""
    if tau < 0:
        return 0
    lo, hi = 0, 1
    while s.elapsed(hi) <= tau:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if s.elapsed(mid) <= tau:
            lo = mid
        else:
            hi = mid
    return lo


def _check_done(s: Stretch, tau: float) -> None:
    j = s.steps_done_by(tau)
    assert j == _ref_done(s, tau), (tau, j)
    assert s.elapsed(j) <= tau or j == 0
    assert s.elapsed(j + 1) > tau


@settings(max_examples=150, deadline=None)
@given(p=stretch_st, j=st.integers(0, 3000), big=st.integers(10**5, 10**7))
def test_steps_done_by(p, j, big):
    s = Stretch(*p)
    assume(s.step(0) > 0)            # a stretch of zero-length steps has no "max j"
    e = s.elapsed(j)
    for tau in (e, math.nextafter(e, -math.inf), math.nextafter(e, math.inf), e * (1 - 1e-9),
                e * (1 + 1e-9), e + s.step(j) / 2, 0.0, s.elapsed(big), s.elapsed(big) + s.step(big) / 3):
        _check_done(s, tau)
    assert s.steps_done_by(e) == j
    assert s.steps_done_by(s.elapsed(big)) == big
    if j > 0:
        assert s.steps_done_by(math.nextafter(e, -math.inf)) == j - 1
    assert s.steps_done_by(0.0) == 0 and s.steps_done_by(-1.0) == 0


@pytest.mark.parametrize("c0, c1, m0, m1, h", [p for p in CROSSINGS if p[0] + p[2] + p[4] > 0])
def test_steps_done_by_across_crossovers(c0, c1, m0, m1, h):
    s = Stretch(c0, c1, m0, m1, h)
    for j in list(range(0, 30)) + [999, 12345]:
        e = s.elapsed(j)
        for tau in (e, math.nextafter(e, -math.inf), math.nextafter(e, math.inf), e + s.step(j) / 2):
            _check_done(s, tau)


def _decode_stretch(c: StepCoeffs, n: int, S0: float, prefill: int = 0, p0: int = 0):
    """Coefficients of a stretch where n decoders (context sum S0, growing by n per step) run beside
    one prefill chunk of ``prefill`` tokens per step (cached prefix p0, growing by ``prefill``)."""
    T = n + prefill
    keep = c.expert_keep ** T if c.expert_keep < 1.0 else 1.0
    comm = c.comm_fixed + c.comm_token * T if c.comm_fixed else 0.0
    stretch = Stretch(
        c0=c.t_token * T + c.t_attn * (S0 + prefill * p0 + prefill * prefill / 2) + c.t_sample * n,
        c1=c.t_attn * (n + prefill * prefill),
        m0=c.t_weights + c.t_experts * (1.0 - keep) + c.t_kv * (S0 + p0 + prefill),
        m1=c.t_kv * (n + prefill),
        h=comm + c.overhead)

    def steps(k: int) -> dict:
        u = np.arange(k, dtype=float)
        p = p0 + prefill * u
        return dict(prefill_tokens=float(prefill), prefill_attn=prefill_attention_pairs(prefill, p) if prefill else 0.0,
                    prefill_kv=(p + prefill) if prefill else 0.0, decodes=float(n), decode_context=S0 + n * u)
    return stretch, steps


def _check_stretch_vs_step_cost(c: StepCoeffs, stretch: Stretch, steps, k: int) -> np.ndarray:
    times = np.broadcast_to(step_cost(c, **steps(k)).time_s, (k,))
    np.testing.assert_allclose([stretch.step(u) for u in range(k)], times, rtol=1e-12)
    cum = np.concatenate([[0.0], np.cumsum(times)])
    for j in sorted({0, 1, k // 3, k // 2, k - 1, k}):
        assert stretch.elapsed(j) == pytest.approx(math.fsum(times[:j]), rel=1e-9)
    # whole steps done by the middle of step j: exactly j
    for j in sorted({0, 1, k // 4, k // 2, k - 1}):
        assert stretch.steps_done_by(cum[j] + times[j] / 2) == j
    return times


@PROPS
@given(dep=st.sampled_from(DEPS), n=st.integers(1, 512), ctx=st.integers(1, 32_768), k=st.integers(2, 1500))
def test_decode_stretch_closed_form_equals_step_cost(dep, n, ctx, k):
    c = coeffs(dep)
    stretch, steps = _decode_stretch(c, n, float(n * ctx))
    _check_stretch_vs_step_cost(c, stretch, steps, k)


@PROPS
@given(dep=st.sampled_from(DEPS), n=st.integers(0, 256), ctx=st.integers(1, 16_384), chunk=st.integers(1, 2048),
       p0=st.integers(0, 32_768), k=st.integers(2, 600))
def test_mixed_stretch_closed_form_equals_step_cost(dep, n, ctx, chunk, p0, k):
    c = coeffs(dep)
    stretch, steps = _decode_stretch(c, n, float(n * ctx), prefill=chunk, p0=p0)
    _check_stretch_vs_step_cost(c, stretch, steps, k)


def test_decode_stretch_that_turns_memory_bound():
    """A large decode batch starts compute-bound and turns memory-bound as contexts grow.

    The batch is sized from the coefficients (so it holds whatever the efficiency factors are):
    compute exceeds the weight read by ~t_weights at the start; the KV read closes the gap.
    """
    dep = Deployment.from_catalog(CAT, "Llama-3-8B", "H100-SXM")
    c = StepCoeffs.of(dep)
    n = math.ceil(2 * c.t_weights / (c.t_token + c.t_sample))
    stretch, steps = _decode_stretch(c, n, float(n))
    gap0 = stretch.c0 - stretch.m0
    cross = gap0 / (stretch.m1 - stretch.c1)
    assert gap0 > 0 and 10 < cross < 20_000
    k = int(2 * cross) + 2
    r = step_cost(c, **steps(k))
    assert r.compute_s[0] > r.memory_s[0] and r.memory_s[-1] > r.compute_s[-1]
    _check_stretch_vs_step_cost(c, stretch, steps, k)


def test_prefill_stretch_that_turns_compute_bound():
    """Small chunks: memory-bound first, then attention FLOPs (c² pairs more per step) overtake."""
    dep = Deployment.from_catalog(CAT, "Llama-3-8B", "H100-SXM")
    c = StepCoeffs.of(dep)
    chunk = math.floor(c.t_weights / (2 * c.t_token))
    assert c.t_attn * chunk > 2 * c.t_kv                     # attention slope beats the KV slope
    stretch, steps = _decode_stretch(c, 0, 0.0, prefill=chunk, p0=0)
    cross = (stretch.m0 - stretch.c0) / (stretch.c1 - stretch.m1)
    assert stretch.m0 > stretch.c0 and 10 < cross < 20_000
    k = int(2 * cross) + 2
    r = step_cost(c, **steps(k))
    assert r.memory_s[0] > r.compute_s[0] and r.compute_s[-1] > r.memory_s[-1]
    _check_stretch_vs_step_cost(c, stretch, steps, k)
