"""The policy interface of the gateway chain (see agentsim/gateway.py)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..request import Request

#: refusals: outcomes of a request turned away before any replica ran it (what ``Result`` counts
#: as rejections). Its home belongs beside OUTCOMES in agentsim/request.py; until it moves there,
#: result.py should import it from here rather than keep its own copy.
REJECTIONS: tuple[str, ...] = ("429_limit", "429_window", "429_spend_cap", "529_overload", "request_too_large")
#: outcomes a policy may return: a refusal, or (the chaos policy) a replica failure
POLICY_OUTCOMES: tuple[str, ...] = REJECTIONS + ("replica_failed",)


class Policy:
    """Base class: a policy admits (returns None) or rejects (returns (outcome, retry_after))."""

    name: ClassVar[str] = "policy"

    class Params(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
        name: str

    def __init__(self, params, sim) -> None:
        self.p = params
        self.sim = sim

    def admit(self, req: Request, now: float):
        return None

    def release(self, req: Request, now: float) -> None:
        """A later policy rejected ``req`` after this one admitted it: undo any charge."""

    def on_done(self, req: Request, now: float) -> None:
        """``req`` (admitted by the whole chain) ended with ``req.outcome``."""


