"""agentsim.studies.theory against the worked values of queueing-des-style.md §A and against itself
(independent forms of the same quantity: direct sums, CTMCs, brute force)."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentsim.studies import theory as th

SETTINGS = settings(derandomize=True, deadline=None, max_examples=100)


def close(x, y, rel=1e-6, abs_=1e-9):
    return math.isclose(x, y, rel_tol=rel, abs_tol=abs_)


def test_doctests():
    assert doctest.testmod(th).failed == 0


# -- §A worked values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lam, mu, L, W, Wq, Lq, p99", [(0.5, 1, 1, 2, 1, 0.5, 9.21), (0.8, 1, 4, 5, 4, 3.2, 23.03)])
def test_mm1_table(lam, mu, L, W, Wq, Lq, p99):
    m = th.mm1(lam, mu)
    assert (round(m.L, 6), round(m.W, 6), round(m.Wq, 6), round(m.Lq, 6)) == (L, W, Wq, Lq)
    assert round(-math.log(0.01) / (mu - lam), 2) == p99     # sojourn ~ Exp(μ − λ)


@pytest.mark.parametrize("lam, c, C, Wq, W, Lq, L", [
    (2, 3, 0.444444, 0.444444, 1.444444, 0.888889, 2.888889),
    (9, 10, 0.668732, 0.668732, 1.668732, 6.01858, 15.0186),
])
def test_erlang_c_table(lam, c, C, Wq, W, Lq, L):
    m = th.mmc(lam, 1.0, c)
    assert round(m.p_wait, 6) == C and round(m.Wq, 6) == Wq and round(m.W, 6) == W
    assert close(m.Lq, Lq, rel=1e-5) and close(m.L, L, rel=1e-5)


def test_erlang_c_wait_tail():
    assert round(th.mmc_wait_tail(9, 1, 10, 1.0), 6) == 0.246013


@pytest.mark.parametrize("lam, c, K, pb, lam_eff, L, W, Wq", [
    (9, 10, 10, 0.167963, 7.48833, 7.48833, 1, 0),
    (9, 10, 15, 0.0612588, 8.44867, 9.51554, 1.12628, 0.126277),
    (0.8, 1, 5, 0.0888195, 0.728944, 1.86833, 2.56307, 1.56307),
])
def test_mmck_table(lam, c, K, pb, lam_eff, L, W, Wq):
    m = th.mmck(lam, 1.0, c, K)
    assert close(m.p_block, pb, rel=1e-5) and close(m.lam_eff, lam_eff, rel=1e-5)
    assert close(m.L, L, rel=1e-5) and close(m.W, W, rel=1e-5) and close(m.Wq, Wq, rel=1e-5, abs_=1e-9)


def test_erlang_b_values():
    assert round(th.erlang_b(3, 2), 6) == 0.210526
    assert round(th.erlang_b(10, 9), 6) == 0.167963
    assert th.erlang_b(0, 5.0) == 1.0


@pytest.mark.parametrize("scv, Wq, W, L", [(0, 2, 3, 2.4), (0.25, 2.5, 3.5, 2.8), (1, 4, 5, 4), (4, 10, 11, 8.8)])
def test_pollaczek_khinchine_table(scv, Wq, W, L):
    m = th.pk_mg1(0.8, 1.0, (1 + scv) * 1.0)
    assert close(m.Wq, Wq) and close(m.W, W) and close(m.L, L)


def test_processor_sharing_values():
    ps = th.mg1_ps(0.8, 1.0)
    assert close(ps.T, 5) and close(ps.L, 4) and close(ps.slowdown, 5)
    assert close(0.1 * ps.slowdown, 0.5) and close(5 * ps.slowdown, 25)   # E[T | x] = x/(1 − ρ)


@pytest.mark.parametrize("N, X, R", [(1, 0.2273, 0.400), (5, 1.0901, 0.587), (10, 1.9635, 1.093), (11, 2.0919, 1.258),
                                     (15, 2.4088, 2.227), (20, 2.4953, 4.015), (30, 2.5000, 8.000)])
def test_mva_worked_example_1(N, X, R):
    r = th.mva([0.4], N, Z=4.0)
    assert round(r.X, 4) == X and round(r.R, 3) == R
    assert close(r.R, th.response_time(N, r.X, 4.0))        # the response-time law holds in MVA


@pytest.mark.parametrize("N, X, R", [(4, 0.7143, 1.600), (10, 1.7317, 1.7748), (20, 2.4822, 4.0574), (30, 2.5000, 8.000)])
def test_mva_worked_example_2_four_servers(N, X, R):
    r = th.mva([1.6], N, Z=4.0, servers=[4])
    assert round(r.X, 4) == X and round(r.R, 4) == R


def test_mva_textbook_exercise():
    r = th.mva([0.5], 3, Z=1.0)
    assert round(r.X, 4) == 1.5789 and round(r.R, 1) == 0.9


def test_retry_values():
    assert close(th.retry_amplification(0.2), 1.25)
    assert close(100 * th.retry_amplification(0.2), 125) and close(100 * th.retry_amplification(0.5), 200)
    assert close(100 * th.retry_amplification(0.2, 3), 124) and close(th.retry_give_up(0.2, 3), 0.008)
    assert close(th.retry_feedback_mm1(0.5, 1.0, 0.2), 10 / 3)
    assert th.retry_amplification(1.0, 3) == 3 and th.retry_give_up(0.3) == 0.0


def test_token_bucket_values():
    assert [th.token_bucket_bound(10, 5, t) for t in (0, 2, 60)] == [10, 20, 310]


def test_whitt_run_length():
    assert round(100 * th.mm1_time_average_rel_sd(0.5, 36_000), 2) == 2.58


# -- independent forms ----------------------------------------------------------------------------------
@SETTINGS
@given(c=st.integers(1, 40), a=st.floats(0.01, 60))
def test_erlang_b_recursion_equals_direct_sum(c, a):
    terms = [a ** k / math.factorial(k) for k in range(c + 1)]
    assert close(th.erlang_b(c, a), terms[-1] / sum(terms), rel=1e-9)


@SETTINGS
@given(c=st.integers(1, 40), rho=st.floats(0.01, 0.99))
def test_erlang_c_equals_direct_formula(c, rho):
    a = rho * c
    top = a ** c / math.factorial(c) * c / (c - a)
    direct = top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)
    assert close(th.erlang_c(c, a), direct, rel=1e-8)


def test_erlang_stable_for_large_systems():
    b = th.erlang_b(5000, 4900.0)          # a^c / c! overflows a float long before this
    c = th.erlang_c(5000, 4900.0)
    assert 0 < b < c < 1
    p = th.mmck_distribution(4900.0, 1.0, 5000, 5200)
    assert np.isfinite(p).all() and close(p.sum(), 1.0)
    assert close(float(p[-1]), th.mmck(4900.0, 1.0, 5000, 5200).p_block)


@SETTINGS
@given(c=st.integers(1, 12), a=st.floats(0.05, 30))
def test_mmck_with_no_room_is_erlang_b(c, a):
    assert close(th.mmck(a, 1.0, c, c).p_block, th.erlang_b(c, a), rel=1e-9)


@SETTINGS
@given(c=st.integers(1, 8), rho=st.floats(0.05, 0.9))
def test_mmck_tends_to_mmc(c, rho):
    lam = rho * c
    big = th.mmck(lam, 1.0, c, c + 2000)
    m = th.mmc(lam, 1.0, c)
    assert close(big.W, m.W, rel=1e-6) and close(big.p_wait, m.p_wait, rel=1e-6)


@SETTINGS
@given(lam=st.floats(0.01, 0.95))
def test_pk_with_exponential_service_is_mm1(lam):
    assert close(th.pk_mg1(lam, 1.0, 2.0).W, th.mm1(lam, 1.0).W, rel=1e-12)


@SETTINGS
@given(c=st.integers(1, 6), N=st.integers(1, 25), S=st.floats(0.05, 3), Z=st.floats(0.05, 10))
def test_load_dependent_mva_equals_finite_source_birth_death(c, N, S, Z):
    """M/M/c//N with exponential think: the CTMC on the number at the station, solved exactly."""
    p = np.zeros(N + 1)
    p[0] = 1.0
    for n in range(1, N + 1):   # birth (N − n + 1)/Z from n − 1, death min(n, c)/S from n
        p[n] = p[n - 1] * ((N - n + 1) / Z) / (min(n, c) / S)
    p /= p.sum()
    L = float((np.arange(N + 1) * p).sum())
    X = float(sum(p[n] * min(n, c) / S for n in range(N + 1)))
    r = th.mva([S], N, Z=Z, servers=[c])
    assert close(r.X, X, rel=1e-7) and close(r.R, L / X, rel=1e-7)


