"""Closed forms of queueing theory that the engine must reproduce in its textbook limits.

Notation (``queueing-des-style.md`` §A): ``lam`` arrival rate, ``mu = 1/E[S]`` service rate,
``c`` servers, ``a = lam/mu`` offered load (Erlangs), ``rho = a/c``; W mean sojourn, Wq mean
wait, L and Lq the means in system and in queue. Every function is plain Python on floats,
numerically stable where the textbook form is not (Erlang B by its recursion, M/M/c/K and the
Poisson pmf in log space), and raises ``ValueError`` outside its domain (an unstable queue has no
steady state).

=======================  ==========================================================================
function                 result
=======================  ==========================================================================
:func:`erlang_b`         B(c, a): blocking of M/G/c/c (insensitive to the service distribution)
:func:`erlang_c`         C(c, a): P(wait) in M/M/c
:func:`mm1`, :func:`mmc`  M/M/1 and M/M/c means (and P(wait))
:func:`mmck`             M/M/c/K: P(block), effective rate, L, W, Wq, the distribution of N
:func:`pk_mg1`           Pollaczek–Khinchine: M/G/1 FCFS means from E[S] and E[S²]
:func:`mg1_ps`           M/G/1 processor sharing: E[T] = E[S]/(1 − ρ), mean slowdown
:func:`mginf`            M/G/∞: N ~ Poisson(λE[S])
:func:`mva`              exact mean value analysis of a closed network with think time
:func:`mva_bounds`       asymptotic bounds on X(N) and R(N)
:func:`response_time`    the interactive response-time law R = N/X − Z
:func:`retry_amplification`, :func:`retry_give_up`   (1 − pᵐ)/(1 − p) attempts per call, pᵐ
:func:`token_bucket_bound`, :func:`token_bucket_filter`, :func:`arrival_curve_excess`
=======================  ==========================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _positive(**kw) -> None:
    for name, v in kw.items():
        if not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")


def _servers(c) -> int:
    if int(c) != c or c < 1:
        raise ValueError(f"c must be a positive integer, got {c}")
    return int(c)


# -- loss and delay systems ---------------------------------------------------------------------------
def erlang_b(c: int, a: float) -> float:
    """Erlang B, B(c, a) = (aᶜ/c!) / Σ_{k≤c} aᵏ/k!, by the recursion B_k = a·B_{k−1}/(k + a·B_{k−1}).

    The recursion never forms aᶜ or c!, so it is stable for thousands of servers.

    >>> round(erlang_b(10, 9.0), 6)
    0.167963
    """
    c = _servers(c) if c else 0
    if a < 0:
        raise ValueError(f"a must be >= 0, got {a}")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Erlang C, P(wait > 0) in M/M/c, as C = c·B / (c − a(1 − B)) (needs a < c).

    >>> round(erlang_c(10, 9.0), 6)
    0.668732
    """
    c = _servers(c)
    if not 0 <= a < c:
        raise ValueError(f"M/M/c needs 0 <= a < c for a steady state, got a={a}, c={c}")
    b = erlang_b(c, a)
    return c * b / (c - a * (1 - b))


@dataclass(frozen=True)
class Means:
    """Steady-state means of a queue (NaN where a quantity does not apply)."""

    W: float                 # mean sojourn
    Wq: float                # mean wait before service
    L: float                 # mean number in system
    Lq: float                # mean number waiting
    p_wait: float = math.nan  # probability that an arrival waits
    p_block: float = 0.0     # probability that an arrival is turned away
    lam_eff: float = math.nan  # rate of accepted arrivals


def mm1(lam: float, mu: float) -> Means:
    """M/M/1: W = 1/(μ − λ), L = ρ/(1 − ρ).

    >>> mm1(0.8, 1.0).W
    5.000000000000001
    """
    return mmc(lam, mu, 1)


def mmc(lam: float, mu: float, c: int) -> Means:
    """M/M/c (Erlang C): Wq = C/(cμ − λ), W = Wq + 1/μ, Lq = λWq, L = λW.

    >>> m = mmc(2.0, 1.0, 3); round(m.W, 6), round(m.p_wait, 6)
    (1.444444, 0.444444)
    """
    _positive(lam=lam, mu=mu)
    c = _servers(c)
    a = lam / mu
    p = erlang_c(c, a)
    wq = p / (c * mu - lam)
    w = wq + 1 / mu
    return Means(W=w, Wq=wq, L=lam * w, Lq=lam * wq, p_wait=p, p_block=0.0, lam_eff=lam)


