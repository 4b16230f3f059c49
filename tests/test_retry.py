"""Client retry policies (workloads-policies.md §4, §6.6): bounds, budgets and amplification.

* Per preset: the number of retries, the delay before retry n (the documented formula, and the
  ``retry.bounds`` helper), retry-after handling, which outcomes are retried, ``max_wait_s``.
* Budgets, driven the way :class:`agentsim.workload.client.Client` drives them: the AWS retry quota,
  gRPC retry throttling, the Envoy retry budget and SRE adaptive throttling.
* End to end: attempts and the gaps between them in the requests table stay within the policy.
* Retry amplification (queueing-des-style.md §A.10): with the ``chaos`` gateway policy failing
  every attempt with probability p on a lightly loaded cluster, attempts per logical call follow
  a geometric law truncated at m attempts: E = (1 − pᵐ)/(1 − p), and the mean over n calls lies
  within its confidence interval (variance in closed form below).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentsim.run.api import simulate
from agentsim.util.errors import InputError
from agentsim.workload.retry import (RETRY_POLICIES, RETRYABLE, THROTTLE, AWSFullJitter, EnvoyBudget, GRPCDefault,
                            SREAdaptiveThrottle, bounds, make_retry_policy)

FAST = settings(deadline=None, derandomize=True, max_examples=60,
                suppress_health_check=[HealthCheck.too_slow])
NOT_RETRIED = ("completed", "429_spend_cap", "request_too_large", "cancelled", "in_flight")

# The presets of workloads-policies.md §6.6: (max retries, delay(n, outcome) -> (low, high) before
# retry n, honours retry-after up to this many seconds (0 = never)).
EXPECTED = {
    "anthropic_sdk": (2, lambda n, o: (0.75 * min(0.5 * 2 ** n, 8), min(0.5 * 2 ** n, 8)), 60),
    "openai_sdk": (2, lambda n, o: (0.75 * min(0.5 * 2 ** n, 8), min(0.5 * 2 ** n, 8)), 60),
    "claude_code": (10, lambda n, o: (min(0.5 * 2 ** n, 32), 1.25 * min(0.5 * 2 ** n, 32)), 60),
    "claude_code_watchdog": (math.inf, lambda n, o: (min(0.5 * 2 ** n, 32), 1.25 * min(0.5 * 2 ** n, 32)), 60),
    "aws_full_jitter": (2, lambda n, o: (0.0, min(20.0, (1.0 if o in THROTTLE else 0.05) * 2 ** n)), 0),
    "grpc_default": (4, lambda n, o: (0.0, min(1.0 * 2 ** n, 30.0)), math.inf),
    "envoy_budget": (3, lambda n, o: (0.0, min(0.025 * 2 ** n, 0.25)), 0),
    "sre_adaptive_throttle": (2, lambda n, o: (0.75 * min(0.5 * 2 ** n, 8), min(0.5 * 2 ** n, 8)), 60),
}


def test_every_preset_is_covered():
    assert set(EXPECTED) == set(RETRY_POLICIES)


def test_unknown_policy_is_one_clear_error():
    with pytest.raises(InputError, match=r"unknown retry policy 'anthropic'.*Did you mean 'anthropic_sdk'"):
        make_retry_policy("anthropic")


# -- per-preset bounds ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("outcome", sorted(RETRYABLE))
def test_delay_bounds_match_the_documented_formula(name, outcome):
    policy = make_retry_policy(name)
    _, formula, _ = EXPECTED[name]
    for n in range(12):
        lo, hi = formula(n, outcome)
        assert bounds(policy, n, outcome) == pytest.approx((lo, hi), rel=1e-12, abs=1e-15)
        for u in np.linspace(0.0, 1.0, 11):
            d = policy.delay(n, outcome, 0.0, float(u))
            assert lo - 1e-12 <= d <= hi + 1e-12, (name, n, outcome, u, d, lo, hi)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_retry_after_is_honoured_within_its_limit(name):
    policy = make_retry_policy(name)
    _, formula, limit = EXPECTED[name]
    for ra in (0.3, 5.0, 59.0, 60.0, 61.0, 3600.0):
        d = policy.delay(1, "429_limit", ra, 0.5)
        if ra <= limit:
            assert d == ra, (name, ra, d)
        else:
            lo, hi = formula(1, "429_limit")
            assert lo <= d <= hi, (name, ra, d)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_retry_count_and_retryable_outcomes(name):
    """Retries stop after max_retries (m = max_retries + 1 attempts); only retryable outcomes retry."""
    max_retries, _, _ = EXPECTED[name]
    policy = make_retry_policy(name)
    assert policy.max_retries == max_retries
    assert policy.retry_on <= RETRYABLE and policy.retry_on >= {"529_overload", "429_limit", "timed_out"}
    limit = 40 if max_retries == math.inf else int(max_retries) + 3
    for outcome in sorted(policy.retry_on):
        for n in range(limit):
            fresh = make_retry_policy(name)   # a full budget, so only the count decides
            assert fresh.should_retry(n, outcome, 0.0, 0.0) == (n < max_retries), (name, outcome, n)
    for outcome in (*NOT_RETRIED, *sorted(RETRYABLE - policy.retry_on)):
        assert not make_retry_policy(name).should_retry(0, outcome, 0.0, 0.0), (name, outcome)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_max_wait_stops_retrying(name):
    policy = make_retry_policy(name, max_wait_s=30.0)
    assert policy.should_retry(0, "529_overload", 29.9, 0.0)
    assert not make_retry_policy(name, max_wait_s=30.0).should_retry(0, "529_overload", 30.0, 0.0)


# -- budgets ---------------------------------------------------------------------------------------
def _drive(policy, outcomes, t0=0.0, dt=0.1):
    """Feed one attempt per outcome, the way Client does; returns how many retries were granted."""
    granted = 0
    for i, outcome in enumerate(outcomes):
        now = t0 + i * dt
        policy.on_attempt(now)
        policy.on_result(outcome, now, False)
        if outcome != "completed" and policy.should_retry(0, outcome, 0.0, now):
            granted += 1
    return granted


def test_aws_quota_exhausts_after_100_throttle_retries_or_50_timeout_retries():
    """500 tokens; a retry costs 5 (10 after a timeout); a success returns 1 (capped at 500)."""
    assert _drive(AWSFullJitter(), ["529_overload"] * 150) == 100
    assert _drive(AWSFullJitter(), ["timed_out"] * 150) == 50
    p = AWSFullJitter()
    _drive(p, ["529_overload"] * 100)
    assert p.quota == 0
    _drive(p, ["completed"] * 7)           # +7 tokens: one more 5-token retry, not two
    assert _drive(p, ["529_overload"] * 3) == 1
    p = AWSFullJitter()
    _drive(p, ["completed"] * 1000)
    assert p.quota == AWSFullJitter.quota_max


@FAST
@given(st.lists(st.sampled_from(["completed", "529_overload", "429_limit", "timed_out", "replica_failed",
                                 "429_spend_cap"]), max_size=400))
def test_aws_quota_stays_within_bounds(outcomes):
    p = AWSFullJitter()
    quota, granted, spent, refunded = p.quota_max, 0, 0.0, 0.0
    for o in outcomes:
        p.on_result(o, 0.0, False)
        if o == "completed":
            refunded += min(1.0, p.quota_max - quota)
            quota = min(p.quota_max, quota + 1.0)
            continue
        cost = 10.0 if o == "timed_out" else 5.0
        ok = p.should_retry(0, o, 0.0, 0.0)
        assert ok == (o in RETRYABLE and quota >= cost), (o, quota)
        if ok:
            quota -= cost
            spent += cost
            granted += 1
        assert 0.0 <= p.quota <= p.quota_max
        assert p.quota == pytest.approx(quota)
    assert spent <= p.quota_max + refunded


def test_grpc_throttle_disables_retries_at_half_the_tokens():
    """10 tokens, −1 per failure, +0.1 per success; no retries while tokens ≤ 5."""
    p = GRPCDefault()
    assert _drive(p, ["529_overload"] * 20) == 4       # tokens 9, 8, 7, 6 allow; 5 and below do not
    assert p.tokens == 0.0
    assert _drive(p, ["completed"] * 50 + ["529_overload"]) == 0   # 5.0: still throttled
    p = GRPCDefault()
    _drive(p, ["529_overload"] * 5)
    assert _drive(p, ["completed", "529_overload"]) == 0            # 5.1 − 1 = 4.1
    p = GRPCDefault()
    _drive(p, ["529_overload"] * 4)                                   # 6
    assert _drive(p, ["completed"] * 20) == 0 and p.tokens == pytest.approx(8.0)
    assert p.should_retry(0, "529_overload", 0.0, 0.0)


@FAST
@given(st.lists(st.sampled_from(["completed", "529_overload", "timed_out", "429_spend_cap"]), max_size=300))
def test_grpc_tokens_stay_within_bounds(outcomes):
    p = GRPCDefault()
    tokens = 10.0
    for o in outcomes:
        p.on_result(o, 0.0, False)
        if o == "completed":
            tokens = min(10.0, tokens + 0.1)
        elif o in RETRYABLE:
            tokens = max(0.0, tokens - 1.0)
        assert 0.0 <= p.tokens <= 10.0
        assert p.tokens == pytest.approx(tokens)
        if o != "completed":
            assert p.should_retry(0, o, 0.0, 0.0) == (o in RETRYABLE and tokens > 5.0 + 1e-9)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["start", "end", "end_retry", "fail"]), st.integers(0, 1000)),
                max_size=400))
def test_envoy_budget_caps_concurrent_retries(ops):
    """A retry is granted only while active retries < max(3, 20 % of active requests)."""
    p = EnvoyBudget()
    active_first, active_retry = 0, 0       # attempts in flight: first attempts, retries
    for op, _ in ops:
        if op == "start":
            p.on_attempt(0.0)
            active_first += 1
        elif op == "end" and active_first:
            p.on_result("completed", 0.0, False)
            active_first -= 1
        elif op == "end_retry" and active_retry:
            p.on_result("completed", 0.0, True)
            active_retry -= 1
        elif op == "fail" and active_first:
            p.on_result("529_overload", 0.0, False)
            active_first -= 1
            allowed = p.active_retries < max(3.0, 0.2 * p.active)
            assert p.should_retry(0, "529_overload", 0.0, 0.0) == allowed
            if allowed:
                p.retry_started()
                p.on_attempt(0.0)            # the retry is sent (backoff elided)
                active_retry += 1
                assert p.active_retries <= max(3.0, 0.2 * (p.active - 1)) + 1
        assert p.active == active_first + active_retry
        assert p.active_retries == active_retry


def test_envoy_budget_minimum_concurrency_is_three():
    p = EnvoyBudget()
    granted = 0
    for _ in range(10):                      # ten failures with nothing else in flight
        if p.should_retry(0, "529_overload", 0.0, 0.0):
            p.retry_started()
            p.on_attempt(0.0)
            granted += 1
    assert granted == 3
    for _ in range(100):                     # 100 more requests in flight
        p.on_attempt(0.0)
    while p.should_retry(0, "529_overload", 0.0, 0.0):
        p.retry_started()
        p.on_attempt(0.0)
        granted += 1
    # with k retries in flight, active = 100 + k: granted while k < 0.2·(100 + k), i.e. k < 25
    assert p.active_retries == granted == 25


def test_sre_throttle_rejects_with_the_documented_probability():
    """p = max(0, (requests − 2·accepts)/(requests + 1)) over the last 120 s."""
    p = SREAdaptiveThrottle()
    for i in range(50):                         # all accepted: never rejects
        assert not p.local_reject(i * 0.1, 1e-12)
        p.on_result("completed", i * 0.1, False)
    p = SREAdaptiveThrottle()
    for i in range(10):                         # all throttled: p = req / (req + 1)
        want = i / (i + 1)
        assert p.local_reject(1.0, max(want - 1e-9, 0.0)) == (want > 1e-9)
        p.on_result("529_overload", 1.0, False)
    assert p.local_reject(1.0, 10 / 11 - 1e-9) and not p.local_reject(1.0, 11 / 12 + 1e-9)
    # 12 requests, 0 accepts: 2 accepts bring it to (12 + 1 - 4) / 14
    p.on_result("completed", 2.0, False)
    p.on_result("completed", 2.0, False)
    want = (12 - 4) / 13
    assert p.local_reject(2.0, want - 1e-9) and not SREAdaptiveThrottle().local_reject(2.0, 0.0)
    # the window forgets: 130 s later the history is gone
    assert not p.local_reject(135.0, 1e-12)


@FAST
@given(st.lists(st.tuples(st.floats(0, 30), st.sampled_from(["completed", "529_overload", "429_limit"]),
                          st.floats(0, 1)), max_size=200))
def test_sre_reject_probability_is_bounded(events):
    p = SREAdaptiveThrottle()
    t = 0.0
    for dt, outcome, u in events:
        t += dt
        p._roll(t)
        req, acc = p._req, p._acc
        want = max(0.0, (req - 2.0 * acc) / (req + 1))
        assert 0.0 <= want < 1.0
        assert p.local_reject(t, u) == (u < want)
        p.on_result(outcome, t, False)


# -- end to end: the requests table ------------------------------------------------------------------
SMALL_TASKS = {"initial_context": 2_000, "shared_prefix_tokens": 1_000, "new_context": 200, "tool_latency": 0.5,
               "output_tokens": {"kind": "lognormal", "median": 100, "sigma": 0.5, "round": "round", "min": 1,
                                 "max": 1_000}}


def _fleet(policy: str, p: float, workers: int = 40, duration: float = 1200.0, seed: int = 7,
           profile: str = "autonomous_api_agent", params: dict | None = None, retry_after: float = 0.0) -> dict:
    """A closed-loop fleet of small autonomous tasks on a lightly loaded Llama-3-8B cluster, with chaos."""
    return {
        "name": f"retry-{policy}-{p}", "duration_s": duration, "seed": seed, "sample_s": 600,
        "engine": {"retention": "lru", "prefix_ttl_s": 600},
        "pools": {"h100": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": 8}},
        "router": {"policy": "session_affinity"},
        "policies": [{"name": "chaos", "probability": p, "outcome": "529_overload", "retry_after_s": retry_after}],
        "populations": {"bots": {"profile": profile, "kind": "fleet", "size": workers, "workers": workers,
                                 "retry_policy": policy, "params": {**SMALL_TASKS, **(params or {})}}},
    }


def _calls(rq):
    """Per logical call: attempts, whether it was closed (its last attempt ended), last outcome."""
    g = rq.sort_values(["call_id", "attempt"]).groupby("call_id", sort=True)
    out = g.agg(attempts=("attempt", "size"), last_attempt=("attempt", "max"), first_arrival=("arrival_s", "min"),
                last_outcome=("outcome", "last"))
    assert (out["last_attempt"] == out["attempts"] - 1).all(), "attempt indexes are 0..k-1 per call"
    return out


@pytest.mark.parametrize("name", ["anthropic_sdk", "claude_code", "aws_full_jitter", "grpc_default",
                                  "envoy_budget", "sre_adaptive_throttle"])
def test_attempt_gaps_in_the_records_stay_within_the_policy(name):
    # gRPC's throttle earns 0.1 token per success and loses 1 per failure: above ~9 % failures it
    # stops retrying altogether, so it gets a failure rate it can sustain
    res = simulate(_fleet(name, 0.05 if name == "grpc_default" else 0.3, workers=20, duration=600))
    rq = res.requests
    max_retries = EXPECTED[name][0]
    policy = make_retry_policy(name)
    rq = rq.sort_values(["call_id", "attempt"])
    assert (rq.groupby("call_id")["attempt"].max() <= max_retries).all()
    nxt = rq.groupby("call_id").shift(-1)
    has_next = nxt["arrival_s"].notna()
    cur = rq[has_next]
    assert cur["outcome"].isin(sorted(policy.retry_on)).all(), "only a failed, retryable attempt is retried"
    gap = (nxt.loc[has_next, "arrival_s"] - cur["finish_s"]).to_numpy()
    n = cur["attempt"].to_numpy()
    outcome = cur["outcome"].astype(str).to_numpy()
    lo = np.array([bounds(policy, int(k), o)[0] for k, o in zip(n, outcome)])
    hi = np.array([bounds(policy, int(k), o)[1] for k, o in zip(n, outcome)])
    tol = 1e-9 * (1 + cur["finish_s"].to_numpy())
    assert len(gap) > 100
    assert ((gap >= lo - tol) & (gap <= hi + tol)).all(), (name, gap[(gap < lo - tol) | (gap > hi + tol)][:5])


@pytest.mark.parametrize("name", ["aws_full_jitter", "grpc_default", "sre_adaptive_throttle"])
def test_budgets_bound_retries_under_sustained_failure(name):
    """With 90 % of attempts failing, a budget caps the retries one shared policy object grants:
    AWS ≤ (500 + successes)/5 (a retry costs 5, a success returns 1); gRPC < 5 + 0.1·successes
    (a granted retry needs tokens > 5 after its failure's −1, successes add 0.1); SRE throttling
    rejects locally (``cancelled``, never retried) once requests outnumber 2 × accepts."""
    res = simulate(_fleet(name, 0.9, workers=20, duration=600))
    rq, stats = res.requests, res.meta["populations"]["bots"]
    successes = int((rq["outcome"] == "completed").sum())
    retries = int((rq["attempt"] > 0).sum())
    failures = int(rq["outcome"].isin(["529_overload"]).sum())
    print(f"\n{name}: {stats['calls']:,} calls, {len(rq):,} attempts, {retries:,} retries, {successes:,} successes, "
          f"{failures:,} failures, {stats['local_rejects']:,} local rejects")
    if name == "aws_full_jitter":
        assert failures > 500
        assert retries <= (500 + successes) / 5
    elif name == "grpc_default":
        assert failures > 500
        assert retries < 5 + 0.1 * successes
    else:   # the throttle closes: nearly every attempt is rejected locally, without reaching the provider
        local = rq["outcome"] == "cancelled"
        assert local.sum() == stats["local_rejects"] > 0.9 * len(rq)
        later = rq.sort_values(["call_id", "attempt"]).groupby("call_id")["outcome"].shift(1)
        assert not (later == "cancelled").any(), "a locally rejected attempt is not retried"


def test_retry_after_from_the_gateway_is_waited_out():
    res = simulate(_fleet("anthropic_sdk", 0.3, workers=10, duration=600, retry_after=2.5))
    rq = res.requests.sort_values(["call_id", "attempt"])
    nxt = rq.groupby("call_id").shift(-1)
    has = nxt["arrival_s"].notna()
    gap = nxt.loc[has, "arrival_s"] - rq.loc[has, "finish_s"]
    assert len(gap) > 50
    np.testing.assert_allclose(gap.to_numpy(), 2.5, atol=1e-9 * 700)


# -- retry amplification -----------------------------------------------------------------------------
def truncated_geometric(p: float, m: int) -> tuple[float, float]:
    """Mean and variance of N = attempts until the first success, at most m (failure prob. p).

    N = Σ_{j<m} I_j with I_j = 1{the first j attempts all failed}, P(I_j) = pʲ, so
    E[N] = Σ pʲ = (1 − pᵐ)/(1 − p); E[N²] = Σ_j Σ_k p^max(j,k) = Σ_{j<m} (2j + 1) pʲ
    = E[N] + 2p(1 − m·pᵐ⁻¹ + (m − 1)pᵐ)/(1 − p)²;
    Var = E[N²] − E[N]² (→ p/(1 − p)² as m → ∞).
    """
    mean = (1 - p ** m) / (1 - p)
    second = mean + 2 * p * (1 - m * p ** (m - 1) + (m - 1) * p ** m) / (1 - p) ** 2
    return mean, second - mean * mean


def test_truncated_geometric_moments_by_enumeration():
    for p in (0.0, 0.1, 0.5, 0.9):
        for m in (1, 2, 3, 11):
            probs = [p ** (k - 1) * (1 - p) for k in range(1, m)] + [p ** (m - 1)]
            ks = np.arange(1, m + 1)
            mean, var = truncated_geometric(p, m)
            assert mean == pytest.approx(float(np.dot(probs, ks)))
            assert var == pytest.approx(float(np.dot(probs, ks ** 2)) - mean ** 2, abs=1e-12)
    assert truncated_geometric(0.3, 200)[1] == pytest.approx(0.3 / 0.7 ** 2)


AMPLIFICATION = [("anthropic_sdk", 0.2, 3), ("anthropic_sdk", 0.5, 3), ("claude_code", 0.5, 11)]


@pytest.mark.parametrize("policy,p,m", AMPLIFICATION)
def test_retry_amplification_matches_the_truncated_geometric(policy, p, m):
    """Attempts per call ≈ (1 − pᵐ)/(1 − p) within a 99.9 % CI; calls that give up ≈ pᵐ."""
    duration = 1200.0
    res = simulate(_fleet(policy, p, workers=80, duration=duration, seed=11))
    rq = res.requests
    assert not rq["outcome"].isin(["timed_out", "replica_failed", "request_too_large"]).any(), \
        "the cluster must be lightly loaded: only chaos fails attempts"
    calls = _calls(rq)
    closed = calls[(calls["last_outcome"] != "in_flight") & (calls["first_arrival"] < duration - 300)]
    x = closed["attempts"].to_numpy(float)
    n = len(x)
    mean, var = truncated_geometric(p, m)
    half = 3.29 * math.sqrt(var / n)
    gave_up = float((closed["last_outcome"] != "completed").mean())
    gave_up_half = 3.29 * math.sqrt(p ** m * (1 - p ** m) / n)
    print(f"\n{policy} p={p} m={m}: n={n:,} calls, attempts/call {x.mean():.4f} vs (1-p^m)/(1-p) = {mean:.4f} "
          f"± {half:.4f} (99.9 %), sample var {x.var(ddof=1):.4f} vs {var:.4f}; gave up {gave_up:.4%} vs "
          f"p^m = {p ** m:.4%} ± {gave_up_half:.4%}")
    assert n >= 10_000
    assert abs(x.mean() - mean) <= half
    assert abs(gave_up - p ** m) <= gave_up_half
    assert x.max() <= m
    assert x.var(ddof=1) == pytest.approx(var, rel=0.1)
