"""Public LLM-inference traces: validated readers, and replay through the simulator.

Three formats (the files in ``shared/traces/`` are examples of each):

* ``azure`` — Azure LLM inference trace 2023 (Splitwise), CSV ``TIMESTAMP,ContextTokens,
  GeneratedTokens``; ``TIMESTAMP`` is a date-time with up to 9 fractional digits (the files have
  7). Arrivals are taken relative to the earliest row. No prefix information.
* ``mooncake`` — Mooncake FAST'25 traces, JSONL with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (one chained hash per 512-token prompt block; an equal hash
  is the same block with the same prefix, so reusable KV). Arrivals relative to the earliest row (the files start at
  0). The hashes drive :class:`~agentsim.block_cache.BlockPrefixCache`.
* ``tracelab`` — TraceLab session-runner CSV (``replay/README.md`` upstream):
  ``session_id`` (or ``id``), ``round_idx``, ``prefix_len``, ``input_len``, ``output_len``,
  ``tool_wait_after_ms`` and optionally ``arrival_time`` (ms, the session's start; a missing
  column or empty value means 0). A session is a closed loop: round ``k`` is sent, its full
  response awaited, then ``tool_wait_after_ms`` slept before round ``k+1``; the first round is
  sent at the session's ``arrival_time`` (that of its lowest ``round_idx``). A round's prompt is
  ``prefix_len + input_len`` tokens, of which ``prefix_len`` are prior context the provider may
  have cached under the session's key. A round that does not complete ends its session (as
  upstream's runner does).

Every reader error is an :class:`~agentsim.errors.InputError` naming the file, the line and the
column. :func:`replay` runs a trace on a scenario's cluster (its streams and populations are
replaced by the trace) until the trace's last request ends.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from simpy.core import StopSimulation
from simpy.events import NORMAL, Event

from .block_cache import BLOCK_TOKENS
from .errors import InputError
from .request import TRIGGERS

TRACE_FORMATS = ("azure", "mooncake", "tracelab")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
TRACELAB_COLUMNS = ("session_id", "round_idx", "prefix_len", "input_len", "output_len", "tool_wait_after_ms")
REQUEST, USER, TOOL = (TRIGGERS.index(t) for t in ("request", "user", "tool"))


# -- records ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One open-loop request: arrival (s from the trace start), sizes, prompt block hashes."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class TraceRound:
    """One round (LLM call) of a TraceLab session."""

    round_idx: int
    prefix_len: int
    input_len: int
    output_len: int
    tool_wait_s: float
    line: int = 0

    @property
    def prompt(self) -> int:
        return self.prefix_len + self.input_len


@dataclass(frozen=True, slots=True)
class TraceSession:
    """A TraceLab session: its id as written, an integer id for the records, start, rounds in order.

    ``sid`` is the id itself when every session id of the file is an integer, else the session's
    ordinal in order of first appearance.
    """

    session_id: str
    sid: int
    arrival_s: float
    rounds: tuple[TraceRound, ...]


@dataclass(frozen=True)
class Trace:
    """A parsed trace: open-loop ``requests`` (azure, mooncake) or closed-loop ``sessions`` (tracelab)."""

    path: str
    format: str
    requests: tuple[TraceRequest, ...] = ()
    sessions: tuple[TraceSession, ...] = ()

    @property
    def n_requests(self) -> int:
        return len(self.requests) if self.format != "tracelab" else sum(len(s.rounds) for s in self.sessions)

    @property
    def last_arrival_s(self) -> float:
        """The last open-loop arrival, or the last session start."""
        if self.format == "tracelab":
            return max((s.arrival_s for s in self.sessions), default=0.0)
        return self.requests[-1].arrival_s if self.requests else 0.0

    def ideal_hit_rate(self, block_tokens: int = BLOCK_TOKENS) -> float | None:
        """The best token-weighted prefix hit rate the trace allows (None without prefix information).

        Mooncake: an infinite cache of ``block_tokens``-token blocks; a request reuses the longest
        run of leading blocks seen in any earlier request (arrival order, file order on ties), at
        ``block_tokens`` tokens a block capped by its input length. TraceLab: the planned rate
        ``Σ prefix_len / Σ (prefix_len + input_len)``. Azure: None.
        """
        if self.format == "mooncake":
            return ideal_block_hit_rate(self.requests, block_tokens)
        if self.format == "tracelab":
            rounds = [r for s in self.sessions for r in s.rounds]
            total = sum(r.prompt for r in rounds)
            return sum(r.prefix_len for r in rounds) / total if total else None
        return None


def ideal_block_hit_rate(requests, block_tokens: int = BLOCK_TOKENS) -> float | None:
    """Token-weighted hit rate of an infinite block cache over ``requests`` in the given order."""
    seen: set = set()
    hit = total = 0
    for r in requests:
        run = 0
        for h in r.hash_ids or ():
            if h not in seen:
                break
            run += 1
        hit += min(run * block_tokens, r.input_tokens)
        total += r.input_tokens
        seen.update(r.hash_ids or ())
    return hit / total if total else None


# -- readers ----------------------------------------------------------------------------------------
def read_trace(path: str | Path, fmt: str) -> Trace:
    """Read and validate a trace file of format ``azure``, ``mooncake`` or ``tracelab``."""
    readers = {"azure": read_azure, "mooncake": read_mooncake, "tracelab": read_tracelab}
    if fmt not in readers:
        from .errors import unknown_name
        raise unknown_name("trace format", fmt, TRACE_FORMATS, where="--trace-format")
    try:
        return readers[fmt](path)
    except UnicodeDecodeError as e:
        from .scenario import not_utf8
        raise InputError(f"trace file {path}: {not_utf8(e)}") from None


def _open(path: str | Path, what: str):
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p}: is a directory, not a file")
    try:
        return open(p, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"{what} {p}: cannot open ({e.strerror})") from None


def _bad(path, line: int, msg: str) -> InputError:
    return InputError(f"trace file {path}, line {line}: {msg}")


def _int(path, line: int, col: str, text: str, low: int) -> int:
    try:
        v = int(text.strip())
    except (ValueError, AttributeError):
        v = None
        try:       # accept integral floats written as 12.0
            f = float(text)
            if f.is_integer():
                v = int(f)
        except (ValueError, TypeError):
            pass
    if v is None:
        raise _bad(path, line, f"column {col!r}: expected an integer >= {low}, got {text!r}")
    if v < low:
        raise _bad(path, line, f"column {col!r}: expected an integer >= {low}, got {v}")
    return v


def _float(path, line: int, col: str, text: str) -> float:
    try:
        v = float(text)
    except (ValueError, TypeError):
        raise _bad(path, line, f"column {col!r}: expected a number >= 0, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise _bad(path, line, f"column {col!r}: expected a number >= 0, got {text!r}")
    return v


def _csv_rows(path, f, required: tuple[str, ...], what: str, alternatives: dict | None = None):
    """The header (validated) and ``(line, row dict)`` for every non-blank data row."""
    reader = csv.reader(f)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise _bad(path, 1, f"not valid CSV ({e})") from None
    if not header or not any(h.strip() for h in header):
        raise InputError(f"trace file {path}: empty, expected a CSV header with columns {', '.join(required)}")
    header = [h.strip() for h in header]
    alternatives = alternatives or {}
    missing = [c for c in required if c not in header and not any(a in header for a in alternatives.get(c, ()))]
    if missing:
        raise InputError(f"trace file {path}: missing column(s) {', '.join(missing)} for the {what} format; "
                         f"needs {', '.join(required)} (has {', '.join(header)})")
    n = len(header)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise _bad(path, reader.line_num, f"not valid CSV ({e})") from None
        line = reader.line_num
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != n:
            raise _bad(path, line, f"expected {n} fields ({', '.join(header)}), got {len(row)}: {','.join(row)!r}")
        yield line, dict(zip(header, row))


_TIMESTAMP = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*$")


def parse_azure_timestamp(text: str) -> int:
    """Nanoseconds since 0001-01-01 of ``YYYY-MM-DD HH:MM:SS[.f…]`` (exact, up to 9 digits)."""
    m = _TIMESTAMP.match(text)
    if m is None:
        raise ValueError(text)
    y, mo, d, h, mi, s, frac = m.groups()
    days = date(int(y), int(mo), int(d)).toordinal()
    if int(h) > 23 or int(mi) > 59 or int(s) > 60:
        raise ValueError(text)
    secs = days * 86400 + int(h) * 3600 + int(mi) * 60 + int(s)
    return secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def read_azure(path: str | Path) -> Trace:
    """Azure LLM inference trace 2023 CSV: arrivals relative to the earliest row."""
    rows = []
    with _open(path, "trace file") as f:
        for line, row in _csv_rows(path, f, AZURE_COLUMNS, "azure"):
            text = row["TIMESTAMP"]
            try:
                ns = parse_azure_timestamp(text)
            except ValueError:
                raise _bad(path, line, f"column 'TIMESTAMP': expected a date-time like 2023-11-16 18:17:03.9799600, "
                                       f"got {text!r}") from None
            inp = _int(path, line, "ContextTokens", row["ContextTokens"], 1)
            out = _int(path, line, "GeneratedTokens", row["GeneratedTokens"], 1)
            rows.append((ns, inp, out, line))
    if not rows:
        raise InputError(f"trace file {path}: no data rows")
    t0 = min(r[0] for r in rows)
    reqs = [TraceRequest((ns - t0) / 1e9, inp, out, None, line) for ns, inp, out, line in rows]
    reqs.sort(key=lambda r: r.arrival_s)
    return Trace(str(path), "azure", requests=tuple(reqs))


def _json_int(path, line: int, key: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise _bad(path, line, f"key {key!r}: expected an integer >= {low}, got {v!r}")
    if v < low:
        raise _bad(path, line, f"key {key!r}: expected an integer >= {low}, got {v!r}")
    return int(v)


def read_mooncake(path: str | Path, block_tokens: int = BLOCK_TOKENS) -> Trace:
    """Mooncake JSONL: arrivals (ms → s) relative to the earliest row, sizes, block hashes."""
    rows = []
    with _open(path, "trace file") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise _bad(path, line, f"not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise _bad(path, line, f"expected a JSON object with keys {', '.join(MOONCAKE_KEYS)}, "
                                       f"got {type(obj).__name__}")
            missing = [k for k in MOONCAKE_KEYS if k not in obj]
            if missing:
                raise _bad(path, line, f"missing key(s) {', '.join(missing)}; needs {', '.join(MOONCAKE_KEYS)} "
                                       f"(has {', '.join(obj) or 'none'})")
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts < 0:
                raise _bad(path, line, f"key 'timestamp': expected milliseconds >= 0, got {ts!r}")
            inp = _json_int(path, line, "input_length", obj["input_length"], 1)
            out = _json_int(path, line, "output_length", obj["output_length"], 1)
            hashes = obj["hash_ids"]
            if not isinstance(hashes, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in hashes):
                raise _bad(path, line, f"key 'hash_ids': expected a list of integers, got {str(hashes)[:80]}")
            most = -(-inp // block_tokens)
            if len(hashes) > most:
                raise _bad(path, line, f"key 'hash_ids': {len(hashes)} blocks, but input_length {inp} fills at most "
                                       f"{most} blocks of {block_tokens} tokens")
            rows.append((ts, inp, out, tuple(hashes), line))
    if not rows:
        raise InputError(f"trace file {path}: no data rows")
    t0 = min(r[0] for r in rows)
    reqs = [TraceRequest((ts - t0) / 1000.0, inp, out, h, line) for ts, inp, out, h, line in rows]
    reqs.sort(key=lambda r: r.arrival_s)
    return Trace(str(path), "mooncake", requests=tuple(reqs))


def read_tracelab(path: str | Path) -> Trace:
    """TraceLab session CSV: sessions ordered by start (then first appearance), rounds by ``round_idx``."""
    groups: dict[str, list] = {}
    first_line: dict[str, int] = {}
    with _open(path, "trace file") as f:
        rows = _csv_rows(path, f, TRACELAB_COLUMNS, "tracelab", {"session_id": ("id",)})
        for line, row in rows:
            sid = (row["session_id"] if "session_id" in row else row["id"]).strip()
            col = "session_id" if "session_id" in row else "id"
            if not sid:
                raise _bad(path, line, f"column {col!r}: empty session id")
            k = _int(path, line, "round_idx", row["round_idx"], 0)
            prefix = _int(path, line, "prefix_len", row["prefix_len"], 0)
            inp = _int(path, line, "input_len", row["input_len"], 0)
            out = _int(path, line, "output_len", row["output_len"], 1)
            if prefix + inp < 1:
                raise _bad(path, line, "columns 'prefix_len' + 'input_len': a round's prompt needs at least 1 token")
            wait = _float(path, line, "tool_wait_after_ms", row["tool_wait_after_ms"]) / 1000.0
            at = row.get("arrival_time", "").strip()
            arrival = _float(path, line, "arrival_time", at) / 1000.0 if at else 0.0
            groups.setdefault(sid, []).append((k, arrival, TraceRound(k, prefix, inp, out, wait, line)))
            first_line.setdefault(sid, line)
    if not groups:
        raise InputError(f"trace file {path}: no data rows")
    numeric = all(re.fullmatch(r"[+-]?\d+", s) for s in groups)
    sessions = []
    for ordinal, (sid, items) in enumerate(groups.items()):
        items.sort(key=lambda x: x[0])
        for a, b in zip(items, items[1:]):
            if a[0] == b[0]:
                raise _bad(path, b[2].line, f"column 'round_idx': session {sid} has round {b[0]} twice "
                                            f"(also on line {a[2].line})")
        sessions.append(TraceSession(sid, int(sid) if numeric else ordinal, items[0][1],
                                     tuple(x[2] for x in items)))
    sessions.sort(key=lambda s: (s.arrival_s, first_line[s.session_id]))
    return Trace(str(path), "tracelab", sessions=tuple(sessions))


# -- replay -----------------------------------------------------------------------------------------
def _at(env, delay: float, callback) -> None:
    ev = Event(env)
    ev._ok = True
    ev._value = None
    ev.callbacks.append(callback)
    env.schedule(ev, NORMAL, max(0.0, delay))


class _Drain:
    """Ends the run (StopSimulation) once every trace source is done and no request is open."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.sources: list = []
        self.stopping = False

    def check(self, _req=None) -> None:
        if self.stopping or self.sim.open or not all(s.finished for s in self.sources):
            return
        self.stopping = True
        _at(self.sim.env, 0.0, StopSimulation.callback)


