"""The policy interface of the gateway chain (see agentsim/gateway.py)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...serving.request import REJECTIONS, Request
from ..limits import prices
#: outcomes a policy may return: a refusal, or (the chaos policy) a replica failure
POLICY_OUTCOMES: tuple[str, ...] = REJECTIONS + ("replica_failed",)


class Policy:
    """Base class: a policy admits (returns None) or rejects (returns (outcome, retry_after))."""

    name: ClassVar[str] = "policy"

    class Params(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
        name: str

    def __init__(self, params, view) -> None:
        self.p = params
        self.view = view      # agentsim.provider.gateway.PolicyView: the run as far as a policy may see it
        self._price_lists: dict = {}

    def price_list(self, model: str | None):
        """``self.p.price_list(model)`` (a priced policy's), looked up once per model."""
        got = self._price_lists.get(model)
        if got is None:
            got = self._price_lists[model] = self.p.price_list(model)
        return got

    def admit(self, req: Request, now: float):
        return None

    def release(self, req: Request, now: float) -> None:
        """A later policy rejected ``req`` after this one admitted it: undo any charge."""

    def on_done(self, req: Request, now: float) -> None:
        """``req`` (admitted by the whole chain) ended with ``req.outcome``."""


class PricedParams(Policy.Params):
    """Parameters of a policy that prices tokens (spend caps, usage windows): a known price list."""
    prices: str = Field("sonnet", description="price list that turns tokens into USD (see data/limits.toml)")
    model_prices: dict[str, str] = Field(default_factory=dict, description="price list per served model (catalog "
                                         "name, as requests carry it), e.g. a small model's cheaper list; others: prices")

    @field_validator("prices")
    @classmethod
    def _known(cls, v):
        prices(v, where="")
        return v

    @field_validator("model_prices")
    @classmethod
    def _known_each(cls, v):
        for model, name in v.items():
            prices(name, where=f"model_prices.{model}")
        return v

    def price_list(self, model: str | None):
        """The price list a request for ``model`` is charged at."""
        return prices(self.model_prices.get(model, self.prices) if model is not None else self.prices)
