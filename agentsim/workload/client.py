"""A client: one logical LLM call made robust the way real SDKs do it — retries, timeouts.

``Client.call`` is a generator used with ``yield from`` inside a session process. Each attempt is
its own request (its own row in the records, with ``attempt`` 0, 1, …). An attempt that fails
with a retryable outcome is retried after the policy's delay (or the provider's retry-after);
the call returns its last attempt, completed or not, and the session decides what giving up
means.
"""
from __future__ import annotations

import math
from itertools import chain

from simpy.events import Event

from ..serving.request import Request
from .retry import EnvoyBudget, RetryPolicy
from ..util.events import call_later


def _overrides(policy: RetryPolicy, hook: str) -> bool:
    """Does ``policy`` do something in ``hook`` (the base class's version is a no-op)?"""
    return getattr(type(policy), hook) is not getattr(RetryPolicy, hook)


def _uniform_blocks(rng):
    while True:
        yield rng.random(256).tolist()


class CallStats:
    """Counters a population keeps about its clients."""

    __slots__ = ("calls", "attempts", "retries", "gave_up", "abandoned", "local_rejects")

    def __init__(self) -> None:
        self.calls = self.attempts = self.retries = self.gave_up = self.abandoned = self.local_rejects = 0


class Client:
    """Sends attempts for one session (or one worker) with a shared retry policy."""

    def __init__(self, front, policy: RetryPolicy, rng, *, timeout_s: float, model: str | None, tenant: int, user: int,
                 population: int, stats: CallStats, abandon_ttft_s: float = 0.0, abandon_prob: float = 0.0,
                 priority: int = 0, cache_ttl_s: float | None = None, tier: str | None = None,
                 plan: str | None = None, call_models: dict | None = None) -> None:
        self.front = front            # the run's request front door (new_request, submit, cancel, ...)
        self.env = front.env
        self.policy = policy
        self.rng = rng
        self.timeout_s = timeout_s
        self.model = model
        self.call_models = call_models or None   # trigger code -> model for that kind of call (else ``model``)
        self.tenant = tenant
        self.user = user
        self.population = population
        self.stats = stats
        self.abandon_ttft_s = abandon_ttft_s
        self.abandon_prob = abandon_prob
        self.priority = priority
        self.cache_ttl_s = cache_ttl_s      # the prompt-cache TTL this client asks for (None: the engine's)
        self.tier, self.plan = tier, plan   # stamped on every request: the gateway's policies read them there
        #: a U(0, 1) draw from this client's stream: blocks of 256 drawn when the last one runs out
        self.u = chain.from_iterable(_uniform_blocks(rng)).__next__
        # the base policy's hooks do nothing: skip the calls (most presets keep them)
        self._throttles = _overrides(policy, "local_reject")
        self._hooks = _overrides(policy, "on_attempt") or _overrides(policy, "on_result")

    def call(self, prompt: int, output: int, *, session: int, prefix_key, prefix_len: int, shared_key=None,
             shared_len: int = 0, max_tokens: int, trigger: int):
        """Generator: send attempts until one completes or the policy gives up; returns the last."""
        front, env, policy, stats, u = self.front, self.env, self.policy, self.stats, self.u
        call_id = front.new_call_id()
        stats.calls += 1
        started = env.now
        n = 0
        while True:
            req = front.new_request(prompt, output, session=session, tenant=self.tenant, user=self.user,
                                  prefix_key=prefix_key, prefix_len=prefix_len, population=self.population,
                                  priority=self.priority)
            req.max_tokens = max_tokens
            req.call = call_id
            req.attempt = n
            req.trigger = trigger
            req.shared_key = shared_key
            req.shared_len = shared_len
            req.cache_ttl = self.cache_ttl_s
            req.tier, req.plan = self.tier, self.plan
            stats.attempts += 1
            draw = u()          # drawn whether or not the policy throttles: the stream stays aligned
            if self._throttles and policy.local_reject(env.now, draw):
                stats.local_rejects += 1
                front.end_unsent(req, "cancelled")
                outcome = "cancelled"
            else:
                done = Event(env)
                req.on_done = done.succeed
                if self._hooks:
                    policy.on_attempt(env.now)
                front.submit(req, self.model if self.call_models is None else self.call_models.get(trigger, self.model))
                if not done.triggered:
                    if self.timeout_s < math.inf:
                        front.add_deadline(req, env.now + self.timeout_s)
                    if self.abandon_ttft_s > 0 and u() < self.abandon_prob:
                        self._watch(req, self.abandon_ttft_s, "cancelled", before_first_token=True)
                yield done
                req.on_done = None      # drop the request <-> event cycle: both go by refcount, not by the GC
                outcome = req.outcome
                if self._hooks:
                    policy.on_result(outcome, env.now, n > 0)
            if outcome == "completed":
                return req
            if outcome == "cancelled" and req.first_token != req.first_token and self.abandon_ttft_s > 0 \
                    and env.now - req.arrival >= self.abandon_ttft_s:
                stats.abandoned += 1
                return req   # the user walked away: not retried
            if not policy.should_retry(n, outcome, env.now - started, env.now):
                stats.gave_up += 1
                return req
            if isinstance(policy, EnvoyBudget):
                policy.retry_started()
            stats.retries += 1
            delay = policy.delay(n, outcome, req.retry_after if req.retry_after == req.retry_after else 0.0, u())
            if delay > 0:
                yield env.timeout(delay)
            n += 1

    def _watch(self, req: Request, after: float, outcome: str, before_first_token: bool = False) -> None:
        """Cancel ``req`` with ``outcome`` if it is still open ``after`` seconds from now."""
        def fire(_ev, req=req) -> None:
            if req.finish == req.finish:
                return
            if before_first_token and req.first_token == req.first_token:
                return
            self.front.cancel(req, outcome)
        call_later(self.env, after, fire)
