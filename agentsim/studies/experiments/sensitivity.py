"""A headline's sensitivity band from the step model's held-out error (issue 19, build item 5).

The answer's arms are rerun on their first seeds with every GPU generation's step times scaled
by the lower and upper quartile of the step model's error on held-out measurements (a catalog
overlay, ``[generations.<gen>] step_time_scale``); the band is the lowest and highest headline of
the unscaled and scaled runs, paired by seed.
"""
from __future__ import annotations

import math
from pathlib import Path

from ...model.catalog import load_catalog
from ...util.atomic import write_atomic
from . import run_arms

#: the step model's held-out error as step-time scales: the lower and upper quartiles of measured /
#: predicted step time over the 12 scored held-out load points of `agentsim calibrate --tier c`
#: (throughput rows: 1 + error; latency rows: 1 / (1 + error)); median 0.989
STEP_SCALES = (0.956, 1.006)
#: seeds a sensitivity rerun uses (the first ones of the answer's, paired with it)
SENSITIVITY_SEEDS = 2


def step_scale_catalog(out_dir, k: float, generations) -> Path:
    """A catalog overlay scaling the step times of every GPU generation in ``generations`` by ``k``
    (written to ``out_dir``; scenarios name it in ``catalog``)."""
    text = "".join(f"[generations.{g}]\nstep_time_scale = {k!r}\n\n" for g in sorted(generations))
    return write_atomic(Path(out_dir) / f"step_time_x{k:g}.toml", text).resolve()


def with_step_scale(sc: dict, overlay: Path) -> dict:
    """``sc`` with the catalog overlay ``overlay`` appended to its catalogs."""
    return dict(sc, catalog=[*(sc.get("catalog") or []), str(overlay)])


def sensitivity(measure, arms: dict, by: dict, seeds_: list[int], headline, out_dir, *, workers=None,
                address=None, label: str = "") -> dict:
    """A headline's sensitivity band from the step model's held-out error: the ``arms`` (key ->
    scenario) rerun with step times × each of :data:`STEP_SCALES` on the first
    :data:`SENSITIVITY_SEEDS` of ``seeds_``, paired with the answer's own runs on them (``by``: key ->
    per-seed results), and ``headline(by) -> {name: value}`` read from each. Per name: the value on
    those seeds unscaled and at each scale, and the band (the lowest and highest of the three)."""
    ss = list(seeds_[:SENSITIVITY_SEEDS])
    values = {"x1": headline({k: by[k][:len(ss)] for k in arms})}
    gens = {load_catalog().gpu(p["gpu"]).generation for sc in arms.values() for p in sc["pools"].values()}
    for k in STEP_SCALES:
        overlay = step_scale_catalog(out_dir, k, gens)
        scaled = {key: with_step_scale(sc, overlay) for key, sc in arms.items()}
        values[f"x{k:g}"] = headline(run_arms(measure, scaled, ss, workers, address, label=f"{label} step times x{k:g}"))
    band = {}
    for name in values["x1"]:
        got = [v[name] for v in values.values() if math.isfinite(v[name])]
        band[name] = (min(got), max(got)) if got else (math.nan, math.nan)
    return {"step_time_scales": list(STEP_SCALES), "seeds": ss, "values": values, "band": band}


def sensitivity_sentence(sens: dict | None, fmt) -> str:
    """The band in words, each name's ``fmt(value)``; '' when the reruns were not asked for."""
    if not sens:
        return ""
    k = sens["step_time_scales"]
    return (f" Sensitivity to the step model's held-out error (step times ×{k[0]:g} … ×{k[1]:g}, "
            f"{len(sens['seeds'])} paired seeds): " + "; ".join(
                f"{name} {fmt(lo)} to {fmt(hi)}" for name, (lo, hi) in sens["band"].items()) + ".")


SENSITIVITY_OPTION = ("--sensitivity", {"flag": True, "help": "also rerun the headline with step times scaled by "
                                        "the step model's held-out error quartiles (its sensitivity band)"})
