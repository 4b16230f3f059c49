"""The provider's front door: an ordered chain of policies between clients and the router.

Each policy sees every request in order and either lets it pass or rejects it with an outcome of
the engine's vocabulary (``429_limit``, ``529_overload``, …) and, where the provider sends one, a
``retry_after``. A request that passes every policy goes to the router; when it ends, every
policy that admitted it hears about it (refunds, usage accounting). Policies are chosen by name
from :data:`POLICIES` and configured in the scenario's ``policies`` list, so adding one needs no
change to the engine or the agents.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .catalog import format_validation_error
from .errors import InputError, unknown_name
from .request import OUTCOMES, Request

REJECTIONS = tuple(o for o in OUTCOMES if o not in ("completed", "in_flight", "cancelled", "timed_out"))


class Policy:
    """Base class: a policy admits (returns None) or rejects (returns (outcome, retry_after))."""

    name: ClassVar[str] = "policy"

    class Params(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, params, sim) -> None:
        self.p = params
        self.sim = sim

    def admit(self, req: Request, now: float):
        return None

    def release(self, req: Request, now: float) -> None:
        """A later policy rejected ``req`` after this one admitted it: undo any charge."""

    def on_done(self, req: Request, now: float) -> None:
        """``req`` (admitted by the whole chain) ended with ``req.outcome``."""


class Chaos(Policy):
    """Fail requests on purpose: a chosen outcome with a probability, always or in time windows.

    For exercising clients and for testing agents under synthetic error rates. Draws come from
    the ``chaos`` RNG stream, so the rest of the run is unchanged by turning it on.
    """

    name = "chaos"

    class Params(Policy.Params):
        name: str = "chaos"
        outcome: str = Field("529_overload", description=f"outcome to return: {', '.join(REJECTIONS)}")
        probability: float = Field(0.0, ge=0, le=1, description="chance that a request is failed")
        windows: list[tuple[float, float]] = Field(default_factory=list,
                                                   description="[start_s, end_s] pairs; empty = always")
        retry_after_s: float = Field(0.0, ge=0, description="retry-after sent with the outcome (0 = none)")

        @model_validator(mode="after")
        def _check(self):
            if self.outcome not in REJECTIONS:
                raise ValueError(f"outcome {self.outcome!r} is not a rejection outcome; allowed: {', '.join(REJECTIONS)}")
            for a, b in self.windows:
                if not 0 <= a < b:
                    raise ValueError(f"window [{a}, {b}] must satisfy 0 <= start < end")
            return self

    def __init__(self, params, sim) -> None:
        super().__init__(params, sim)
        self.rng = sim.rng("chaos")
        self._buf: list = []
        self._i = 0
        self.retry_after = params.retry_after_s if params.retry_after_s > 0 else math.nan

    def _u(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self.rng.random(1024).tolist()
            self._i = 0
        self._i += 1
        return self._buf[self._i - 1]

    def admit(self, req, now):
        p = self.p
        if p.windows and not any(a <= now < b for a, b in p.windows):
            return None
        if self._u() < p.probability:
            return p.outcome, self.retry_after
        return None


POLICIES: dict[str, type[Policy]] = {"chaos": Chaos}


def parse_policies(items: list[dict[str, Any]]) -> list:
    """Validate the scenario's ``policies`` list into each policy's parameter model."""
    out = []
    for i, item in enumerate(items):
        where = f"policies[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise InputError(f"{where}: each policy needs a name; known: {', '.join(POLICIES)}")
        cls = POLICIES.get(item["name"])
        if cls is None:
            raise unknown_name("policy", item["name"], POLICIES, where=f"{where}.name")
        try:
            out.append(cls.Params(**item))
        except ValidationError as e:
            raise InputError(format_validation_error(e, where)) from None
    return out


class Gateway:
    """Runs the chain; rejected requests end at once, admitted ones go to the cluster."""

    def __init__(self, sim, params_list: list) -> None:
        self.sim = sim
        self.policies = [POLICIES[p.name](p, sim) for p in params_list]
        self.rejected = 0

    def submit(self, req: Request, model: str | None) -> bool:
        """True if admitted (routed), False if rejected (already ended)."""
        now = self.sim.env.now
        for i, policy in enumerate(self.policies):
            verdict = policy.admit(req, now)
            if verdict is not None:
                for earlier in self.policies[:i]:
                    earlier.release(req, now)
                outcome, retry_after = verdict
                req.retry_after = retry_after
                self.rejected += 1
                self.sim.end(req, outcome)
                return False
        return True

    def on_done(self, req: Request) -> None:
        now = self.sim.env.now
        for policy in self.policies:
            policy.on_done(req, now)