def test_mva_station_kinds_and_limits():
    r = th.mva([0.3, 0.5], 1, Z=2.0)
    assert close(r.R, 0.8) and close(r.X, 1 / 2.8)              # one customer never queues
    r = th.mva([0.3, 0.5], 200, Z=2.0)
    assert close(r.X, 2.0, rel=1e-6)                             # 1/D_max
    assert close(th.mva([0.3, 0.5], 7, Z=1.0, servers=[1, math.inf]).Rk[1], 0.5)   # a delay station
    assert th.mva([1.0], 0).X == 0.0
    xb, rb = th.mva_bounds(0.4, 0.4, 10, 4.0)
    r = th.mva([0.4], 10, Z=4.0)
    assert r.X <= xb and r.R >= rb


@SETTINGS
@given(st.lists(st.floats(0, 50), min_size=1, max_size=40), st.floats(0.05, 5))
def test_arrival_curve_excess_equals_brute_force(times, r):
    t = sorted(times)
    brute = max(j - i + 1 - r * (t[j] - t[i]) for i in range(len(t)) for j in range(i, len(t)))
    assert close(th.arrival_curve_excess(times, r), brute, rel=1e-9, abs_=1e-9)


@SETTINGS
@given(st.lists(st.floats(0, 100), max_size=80), st.integers(1, 12), st.floats(0.05, 5))
def test_token_bucket_filter_obeys_its_arrival_curve(times, b, r):
    ok = th.token_bucket_filter(times, b, r)
    admitted = np.asarray(times, float)[ok]
    assert th.arrival_curve_excess(admitted, r) <= b + 1e-9