class OpenLoopReplay:
    """Submits a trace's requests at their arrival times (one event per distinct arrival time).

    Mooncake requests carry their ``hash_ids`` as ``prefix_key`` (``prefix_len`` = input length)
    for the block cache; Azure requests carry no prefix. Each request is its own call
    (``trigger = request``).
    """

    def __init__(self, sim, trace: Trace, stream: int, model: str | None = None, drain: _Drain | None = None) -> None:
        self.sim, self.env, self.trace, self.stream, self.model, self.drain = sim, sim.env, trace, stream, model, drain
        groups: list[tuple[float, list]] = []
        for r in trace.requests:
            if groups and groups[-1][0] == r.arrival_s:
                groups[-1][1].append(r)
            else:
                groups.append((r.arrival_s, [r]))
        self._groups = groups
        self._g = 0
        self.sent = 0

    @property
    def finished(self) -> bool:
        return self._g >= len(self._groups)

    def start(self) -> None:
        if self._groups:
            _at(self.env, self._groups[0][0] - self.env.now, self._arrive)
        elif self.drain is not None:
            self.drain.check()

    def _arrive(self, ev) -> None:
        sim = self.sim
        _, rows = self._groups[self._g]
        self._g += 1
        on_done = self.drain.check if self.drain is not None else None
        for r in rows:
            key = r.hash_ids if r.hash_ids else None
            req = sim.new_request(r.input_tokens, r.output_tokens, stream=self.stream, prefix_key=key,
                                  prefix_len=r.input_tokens, on_done=on_done)
            req.call = sim.new_call_id()
            req.trigger = REQUEST
            self.sent += 1
            sim.submit(req, self.model)
        if self._g < len(self._groups):
            _at(self.env, self._groups[self._g][0] - self.env.now, self._arrive)
        elif self.drain is not None:
            self.drain.check()


