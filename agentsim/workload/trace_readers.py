"""Public LLM-inference traces: the records and their validated readers.

Three formats (the files in ``shared/traces/`` are examples of each):

* ``azure`` — Azure LLM inference trace 2023 (Splitwise), CSV ``TIMESTAMP,ContextTokens,
  GeneratedTokens``; ``TIMESTAMP`` is a date-time with up to 9 fractional digits (the files have
  7). Arrivals are taken relative to the earliest row. No prefix information.
* ``mooncake`` — Mooncake FAST'25 traces, JSONL with ``timestamp`` (ms), ``input_length``,
  ``output_length`` and ``hash_ids`` (one chained hash per 512-token prompt block; an equal hash
  is the same block with the same prefix, so reusable KV). Arrivals relative to the earliest row (the files start at
  0). The hashes drive :class:`~agentsim.serving.block_cache.BlockPrefixCache`.
* ``tracelab`` — TraceLab session-runner CSV (``replay/README.md`` upstream):
  ``session_id`` (or ``id``), ``round_idx``, ``prefix_len``, ``input_len``, ``output_len``,
  ``tool_wait_after_ms`` and optionally ``arrival_time`` (ms, the session's start; a missing
  column or empty value means 0). A session is a closed loop: round ``k`` is sent, its full
  response awaited, then ``tool_wait_after_ms`` slept before round ``k+1``; the first round is
  sent at the session's ``arrival_time`` (that of its lowest ``round_idx``). A round's prompt is
  ``prefix_len + input_len`` tokens, of which ``prefix_len`` are prior context the provider may
  have cached under the session's key. A round that does not complete ends its session (as
  upstream's runner does).

Every reader error is an :class:`~agentsim.util.errors.InputError` naming the file, the line and the
column. Replaying a trace through the simulator is :mod:`agentsim.run.replay`'s part.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ..serving.block_cache import BLOCK_TOKENS
from ..util.errors import InputError, not_utf8, unknown_name

TRACE_FORMATS = ("azure", "mooncake", "tracelab")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
TRACELAB_COLUMNS = ("session_id", "round_idx", "prefix_len", "input_len", "output_len", "tool_wait_after_ms")


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
        raise unknown_name("trace format", fmt, TRACE_FORMATS, where="--trace-format")
    try:
        return readers[fmt](path)
    except UnicodeDecodeError as e:
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