def mmc_wait_tail(lam: float, mu: float, c: int, t: float) -> float:
    """P(Wq > t) = C·e^{−(cμ − λ)t} in M/M/c."""
    m = mmc(lam, mu, c)
    return m.p_wait * math.exp(-(c * mu - lam) * t)


def mmck_distribution(lam: float, mu: float, c: int, K: int) -> np.ndarray:
    """P(N = n), n = 0..K, of M/M/c/K (K = places in system, K >= c), computed in log space."""
    _positive(lam=lam, mu=mu)
    c = _servers(c)
    if int(K) != K or K < c:
        raise ValueError(f"M/M/c/K needs an integer K >= c, got K={K}, c={c}")
    K = int(K)
    a = lam / mu
    n = np.arange(K + 1)
    # log p_n (unnormalised): n·ln a − ln n! for n <= c, then c·ln a − ln c! + (n − c)·ln(a/c)
    lg = np.array([math.lgamma(k + 1) for k in range(c + 1)])
    logp = np.where(n <= c, n * math.log(a) - lg[np.minimum(n, c)],
                    c * math.log(a) - lg[c] + (n - c) * math.log(a / c))
    p = np.exp(logp - logp.max())
    return p / p.sum()


def mmck(lam: float, mu: float, c: int, K: int) -> Means:
    """M/M/c/K: P_block = p_K (PASTA), λ_eff = λ(1 − p_K), W = L/λ_eff, Wq = W − 1/μ.

    >>> m = mmck(9.0, 1.0, 10, 15); round(m.p_block, 7), round(m.W, 5)
    (0.0612588, 1.12628)
    """
    p = mmck_distribution(lam, mu, c, K)
    n = np.arange(len(p))
    L = float((n * p).sum())
    Lq = float((np.maximum(n - c, 0) * p).sum())
    pk = float(p[-1])
    lam_eff = lam * (1 - pk)
    W = L / lam_eff
    # P(an accepted arrival waits) = P(N >= c | N < K)
    p_wait = float(p[c:-1].sum() / (1 - pk)) if K > c else 0.0
    return Means(W=W, Wq=W - 1 / mu, L=L, Lq=Lq, p_wait=p_wait, p_block=pk, lam_eff=lam_eff)


# -- M/G/1 -------------------------------------------------------------------------------------------
def pk_mg1(lam: float, es: float, es2: float) -> Means:
    """Pollaczek–Khinchine for M/G/1 FCFS: Wq = λE[S²] / (2(1 − ρ)), ρ = λE[S].

    Also the time-average unfinished work under any work-conserving discipline.

    >>> pk_mg1(0.8, 1.0, 1.0).Wq   # M/D/1
    2.0000000000000004
    """
    _positive(lam=lam, es=es)
    if es2 < es * es * (1 - 1e-12):
        raise ValueError(f"E[S²] = {es2} is below E[S]² = {es * es}: not a distribution")
    rho = lam * es
    if rho >= 1:
        raise ValueError(f"M/G/1 needs ρ = λE[S] < 1, got {rho}")
    wq = lam * es2 / (2 * (1 - rho))
    w = wq + es
    return Means(W=w, Wq=wq, L=lam * w, Lq=lam * wq, p_wait=rho, p_block=0.0, lam_eff=lam)


@dataclass(frozen=True)
class PSMeans:
    T: float          # mean sojourn E[T] = E[S]/(1 − ρ)
    L: float          # mean number in system ρ/(1 − ρ)
    slowdown: float   # E[T | S = x] / x = 1/(1 − ρ) for every x


def mg1_ps(lam: float, es: float) -> PSMeans:
    """M/G/1 processor sharing: insensitive, E[T | S = x] = x/(1 − ρ).

    >>> mg1_ps(0.8, 1.0).T
    5.000000000000001
    """
    _positive(lam=lam, es=es)
    rho = lam * es
    if rho >= 1:
        raise ValueError(f"M/G/1-PS needs ρ = λE[S] < 1, got {rho}")
    return PSMeans(T=es / (1 - rho), L=rho / (1 - rho), slowdown=1 / (1 - rho))


# -- M/G/inf -----------------------------------------------------------------------------------------
def poisson_pmf(k, mean: float):
    """P(N = k) for N ~ Poisson(mean), in log space (k scalar or array)."""
    k = np.asarray(k, dtype=float)
    if mean == 0:
        return np.where(k == 0, 1.0, 0.0)
    lg = np.vectorize(math.lgamma)(k + 1)
    return np.exp(k * math.log(mean) - mean - lg)


