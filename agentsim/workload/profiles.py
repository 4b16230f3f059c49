"""Session profiles as data: what one interactive coding agent, API agent or chat user does.

The shipped profiles live in ``data/profiles.toml`` with a source for every default; a
population picks one by name and overrides any parameter (``populations.X.params``).
"""
from __future__ import annotations

import tomllib
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..model.catalog import data_path, format_validation_error
from .distributions import Dist
from ..util.errors import InputError, unknown_name
from .retry import RETRY_POLICIES

GIVE_UP = ("retry_step", "end_session", "fail_session")


class Profile(BaseModel):
    """One session's behaviour. Token counts are tokens; times are seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = ""
    description: str = ""
    sessions_per_user_day: float = Field(ge=0, description="session starts per user per active day (NHPP mean)")
    turns: Dist = Field(description="user turns per session (interactive, chat) — 1 for a task")
    initial_context: Dist = Field(description="system prompt + tools + memory at session start")
    shared_prefix_tokens: int = Field(ge=0, description="leading tokens identical across sessions of the "
                                                        "profile (a cacheable system prompt)")
    first_message: Dist = Field(description="new tokens of the first turn's first step")
    user_message: Dist = Field(description="new tokens of a later turn's first step")
    steps_per_turn: Dist = Field(description="LLM calls per user turn")
    output_tokens: Dist = Field(description="output tokens per LLM call")
    max_tokens: int = Field(ge=1, description="max_tokens requested (rate limits pre-charge it)")
    cache_ttl_s: float | None = Field(None, gt=0, description="prompt-cache TTL the client asks for (s; e.g. 300 "
                                                              "or 3600); unset = the engine's prefix_ttl_s")
    new_context: Dist = Field(description="new tokens (tool results) before each non-first step of a turn")
    context_window: int = Field(ge=1, description="model context window (tokens)")
    compact_at: float = Field(gt=0, le=1, description="compact when the next prompt would exceed this share "
                                                      "of the window")
    compact_summary: Dist = Field(description="context after compaction (besides the shared prefix)")
    tool_calls: Dist = Field(description="parallel tool calls after a step; the step waits for the slowest")
    tool_latency: Dist = Field(description="seconds per tool call")
    think_time: Dist = Field(description="human think time between turns (s)")
    long_think_s: float = Field(ge=0, description="a think time longer than this may end the session")
    long_think_end_prob: float = Field(ge=0, le=1, description="probability that a long think ends the session")
    subagent_prob: float = Field(ge=0, le=1, description="probability that a step spawns a batch of sub-agents")
    subagent_count: Dist = Field(description="sub-agents per batch")
    subagent_cap: int = Field(ge=1, description="sub-agents running at once (the rest wait)")
    subagent_context: int = Field(ge=0, description="a sub-agent's fresh system context (tokens)")
    subagent_task: Dist = Field(description="a sub-agent's task description (tokens)")
    subagent_steps: Dist = Field(description="LLM calls of one sub-agent")
    subagent_returns: Dist = Field(description="tokens a sub-agent returns to its parent")
    retry_policy: str = Field(description="client retry preset (see agentsim.workload.retry.RETRY_POLICIES)")
    timeout_s: float = Field(gt=0, description="client request timeout (s)")
    on_give_up: Literal["retry_step", "end_session", "fail_session"] = Field(
        description="after the client gives up on a call: re-run the step later, end the session, or fail it")
    step_retries: int = Field(0, ge=0, description="retry_step: re-runs of a failed step")
    step_retry_base_s: float = Field(30.0, ge=0, description="retry_step: full-jitter base (s)")
    step_retry_cap_s: float = Field(600.0, ge=0, description="retry_step: full-jitter cap (s)")
    task_requeues: int = Field(0, ge=0, description="after the step re-runs fail: restart the whole task "
                                                    "(fresh context) this many times")
    on_window: Literal["wait", "end_session"] = Field(
        "wait", description="a plan's usage limit (429_window): wait until the window frees, or end the session")
    window_patience_s: float = Field(3600.0, ge=0, description="wait for a usage window at most this long; "
                                                               "beyond it the session ends (outcome 'limited')")
    abandon_ttft_s: float = Field(0.0, ge=0, description="abandon a call whose first token takes longer (0 = never)")
    abandon_prob: float = Field(0.0, ge=0, le=1, description="probability of abandoning when TTFT passes the bound")
    regenerate: bool = Field(False, description="on a visible error, the user regenerates once")
    regenerate_delay: Dist = Field(default_factory=lambda: Dist(kind="constant", value=10.0),
                                   description="delay before a regenerate (s)")
    sources: dict[str, str] = Field(default_factory=dict)

    @field_validator("retry_policy")
    @classmethod
    def _known_retry_policy(cls, v: str) -> str:
        if v not in RETRY_POLICIES:
            raise ValueError(str(unknown_name("retry policy", v, RETRY_POLICIES)))
        return v


@lru_cache(maxsize=1)
def _shipped() -> dict[str, dict]:
    with open(data_path("profiles.toml"), "rb") as f:
        return tomllib.load(f)["profiles"]


def profile_names() -> list[str]:
    return list(_shipped())


def get_profile(name: str, params: dict | None = None, where: str = "profile") -> Profile:
    """A shipped profile with ``params`` overriding its fields (validated, named in errors)."""
    shipped = _shipped()
    if name not in shipped:
        raise unknown_name("profile", name, shipped, where=where)
    base = dict(shipped[name])
    for key in params or {}:
        if key not in Profile.model_fields or key in ("name", "sources"):
            raise unknown_name("profile parameter", key, [k for k in Profile.model_fields if k not in ("name", "sources")],
                               where=f"{where}.params")
    try:
        return Profile(name=name, **{**base, **(params or {})})
    except ValidationError as e:
        raise InputError(format_validation_error(e, f"{where}.params" if params else where)) from None