class SessionReplay:
    """TraceLab sessions as SimPy processes, each replaying its rounds in a closed loop.

    A session starts at its ``arrival_s``; round ``k+1`` is sent ``tool_wait_s`` of round ``k``
    after round ``k`` ends. Requests carry ``session = sid``, ``prefix_key = ("tracelab", sid)``,
    ``prefix_len`` = the round's ``prefix_len``, one call each, ``trigger`` user (round 0) or tool.
    """

    def __init__(self, sim, trace: Trace, stream: int, model: str | None = None, drain: _Drain | None = None) -> None:
        self.sim, self.env, self.trace, self.stream, self.model, self.drain = sim, sim.env, trace, stream, model, drain
        self.ended = 0
        self.sent = 0

    @property
    def finished(self) -> bool:
        return self.ended >= len(self.trace.sessions)

    def start(self) -> None:
        for s in self.trace.sessions:
            self.env.process(self._session(s))
        if not self.trace.sessions and self.drain is not None:
            self.drain.check()

    def _session(self, s: TraceSession):
        sim, env = self.sim, self.env
        if s.arrival_s > env.now:
            yield env.timeout(s.arrival_s - env.now)
        key = ("tracelab", s.sid)
        last = len(s.rounds) - 1
        for k, r in enumerate(s.rounds):
            req = sim.new_request(r.prompt, r.output_len, session=s.sid, stream=self.stream, prefix_key=key,
                                  prefix_len=r.prefix_len)
            req.call = sim.new_call_id()
            req.trigger = USER if k == 0 else TOOL
            done = Event(env)
            req.on_done = done.succeed
            self.sent += 1
            sim.submit(req, self.model)
            yield done
            if req.outcome != "completed":
                break                       # upstream's runner stops a session at a failed round
            if k < last and r.tool_wait_s > 0:
                yield env.timeout(r.tool_wait_s)
        self.ended += 1
        if self.drain is not None:
            self.drain.check()


