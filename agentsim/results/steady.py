"""Steady state: the warm-up a run's figures need, and whether the run's own warm-up gives it.

Two rules, stated in every summary (``warmup_rule``):

* **diurnal input** (a population whose arrivals follow a daily profile): the load is never
  stationary, so the measured window must start at least one period (a day) after the run does —
  sessions, caches and five-hour windows filled by a whole cycle of the input;
* **constant input**: MSER-5 (White 1997) on the fleet's completions per sampling interval picks
  the warm-up (:func:`agentsim.util.stats.mser5`).

A run whose ``warmup_s`` is shorter than the rule asks is reported as not in steady state
(``steady_state`` false); ``agentsim run`` says so on stderr.
"""
from __future__ import annotations

import pandas as pd

from ..util.stats import mser5

DIURNAL_PERIOD_S = 86400.0


def diurnal(scenario: dict) -> bool:
    """Whether any population's arrivals follow a daily profile (``arrival`` other than ``flat``)."""
    return any(p.get("arrival", "flat") != "flat" for p in (scenario.get("populations") or {}).values())


def warmup_check(meta: dict, timeseries: pd.DataFrame) -> dict:
    """``warmup_s`` (the run's), ``warmup_needed_s`` and ``warmup_rule`` (by the rules above) and
    ``steady_state`` (the first at least the second)."""
    warm = float(meta.get("warmup_s", 0.0))
    if diurnal(meta.get("scenario", {})):
        need, rule = DIURNAL_PERIOD_S, "one diurnal period"
    else:
        need, rule = 0.0, "MSER-5 on completions per sample"
        if len(timeseries):
            series = timeseries.groupby("time_s", observed=True)["completed"].sum()
            step = float(series.index[1] - series.index[0]) if len(series) > 1 else 0.0
            need = mser5(series.to_numpy()) * step
    return {"warmup_s": warm, "warmup_needed_s": need, "warmup_rule": rule, "steady_state": warm >= need}


def warmup_advice(summary: dict) -> str | None:
    """One line for a run that is not in steady state (None when it is)."""
    if summary.get("steady_state", True):
        return None
    return (f"warm-up {summary['warmup_s']:,.0f} s is shorter than the {summary['warmup_needed_s']:,.0f} s "
            f"that {summary['warmup_rule']} asks for: the figures describe a system still filling up; "
            "set warmup_s to at least that and duration_s to warmup_s plus the window you measure")
