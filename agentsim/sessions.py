"""Agent sessions as SimPy processes: turns of LLM steps, tools, think time, compaction, sub-agents.

A session's context grows by each step's new tokens and its output; the next call's prompt is
the whole context, of which everything but the new tokens is a prefix the provider may have
cached (``prefix_len``) under the session's key. The system prompt is a prefix shared by all
sessions of a population. Between the steps of a turn the agent runs tools (the step waits for
the slowest of its parallel calls) and may fan out sub-agents, which run as child processes —
their own sessions, with fresh contexts and cold prefills — joined before the parent goes on.
Between turns the human thinks; a long think may end the session.

What giving up on a call means is the profile's ``on_give_up``: re-run the step later (full
jitter), then restart the whole task (``task_requeues``), then fail; or end the session; or
fail it at once.
"""
from __future__ import annotations

import math

from simpy.events import AllOf

from .request import TRIGGERS

USER, TOOL, SUBAGENT, COMPACTION = (TRIGGERS.index(t) for t in ("user", "tool", "subagent", "compaction"))
SESSION_OUTCOMES = ("completed", "failed", "abandoned", "limited", "in_flight")
ENGAGED_GAP_CAP_S = 3600.0


class SessionState:
    """What the session recorder needs about one session (kept while it runs)."""

    __slots__ = ("sid", "parent", "tenant", "user", "start", "end", "turns", "calls", "attempts", "retries",
                 "failed_calls", "input_tokens", "cached_tokens", "output_tokens", "idle_excess", "compactions",
                 "subagents", "outcome", "kind")

    def __init__(self, sid: int, parent: int, tenant: int, user: int, start: float, kind: int) -> None:
        self.sid, self.parent, self.tenant, self.user, self.start, self.kind = sid, parent, tenant, user, start, kind
        self.end = math.nan
        self.turns = self.calls = self.attempts = self.retries = self.failed_calls = 0
        self.input_tokens = self.cached_tokens = self.output_tokens = 0
        self.idle_excess = 0.0
        self.compactions = self.subagents = 0
        self.outcome = "in_flight"


def _count(state: SessionState, req) -> None:
    state.attempts += req.attempt + 1
    state.retries += req.attempt
    if req.outcome == "completed":
        state.calls += 1
        state.input_tokens += req.prompt
        state.cached_tokens += req.cached_gpu + req.cached_host
        state.output_tokens += req.output


def _slowest(latency, k: int) -> float:
    """The slowest of ``k >= 1`` parallel tool calls (``max`` of ``k`` draws, without a generator)."""
    wait = latency()
    for _ in range(k - 1):
        t = latency()
        if t > wait:
            wait = t
    return wait


def session(pop, sid: int, user: int):
    """An interactive session, a chat conversation or an autonomous task (one process)."""
    p, S, env = pop.profile, pop.samplers, pop.env
    tenant = pop.tenant_of(user)
    state = pop.open_session(sid, -1, tenant, user, kind=0)
    client = pop.make_client(tenant, user)
    key = (pop.index, sid)
    requeues = tries = 0
    regenerated = False
    outcome = "completed"
    turns = int(S.turns())
    while True:                                 # one pass = one attempt at the whole task
        context = int(S.initial_context())
        shared = min(p.shared_prefix_tokens, context)
        reuse = shared          # leading tokens of `context` that the session's cache entry holds
        restart = False
        for turn in range(turns):
            state.turns = max(state.turns, turn + 1)
            steps = int(S.steps_per_turn())
            new = int(S.first_message() if turn == 0 else S.user_message())
            trigger = USER
            step = 0
            while step < steps:
                compacting = context + new > p.compact_at * p.context_window
                if compacting:      # one call that turns the context into a summary
                    prompt, out, why = context, int(S.compact_summary()), COMPACTION
                else:
                    prompt, out, why = context + new, int(S.output_tokens()), trigger
                req = yield from client.call(prompt, out, session=sid, prefix_key=key, prefix_len=reuse,
                                             shared_key=pop.shared_key, shared_len=shared, max_tokens=p.max_tokens,
                                             trigger=why)
                _count(state, req)
                if req.outcome != "completed":
                    state.failed_calls += 1
                    action = yield from _give_up(pop, client, req, tries, regenerated)
                    if action == "retry":
                        tries += 1
                        continue
                    if action == "regenerate":
                        regenerated = True
                        continue
                    if action == "wait":
                        state.idle_excess += max(0.0, req.retry_after - ENGAGED_GAP_CAP_S)
                        continue
                    if action == "restart" and requeues < p.task_requeues:
                        requeues += 1
                        restart = True
                        break
                    outcome = {"abandon": "abandoned", "end": "completed", "limited": "limited"}.get(action, "failed")
                    return pop.close_session(state, outcome)
                tries = 0
                if compacting:      # the cached entry holds the old context: only the system prompt matches
                    state.compactions += 1
                    context, reuse = shared + out, shared
                    continue
                context = reuse = prompt + out
                step += 1
                if step < steps:
                    returns = 0
                    k = int(S.tool_calls())
                    if k > 0:
                        wait = _slowest(S.tool_latency, k)
                        if wait > 0:
                            yield env.timeout(wait)
                    if p.subagent_prob > 0 and client.u() < p.subagent_prob:
                        returns = yield from fan_out(pop, state, int(S.subagent_count()))
                    new = int(S.new_context()) + returns
                    trigger = TOOL
            if restart:
                break
            if turn < turns - 1:
                think = S.think_time()
                if think > p.long_think_s and client.u() < p.long_think_end_prob:
                    return pop.close_session(state, "completed")
                state.idle_excess += max(0.0, think - ENGAGED_GAP_CAP_S)
                yield env.timeout(think)
        if not restart:
            return pop.close_session(state, outcome)


