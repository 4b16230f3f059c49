"""Distributions as validated data, and fast samplers for them.

A distribution is written in a scenario or a profile as a bare number (a constant) or a table:
``{ kind = "lognormal", median = 214, sigma = 1.34, min = 1, max = 32000 }``. Kinds: constant,
lognormal (median, sigma), uniform (low, high), exponential (mean), gamma (mean, cv), poisson
(mean), geometric (mean, on 0, 1, 2, ...), mixture (weights, components). After sampling:
``offset`` is added, then ``round`` (none, round, ceil, floor), then the value is clipped to
[min, max].

Sessions draw scalars one at a time; :class:`Sampler` serves them from pre-drawn numpy blocks
so a draw costs a list step, not a numpy call.
"""
from __future__ import annotations

import math
from itertools import chain
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

KINDS = ("constant", "lognormal", "uniform", "exponential", "gamma", "poisson", "geometric", "mixture")


#: every parameter of a distribution is finite and at most this (the default clip ``max``)
DIST_MAX = 1e15


class Dist(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["constant", "lognormal", "uniform", "exponential", "gamma", "poisson", "geometric", "mixture"] = \
        Field("constant", description="constant: value; lognormal: median, sigma; uniform: low, high; exponential: "
                                      "mean; gamma: mean, cv; poisson: mean; geometric: mean (support 0,1,2,...); "
                                      "mixture: weights, components")
    value: float = Field(0, ge=0, le=DIST_MAX, description="constant value")
    median: float = Field(0, ge=0, le=DIST_MAX, description="lognormal median")
    sigma: float = Field(0, ge=0, le=20, description="lognormal shape (σ of the log)")
    low: float = Field(0, ge=0, le=DIST_MAX, description="uniform lower bound")
    high: float = Field(0, ge=0, le=DIST_MAX, description="uniform upper bound")
    mean: float = Field(0, ge=0, le=DIST_MAX, description="mean (exponential, gamma, poisson, geometric)")
    cv: float = Field(1.0, gt=0, le=1e3, description="gamma coefficient of variation")
    weights: list[float] = Field(default_factory=list, description="mixture weights (normalised)")
    components: list["Dist"] = Field(default_factory=list, description="mixture components")
    offset: float = Field(0, ge=-DIST_MAX, le=DIST_MAX, description="added after sampling (e.g. 1 + Geometric)")
    round: Literal["none", "round", "ceil", "floor"] = Field("none", description="rounding after the offset")
    min: float = Field(0, ge=0, le=DIST_MAX, description="clip below")
    max: float = Field(DIST_MAX, gt=0, le=DIST_MAX, description="clip above")

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"kind": "constant", "value": v}
        return v

    @model_validator(mode="after")
    def _check(self) -> "Dist":
        need = {"lognormal": ("median",), "uniform": ("high",), "exponential": ("mean",), "gamma": ("mean",),
                "poisson": (), "geometric": (), "constant": (), "mixture": ()}
        for f in need[self.kind]:
            if getattr(self, f) <= 0:
                raise ValueError(f"a {self.kind} distribution needs {f} > 0")
        if self.kind == "uniform" and self.low > self.high:
            raise ValueError(f"uniform needs low <= high (got low={self.low}, high={self.high})")
        if self.kind == "mixture":
            if not self.components or len(self.weights) != len(self.components):
                raise ValueError("a mixture needs as many weights as components (at least one)")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"mixture weights must be >= 0 and not all 0 (got {self.weights})")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self

    def expected(self, n: int = 200_000, seed: int = 0) -> float:
        """Monte-Carlo mean (for docs, checks and sizing)."""
        return float(draw(self, np.random.default_rng(seed), n).mean())


def _raw(d: Dist, rng: np.random.Generator, n: int) -> np.ndarray:
    k = d.kind
    if k == "constant":
        return np.full(n, float(d.value))
    if k == "lognormal":
        return d.median * np.exp(d.sigma * rng.standard_normal(n))
    if k == "uniform":
        return rng.uniform(d.low, d.high, n)
    if k == "exponential":
        return rng.exponential(d.mean, n)
    if k == "gamma":
        shape = 1.0 / (d.cv * d.cv)
        return rng.gamma(shape, d.mean / shape, n)
    if k == "poisson":
        return rng.poisson(d.mean, n).astype(float)
    if k == "geometric":
        # on {0, 1, 2, ...} with the given mean: success probability p = 1 / (1 + mean)
        return (rng.geometric(1.0 / (1.0 + d.mean), n) - 1).astype(float) if d.mean > 0 else np.zeros(n)
    w = np.asarray(d.weights, float)
    pick = rng.choice(len(d.components), size=n, p=w / w.sum())
    out = np.empty(n)
    for i, comp in enumerate(d.components):
        mask = pick == i
        if mask.any():
            out[mask] = draw(comp, rng, int(mask.sum()))
    return out


def draw(d: Dist, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples as floats: raw draw, + offset, rounded, clipped to [min, max]."""
    x = _raw(d, rng, n)
    if d.offset:
        x = x + d.offset
    if d.round == "round":
        x = np.rint(x)
    elif d.round == "ceil":
        x = np.ceil(x)
    elif d.round == "floor":
        x = np.floor(x)
    return np.clip(x, d.min, d.max)


def draw_tokens(d: Dist, rng: np.random.Generator, n: int) -> np.ndarray:
    """Token counts: rounded samples, at least 1."""
    return np.maximum(1, np.rint(draw(d, rng, n))).astype(np.int64)


def _blocks(d: Dist, rng: np.random.Generator, integer: bool, block: int):
    """Lists of ``block`` draws, each drawn when asked for."""
    while True:
        x = draw(d, rng, block)
        yield np.rint(x).astype(np.int64).tolist() if integer else x.tolist()


class Sampler:
    """Scalar draws of one distribution from one RNG stream, served from pre-drawn blocks.

    ``next`` is the ``__next__`` of a chain over the blocks, each drawn when the one before runs
    out: a draw is a C call with no Python frame (sessions make millions of them).
    """

    __slots__ = ("d", "rng", "block", "integer", "next")

    def __init__(self, d: Dist, rng: np.random.Generator, integer: bool = False, block: int = 512) -> None:
        self.d, self.rng, self.block, self.integer = d, rng, block, integer
        self.next = chain.from_iterable(_blocks(d, rng, integer, block)).__next__

    def __call__(self):
        return self.next()


def lognormal_mean(median: float, sigma: float) -> float:
    return median * math.exp(sigma * sigma / 2)
