"""``rate_limits``: per-tenant token buckets on RPM, ITPM and OTPM (or OpenAI-style TPM).

A tenant's tier comes from its population (``populations.X.tier``) or the policy's
``default_tier``. ITPM counts uncached input only: at admission the provider charges the prompt
minus the prefix it expects to find cached, and corrects the charge when the request ends with
the tokens actually read from cache. OTPM is pre-charged with ``max_tokens`` and refunded
``max_tokens − output`` at the end (the whole pre-charge if the request failed). Over a limit:
``429_limit`` with ``retry-after`` = the time until the request would fit (capped at 60 s); a
request larger than a bucket's whole depth: ``request_too_large`` at once.
"""
from __future__ import annotations

import math

from pydantic import Field, field_validator

from ..limits import TokenBucket, tier
from .base import Policy

RETRY_AFTER_CAP_S = 60.0


class RateLimits(Policy):
    name = "rate_limits"

    class Params(Policy.Params):
        burst_window_s: float = Field(60.0, gt=0, description="bucket depth in seconds of refill "
                                                              "(Anthropic may enforce 60 RPM as 1 per second)")
        default_tier: str | None = Field(None, description="tier for requests whose population names none")
        per_model: bool = Field(False, description="each model its own buckets of the tenant's tier (Anthropic and "
                                                   "OpenAI apply rate limits per model); false: one set per tenant")

        @field_validator("default_tier")
        @classmethod
        def _known(cls, v):
            if v is not None:
                tier(v, where="")
            return v

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.buckets: dict = {}     # tenant (or (tenant, model)) -> (tier name, rpm, itpm, otpm, tpm buckets or None)
        self.charged: dict[int, tuple] = {}     # request id -> (itpm charge, otpm/tpm charge)

    def _key(self, req):
        return (req.tenant, req.model) if self.p.per_model else req.tenant

    def _tier_name(self, req) -> str | None:
        return req.tier if req.tier is not None else self.p.default_tier

    def _state(self, req, name: str):
        st = self.buckets.get(self._key(req))
        if st is None:
            t = tier(name)
            w = self.p.burst_window_s
            mk = lambda limit: TokenBucket(limit, w) if limit > 0 else None  # noqa: E731
            rpm = TokenBucket(t.rpm, w, min_capacity=1.0) if t.rpm > 0 else None   # at least one request deep
            st = self.buckets[self._key(req)] = (name, rpm, mk(t.itpm), mk(t.otpm), mk(t.tpm))
        return st

    def _scale(self, now: float) -> float:
        peak = self.view.peak
        return peak.limit_scale(now) if peak is not None else 1.0

    def _refill(self, bucket, now: float) -> None:
        """Refill at the limit scale in force over each part of the gap (not the scale at its end)."""
        peak = self.view.peak
        if peak is None:
            bucket.refill(now)
        elif now > bucket.t:
            enough = (bucket.capacity - bucket.level) / bucket.rate     # full-rate seconds to fill up
            bucket.refill_for(now, peak.scaled_seconds(bucket.t, now, enough))

    def admit(self, req, now):
        name = self._tier_name(req)
        if name is None:
            return None
        _, rpm, itpm, otpm, tpm = self._state(req, name)
        uncached = max(0, req.prompt - min(req.prefix_len, req.prompt))
        costs = ((rpm, 1.0), (itpm, float(uncached)), (otpm, float(req.max_tokens)),
                 (tpm, float(req.prompt + req.max_tokens)))
        scale = self._scale(now)
        wait = 0.0
        for bucket, cost in costs:
            if bucket is None:
                continue
            if cost > bucket.capacity:
                return "request_too_large", math.nan
            self._refill(bucket, now)
            wait = max(wait, bucket.wait_for(cost, scale))
        if wait > 0:
            return "429_limit", min(RETRY_AFTER_CAP_S, math.ceil(wait * 1000 + 1e-6) / 1000)
        for bucket, cost in costs:
            if bucket is not None:
                bucket.charge(cost)
        self.charged[req.rid] = (float(uncached), float(req.max_tokens))
        return None

    def release(self, req, now):
        """A later policy rejected it: give every charge back."""
        charged = self.charged.pop(req.rid, None)
        if charged is None:
            return
        _, rpm, itpm, otpm, tpm = self.buckets[self._key(req)]
        uncached, max_tokens = charged
        for bucket, amount in ((rpm, 1.0), (itpm, uncached), (otpm, max_tokens), (tpm, req.prompt + max_tokens)):
            if bucket is not None:
                bucket.credit(amount)

    def on_done(self, req, now):
        charged = self.charged.pop(req.rid, None)
        if charged is None:
            return
        _, rpm, itpm, otpm, tpm = self.buckets[self._key(req)]
        est_uncached, max_tokens = charged
        produced = req.output if req.outcome == "completed" else 0
        refund = max_tokens - produced
        for bucket in (itpm, otpm, tpm):
            if bucket is not None:
                self._refill(bucket, now)
        if otpm is not None:
            otpm.credit(refund)
        if tpm is not None:
            tpm.credit(refund)
        if itpm is not None and req.outcome == "completed":
            actual = req.prompt - req.cached_gpu - req.cached_host
            if actual > est_uncached:
                itpm.charge(actual - est_uncached)      # more was uncached than expected: a debt
            else:
                itpm.credit(est_uncached - actual)
