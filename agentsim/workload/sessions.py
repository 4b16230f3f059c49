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

from ..serving.request import TRIGGERS

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


#: what a step tells its turn: go on to the next step, run this step again, or restart the task
NEXT, AGAIN, RESTART = "next", "again", "restart"


class _Session:
    """What the sub-generators of one session share: its parts, its context and its give-up counts."""

    __slots__ = ("pop", "state", "client", "sid", "key", "shared", "context", "reuse", "tries", "regenerated",
                 "requeues")

    def __init__(self, pop, state: SessionState, client, sid: int) -> None:
        self.pop, self.state, self.client, self.sid, self.key = pop, state, client, sid, (pop.index, sid)
        self.shared = self.context = self.reuse = 0
        self.tries = self.requeues = 0          # kept across steps and restarts, as the profile counts them
        self.regenerated = False


def session(pop, sid: int, user: int):
    """An interactive session, a chat conversation or an autonomous task (one process).

    Attempts at the whole task (:func:`_attempt`) until one ends the session; a give-up may
    restart the task up to ``task_requeues`` times.
    """
    tenant = pop.tenant_of(user)
    run = _Session(pop, pop.open_session(sid, -1, tenant, user, kind=0), pop.make_client(tenant, user), sid)
    turns = int(pop.samplers.turns())
    while True:
        outcome = yield from _attempt(run, turns)
        if outcome != RESTART:
            return pop.close_session(run.state, outcome)


def _attempt(run: _Session, turns: int):
    """Generator: one attempt at the whole task, from a fresh context; the session's outcome or RESTART.

    Turns of steps (:func:`_turn`), the human thinking between them; a long think may end the session.
    """
    p, S, state = run.pop.profile, run.pop.samplers, run.state
    run.context = int(S.initial_context())
    run.shared = min(p.shared_prefix_tokens, run.context)
    run.reuse = run.shared      # leading tokens of the context that the session's cache entry holds
    for turn in range(turns):
        state.turns = max(state.turns, turn + 1)
        outcome = yield from _turn(run, turn)
        if outcome is not None:
            return outcome
        if turn < turns - 1:
            think = S.think_time()
            if think > p.long_think_s and run.client.u() < p.long_think_end_prob:
                return "completed"
            state.idle_excess += max(0.0, think - ENGAGED_GAP_CAP_S)
            yield run.pop.env.timeout(think)
    return "completed"


def _turn(run: _Session, turn: int):
    """Generator: a human message and the agent's steps, tools between them; None when the turn is
    done, else what ended the attempt (an outcome or RESTART)."""
    S = run.pop.samplers
    steps = int(S.steps_per_turn())
    new = int(S.first_message() if turn == 0 else S.user_message())
    trigger = USER
    step = 0
    while step < steps:
        result = yield from _step(run, new, trigger)
        if result == AGAIN:
            continue
        if result != NEXT:
            return result
        step += 1
        if step < steps:
            new = yield from _tools(run)
            trigger = TOOL
    return None


def _step(run: _Session, new: int, trigger: int):
    """Generator: one LLM call of the agent — or, when the context is full, the compaction that
    makes room first. NEXT when the step is done, AGAIN to call again (after a compaction or a
    recoverable give-up), else RESTART or the session's outcome."""
    p, S, state = run.pop.profile, run.pop.samplers, run.state
    compacting = run.context + new > p.compact_at * p.context_window
    if compacting:      # one call that turns the context into a summary
        prompt, out, why = run.context, int(S.compact_summary()), COMPACTION
    else:
        prompt, out, why = run.context + new, int(S.output_tokens()), trigger
    req = yield from run.client.call(prompt, out, session=run.sid, prefix_key=run.key, prefix_len=run.reuse,
                                     shared_key=run.pop.shared_key, shared_len=run.shared, max_tokens=p.max_tokens,
                                     trigger=why)
    _count(state, req)
    if req.outcome != "completed":
        state.failed_calls += 1
        return (yield from _after_give_up(run, req))
    run.tries = 0
    if compacting:      # the cached entry holds the old context: only the system prompt matches
        state.compactions += 1
        run.context, run.reuse = run.shared + out, run.shared
        return AGAIN
    run.context = run.reuse = prompt + out
    return NEXT


def _after_give_up(run: _Session, req):
    """Generator: the give-up path — AGAIN (retry, regenerate or a freed window), RESTART the task
    while requeues are left, else the session's outcome."""
    action = yield from _give_up(run.pop, run.client, req, run.tries, run.regenerated)
    if action == "retry":
        run.tries += 1
        return AGAIN
    if action == "regenerate":
        run.regenerated = True
        return AGAIN
    if action == "wait":
        run.state.idle_excess += max(0.0, req.retry_after - ENGAGED_GAP_CAP_S)
        return AGAIN
    if action == "restart" and run.requeues < run.pop.profile.task_requeues:
        run.requeues += 1
        return RESTART
    # "end" (on_give_up = end_session): the user leaves after the service failed them — abandoned, not
    # completed (a chat user who regenerated once and still got an error does not come back to finish)
    return {"abandon": "abandoned", "end": "abandoned", "limited": "limited"}.get(action, "failed")


def _tools(run: _Session):
    """Generator: the tools after a step, and perhaps sub-agents; the new tokens of the next step."""
    pop, p = run.pop, run.pop.profile
    yield from _tool_calls(pop)
    returns = 0
    if p.subagent_prob > 0 and run.client.u() < p.subagent_prob:
        returns = yield from fan_out(pop, run.state, int(pop.samplers.subagent_count()))
    return int(pop.samplers.new_context()) + returns


def _tool_calls(pop):
    """Generator: a step's parallel tool calls (their number drawn), waiting for the slowest."""
    k = int(pop.samplers.tool_calls())
    if k > 0:
        wait = _slowest(pop.samplers.tool_latency, k)
        if wait > 0:
            yield pop.env.timeout(wait)


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
    p, S = pop.profile, pop.samplers
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
            yield from _tool_calls(pop)
            new = int(S.new_context())
    pop.close_session(state, "completed")
    return int(S.subagent_returns())