@SETTINGS
@given(b=st.integers(1, 20), r=st.floats(0.1, 10), T=st.floats(0.5, 50))
def test_token_bucket_tight_when_always_pending(b, r, T):
    """Unit requests always waiting (a dense grid of arrivals): b + ⌊rT⌋ pass, up to one of slack."""
    times = np.linspace(0, T, int(200 * (b + r * T)) + 2)
    n = int(th.token_bucket_filter(times, b, r).sum())
    assert b + math.floor(r * T) - 1 <= n <= b + math.floor(r * T) + 1


def test_domain_errors():
    for bad in (lambda: th.mmc(3, 1, 3), lambda: th.pk_mg1(1.2, 1, 1), lambda: th.mg1_ps(2, 1),
                lambda: th.erlang_c(2, 2.0), lambda: th.mmck(1, 1, 3, 2), lambda: th.retry_amplification(1.0),
                lambda: th.retry_amplification(0.5, 0), lambda: th.mva([1], 2.5), lambda: th.pk_mg1(0.5, 1, 0.5)):
        with pytest.raises(ValueError):
            bad()


def test_moment_helpers():
    m, m2 = th.geometric_moments(400)
    assert m == 400 and close(m2 / m ** 2 - 1, 1 - 1 / 400)      # SCV of the lattice exponential
    assert th.uniform_int_moments(1, 3) == (2.0, 14 / 3)
    assert close(float(th.poisson_pmf(np.arange(60), 7.5).sum()), 1.0)
    assert th.mginf(2.0, 0.5).p0 == math.exp(-1.0)
