"""Engine-level request streams: Poisson, closed-loop concurrency, all at once, replayed times.

Each stream is a small callback object on SimPy's queue (cheaper than a process per request),
drawing from its own RNG streams in batches so that results do not depend on how many draws
other streams make.
"""
from __future__ import annotations

import csv
from pathlib import Path


from ..util.errors import InputError, not_utf8
from ..serving.request import Request
from .distributions import draw, draw_tokens
from ..util.bounds import MAX_DURATION_S
from ..util.events import _push

BATCH = 1024
#: a closed-loop client waits at least this long after a failed request: resubmitting at once to
#: a cluster that is entirely down, or to a rate limit, would loop without end at one instant
FAILURE_PAUSE_S = 1.0


def _schedule(env, delay: float, callback, value=None) -> None:
    """``callback(event)`` after ``delay`` s: pushed as ``env.schedule`` would push it, without its calls."""
    _push(env, callback, value, delay)


class Source:
    """Common parts: sizes drawn in batches, ``submit(req, model)`` provided by the simulation."""

    def __init__(self, front, name: str, index: int, cfg, rng_arrivals, rng_sizes) -> None:
        self.front, self.name, self.index, self.cfg = front, name, index, cfg   # front: new_request, submit
        self.env = front.env
        self.rng_a, self.rng_s = rng_arrivals, rng_sizes
        self._inp: list[int] = []             # this batch's sizes as Python ints (one tolist a batch)
        self._out: list[int] = []
        self._cached: list[int] | None = None
        self._j = 0
        self._last_cached = 0
        self.sent = 0
        # read once: the settings and the front's two calls are the same for every request
        self._new, self._submit = front.new_request, front.submit
        self._priority, self._model, self._count = cfg.priority, cfg.model, cfg.count

    def sizes(self) -> tuple[int, int]:
        j = self._j
        if j >= len(self._inp):
            self._inp = draw_tokens(self.cfg.input_tokens, self.rng_s, BATCH).tolist()
            self._out = draw_tokens(self.cfg.output_tokens, self.rng_s, BATCH).tolist()
            if self.cfg.cached_tokens is not None:   # drawn after the others: streams without it keep their draws
                self._cached = draw_tokens(self.cfg.cached_tokens, self.rng_s, BATCH).tolist()
            j = 0
        self._j = j + 1
        if self._cached is not None:
            self._last_cached = self._cached[j]
        return self._inp[j], self._out[j]

    def send(self, prompt: int, output: int, on_done=None) -> Request:
        req = self._new(prompt, output, stream=self.index, priority=self._priority, on_done=on_done)
        if self._last_cached:
            req.cached_gpu = min(self._last_cached, prompt - 1)
        self.sent += 1
        self._submit(req, self._model)
        return req

    def exhausted(self) -> bool:
        return 0 < self._count <= self.sent

    @property
    def finished(self) -> bool:
        """No more arrivals will come from this stream."""
        return self.exhausted()


class PoissonSource(Source):
    def start(self) -> None:
        self._gaps = self.rng_a.exponential(1.0 / self.cfg.rate, BATCH).tolist()
        self._g = 0
        self._next()

    def _next(self) -> None:
        g = self._g
        if g >= len(self._gaps):
            self._gaps = self.rng_a.exponential(1.0 / self.cfg.rate, BATCH).tolist()
            g = 0
        self._g = g + 1
        _push(self.env, self._arrive, None, self._gaps[g])

    def _arrive(self, ev) -> None:
        self.send(*self.sizes())
        if not 0 < self._count <= self.sent:
            self._next()


class ConcurrencySource(Source):
    """``concurrency`` clients in a closed loop; each waits ``think_s`` between requests."""

    def start(self) -> None:
        for _ in range(self.cfg.concurrency):
            self._send_one(None)

    def _send_one(self, ev) -> None:
        if self.exhausted():
            return
        self.send(*self.sizes(), on_done=self._done)

    def _done(self, req: Request) -> None:
        think = None if self.cfg.think_s is None else float(draw(self.cfg.think_s, self.rng_a, 1)[0])
        if req.outcome != "completed":
            think = max(think or 0.0, FAILURE_PAUSE_S)
        if think is None:
            self._send_one(None)
        else:
            _schedule(self.env, think, self._send_one)


class AllAtOnceSource(Source):
    finished = True

    def start(self) -> None:
        for _ in range(self.cfg.count):
            self.send(*self.sizes())


class ReplaySource(Source):
    """Arrival times and sizes from a CSV file (``arrival_s,input_tokens,output_tokens``)."""

    def start(self) -> None:
        self.rows = read_replay_csv(self.cfg.file)
        self._i = 0
        self.done_rows = not self.rows
        if self.rows:
            _schedule(self.env, max(0.0, self.rows[0][0]), self._arrive)

    def _arrive(self, ev) -> None:
        t, inp, out = self.rows[self._i]
        self.send(inp, out)
        self._i += 1
        self.done_rows = self._i >= len(self.rows)
        if not self.done_rows and not self.exhausted():
            _schedule(self.env, max(0.0, self.rows[self._i][0] - self.env.now), self._arrive)


    @property
    def finished(self) -> bool:
        return self.done_rows or self.exhausted()


def read_replay_csv(path: str) -> list[tuple[float, int, int]]:
    """Validated rows; a bad file names the file, the line and the column."""
    cols = ("arrival_s", "input_tokens", "output_tokens")
    try:
        f = open(Path(path), newline="", encoding="utf-8-sig")
    except OSError as e:
        raise InputError(f"replay file {path}: cannot open ({e.strerror})") from None
    try:
        with f:
            rows = _replay_rows(path, f, cols)
    except UnicodeDecodeError as e:
        raise InputError(f"replay file {path}: {not_utf8(e)}") from None
    rows.sort(key=lambda r: r[0])
    return rows


def _replay_rows(path, f, cols) -> list[tuple[float, int, int]]:
    rows = []
    reader = csv.DictReader(f)
    missing = [c for c in cols if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"replay file {path}: missing column(s) {', '.join(missing)}; "
                         f"needs {', '.join(cols)} (has {', '.join(reader.fieldnames or [])})")
    for line, row in enumerate(reader, start=2):
        try:
            t = float(row["arrival_s"])
            inp, out = int(row["input_tokens"]), int(row["output_tokens"])
        except (TypeError, ValueError):
            raise InputError(f"replay file {path}, line {line}: cannot parse {dict(row)} "
                             f"(arrival_s a number >= 0, token counts integers >= 1)") from None
        if not 0 <= t <= MAX_DURATION_S or inp < 1 or out < 1:
            raise InputError(f"replay file {path}, line {line}: arrival_s must be a finite number in [0, "
                             f"{MAX_DURATION_S:g}] and token counts >= 1 (got {t}, {inp}, {out})")
        rows.append((t, inp, out))
    return rows


SOURCES = {"poisson": PoissonSource, "concurrency": ConcurrencySource, "all_at_once": AllAtOnceSource,
           "replay": ReplaySource}
