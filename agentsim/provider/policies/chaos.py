"""``chaos``: fail requests on purpose, to exercise clients and agents."""
from __future__ import annotations

import math

from pydantic import Field, model_validator

from .base import POLICY_OUTCOMES, Policy


class Chaos(Policy):
    """Fail requests on purpose: a chosen outcome with a probability, always or in time windows.

    For exercising clients and for testing agents under synthetic error rates. Draws come from
    the ``chaos`` RNG stream, so the rest of the run is unchanged by turning it on.
    """

    name = "chaos"

    class Params(Policy.Params):
        name: str = "chaos"
        outcome: str = Field("529_overload", description=f"outcome to return: {', '.join(POLICY_OUTCOMES)}")
        probability: float = Field(0.0, ge=0, le=1, description="chance that a request is failed")
        windows: list[tuple[float, float]] = Field(default_factory=list,
                                                   description="[start_s, end_s] pairs; empty = always")
        retry_after_s: float = Field(0.0, ge=0, description="retry-after sent with the outcome (0 = none)")

        @model_validator(mode="after")
        def _check(self):
            if self.outcome not in POLICY_OUTCOMES:
                raise ValueError(f"outcome {self.outcome!r} is not a rejection outcome; allowed: "
                                 f"{', '.join(POLICY_OUTCOMES)}")
            for a, b in self.windows:
                if not 0 <= a < b:
                    raise ValueError(f"window [{a}, {b}] must satisfy 0 <= start < end")
            return self

    def __init__(self, params, view) -> None:
        super().__init__(params, view)
        self.rng = view.rng("chaos")
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


