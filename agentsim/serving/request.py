"""One LLM call as the engine sees it, and the outcome vocabulary every part of agentsim shares."""
from __future__ import annotations

import math

#: every request ends in exactly one of these (``in_flight`` = still running when the run ended)
OUTCOMES: tuple[str, ...] = (
    "completed", "429_limit", "429_window", "429_spend_cap", "529_overload", "request_too_large",
    "replica_failed", "timed_out", "cancelled", "in_flight",
)


#: refusals: outcomes of a request turned away before any replica ran it (what ``Result`` counts as
#: rejections; gateway policies return them)
REJECTIONS: tuple[str, ...] = ("429_limit", "429_window", "429_spend_cap", "529_overload", "request_too_large")


#: why a call was made (the ``trigger`` column): the first step of a human turn, a step after tool
#: results, a sub-agent's step, a compaction, or a plain stream request
TRIGGERS: tuple[str, ...] = ("request", "user", "tool", "subagent", "compaction")


class Request:
    """A request's sizes, its timestamps and, while it runs, the engine's bookkeeping.

    Timestamps are seconds from the run start (``nan`` until they happen). ``prompt_len`` and
    ``out_left`` change when a preempted request is recomputed: its generated tokens join the
    prompt it must prefill again.
    """

    __slots__ = (
        "rid", "stream", "session", "user", "tenant", "prompt", "output", "prefix_key", "prefix_len", "shared_key", "shared_len",
        "cache_ttl", "priority", "max_tokens",
        "arrival", "ready", "admitted", "first_token", "finish", "outcome", "replica",
        "cached_gpu", "cached_host", "prefill_tokens", "preemptions", "on_done",
        "attempt", "call", "trigger", "retry_after", "population", "tier", "plan", "model",
        # engine state
        "prompt_len", "out_left", "pf_done", "v_join", "b", "finish_v", "seq", "running", "removed", "kv", "load",
        "tps",
    )

    def __init__(self, rid: int, arrival: float, prompt: int, output: int, *, session: int = -1,
                 tenant: int = -1, user: int = -1, stream: int = -1, population: int = -1, prefix_key=None, prefix_len: int | None = None, priority: int = 0,
                 on_done=None) -> None:
        self.rid = rid
        self.session = session
        self.user = user
        self.stream = stream
        self.tenant = tenant
        self.prompt = prompt
        self.output = output
        self.prefix_key = prefix_key
        # leading tokens shared with its key (none without a key: nothing can be expected cached)
        self.prefix_len = (prompt if prefix_key is not None else 0) if prefix_len is None else prefix_len
        self.shared_key = None     # a prefix shared across sessions (system prompt), used on a session miss
        self.shared_len = 0
        self.cache_ttl = None      # prompt-cache TTL the client asked for (s); None = the replica's
        self.priority = priority
        self.max_tokens = output
        self.arrival = arrival
        self.ready = self.admitted = self.first_token = self.finish = math.nan
        self.outcome = "in_flight"
        self.replica = -1
        self.cached_gpu = self.cached_host = self.prefill_tokens = self.preemptions = 0
        self.on_done = on_done
        self.attempt = 0           # 0 = first attempt of its call, n = n-th retry
        self.call = -1             # the logical call (LLM step) this attempt belongs to
        self.trigger = 0           # what caused the call: see TRIGGERS
        self.retry_after = math.nan  # seconds, set by a gateway policy that rejects
        self.population = population
        self.tier = None           # the sender's API tier / consumer plan (stamped by its client) and the
        self.plan = None           # model it asks for: what gateway policies decide on
        self.model = None
        self.prompt_len = prompt
        self.out_left = output
        self.pf_done = 0
        self.v_join = self.b = self.finish_v = self.seq = 0
        self.running = self.removed = False
        self.kv = 0
        self.load = 0   # host-tier tokens still to load before its first chunk
        self.tps = 1.0  # tokens per decode step (speculative decoding draws it on arrival at a replica)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (f"Request(rid={self.rid}, prompt={self.prompt}, output={self.output}, arrival={self.arrival:.6g}, "
                f"outcome={self.outcome})")