@dataclass(frozen=True)
class InfMeans:
    L: float      # mean number in system = λE[S]
    p0: float     # P(N = 0) = e^{−λE[S]}
    W: float      # mean sojourn = E[S]


def mginf(lam: float, es: float) -> InfMeans:
    """M/G/∞: N ~ Poisson(λE[S]) whatever the service distribution (insensitivity)."""
    _positive(lam=lam, es=es)
    a = lam * es
    return InfMeans(L=a, p0=math.exp(-a), W=es)


# -- closed networks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MVAResult:
    N: int
    X: float                 # system throughput (calls per second)
    R: float                 # response time (sum over stations, think time excluded)
    Q: tuple[float, ...]     # mean number at each station
    Rk: tuple[float, ...]    # residence time at each station


def mva(demands, N: int, Z: float = 0.0, servers=None) -> MVAResult:
    """Exact mean value analysis (Reiser–Lavenberg) of a closed product-form network.

    ``demands[k]`` is the service demand D_k (visits × mean service) of station k;
    ``servers[k]`` is 1 (FCFS or PS queue, the default), an integer c > 1 (a c-server station,
    load-dependent MVA with the marginals p_k(j | n)) or ``math.inf`` (a delay station). ``Z`` is
    the think time of the delay outside the network. For n = 1..N::

        R_k(n) = D_k (1 + Q_k(n−1))                                   (queue)
        R_k(n) = Σ_j j·D_k/min(j, c) · p_k(j−1 | n−1)                 (c servers)
        X(n)   = n / (Z + Σ_k R_k(n)),   Q_k(n) = X(n) R_k(n)

    >>> r = mva([0.4], 10, Z=4.0); round(r.X, 4), round(r.R, 4)
    (1.9635, 1.0928)
    >>> r = mva([1.6], 10, Z=4.0, servers=[4]); round(r.X, 4), round(r.R, 4)
    (1.7317, 1.7748)
    """
    D = [float(d) for d in demands]
    if any(d < 0 for d in D):
        raise ValueError(f"demands must be >= 0, got {D}")
    if int(N) != N or N < 0:
        raise ValueError(f"N must be an integer >= 0, got {N}")
    if Z < 0:
        raise ValueError(f"Z must be >= 0, got {Z}")
    servers = [1] * len(D) if servers is None else list(servers)
    if len(servers) != len(D):
        raise ValueError("servers needs one entry per station")
    for s in servers:
        if s != math.inf:
            _servers(s)
    N = int(N)
    K = len(D)
    Q = [0.0] * K
    Rk = [0.0] * K
    # marginals p_k(j | n) for multi-server stations, j = 0..n
    marg = {k: [1.0] for k in range(K) if servers[k] != math.inf and servers[k] > 1}
    X = 0.0
    for n in range(1, N + 1):
        for k in range(K):
            c = servers[k]
            if c == math.inf:
                Rk[k] = D[k]
            elif c == 1:
                Rk[k] = D[k] * (1 + Q[k])
            else:
                p = marg[k]
                Rk[k] = sum(j * D[k] / min(j, c) * p[j - 1] for j in range(1, n + 1))
        total = Z + sum(Rk)
        X = n / total if total > 0 else math.inf
        for k in range(K):
            Q[k] = X * Rk[k]
            if k in marg:
                p = marg[k]
                new = [0.0] * (n + 1)
                for j in range(1, n + 1):
                    new[j] = X * D[k] / min(j, servers[k]) * p[j - 1]
                new[0] = max(0.0, 1.0 - sum(new[1:]))
                marg[k] = new
    return MVAResult(N=N, X=X, R=sum(Rk), Q=tuple(Q), Rk=tuple(Rk))


def mva_bounds(D: float, D_max: float, N: int, Z: float = 0.0) -> tuple[float, float]:
    """Asymptotic bounds: (X upper bound min(N/(D+Z), 1/D_max), R lower bound max(D, N·D_max − Z))."""
    _positive(D=D, D_max=D_max)
    return min(N / (D + Z), 1 / D_max), max(D, N * D_max - Z)


def response_time(N: float, X: float, Z: float = 0.0) -> float:
    """The interactive response-time law R = N/X − Z (Little's law on the whole loop)."""
    _positive(X=X)
    return N / X - Z