# -- the default cluster and the run ----------------------------------------------------------------
DEFAULT_MODEL = "Llama-3.1-8B"     # Llama-3-8B's architecture with a 128k context (Mooncake prompts reach 126k)
DEFAULT_GPU = "H100-SXM"
TARGET_UTILISATION = 0.5
UNBOUNDED_HOST_KV_GB = 1e6         # a host tier no trace fills
UNBOUNDED_TTL_S = 1e12             # no block expires within a run


def estimated_busy_s(trace: Trace, coeffs, hit_rate: float = 0.0, batch: int = 32) -> float:
    """Rough replica-seconds of work in ``trace`` on one replica with step coefficients ``coeffs``.

    Each request: the uncached part of its prompt as one prefill step after the cached part, plus
    its decode tokens at a batch of ``batch`` with its own context. Used only to size the default
    cluster.
    """
    if trace.format == "tracelab":
        items = [(r.prompt, r.output_len, r.prefix_len / r.prompt) for s in trace.sessions for r in s.rounds]
    else:
        items = [(r.input_tokens, r.output_tokens, hit_rate) for r in trace.requests]
    busy = 0.0
    for p, o, h in items:
        cached = int(p * h)
        u = max(1, p - cached)
        busy += coeffs.step_time(u, u * cached + u * u / 2, p, 0, 0, 1) - coeffs.overhead
        ctx = p + o / 2
        busy += (o - 1) * coeffs.step_time(decodes=batch, decode_context=batch * ctx) / batch
    return busy


