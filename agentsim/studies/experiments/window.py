"""When an experiment's runs start and what their summaries say about it (issue 19, steady state).

Diurnal input is never stationary, so a run starts a whole period (or more) before the window it
measures and discards the warm-up (:func:`warm_window`); constant-load runs state the warm-up
MSER-5 picks on their own output beside the one they discard (:func:`mser5_warmup_s`). The rules
themselves live in :mod:`agentsim.results.steady`.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np

from ...util.errors import InputError
from ...util.stats import mser5

#: hours a run with diurnal input simulates before the window it measures, then discards: one whole
#: period (issue 19; :mod:`agentsim.results.steady`), so sessions, prefix caches and five-hour windows
#: carry a whole cycle of the input into the window
WARMUP_H = 24.0


def warm_window(window_start: str, window_s: float, warmup_h: float = WARMUP_H) -> dict:
    """The scenario fields (``start``, ``warmup_s``, ``duration_s``) of a run that measures ``window_s``
    seconds from ``window_start`` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``) after ``warmup_h`` hours of warm-up."""
    check_warmup_h(warmup_h)
    t = datetime.fromisoformat(window_start.replace("Z", "+00:00")) - timedelta(hours=warmup_h)
    return {"start": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "warmup_s": warmup_h * 3600.0,
            "duration_s": warmup_h * 3600.0 + window_s}


def check_warmup_h(warmup_h) -> None:
    """A warm-up in hours: a finite number >= 0, or one line naming the option."""
    if not (isinstance(warmup_h, (int, float)) and warmup_h >= 0 and math.isfinite(warmup_h)):
        raise InputError(f"--warmup-hours (warmup_h) must be a number of hours >= 0, got {warmup_h}")


def warmup_option(default: float = WARMUP_H) -> tuple:
    """The ``--warmup-hours`` option of an experiment with diurnal input (its ``OPTIONS`` entry)."""
    return ("--warmup-hours", {"type": float, "default": default,
                               "help": f"hours simulated before the measured window, then discarded (default "
                                       f"{default:g}: {default / 24:g} diurnal period{'s' if default != 24 else ''})"})


def warmup_keywords(o: dict, default: float = WARMUP_H) -> dict:
    """``{"warmup_h": ...}`` from parsed options (checked: hours >= 0)."""
    h = default if o.get("warmup_hours") is None else o["warmup_hours"]
    check_warmup_h(h)
    return {"warmup_h": h}


def warmup_sentence(warmup_h: float, window: str) -> str:
    """How a summary states its warm-up (issue 19, build item 1)."""
    periods = (f"{warmup_h / 24:g} diurnal period{'s' if warmup_h != 24 else ''}" if warmup_h >= 24
               else "LESS than one diurnal period: the figures describe a system still filling up")
    return (f"Steady state: each run starts {warmup_h:g} h before the measured window ({window}; {periods}); "
            "the warm-up is simulated and discarded.")


def mser5_warmup_s(finish_s, end_s: float, bin_s: float = 60.0) -> float:
    """The warm-up (s) MSER-5 picks on completions per ``bin_s`` over ``[0, end_s)``: the stated rule
    for constant-load runs (:mod:`agentsim.results.steady`; one-minute bins so that a few hours give
    it the ten batches it needs)."""
    counts = np.histogram(np.asarray(finish_s, dtype=float), np.arange(0.0, end_s + bin_s / 2, bin_s))[0]
    return float(mser5(counts)) * bin_s


def mser5_sentence(needed: dict, used_s: float, span: str) -> str:
    """A summary's statement of the constant-load warm-up rule: ``needed`` maps a cell's label to the
    largest warm-up (s) MSER-5 picked over its replications."""
    worst = max(needed.values(), default=0.0)
    over = [k for k, v in needed.items() if v > used_s]
    return (f"Steady state (constant input): MSER-5 on completions per minute {span} picks at most "
            f"{worst / 60:.0f} min of warm-up in any run; the runs discard {used_s / 60:.0f} min"
            + (f" — shorter than it picks in {len(over)} of {len(needed)} cells ({', '.join(over)}): their figures "
               "describe a system still filling up (or overloaded)" if over else "") + ".")


def settled(warmup_s: float, end_s: float, bin_s: float = 60.0) -> bool:
    """Whether MSER-5 found its cut inside the first half of the run (it looks no further): a cut at
    the half means the series was still drifting — the run is too short to reach a steady state."""
    return warmup_s < end_s / 2 - 5 * bin_s