# -- retries -----------------------------------------------------------------------------------------
def retry_amplification(p: float, m: float = math.inf) -> float:
    """Mean attempts per call with i.i.d. failure probability ``p`` and at most ``m`` attempts:
    (1 − pᵐ)/(1 − p); 1/(1 − p) without a limit.

    >>> retry_amplification(0.2, 3)
    1.24
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if m != math.inf and (int(m) != m or m < 1):
        raise ValueError(f"m must be an integer >= 1 or inf, got {m}")
    if p == 1:
        if m == math.inf:
            raise ValueError("p = 1 without an attempt limit never ends")
        return float(m)
    if m == math.inf:
        return 1 / (1 - p)
    return (1 - p ** m) / (1 - p)


def retry_give_up(p: float, m: float = math.inf) -> float:
    """Probability that a call fails all of its ``m`` attempts: pᵐ."""
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return 0.0 if m == math.inf and p < 1 else p ** m


def retry_feedback_mm1(lam: float, mu: float, p: float) -> float:
    """Mean total time in an M/M/1 whose services fail with probability ``p`` and re-queue at the
    tail (Bernoulli feedback): T = 1/((1 − p)μ − λ)."""
    _positive(lam=lam, mu=mu)
    if (1 - p) * mu <= lam:
        raise ValueError("unstable: (1 − p)μ <= λ")
    return 1 / ((1 - p) * mu - lam)


# -- token buckets -----------------------------------------------------------------------------------
def token_bucket_bound(b: float, r: float, t: float) -> float:
    """The arrival curve: at most b + r·t unit requests pass a (b, r) bucket in any window of
    length t (the bucket starts full)."""
    return b + r * t


def token_bucket_filter(times, b: float, r: float, costs=None) -> np.ndarray:
    """Reference limiter: which requests a (b, r) token bucket admits (drops the others).

    The bucket starts full at time 0 with level b, refills at r per second up to b, and admits a
    request of cost s when its level is >= s. An independent implementation for oracle tests.
    """
    times = np.asarray(times, dtype=float)
    costs = np.ones(len(times)) if costs is None else np.asarray(costs, dtype=float)
    level, last = float(b), 0.0
    out = np.zeros(len(times), dtype=bool)
    for i in np.argsort(times, kind="stable"):
        t = times[i]
        level = min(b, level + r * (t - last))
        last = t
        if level >= costs[i]:
            level -= costs[i]
            out[i] = True
    return out


def arrival_curve_excess(times, r: float) -> float:
    """max over windows [tᵢ, tⱼ] of (requests in it) − r·(tⱼ − tᵢ): the smallest burst b for
    which the (b, r) arrival curve holds. O(n) over sorted times; 0 for no requests."""
    t = np.sort(np.asarray(times, dtype=float))
    if len(t) == 0:
        return 0.0
    # (j − i + 1) − r(t_j − t_i) = (j − r t_j) − (i − r t_i) + 1, maximised with i <= j
    u = np.arange(len(t)) - r * t
    return float(np.max(u - np.minimum.accumulate(u)) + 1)


# -- run-length planning -----------------------------------------------------------------------------
def mm1_time_average_rel_sd(rho: float, horizon: float, mu: float = 1.0) -> float:
    """Whitt (1989): relative sd of the time-average number in M/M/1 over ``horizon``,
    ≈ sqrt(2(1 + ρ) / (ρ(1 − ρ)²·μT))."""
    if not 0 < rho < 1:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    return math.sqrt(2 * (1 + rho) / (rho * (1 - rho) ** 2 * mu * horizon))


def geometric_moments(mean: float) -> tuple[float, float]:
    """E[O], E[O²] of O ~ Geometric on {1, 2, ...} with the given mean (success p = 1/mean).

    The engine's ``{kind = "geometric", mean = m − 1, offset = 1}`` output length; with a constant
    step δ the service time δ·O has SCV 1 − 1/m (exponential in the limit m → ∞).
    """
    if mean < 1:
        raise ValueError(f"a geometric on 1, 2, ... has mean >= 1, got {mean}")
    p = 1 / mean
    return mean, (2 - p) / (p * p)


def uniform_int_moments(low: int, high: int) -> tuple[float, float]:
    """E[O], E[O²] of O uniform on the integers low..high."""
    k = np.arange(int(low), int(high) + 1, dtype=float)
    return float(k.mean()), float((k * k).mean())
