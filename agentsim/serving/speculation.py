"""Speculative decoding (multi-token prediction or a draft model): tokens per verify step per request.

Each step a decoding request verifies ``k`` draft tokens; drafts are accepted left to right until
the first rejection, and the verify pass adds one token of its own. With a per-token acceptance
rate ``a`` a step yields on average ``(1 - a^(k+1)) / (1 - a)`` tokens (Leviathan et al. 2023,
eq. 1). How well drafts match depends on the text, so ``a`` is drawn once per request when it
reaches the replica — Beta with the configured mean and concentration — and the request then
produces that many tokens per step for its whole decode: its decode is a fixed number of steps,
known when it starts, so event skipping stays exact. Sources: DeepSeek-V3 technical report
(arXiv:2412.19437 §5.4.3: 85-90 % acceptance of the second token, 1.8x tokens per second with one
MTP draft).

KV: a request that will produce ``R`` more tokens in ``s = ceil(R / tokens_per_step)`` steps
reserves the ``R - s`` speculative surplus when its decode starts and writes one token per step
after that (conservative: the surplus is held from the first step; a preempted request keeps it
as generated). Both engines use :func:`surplus`, so they agree to the token.
"""
from __future__ import annotations

import math

import numpy as np

BATCH = 1024   # acceptance rates drawn per call to the generator


class Speculation:
    """One replica's draws: ``k`` drafts per step, acceptance ~ Beta(mean, concentration)."""

    __slots__ = ("k", "mean", "concentration", "rng", "_buf", "_i")

    def __init__(self, k: int, mean: float, concentration: float, rng: np.random.Generator) -> None:
        self.k, self.mean, self.concentration, self.rng = k, mean, concentration, rng
        self._buf: list[float] = []
        self._i = 0

    def tokens_per_step(self) -> float:
        """The next request's tokens per verify step (its acceptance drawn from the replica's stream)."""
        if self._i == len(self._buf):
            a = self.rng.beta(self.mean * self.concentration, (1 - self.mean) * self.concentration, BATCH)
            self._buf = expected_tokens(a, self.k).tolist()
            self._i = 0
        x = self._buf[self._i]
        self._i += 1
        return x


def expected_tokens(a, k: int):
    """Tokens a verify step yields with ``k`` drafts at per-token acceptance ``a`` (1 + accepted drafts)."""
    a = np.minimum(np.asarray(a, dtype=float), 1 - 1e-12)
    return (1 - a ** (k + 1)) / (1 - a)


def surplus(remaining: int, tokens_per_step: float) -> int:
    """Tokens beyond one per step that a decode of ``remaining`` tokens produces: ``R - ceil(R/tps)``."""
    if tokens_per_step <= 1.0:
        return 0
    return remaining - math.ceil(remaining / tokens_per_step)