def default_scenario(trace: Trace, catalog=None) -> dict:
    """The cluster a replay runs on without ``--scenario`` (as a scenario dict).

    One pool of Llama-3.1-8B (bf16) on H100-SXM, sized from :func:`estimated_busy_s` so the
    replicas are about half busy over the trace's span:

    * mooncake: **one** replica (there is no prefix-aware router, and a block cache split over
      replicas would lose the hits the trace is about), with the smallest TP of 1, 2, 4, 8 that
      keeps it about half busy (TP 8 if none does: the replica then runs busier than half); ``engine.prefix_cache = "blocks"``. Engine defaults otherwise: no
      host tier, 300 s TTL (``--unbounded-cache`` gives the ideal-cache setting).
    * azure: TP 1 replicas, as many as the load needs, least-outstanding routing.
    * tracelab: TP 1 replicas (at most one per session), session-affinity routing (a session's
      rounds stay with its cache).
    """
    from .catalog import load_catalog
    from .deployment import Deployment
    from .servicetime import StepCoeffs
    catalog = catalog or load_catalog()
    span = max(trace.last_arrival_s, 1.0)
    if trace.format == "tracelab":
        span = max(span + sum(r.tool_wait_s for s in trace.sessions for r in s.rounds) / max(len(trace.sessions), 1),
                   1.0)
    ideal = trace.ideal_hit_rate() if trace.format == "mooncake" else 0.0
    tp, replicas = 1, 1
    for tp in ((1, 2, 4, 8) if trace.format == "mooncake" else (1,)):
        c = StepCoeffs.of(Deployment.from_catalog(catalog, DEFAULT_MODEL, DEFAULT_GPU, tp=tp))
        util = estimated_busy_s(trace, c, ideal or 0.0) / span
        replicas = max(1, math.ceil(util / TARGET_UTILISATION))
        if trace.format != "mooncake" or replicas == 1:
            break
    if trace.format == "mooncake":          # one replica even when no TP gets it half busy (the busiest TP)
        replicas = 1
    if trace.format == "tracelab":          # a closed-loop session runs on one replica at a time
        replicas = min(replicas, len(trace.sessions))
    pool = {"gpu": DEFAULT_GPU, "model": DEFAULT_MODEL, "tp": tp, "replicas": replicas}
    engine: dict = {}
    router = {"policy": "least_outstanding"}
    if trace.format == "mooncake":
        engine["prefix_cache"] = "blocks"
    elif trace.format == "tracelab":
        router = {"policy": "session_affinity"}
    name = Path(trace.path).stem
    return {"name": f"replay-{name}", "description": f"replay of {trace.path} ({trace.format})",
            "engine": engine, "pools": {"replay": pool}, "router": router}


