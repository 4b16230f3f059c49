"""The per-operator step model: measured op grids, properties over the catalog, support labels,
and the closed form (``StepCoeffs.stretch`` / ``Stretch``) held equal to the vectorized form.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentsim import Deployment, InputError, StepCoeffs, Stretch, load_catalog, step_cost, step_times
from agentsim.model.opmodel import OpModel
from agentsim.model.servicetime import N_MAX, T_MAX, Affine, prefill_attention_pairs

CAT = load_catalog()
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _catalog_deployments() -> list[Deployment]:
    deps = []
    for model in ["Llama-3-8B", "Llama-3.1-70B", "Mixtral-8x7B", "DeepSeek-V3", "frontier-moe-2t-a200b"]:
        for gpu in ["H100-SXM", "H200", "GB200", "MI300X", "A100-SXM-80GB"]:
            for precision in ("bf16", "fp8"):
                for tp in (1, 2, 4, 8):
                    try:
                        deps.append(Deployment.from_catalog(CAT, model, gpu, tp=tp, precision=precision))
                    except InputError:
                        pass
    # expert parallelism and data-parallel attention (issue 16): in one node, across nodes, a rack
    for gpu, precision, tp, dp, ep in (("H200", "fp8", 1, 8, 8), ("H100-SXM", "fp8", 1, 16, 16),
                                       ("H200", "fp8", 8, 1, 8), ("GB200", "fp4", 1, 32, 32)):
        deps.append(Deployment.from_catalog(CAT, "DeepSeek-V3", gpu, tp=tp, dp=dp, ep=ep, precision=precision,
                                            kv_dtype="fp8"))
    deps.append(Deployment.from_catalog(CAT, "Mixtral-8x7B", "H100-SXM", tp=2, dp=2, ep=4))
    return deps


DEPS = _catalog_deployments()
COEFFS = {id(d): StepCoeffs.of(d) for d in DEPS}


def coeffs(dep: Deployment) -> StepCoeffs:
    return COEFFS[id(dep)] if id(dep) in COEFFS else StepCoeffs.of(dep)


def test_catalog_deployments_cover_the_interesting_cases():
    kinds = {(d.model.is_moe, d.model.attention, d.tp > 1, d.gpu.name in OpModel.load().gpus) for d in DEPS}
    assert (True, "mla", True, True) in kinds and (False, "gqa", False, True) in kinds
    assert (False, "gqa", False, False) in kinds          # a GPU without tables (transferred)
    assert any(d.dp > 1 and d.ep > d.gpu.gpus_per_node for d in DEPS)   # EP across nodes


def test_decode_batch1_llama_8b_h100_near_measured_kernels():
    """Batch-1 decode of Llama-3.1-8B on one H100 from the measured tables: ~6 ms of kernels (the
    sum of its ops' table rows: 32 layers of four GEMMs at m=1, attention and the LM head)."""
    c = StepCoeffs.of(Deployment.from_catalog(CAT, "Llama-3.1-8B", "H100-SXM"))
    t = c.kernel_time(decodes=1, decode_context=1024)
    assert 4.5e-3 < t < 7.5e-3
    assert c.label == "measured"


def test_support_labels():
    om = OpModel.load()
    assert StepCoeffs.of(Deployment.from_catalog(CAT, "Llama-3-8B", "H200")).label == "measured"
    mi = Deployment.from_catalog(CAT, "Llama-3-8B", "MI300X")
    assert StepCoeffs.of(mi).label == "transferred"
    assert om.source(mi.gpu)[1] == "transferred"
    fp4 = Deployment.from_catalog(CAT, "Llama-3-8B", "B200", precision="fp4")
    assert StepCoeffs.of(fp4).label == "measured"      # B200's NVFP4 GEMM tables
    b300 = CAT.gpu("B200").model_copy(update={"name": "B300-like"})   # a Blackwell part without tables
    fp4 = Deployment(model=CAT.model("Llama-3-8B"), gpu=b300, efficiency=CAT.efficiency(b300), precision="fp4")
    assert StepCoeffs.of(fp4).label == "transferred"


def test_nvfp4_gemms_are_priced_from_their_own_tables():
    """A compute-bound prefill at fp4 on B200 is faster than at fp8 (NVFP4 tensor cores, half the
    weight bytes), and by less than the 2x datasheet ratio (measured kernels)."""
    def prefill(precision):
        c = StepCoeffs.of(Deployment.from_catalog(CAT, "Llama-3.1-70B", "B200", precision=precision))
        return c.kernel_time(prefill_tokens=8192, prefill_attn=8192 * 8192 / 2)
    assert 1.0 < prefill("fp8") / prefill("fp4") < 2.0


def test_transferred_gpu_scales_with_its_peaks():
    """A GPU without tables borrows the closest grid; twice the HBM bandwidth makes a memory-bound
    decode step of the same shape faster."""
    base = CAT.gpu("MI300X")
    fast = base.model_copy(update={"hbm_tbps": 2 * base.hbm_tbps})
    eff = CAT.efficiency(base)
    d1 = Deployment(model=CAT.model("Llama-3-8B"), gpu=base, efficiency=eff)
    d2 = Deployment(model=CAT.model("Llama-3-8B"), gpu=fast, efficiency=eff)
    t1 = StepCoeffs.of(d1).kernel_time(decodes=8, decode_context=8 * 4000)
    t2 = StepCoeffs.of(d2).kernel_time(decodes=8, decode_context=8 * 4000)
    assert t2 < 0.8 * t1


chunk_st = st.tuples(st.integers(1, 8192), st.integers(0, 100_000))
step_st = st.tuples(st.lists(chunk_st, max_size=3), st.lists(st.integers(1, 131072), max_size=48))


def aggregates(chunks, contexts, completing: int = 0) -> dict:
    return dict(
        prefill_tokens=float(sum(c for c, _ in chunks)),
        prefill_attn=float(sum(c * p + c * c / 2 for c, p in chunks)),
        prefill_kv=float(sum(c + p for c, p in chunks)),
        decodes=float(len(contexts)),
        decode_context=float(sum(contexts)),
        sampled=float(len(contexts) + completing),
    )


@PROPS
@given(dep=st.sampled_from(DEPS), step=step_st, extra=st.integers(1, 4096), which=st.integers(0, 10_000),
       kind=st.sampled_from(["add_chunk", "add_decode", "longer_decode", "longer_prefix"]))
def test_more_work_never_makes_a_step_faster(dep, step, extra, which, kind):
    chunks, contexts = [list(x) for x in step[0]], list(step[1])
    c = coeffs(dep)
    before = float(step_times(c, **aggregates(chunks, contexts)))
    if kind == "add_chunk":
        assume(not chunks)      # the prefill efficiency is taken at the step's chunk size
        chunks.append([extra, which])
    elif kind == "add_decode":
        # at least the batch's mean context: Σs does not say how contexts spread, and a lone long
        # sequence is slower per token than two halves (fewer thread blocks stream its KV)
        contexts.append(extra + (math.ceil(sum(contexts) / len(contexts)) if contexts else 0))
    elif kind == "longer_decode":
        assume(contexts)
        contexts[which % len(contexts)] += extra
    else:
        assume(chunks)
        chunks[which % len(chunks)][1] += extra
    after = float(step_times(c, **aggregates(chunks, contexts)))
    assert after >= before * (1 - 1e-12), (before, after)


@PROPS
@given(dep=st.sampled_from(DEPS), t=st.integers(0, T_MAX + 5000), n=st.integers(0, N_MAX + 500))
def test_tables_are_monotone(dep, t, n):
    c = coeffs(dep)
    assert c.F(t + 1) >= c.F(t) and c.H(n + 1) >= c.H(n)
    a, b = c.decode_line(n)
    a1, b1 = c.decode_line(n + 1)
    assert 0 <= a <= a1 and 0 <= n * b <= (n + 1) * b1 * (1 + 1e-12)


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
       n=st.integers(1, 300))