def _give_up(pop, client, req, tries: int, regenerated: bool):
    """Generator: decide (and wait for) what happens after the client gave up on a call.

    Returns ``retry`` (run the step again after a full-jitter pause), ``regenerate`` (a chat
    user's one retry), ``wait`` (a usage window freed), ``restart`` (the whole task), ``end``,
    ``limited``, ``abandon`` or ``fail``.
    """
    p, env = pop.profile, pop.env
    if req.outcome == "cancelled" and req.first_token != req.first_token and p.abandon_ttft_s > 0:
        return "abandon"
    if req.outcome == "429_window":
        wait = req.retry_after
        if p.on_window == "wait" and wait == wait and wait <= p.window_patience_s:
            yield env.timeout(wait)
            return "wait"
        return "limited"
    if p.regenerate and not regenerated:
        yield env.timeout(pop.samplers.regenerate_delay())
        return "regenerate"
    if p.on_give_up == "end_session":
        return "end"
    if p.on_give_up == "fail_session":
        return "fail"
    if tries < p.step_retries and req.outcome not in ("429_spend_cap", "request_too_large"):
        yield env.timeout(client.u() * min(p.step_retry_cap_s, p.step_retry_base_s * 2.0 ** tries))
        return "retry"
    return "restart"


def fan_out(pop, parent: SessionState, n: int):
    """Generator: run ``n`` sub-agents (at most ``subagent_cap`` at once); returns their tokens."""
    env, cap = pop.env, pop.profile.subagent_cap
    total = 0
    for lo in range(0, n, cap):
        procs = [env.process(subagent(pop, parent)) for _ in range(min(cap, n - lo))]
        yield AllOf(env, procs)
        total += sum(p.value for p in procs)
    parent.subagents += n
    return total


def subagent(pop, parent: SessionState):
    """A sub-agent: a fresh context, a few steps with tools, a summary back to its parent."""
    p, S, env = pop.profile, pop.samplers, pop.env
    sid = pop.new_session_id()
    state = pop.open_session(sid, parent.sid, parent.tenant, parent.user, kind=1)
    client = pop.make_client(parent.tenant, parent.user)
    key = (pop.index, sid)
    shared = min(p.shared_prefix_tokens, p.subagent_context)
    context = p.subagent_context
    new = int(S.subagent_task())
    steps = int(S.subagent_steps())
    state.turns = 1
    for step in range(steps):
        prompt = context + new
        out = int(S.output_tokens())
        req = yield from client.call(prompt, out, session=sid, prefix_key=key, prefix_len=context,
                                     shared_key=pop.shared_key, shared_len=shared, max_tokens=p.max_tokens,
                                     trigger=SUBAGENT)
        _count(state, req)
        if req.outcome != "completed":
            state.failed_calls += 1
            pop.close_session(state, "failed")
            return 0
        context = prompt + out
        if step < steps - 1:
            k = int(S.tool_calls())
            if k > 0:
                wait = _slowest(S.tool_latency, k)
                if wait > 0:
                    yield env.timeout(wait)
            new = int(S.new_context())
    pop.close_session(state, "completed")
    return int(S.subagent_returns())
