"""Capacity search: the smallest fleet (or largest load) that meets an SLO, by bisection.

``capacity(scenario, slos=["ttft_p99_s<=2"], vary="pools.h100.replicas")`` varies one numeric
scenario field over ``low, low + step, …`` and finds

* for a **resource** (``replicas``, ``max_batch``, ``token_budget``, ``host_kv_gb``): the
  smallest value at which every SLO holds;
* for a **load** (a population's ``size``, ``workers``, a stream's ``rate``, ``concurrency``,
  ``count``, a fleet's ``task_rate``): the largest value at which every SLO holds.

Other fields need ``goal="min"`` or ``"max"``. The search assumes the SLO figures are monotone
in the field: it gallops from the scenario's current value (doubling the distance from ``low``
until the answer is bracketed), then bisects down to one ``step``.

**Replications and the decision.** Each probed value runs ``replications`` seeds — the same
seeds ``seed … seed+R-1`` at every value (common random numbers, so neighbouring values differ
by the field, not by the draws). An SLO ``METRIC<=X`` holds at a value when the mean of METRIC
over the replications is <= X (NaN — no request completed — never holds).

**Confidence.** The answer is reported with each SLO metric's mean and 95 % Student-t interval
over the replications at the answer and at its neighbour (answer − step for a resource, answer
+ step for a load), the value just on the other side of the SLO. ``confident`` is true when, at
the answer, every SLO's interval lies within its bound and, at the neighbour, some SLO's
interval lies entirely outside its bound: then more replications would not move the answer (as
far as a 95 % interval can say). Otherwise raise ``replications``.

SLO syntax: ``METRIC<=X``, ``METRIC>=X`` (also ``<``, ``>``) over the summary's keys, nested
ones dotted (``pools.h100.busy_share``, ``outcomes.529_overload``); every SLO must hold.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..run.build import build
from ..serving.request import OUTCOMES
from ..util.errors import InputError
from ..util.stats import mean_interval, summary_range
from ..workload.sessions import SESSION_OUTCOMES
from .grid import check_path
from .sweep import Pool, flatten, load_point, plan_rows

RESOURCE_FIELDS = ("replicas", "max_batch", "token_budget", "host_kv_gb")
LOAD_FIELDS = ("size", "workers", "rate", "concurrency", "count", "task_rate")
MAX_STEPS = 1 << 20
_SLO = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.:\-]*)\s*(<=|>=|<|>|=<|=>)\s*"
                  r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Slo:
    metric: str
    op: str
    bound: float

    def holds(self, x: float) -> bool:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return False
        return {"<=": x <= self.bound, "<": x < self.bound, ">=": x >= self.bound, ">": x > self.bound}[self.op]

    def inside(self, lo: float, hi: float) -> bool:
        """The whole interval meets the bound."""
        return self.holds(hi) if self.op in ("<=", "<") else self.holds(lo)

    def outside(self, lo: float, hi: float) -> bool:
        """The whole interval misses the bound."""
        return not self.holds(lo) if self.op in ("<=", "<") else not self.holds(hi)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_slo(text: str) -> Slo:
    """``'ttft_p99_s<=2'`` → Slo; an InputError naming the text otherwise."""
    m = _SLO.match(text or "")
    if not m:
        raise InputError(f"--slo {text!r}: cannot parse; expected METRIC<=X or METRIC>=X, e.g. 'ttft_p99_s<=2'")
    op = {"=<": "<=", "=>": ">="}.get(m.group(2), m.group(2))
    return Slo(m.group(1), op, float(m.group(3)))


def known_metrics(sc) -> set[str]:
    """The summary keys (flattened) a run of ``sc`` reports: from a zero-length run."""
    keys = {f"outcomes.{o}" for o in OUTCOMES}
    if sc.populations:
        keys |= {f"session_outcomes.{o}" for o in SESSION_OUTCOMES}
    dry = sc.model_copy(update={"duration_s": 1e-9, "warmup_s": 0.0, "outages": []})
    keys |= set(flatten(build(dry, sc.seed).run().summary()))
    return keys - {"sim_wall_s"}


def check_metrics(slos: list[Slo], known: set[str]) -> None:
    for s in slos:
        if s.metric not in known:
            near = difflib.get_close_matches(s.metric, sorted(known), n=1, cutoff=0.5)
            raise InputError(f"--slo {str(s)!r}: unknown metric {s.metric!r}"
                             + (f"; did you mean {near[0]!r}?" if near else "")
                             + " (summary keys; `agentsim run --format json` shows them)")


def infer_goal(path: str) -> str:
    last = path.rsplit(".", 1)[-1]
    if last in RESOURCE_FIELDS:
        return "min"
    if last in LOAD_FIELDS:
        return "max"
    raise InputError(f"--vary {path!r}: is more of it better or worse? give --goal min (smallest value that "
                     f"meets the SLO, like a fleet size) or --goal max (largest, like a load)")


@dataclass
class Probe:
    value: float
    holds: bool
    stats: dict[str, tuple[float, float, float]]    # metric -> (mean, ci_low, ci_high)
    keys: list[str]

    def as_dict(self) -> dict:
        out: dict = {"value": self.value, "holds": self.holds}
        for m, (mean, lo, hi) in self.stats.items():
            out[m] = mean
            out[f"{m}_ci_low"], out[f"{m}_ci_high"] = lo, hi
        return out


@dataclass
class CapacityResult:
    vary: str
    goal: str
    slos: list[Slo]
    replications: int
    seeds: list[int]
    answer: float | None
    neighbour: float | None
    probes: list[Probe] = field(default_factory=list)
    note: str = ""

    def probe(self, v) -> Probe | None:
        return next((p for p in self.probes if p.value == v), None)

    @property
    def confident(self) -> bool:
        a, n = self.probe(self.answer), self.probe(self.neighbour)
        if a is None or n is None or self.replications < 2:
            return False
        return (all(s.inside(*a.stats[s.metric][1:]) for s in self.slos)
                and any(s.outside(*n.stats[s.metric][1:]) for s in self.slos))

    def as_dict(self) -> dict:
        out: dict = {"vary": self.vary, "goal": self.goal, "slo": [str(s) for s in self.slos],
                     "answer": self.answer, "neighbour": self.neighbour, "confident": self.confident,
                     "replications": self.replications, "seeds": self.seeds}
        for label, v in (("answer", self.answer), ("neighbour", self.neighbour)):
            p = self.probe(v)
            for s in self.slos:
                mean, lo, hi = p.stats[s.metric] if p is not None else (math.nan,) * 3
                out[f"{label}:{s.metric}"] = mean
                out[f"{label}:{s.metric}_ci_low"], out[f"{label}:{s.metric}_ci_high"] = lo, hi
        out["note"] = self.note
        out["probes"] = [p.as_dict() for p in sorted(self.probes, key=lambda p: p.value)]
        return out


def capacity(scenario, slos, vary: str, *, goal: str | None = None, low: float | None = None,
             high: float | None = None, step: float | None = None, replications: int = 3, seed: int | None = None,
             overrides=(), slices: int = 1, slice_sample: int | None = None, executor=None,
             address: str | None = None, workers: int | None = None, out_dir: str | Path | None = None,
             progress: bool = True, connect_timeout: float = 10.0) -> CapacityResult:
    """Search ``vary`` for the smallest (``goal='min'``) or largest (``'max'``) value meeting ``slos``."""
    slos = [s if isinstance(s, Slo) else parse_slo(s) for s in ([slos] if isinstance(slos, (str, Slo)) else slos)]
    if not slos:
        raise InputError("capacity needs at least one --slo, e.g. --slo 'ttft_p99_s<=2'")
    if replications < 1:
        raise InputError(f"--replications must be >= 1, got {replications}")
    base = load_point(scenario, list(overrides))
    current = check_path(base.model_dump(mode="json"), vary, "--vary")
    if current is not None and (isinstance(current, bool) or not isinstance(current, (int, float))):
        raise InputError(f"--vary {vary!r}: not a number (it is {current!r})")
    goal = goal or infer_goal(vary)
    if goal not in ("min", "max"):
        raise InputError(f"--goal must be min or max, got {goal!r}")
    axis = _Axis(current, low, high, step)
    check_metrics(slos, known_metrics(base))
    seed = base.seed if seed is None else seed
    seeds = [seed + i for i in range(replications)]
    metrics = list(dict.fromkeys(s.metric for s in slos))
    result = CapacityResult(vary, goal, slos, replications, seeds, None, None)
    cache: dict[int, Probe] = {}

    with Pool(executor, address, workers, out_dir, progress, connect_timeout) as pool:
        if address:
            pool.connect()

        def probe(k: int) -> Probe:
            """The SLO figures at grid step ``k`` (each value simulated once)."""
            if k in cache:
                return cache[k]
            v = axis.value(k)
            sc = load_point(scenario, list(overrides) + [f"{vary}={v!r}"])
            rows = plan_rows(sc, {vary: v}, seeds, slices, slice_sample)
            pool.run([t for r in rows for t in r.tasks], desc=f"{vary}={v}")
            figs = [flatten(r.summary(pool)) for r in rows]
            stats = {m: mean_interval([f.get(m, math.nan) for f in figs], valid=summary_range(m)) for m in metrics}
            p = Probe(v, all(s.holds(stats[s.metric][0]) for s in slos), stats, [r.key for r in rows])
            cache[k] = p
            result.probes.append(p)
            return p

        # p(k) = "past the answer": the SLO holds (resource) or fails (load); monotone False..True in k
        past = (lambda k: probe(k).holds) if goal == "min" else (lambda k: not probe(k).holds)  # noqa: E731
        first, last_before = _first_true(past, axis.k_of(current) if current is not None else 0, axis.k_high)
    _answer(result, axis, first, last_before)
    return result


class _Axis:
    """The searched values: ``low + k·step`` for k = 0 … ``k_high``, integers when all bounds are."""

    def __init__(self, current, low: float | None, high: float | None, step: float | None) -> None:
        self.integer = not isinstance(current, float) and all(isinstance(x, int) or x is None or float(x).is_integer()
                                                              for x in (low, high, step))
        self.step = step if step is not None else 1
        if self.step <= 0:
            raise InputError(f"--step must be > 0, got {self.step}")
        self.low = low if low is not None else self.step
        if high is not None and high < self.low:
            raise InputError(f"--high ({high:g}) is below --low ({self.low:g})")
        self.k_high = self.k_of(high) if high is not None else MAX_STEPS

    def value(self, k: int):
        v = self.low + k * self.step
        return int(round(v)) if self.integer else float(v)

    def k_of(self, v: float) -> int:
        return max(0, int(round((v - self.low) / self.step)))


def _answer(result: CapacityResult, axis: _Axis, first: int | None, last_before: int | None) -> None:
    """Set ``result``'s answer, neighbour and note from where the search found the SLO change."""
    grid = axis.value
    if result.goal == "min":
        if first is None:
            result.note = f"the SLO does not hold at {grid(last_before)} (the largest value tried)"
        else:
            result.answer = grid(first)
            result.neighbour = grid(last_before) if last_before is not None else None
            if last_before is None:
                result.note = f"the SLO holds at --low ({grid(first)}); nothing smaller was tried"
    else:
        if last_before is None:
            result.note = f"the SLO does not hold even at --low ({grid(first)})"
        else:
            result.answer = grid(last_before)
            result.neighbour = grid(first) if first is not None else None
            if first is None:
                result.note = f"the SLO still holds at {grid(last_before)} (the largest value tried)"


def _first_true(p, start: int, k_high: int) -> tuple[int | None, int | None]:
    """Smallest k in [0, k_high] with p(k), for p monotone False→True; and the largest k seen with
    not p(k) just below it (None if the answer is k = 0). (None, k_max) if p never holds."""
    k = min(max(start, 0), k_high)
    lo_false: int | None = None
    if p(k):
        hi_true = k
        while hi_true > 0:                     # gallop down towards 0: halve the distance
            nxt = hi_true // 2
            if p(nxt):
                hi_true = nxt
            else:
                lo_false = nxt
                break
        if lo_false is None:
            return 0, None
    else:
        lo_false = k
        while True:                            # gallop up: double the distance from 0
            if lo_false >= k_high:
                return None, lo_false
            nxt = min(k_high, 2 * lo_false + 1)
            if nxt >= MAX_STEPS:
                raise InputError(f"capacity: no value up to {MAX_STEPS} steps meets the SLO; give --high")
            if p(nxt):
                hi_true = nxt
                break
            lo_false = nxt
    while hi_true - lo_false > 1:
        mid = (lo_false + hi_true) // 2
        if p(mid):
            hi_true = mid
        else:
            lo_false = mid
    return hi_true, lo_false
