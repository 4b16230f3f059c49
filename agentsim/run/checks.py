"""Before simulating: is the scenario runnable, and how much work is it?

Bounds on single fields (``agentsim.run.scenario``) catch typos; this module catches the rest before a
run starts, so a mistake costs a second, not an hour or the machine's memory:

* :func:`check_runnable` refuses scenarios with nothing to simulate or requests no replica could
  ever hold (a prompt distribution whose *minimum* exceeds every replica's KV cache), and returns
  warnings for what is odd but runnable (the share of requests whose tail will end
  ``request_too_large``).
* :func:`estimate_work` gives a rough, deliberately generous estimate of the requests, engine
  events and memory of one run; :func:`check_work` refuses above :data:`MAX_MEMORY_BYTES` or
  :data:`MAX_EVENTS` unless forced (the CLI's ``--force``).

The estimate uses expected values only (profiles' means by Monte-Carlo on a private RNG), so it
never touches the run's random streams: results stay bit-identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model.catalog import env_catalog_files, load_catalog
from ..util.errors import InputError
from ..workload.distributions import draw, draw_tokens
from ..workload.profiles import get_profile
from ..workload.sources import read_replay_csv
from .build import pool_deployment, sliced

#: peak bytes per simulated request (recorder columns, the Result's table and its one copy;
#: tests/test_ux.py holds a million requests under 1 GB)
BYTES_PER_REQUEST = 1_000
#: bytes per live client process (closed-loop client, fleet worker) and per replica (engine,
#: prefix cache, accounting)
BYTES_PER_CLIENT = 2_000
BYTES_PER_REPLICA = 50_000
#: engine events per request (measured ``events_per_request`` is 5-15; generous)
EVENTS_PER_REQUEST = 20
#: a decode step is never faster than this: bounds a closed loop's request rate from above
STEP_FLOOR_S = 0.005
#: refuse above these (``--force`` lifts): 16 GB is what a laptop or a CI runner can give one run;
#: 2e9 events are hours of CPU
MAX_MEMORY_BYTES = 16e9
MAX_EVENTS = 2e9


@dataclass(frozen=True)
class Work:
    """Rough size of one run (one replication, one slice)."""

    requests: float
    clients: float
    replicas: int

    @property
    def events(self) -> float:
        return self.requests * EVENTS_PER_REQUEST

    @property
    def memory_bytes(self) -> float:
        return self.requests * BYTES_PER_REQUEST + self.clients * BYTES_PER_CLIENT + self.replicas * BYTES_PER_REPLICA

    def times(self, k: int) -> "Work":
        """``k`` runs held at once (replications kept for their summary)."""
        return Work(self.requests * k, self.clients * k, self.replicas * k)

    @property
    def too_big(self) -> bool:
        return self.memory_bytes > MAX_MEMORY_BYTES or self.events > MAX_EVENTS

    def describe(self) -> str:
        return (f"about {_n(self.requests)} requests, {_n(self.events)} engine events and "
                f"{self.memory_bytes / 1e9:.3g} GB of memory (limits: {MAX_MEMORY_BYTES / 1e9:g} GB, "
                f"{_n(MAX_EVENTS)} events)")


def _n(x: float) -> str:
    return f"{x:,.0f}" if x < 1e7 else f"{x:.2g}"


def _mean(d, n: int = 20_000) -> float:
    """Mean of a distribution after clipping (private RNG: the run's streams are untouched)."""
    return float(draw(d, np.random.default_rng(0), n).mean())


def _lowest(d) -> float:
    """The smallest value a distribution can produce (after offset, rounding and clipping)."""
    if d.kind == "constant":
        lo = d.value
    elif d.kind == "uniform":
        lo = d.low
    elif d.kind == "mixture":
        return min(_lowest(c) for c in d.components)
    else:
        lo = 0.0
    lo += d.offset
    lo = {"round": round, "ceil": math.ceil, "floor": math.floor}.get(d.round, float)(lo)
    return min(max(lo, d.min), d.max)


def _tokens_lowest(d) -> int:
    return max(1, round(_lowest(d)))


def _replay_rows(path: str | None) -> int:
    if not path or not Path(path).is_file():
        return 0
    with open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def _profile_load(profile) -> tuple[float, float]:
    """(calls per session, a lower bound of a session's seconds) of a profile, from its means."""
    turns, steps = _mean(profile.turns), _mean(profile.steps_per_turn)
    sub = profile.subagent_prob * _mean(profile.subagent_count) * _mean(profile.subagent_steps)
    calls = max(1.0, turns * steps * (1 + sub))
    seconds = calls * _mean(profile.output_tokens) * STEP_FLOOR_S + max(0.0, turns - 1) * _mean(profile.think_time)
    return calls, max(seconds, STEP_FLOOR_S)


def estimate_work(sc) -> Work:
    """Requests, live clients and replicas of one run of ``sc`` (one slice if it is sliced)."""
    s = sliced(sc)
    share = 1.0 / sc.slice.count
    dur = s.duration_s
    requests = clients = 0.0
    for st in s.streams.values():
        if st.kind == "poisson":
            n = st.rate * dur
            requests += min(n, st.count) if st.count else n
        elif st.kind == "concurrency":
            per = _mean(st.output_tokens) * STEP_FLOOR_S + (_mean(st.think_s) if st.think_s else 0.0)
            n = st.concurrency * dur / max(per, STEP_FLOOR_S)
            requests += min(n, st.count) if st.count else n
            clients += min(st.concurrency, st.count) if st.count else st.concurrency   # the rest never send
        elif st.kind == "all_at_once":
            requests += st.count
        else:
            rows = _replay_rows(st.file)
            requests += min(rows, st.count) if st.count else rows
    for name, p in s.populations.items():
        prof = get_profile(p.profile, p.params, where=f"populations.{name}")
        calls, seconds = _profile_load(prof)
        if p.kind == "open":
            sessions = p.size * share * prof.sessions_per_user_day * dur / 86400.0
        else:
            clients += p.size
            closed = p.size * dur / seconds
            sessions = min(closed, p.task_rate * dur) if p.task_rate > 0 else closed
        requests += sessions * calls
    return Work(requests=requests, clients=clients, replicas=sum(p.replicas for p in s.pools.values()))


def check_work(work: Work, force: bool, what: str = "this run",
               advice: str = "shorten duration_s, lower the load or run it as --slices N") -> None:
    """Refuse a run estimated above the limits, saying how big it is and how to proceed."""
    if work.too_big and not force:
        raise InputError(f"{what} is too big to start: {work.describe()}; {advice}, or add --force to run it "
                         f"anyway")


def check_runnable(sc, catalog=None) -> list[str]:
    """Refuse a scenario with nothing to simulate or requests no replica can hold; return warnings.

    Degenerate on purpose or not, such runs "succeed" with a table of dashes, or with energy and
    cost figures for zero requests.
    """
    if not sc.streams and not sc.populations:
        raise InputError("the scenario has nothing to simulate: no [streams.NAME] and no [populations.NAME] "
                         "(add a stream, e.g. --set streams.chat.rate=5, or a population)")
    capacity = max_kv_capacity(sc, catalog)
    warnings = []
    for name, st in sc.streams.items():
        if st.kind == "replay":     # read (and so check) the file now, not when the run reaches it
            read_replay_csv(st.file)
            continue
        low = _tokens_lowest(st.input_tokens) + _tokens_lowest(st.output_tokens)
        if low > capacity:
            raise InputError(f"streams.{name}.input_tokens: every request needs at least {low} tokens of KV "
                             f"(prompt + output) but the largest replica holds {capacity}; lower input_tokens or "
                             "output_tokens, or use GPUs, tp or pp with more memory")
        share = too_large_share(st.input_tokens, st.output_tokens, capacity)
        if share > 0:
            warnings.append(f"streams.{name}: about {share:.2%} of requests (prompt + output over the largest "
                            f"replica's {capacity} KV tokens) will end request_too_large")
    for name, p in sc.populations.items():
        prof = get_profile(p.profile, p.params, where=f"populations.{name}")
        low = (min(_tokens_lowest(prof.initial_context), prof.context_window) + _tokens_lowest(prof.first_message)
               + _tokens_lowest(prof.output_tokens))
        if low > capacity:
            raise InputError(f"populations.{name}: a session's first call needs at least {low} tokens of KV "
                             f"(initial_context + first_message + output) but the largest replica holds "
                             f"{capacity}; use GPUs, tp or pp with more memory")
    return warnings


def too_large_share(input_tokens, output_tokens, capacity: int, n: int = 50_000) -> float:
    """Share of requests whose prompt + output exceeds ``capacity`` (private RNG)."""
    rng = np.random.default_rng(0)
    total = draw_tokens(input_tokens, rng, n) + draw_tokens(output_tokens, rng, n)
    return float((total > capacity).mean())


def max_kv_capacity(sc, catalog=None) -> int:
    """KV tokens of the largest replica of any pool (deployment errors name the pool)."""
    catalog = catalog or load_catalog(env_catalog_files() + tuple(sc.catalog))
    best = 0
    for name, p in sc.pools.items():
        try:
            dep, _ = pool_deployment(catalog, p, sc.pool_engine(name))   # a preset may set the KV dtype
        except InputError as e:
            raise InputError(f"pools.{name}: {e}") from None
        best = max(best, dep.kv_capacity_tokens)
    return best
