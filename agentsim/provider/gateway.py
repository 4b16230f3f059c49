"""The provider's front door: an ordered chain of policies between clients and the router.

Each policy sees every request in order and either lets it pass or rejects it with an outcome of
the engine's vocabulary (``429_limit``, ``529_overload``, …) and, where the provider sends one, a
``retry_after``. A request that passes every policy goes to the router; when it ends, every
policy that admitted it hears about it (refunds, usage accounting). Policies are chosen by name
from :data:`POLICIES` and configured in the scenario's ``policies`` list, so adding one needs no
change to the engine or the agents.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..model.catalog import format_validation_error
from ..util.errors import InputError, unknown_name
from .policies import POLICIES
from .policies.base import Policy
from ..serving.request import Request


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


@dataclass(frozen=True)
class PolicyView:
    """All a policy may see of the run besides the request: read-only, given at construction.

    ``start`` is the wall-clock time at t = 0 (peak hours, calendar days); ``rng(name)`` a named
    random stream; ``fleet`` answers load questions about the replicas that serve a model
    (:meth:`agentsim.serving.cluster.Cluster.load`); ``peak`` is the chain's peak-hour throttle (None without
    one), which the limit policies scale by. Policies never reach the simulation itself.
    """
    start: datetime
    rng: Callable[[str], Any]
    fleet: Any
    peak: Any = None


class Gateway:
    """Runs the chain; rejected requests end at once (``end``), admitted ones go to the cluster."""

    def __init__(self, params_list: list, view: PolicyView, clock: Callable[[], float],
                 end: Callable[[Request, str], None]) -> None:
        self.clock, self.end = clock, end
        # the peak-hour throttle first: the other policies are given it in their view
        peak = next((POLICIES[p.name](p, view) for p in params_list if p.name == "peak_throttle"), None)
        view = replace(view, peak=peak)
        self.policies = [peak if p.name == "peak_throttle" and peak is not None and p is peak.p
                         else POLICIES[p.name](p, view) for p in params_list]
        self.rejected = 0
        self.peak = peak
        # the hooks each policy does something in (the base class's are no-ops: not called per request)
        self._admits = [(i, p.admit) for i, p in enumerate(self.policies) if _overrides(p, "admit")]
        self._on_done = [p.on_done for p in self.policies if _overrides(p, "on_done")]

    def submit(self, req: Request) -> bool:
        """True if admitted (routed), False if rejected (already ended)."""
        now = self.clock()
        for i, admit in self._admits:
            verdict = admit(req, now)
            if verdict is not None:
                for earlier in self.policies[:i]:
                    earlier.release(req, now)
                outcome, retry_after = verdict
                req.retry_after = retry_after
                self.rejected += 1
                self.end(req, outcome)
                return False
        return True

    def on_done(self, req: Request) -> None:
        now = self.clock()
        for on_done in self._on_done:
            on_done(req, now)


def _overrides(policy, hook: str) -> bool:
    """Does ``policy`` define ``hook`` beyond the base class's no-op?"""
    return getattr(type(policy), hook) is not getattr(Policy, hook)
