"""Client retry policies, chosen by name (presets of workloads-policies.md §6.6).

A policy answers three questions for a client: may this failed attempt be retried, how long to
wait first, and — for policies with a budget or a throttle — whether the budget allows it. A
policy object holds that budget state; a population shares one object among its clients (one
SDK process, one proxy), which is how budgets behave in practice.

Outcomes follow the engine's vocabulary. ``429_spend_cap`` and ``request_too_large`` are never
retried (the SDK source would retry a spend-cap 429 twice, pointlessly; agentsim follows the
provider's "do not retry" instead); ``cancelled`` is the client's own doing.
"""
from __future__ import annotations

import math
from collections import deque

from ..util.errors import unknown_name

RETRYABLE = frozenset({"429_limit", "429_window", "529_overload", "replica_failed", "timed_out"})
THROTTLE = frozenset({"429_limit", "429_window", "529_overload"})


class RetryPolicy:
    """Base: capped exponential backoff with multiplicative jitter, honouring retry-after."""

    name = "base"
    max_retries: float = 2            # math.inf = retry forever
    base_s = 0.5
    cap_s = 8.0
    jitter_low, jitter_high = 0.75, 1.0
    honour_retry_after = True
    retry_after_max_s = 60.0
    retry_on = RETRYABLE
    max_wait_s = math.inf             # give up once this much time went into retrying one call

    def delay(self, n: int, outcome: str, retry_after: float, u: float) -> float:
        """Wait before retry ``n`` (0-based); ``u`` is a U(0, 1) draw from the client's stream."""
        if self.honour_retry_after and 0 < retry_after <= self.retry_after_max_s:
            return retry_after
        d = min(self.base_s * 2.0 ** n, self.cap_s)
        return d * (self.jitter_low + (self.jitter_high - self.jitter_low) * u)

    def should_retry(self, n: int, outcome: str, waited_s: float, now: float) -> bool:
        """After the attempt of retry index ``n`` failed with ``outcome``: retry it?"""
        return outcome in self.retry_on and n < self.max_retries and waited_s < self.max_wait_s \
            and self.budget_allows(outcome, now)

    # -- budgets (no-ops here) --------------------------------------------------------------------
    def budget_allows(self, outcome: str, now: float) -> bool:
        return True

    def on_attempt(self, now: float) -> None:
        """An attempt is sent (counts for concurrency budgets)."""

    def on_result(self, outcome: str, now: float, retry: bool) -> None:
        """An attempt ended with ``outcome`` (``retry``: it was itself a retry)."""

    def local_reject(self, now: float, u: float) -> bool:
        """Client-side throttling: reject before sending (adaptive throttle only)."""
        return False


class AnthropicSDK(RetryPolicy):
    """anthropic-sdk-python / openai-python: 2 retries, min(0.5·2ⁿ, 8)·U(0.75, 1) s."""

    name = "anthropic_sdk"


class OpenAISDK(AnthropicSDK):
    name = "openai_sdk"


class ClaudeCode(RetryPolicy):
    """Claude Code CLI: 10 retries, min(0.5·2ⁿ, 32)·U(1, 1.25) s (observed 1,1,2,4,8,17,35,39,36,40 s).

    A plan's usage limit (``429_window``) is shown to the user, not retried: the session decides.
    """

    name = "claude_code"
    max_retries = 10
    retry_on = RETRYABLE - {"429_window"}
    cap_s = 32.0
    jitter_low, jitter_high = 1.0, 1.25


class ClaudeCodeWatchdog(ClaudeCode):
    """CLAUDE_CODE_RETRY_WATCHDOG=1: wait out 429/529 (and failures) indefinitely."""

    name = "claude_code_watchdog"
    max_retries = math.inf


class AWSFullJitter(RetryPolicy):
    """AWS SDK standard mode: 3 attempts, U(0, min(20, b·2ⁿ)) (b = 1 s throttling, 0.05 s
    transient), and a retry quota: 500 tokens, a retry costs 5 (10 after a timeout), a success
    returns 1."""

    name = "aws_full_jitter"
    honour_retry_after = False
    quota_max = 500.0

    def __init__(self) -> None:
        self.quota = self.quota_max

    def delay(self, n, outcome, retry_after, u):
        base = 1.0 if outcome in THROTTLE else 0.05
        return u * min(20.0, base * 2.0 ** n)

    def budget_allows(self, outcome, now):
        cost = 10.0 if outcome == "timed_out" else 5.0
        if self.quota < cost:
            return False
        self.quota -= cost
        return True

    def on_result(self, outcome, now, retry):
        if outcome == "completed":
            self.quota = min(self.quota_max, self.quota + 1.0)