def test_step_times_is_step_cost_time_bit_for_bit(deps, seed, n):
    """The time-only form skips the breakdown, not any term: same bits, single or stacked."""
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
        np.testing.assert_allclose(res.attention_s[di], single.attention_s, rtol=1e-12)


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
    """A stretch where n decoders (context sum S0, growing by n per step) run beside one prefill
    chunk of ``prefill`` tokens per step (done prefix p0, growing by ``prefill``)."""
    stretch = c.stretch(n, S0, prefill, p0)

    def steps(k: int) -> dict:
        u = np.arange(k, dtype=float)
        p = p0 + prefill * u
        return dict(prefill_tokens=float(prefill), prefill_attn=prefill_attention_pairs(prefill, p) if prefill else 0.0,
                    prefill_kv=(p + prefill) if prefill else 0.0, decodes=float(n), decode_context=S0 + n * u)
    return stretch, steps


def _check_stretch_vs_step_cost(c: StepCoeffs, stretch: Stretch, steps, k: int) -> np.ndarray:
    times = np.broadcast_to(step_cost(c, **steps(k)).time_s, (k,))
    np.testing.assert_allclose([stretch.step(u) for u in range(k)], times, rtol=1e-9)
    cum = np.concatenate([[0.0], np.cumsum(times)])
    for j in sorted({0, 1, k // 3, k // 2, k - 1, k}):
        assert stretch.elapsed(j) == pytest.approx(math.fsum(times[:j]), rel=1e-9)
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


# -- the engine's fast paths give the general forms' bits --------------------------------------

@settings(max_examples=200, deadline=None)
@given(c0=st.floats(1e-9, 10.0), c1=st.one_of(st.just(0.0), st.floats(1e-15, 1.0)),
       h=st.one_of(st.just(0.0), st.floats(1e-9, 1.0)), j=st.integers(0, 5000))
def test_affine_is_the_general_stretch_bit_for_bit(c0, c1, h, j):
    """``Affine`` (what ``StepCoeffs.stretch`` returns) is ``Stretch(c0, c1, 0, 0, h)`` with the
    piece selection left out: the same floats, not merely close ones."""
    fast, general = Affine(c0, c1, h), Stretch(c0, c1, 0.0, 0.0, h)
    assert general.split == math.inf and not general.first_memory
    for u in (0, 1, j):
        assert fast.step(u) == general.step(u)
    for k in (0, 1, 2, j, j + 1, 1 << 40):
        assert fast.elapsed(k) == general.elapsed(k)
    e = general.elapsed(j)
    for tau in (e, math.nextafter(e, -math.inf), math.nextafter(e, math.inf), e + general.step(j) / 2, 0.0, -1.0,
                math.inf):
        assert fast.steps_done_by(tau) == general.steps_done_by(tau)


@PROPS
@given(dep=st.sampled_from(DEPS), n=st.one_of(st.integers(0, 300), st.integers(N_MAX - 2, N_MAX + 50)),
       chunk=st.one_of(st.just(0), st.integers(1, 8192), st.integers(T_MAX - 2, T_MAX + 50)),
       p=st.integers(0, 100_000), S=st.integers(0, 10**7), sampled=st.integers(0, N_MAX + 50))
def test_inlined_lookups_match_the_scalar_lookups(dep, n, chunk, p, S, sampled):
    """``stretch`` and ``kernel_time`` look the tables up inline; the values and the order of the
    sum are those of ``F``, ``H``, ``decode_line`` and ``prefill_line``, bit for bit."""
    c = coeffs(dep)
    a, b = c.decode_line(n)
    pa, pq = c.prefill_line(chunk)
    if chunk:
        c0 = c.F(n + chunk) + c.H(n) + a + b * S + pa + pq * (chunk * p + chunk * chunk / 2)
        c1 = b * n + pq * chunk * chunk
    else:
        c0 = c.F(n) + c.H(n) + a + b * S
        c1 = b * n
    s = c.stretch(n, S, chunk, p)
    assert (s.c0, s.c1, s.m0, s.m1, s.h) == (c0, c1, 0.0, 0.0, c.overhead)
    assert type(s) is (Affine if c0 > 0 and c1 >= 0 else Stretch)
    attn = chunk * p + chunk * chunk / 2
    assert c.kernel_time(chunk, attn, n, S, sampled) == (c.F(chunk + n) + c.H(sampled) + a + b * S + pa + pq * attn)
