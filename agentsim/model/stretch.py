"""Closed-form sums over a stretch of engine steps, so the engine skips the steps between events.

Within a stretch every step's time is ``max(c0 + c1·u, m0 + m1·u) + h`` in the step index ``u``
(the per-operator model makes it affine: ``m0 = m1 = 0``); :class:`Stretch` sums it and inverts
the sum, :class:`Affine` is its one-piece fast path. Built by :meth:`StepCoeffs.stretch`.
"""
from __future__ import annotations

import math

class Stretch:
    """Closed form over a run of steps whose compute and memory terms are affine in the index.

    Step ``u`` (0-based) takes ``max(c0 + c1·u, m0 + m1·u) + h``. Because the difference of two
    affine terms changes sign at most once, the run splits at one crossover into two arithmetic
    series: :meth:`elapsed` is O(1), and :meth:`steps_done_by` is one quadratic root per piece
    plus an exact ±1 fix-up. The per-operator model passes one affine term (``m0 = m1 = 0``); the
    two-term form stays for laws that need a maximum.
    """

    __slots__ = ("c0", "c1", "m0", "m1", "h", "split", "first_memory")

    def __init__(self, c0: float, c1: float, m0: float, m1: float, h: float) -> None:
        self.c0, self.c1, self.m0, self.m1, self.h = c0, c1, m0, m1, h
        d0, d1 = m0 - c0, m1 - c1          # memory minus compute at u = 0 and its slope
        self.first_memory = d0 >= 0         # which term rules the first piece
        # first index where the other term takes over (inf if never); exact fix-up after rounding
        if self.first_memory and d1 < 0:
            split = math.floor(-d0 / d1) + 1
        elif not self.first_memory and d1 > 0:
            split = math.ceil(-d0 / d1)
        else:
            split = math.inf
        if split != math.inf:
            while split > 0 and not self._rules_first(split - 1):
                split -= 1
            while self._rules_first(split):
                split += 1
        self.split = split

    def _rules_first(self, u: int) -> bool:
        mem = self.m0 + self.m1 * u
        com = self.c0 + self.c1 * u
        return mem >= com if self.first_memory else com > mem

    def step(self, u: int) -> float:
        """Duration of step ``u`` (the scalar form, for checks and the reference engine)."""
        mem = self.m0 + self.m1 * u
        com = self.c0 + self.c1 * u
        return (com if com > mem else mem) + self.h

    @staticmethod
    def _series(a: float, b: float, lo: int, hi: int) -> float:
        """Σ_{u=lo}^{hi-1} (a + b·u)."""
        n = hi - lo
        return a * n + b * (lo + hi - 1) * n / 2 if n > 0 else 0.0

    def elapsed(self, k: int) -> float:
        """Total duration of steps 0..k-1."""
        a1, b1, a2, b2 = (self.m0, self.m1, self.c0, self.c1) if self.first_memory else (self.c0, self.c1, self.m0, self.m1)
        s = self.split
        if k <= s:
            return self._series(a1, b1, 0, k) + self.h * k
        s = int(s)
        return self._series(a1, b1, 0, s) + self._series(a2, b2, s, k) + self.h * k

    def steps_done_by(self, tau: float) -> int:
        """The number of whole steps finished by ``tau`` after the stretch start: max j, elapsed(j) <= tau."""
        if tau <= 0:
            return 0
        if tau == math.inf:
            return 1 << 62
        if not (self.c0 or self.c1 or self.m0 or self.m1 or self.h):
            raise ValueError("a stretch whose steps take no time has no last step done by a time")
        a1, b1, a2, b2 = (self.m0, self.m1, self.c0, self.c1) if self.first_memory else (self.c0, self.c1, self.m0, self.m1)
        s = self.split
        t_split = self.elapsed(int(s)) if s != math.inf else math.inf
        if tau < t_split:
            j = self._solve(a1 + self.h, b1, tau)
        else:
            s = int(s)
            j = s + self._solve(a2 + b2 * s + self.h, b2, tau - t_split)
        while self.elapsed(j + 1) <= tau:
            j += 1
        while j > 0 and self.elapsed(j) > tau:
            j -= 1
        return j

    @staticmethod
    def _solve(a: float, b: float, tau: float) -> int:
        """Largest j with a·j + b·j(j-1)/2 <= tau (approximately; callers fix up by ±1)."""
        if b <= 1e-300:
            return int(tau / a) if a > 0 else 0
        # b/2·j² + (a - b/2)·j - tau = 0
        p = a - b / 2
        disc = p * p + 2 * b * tau
        return max(0, int((-p + math.sqrt(disc)) / b))


class Affine(Stretch):
    """A :class:`Stretch` with one affine term (``m0 = m1 = 0``, ``c0 > 0``, ``c1 >= 0``): what
    :meth:`StepCoeffs.stretch` builds for every engine stretch.

    The general form gives such a law a single piece (compute rules throughout, ``split`` is
    infinite); this class is that case with the piece selection and the crossover search left out.
    Each method computes the same expressions as the general one in the same order, so results
    are bit-identical. The engine does not build these objects on its hot path: it keeps
    ``(c0, c1, h)`` and calls :func:`affine_elapsed` / :func:`affine_steps_done_by`, the one
    implementation of both (the methods below delegate to them).
    """

    __slots__ = ()

    def __init__(self, c0: float, c1: float, h: float) -> None:
        self.c0, self.c1, self.m0, self.m1, self.h = c0, c1, 0.0, 0.0, h
        self.first_memory = False
        self.split = math.inf

    def step(self, u: int) -> float:
        com = self.c0 + self.c1 * u
        return (com if com > 0.0 else 0.0) + self.h

    def elapsed(self, k: int) -> float:
        return affine_elapsed(self.c0, self.c1, self.h, k)

    def steps_done_by(self, tau: float) -> int:
        return affine_steps_done_by(self.c0, self.c1, self.h, tau)


def affine_elapsed(c0: float, c1: float, h: float, k: int) -> float:
    """Total duration of steps 0..k-1 of an affine stretch (:meth:`Affine.elapsed`)."""
    if k > 0:
        return c0 * k + c1 * (k - 1) * k / 2 + h * k
    return 0.0 + h * k


def affine_steps_done_by(c0: float, c1: float, h: float, tau: float) -> int:
    """Max ``j`` with ``affine_elapsed(..., j) <= tau`` (:meth:`Affine.steps_done_by`)."""
    if tau <= 0:
        return 0
    if tau == math.inf:
        return 1 << 62
    a = c0 + h                      # Stretch._solve(a, c1, tau), inlined (the engine calls this per cut)
    if c1 <= 1e-300:
        j = int(tau / a) if a > 0 else 0
    else:
        p = a - c1 / 2
        j = int((-p + math.sqrt(p * p + 2 * c1 * tau)) / c1)
        if j < 0:
            j = 0
    while (c0 * (j + 1) + c1 * j * (j + 1) / 2 + h * (j + 1)) <= tau:    # affine_elapsed(j + 1), j + 1 > 0
        j += 1
    while j > 0 and (c0 * j + c1 * (j - 1) * j / 2 + h * j) > tau:       # affine_elapsed(j), j > 0
        j -= 1
    return j