def prepare_scenario(trace: Trace, scenario=None, overrides=(), *, unbounded_cache: bool = False,
                     duration_s: float | None = None):
    """The scenario a replay runs: ``scenario`` (or :func:`default_scenario`) with the trace as its workload.

    Streams and populations are dropped (the trace is the workload). Mooncake replays use the
    block cache unless ``[engine] prefix_cache`` is set explicitly; TraceLab replays need the
    session cache. ``unbounded_cache`` sets ``host_kv_gb`` to 1e6 GB (a host tier no trace fills)
    and ``prefix_ttl_s`` to 1e12 s (no block expires) for every pool, after ``overrides``: the
    setting of the ideal hit rate, where nothing cached is ever lost (GPU evictions go to host). ``duration_s`` (default: the trace's last arrival + 1
    day) only bounds the run: it ends when the trace's last request ends.
    """
    from . import scenario as scn
    from .api import load_scenario
    if scenario is None:
        data = default_scenario(trace)
    else:
        sc = load_scenario(scenario)
        data = sc.model_dump(mode="json", exclude_unset=False)
        if trace.format == "mooncake" and "prefix_cache" not in sc.engine.model_fields_set:
            data["engine"]["prefix_cache"] = "blocks"
    base = data
    data = scn.apply_overrides(data, list(overrides))
    data["streams"] = {}
    data["populations"] = {}
    if unbounded_cache:
        data.setdefault("engine", {})
        data["engine"]["host_kv_gb"] = UNBOUNDED_HOST_KV_GB
        data["engine"]["prefix_ttl_s"] = UNBOUNDED_TTL_S
        for pool in data.get("pools", {}).values():
            eng = pool.get("engine") or {}
            for k in ("host_kv_gb", "prefix_ttl_s"):
                eng.pop(k, None)
            pool["engine"] = eng
    horizon = duration_s if duration_s is not None else trace.last_arrival_s + 86400.0
    if horizon <= 0:
        raise InputError(f"--duration must be > 0 s, got {horizon}")
    data["duration_s"] = horizon
    data["warmup_s"] = min(float(data.get("warmup_s", 0.0)), horizon)
    sc = scn.parse(data, where=str(scenario) if isinstance(scenario, (str, Path)) else "scenario",
                   overrides=overrides, base=base)
    if trace.format == "tracelab":
        for name in sc.pools:
            if sc.pool_engine(name).prefix_cache == "blocks":
                raise InputError(f"pools.{name}: a tracelab trace has no block hashes; use engine.prefix_cache = "
                                 "\"session\" (the round's prefix is the session's context)")
    return sc