class GRPCDefault(RetryPolicy):
    """gRPC A6: maxAttempts 5, U(0, min(1·2ⁿ, 30)) s [initial/max backoff assumed], server
    pushback honoured; retry throttling: 10 tokens, −1 per failure, +0.1 per success, no
    retries while tokens ≤ 5."""

    name = "grpc_default"
    max_retries = 4
    retry_after_max_s = math.inf

    def __init__(self) -> None:
        self.tokens = 10.0

    def delay(self, n, outcome, retry_after, u):
        if retry_after > 0:
            return retry_after
        return u * min(1.0 * 2.0 ** n, 30.0)

    def budget_allows(self, outcome, now):
        return self.tokens > 5.0

    def on_result(self, outcome, now, retry):
        if outcome == "completed":
            self.tokens = min(10.0, self.tokens + 0.1)
        elif outcome in RETRYABLE:
            self.tokens = max(0.0, self.tokens - 1.0)


class EnvoyBudget(RetryPolicy):
    """Envoy: up to 3 retries while active retries stay within 20 % of active requests (at
    least 3), U(0, min(0.025·2ⁿ, 0.25)) s."""

    name = "envoy_budget"
    max_retries = 3
    honour_retry_after = False

    def __init__(self) -> None:
        self.active = 0
        self.active_retries = 0

    def delay(self, n, outcome, retry_after, u):
        return u * min(0.025 * 2.0 ** n, 0.25)

    def budget_allows(self, outcome, now):
        return self.active_retries < max(3.0, 0.2 * self.active)

    def on_attempt(self, now):
        self.active += 1

    def retry_started(self) -> None:
        self.active_retries += 1

    def on_result(self, outcome, now, retry):
        self.active -= 1
        if retry:
            self.active_retries -= 1


class SREAdaptiveThrottle(AnthropicSDK):
    """Google SRE client-side adaptive throttling on top of SDK retries: reject locally with
    probability max(0, (requests − K·accepts) / (requests + 1)), K = 2, over 120 s."""

    name = "sre_adaptive_throttle"
    K = 2.0
    window_s = 120.0
    buckets = 12

    def __init__(self) -> None:
        self._w = deque()          # (bucket start, requests, accepts)
        self._req = self._acc = 0

    def _roll(self, now: float) -> None:
        width = self.window_s / self.buckets
        start = now - now % width
        while self._w and self._w[0][0] <= now - self.window_s:
            _, r, a = self._w.popleft()
            self._req -= r
            self._acc -= a
        if not self._w or self._w[-1][0] != start:
            self._w.append([start, 0, 0])

    def local_reject(self, now, u):
        self._roll(now)
        p = max(0.0, (self._req - self.K * self._acc) / (self._req + 1))
        self._w[-1][1] += 1
        self._req += 1
        return u < p

    def on_result(self, outcome, now, retry):
        if outcome not in THROTTLE and outcome != "cancelled":
            self._roll(now)
            self._w[-1][2] += 1
            self._acc += 1


RETRY_POLICIES = {c.name: c for c in (AnthropicSDK, OpenAISDK, ClaudeCode, ClaudeCodeWatchdog, AWSFullJitter,
                                       GRPCDefault, EnvoyBudget, SREAdaptiveThrottle)}


def make_retry_policy(name: str, where: str = "retry_policy", max_wait_s: float | None = None) -> RetryPolicy:
    try:
        policy = RETRY_POLICIES[name]()
    except KeyError:
        raise unknown_name("retry policy", name, RETRY_POLICIES, where=where) from None
    if max_wait_s is not None:
        policy.max_wait_s = max_wait_s
    return policy


def bounds(policy: RetryPolicy, n: int, outcome: str) -> tuple[float, float]:
    """The interval any delay before retry ``n`` must fall in (retry-after aside): for tests."""
    lo = policy.delay(n, outcome, 0.0, 0.0)
    hi = policy.delay(n, outcome, 0.0, 1.0)
    return min(lo, hi), max(lo, hi)
