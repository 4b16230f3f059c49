"""A tiny sampling profiler (SIGPROF every ``interval`` s of CPU time) for the benchmarks.

cProfile charges a fixed cost per call, which inflates call-heavy code (the engine's small methods)
about 3x and skews shares towards it; sampling does not. py-spy is not available offline, so this
is the stdlib version: the signal handler counts the innermost Python frame (own time, C calls
charged to their caller) and every function on the stack (inclusive time).

    with Sampler() as s:
        env.run()
    print(s.table(20))
"""
from __future__ import annotations

import collections
import os
import signal


def _label(code) -> str:
    path = code.co_filename
    parts = path.split(os.sep)
    short = os.sep.join(parts[-2:]) if len(parts) >= 2 else path
    return f"{short}:{code.co_firstlineno}({code.co_name})"


class Sampler:
    """Counts samples of the running Python frame between ``start`` and ``stop`` (Unix only)."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval = interval
        self.own: collections.Counter = collections.Counter()
        self.incl: collections.Counter = collections.Counter()
        self.samples = 0

    def _handler(self, signum, frame) -> None:
        if frame is None:
            return
        self.samples += 1
        self.own[frame.f_code] += 1
        seen = set()
        while frame is not None:
            code = frame.f_code
            if code not in seen:
                seen.add(code)
                self.incl[code] += 1
            frame = frame.f_back

    def start(self) -> None:
        self._old = signal.signal(signal.SIGPROF, self._handler)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._old)

    def __enter__(self) -> "Sampler":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def table(self, top: int = 20) -> str:
        """Top functions by own samples: own %, inclusive %, name."""
        n = max(1, self.samples)
        lines = [f"{self.samples} samples every {self.interval * 1e3:g} ms of CPU; own % | incl % | function"]
        for code, k in self.own.most_common(top):
            lines.append(f"{100 * k / n:5.1f} | {100 * self.incl[code] / n:5.1f} | {_label(code)}")
        return "\n".join(lines)

    def by_file(self) -> str:
        """Own samples summed per source file (e.g. engine vs SimPy vs the rest)."""
        n = max(1, self.samples)
        files: collections.Counter = collections.Counter()
        for code, k in self.own.items():
            files[os.sep.join(code.co_filename.split(os.sep)[-2:])] += k
        return "\n".join(f"{100 * k / n:5.1f} % {f}" for f, k in files.most_common())