def replay(trace: Trace, scenario=None, *, seed: int | None = None, overrides=(), unbounded_cache: bool = False,
           duration_s: float | None = None, check_invariants: bool = False, step_mode: bool = False,
           progress=None):
    """Run ``trace`` on ``scenario`` (default: :func:`default_scenario`); the Result.

    ``Result.meta["trace"]`` holds the trace figures (see :func:`trace_summary`); ``progress``
    is called with the simulated time now and then (as ``Simulation.run``'s). The run ends
    when the trace's last request ends (or at ``duration_s``); ``meta["duration_s"]`` is then
    the simulated time actually covered.
    """
    from .build import build
    sc = prepare_scenario(trace, scenario, overrides, unbounded_cache=unbounded_cache, duration_s=duration_s)
    sim = build(sc, seed, check_invariants=check_invariants, step_mode=step_mode)
    drain = _Drain(sim)
    cls = SessionReplay if trace.format == "tracelab" else OpenLoopReplay
    sim.stream_names.append("trace")
    source = cls(sim, trace, len(sim.stream_names) - 1, drain=drain)
    drain.sources.append(source)
    sim.sources.append(source)
    res = sim.run(progress)
    res.meta["duration_s"] = float(sim.env.now)
    res.meta["trace"] = trace_summary(res, trace)
    return res


def trace_summary(res, trace: Trace) -> dict:
    """``trace_format``, ``trace_file``, ``trace_requests``, ``ideal_hit_rate``, ``hit_rate``
    (token-weighted cached share of the input over completed requests)."""
    df = res.requests
    done = df[df["outcome"] == "completed"]
    inp = float(done["input_tokens"].sum())
    cached = float(done["cached_gpu_tokens"].sum() + done["cached_host_tokens"].sum())
    return {"trace_format": trace.format, "trace_file": trace.path, "trace_requests": trace.n_requests,
            "ideal_hit_rate": trace.ideal_hit_rate(), "hit_rate": cached / inp if inp else math.nan}
