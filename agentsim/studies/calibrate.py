"""Fitting the time outside the GPU to measured points (``agentsim calibrate``, tier c).

Read in order: :func:`load_points` (CSV -> validated :class:`Point`), :func:`deployment` (the point
under its engine's preset), :data:`PREDICTORS` (metric -> prediction from a :class:`Deployment`),
:func:`fit_factors` (pick the identified factors; minimise
Σ_points log(pred/measured)² + Σ_factors (λ·log(factor/prior))², λ = PRIOR_WEIGHT, so a factor the
data barely constrain stays near its prior), :func:`calibrate` (per engine preset, and per GPU
generation for scenarios without a preset; leave-one-out) and :func:`write_calibrated`. A predictor
that cannot express a point raises :class:`Unscored`.

Two kinds of points. *Single-stream* points (concurrency 1: TTFT, ITL, ...) have closed-form
predictors and are what the overheads are fitted to. *Load points* (offline / max or concurrency
N > 1: throughput, TTFT, TPOT) are each one ``agentsim estimate`` run with the preset's fitted
overheads (:mod:`agentsim.studies.calibrate_load`); one simulation per optimiser evaluation would be far
too slow, so they never enter a fit. Their error is therefore out-of-sample already, and their
``loo_error`` is their ``rel_error``. A third of the load points is
also marked held out (the CSV's ``holdout`` column, :func:`holdout_rows`), fixed before anything
is fitted to load points, and reported apart.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..model.catalog import Catalog
from ..model.deployment import Deployment
from ..util.atomic import write_atomic
from ..util.errors import InputError
from ..model.hardware import Efficiency
from ..model import presets
from ..model.presets import trtllm_bench_limits  # noqa: F401  (re-exported)
from ..model.servicetime import StepCoeffs, prefill_attention_pairs, step_times
from .calibration_points import (HOLDOUT_SEED, HOLDOUT_VALUES, METRIC_UNITS, PRECISION_MAP,  # noqa: F401
                                 REQUIRED, Point, Unscored, engine_of, holdout_rows, is_load_point,
                                 load_points, measurement_key, write_holdout_column)
from . import calibrate_load as load_tier   # called through the module: the load tier's extension point
from .calibrate_load import (LOAD_REQUESTS, LOAD_SEED, LOAD_WAVES, LoadSetup, is_simulated,  # noqa: F401
                             load_setup, predict_load, simulate_load_point)

TOKEN_BUDGET = 8192      # prefill tokens per step (vLLM-style max_num_batched_tokens)
PRIOR_WEIGHT = 0.2       # λ: a factor 2x off its prior costs as much as a point ~14 % off
IDENTIFY_MIN = 0.05      # identified: some point moves >= 0.5 % when the factor moves 10 %
MAX_FACTORS = 4          # per generation
BOUNDS, BOUNDS_MS = (0.05, 1.0), (0.0, 100.0)  # MFU/MBU; the *_ms overheads
OVERHEAD_FLOOR_MS = 1.0  # overheads may be 0: they are fitted as log(floor + value)
FLOOR = {n: OVERHEAD_FLOOR_MS if n.endswith("_ms") else 0.0 for n in Efficiency.FITTABLE}
LOAD_REASON = ("{} at {}: the closed-form predictors cover concurrency 1 only, and the engine simulates "
               "only the load metrics of agentsim.studies.calibrate_load")


def legacy_deployment(cat: Catalog, p: Point) -> Deployment:
    """The point as a scenario without a preset sees it (bf16 KV, the generation's overheads): what
    the per-generation fit for such scenarios uses. Unscored when impossible (weights do not fit, ...)."""
    try:
        model, gpu = cat.model(p.model), cat.gpu(p.gpu)
    except InputError as e:
        raise InputError(f"{p.where}: {e}") from None
    try:
        return Deployment(model=model, gpu=gpu, efficiency=cat.efficiency(gpu), tp=p.tp,
                          pp=p.n_gpus // (p.tp * p.dp_attention), precision=PRECISION_MAP[p.precision.lower()],
                          engine=engine_of(p.engine), ep=p.ep, dp=p.dp_attention)
    except InputError as e:
        raise Unscored(f"not a valid deployment: {e}") from None


def deployment(cat: Catalog, p: Point) -> Deployment:
    """The point's deployment under its engine's preset: its kernels, KV dtype and overheads."""
    dep = legacy_deployment(cat, p)
    name = engine_of(p.engine)
    try:
        dep = replace(dep, kv_dtype=presets.kv_dtype(name, dep.precision))
    except InputError as e:
        raise Unscored(f"not a valid deployment with the {name} preset's KV dtype: {e}") from None
    return presets.with_overheads(dep, name, cat)


# -- predictors (concurrency 1): metric -> f(deployment, point) in the CSV's unit ---------------
def _lengths(p: Point, min_output: int = 1) -> tuple[int, int]:
    """(input, output) tokens of a concurrency-1 point with known lengths, else Unscored."""
    if p.concurrency != 1:
        raise Unscored(LOAD_REASON.format(p.metric, p.load))
    if p.input_tokens is None or p.output_tokens is None:
        raise Unscored("no input/output lengths given: the step-time model needs both")
    if p.output_tokens < min_output:
        raise Unscored(f"output_tokens {p.output_tokens} < {min_output}: no decode steps to time")
    return p.input_tokens, p.output_tokens


def predict_ttft_ms(dep: Deployment, p: Point) -> float:
    """Request overhead + the prompt's prefill at an idle replica, chunked by TOKEN_BUDGET."""
    n, _ = _lengths(p)
    cached = np.arange(0, n, TOKEN_BUDGET, dtype=float)
    chunk = np.minimum(TOKEN_BUDGET, n - cached)
    c = StepCoeffs.of(dep)
    steps = step_times(c, prefill_tokens=chunk, prefill_attn=prefill_attention_pairs(chunk, cached),
                       prefill_kv=cached + chunk, sampled=(cached + chunk == n).astype(float))
    return float(steps.sum() + c.request_overhead) * 1e3


def decode_step_s(dep: Deployment, p: Point) -> float:
    """Mean batch-1 decode step over contexts input+1 .. input+output-1."""
    n, m = _lengths(p, min_output=2)
    return float(step_times(StepCoeffs.of(dep), decodes=1, decode_context=n + np.arange(1, m)).mean())


Predictor = Callable[[Deployment, Point], float]
_decode_ms: Predictor = lambda dep, p: decode_step_s(dep, p) * 1e3  # noqa: E731
PREDICTORS: dict[str, Predictor] = {
    "ttft": predict_ttft_ms, "itl": _decode_ms, "tpot": _decode_ms, "tpot_p50": _decode_ms,
    "decode_rate_per_user": lambda dep, p: 1.0 / decode_step_s(dep, p)}


def predict(dep: Deployment, p: Point) -> float:
    """The model's value for ``p`` on ``dep``; raises Unscored when no predictor can express it."""
    if p.metric not in PREDICTORS:
        raise Unscored(f"no predictor for metric {p.metric}")
    return PREDICTORS[p.metric](dep, p)


# -- fitting: MAP in log space --------------------------------------------------------------------
Item = tuple[Point, Deployment]  # a scored point and its deployment (with prior efficiency)


def _with(dep: Deployment, factors: dict[str, float]) -> Deployment:
    """``dep`` with some efficiency factors replaced."""
    return replace(dep, efficiency=dep.efficiency.model_copy(update=factors))


def _log_preds(items: list[Item], names: list[str], u: np.ndarray) -> np.ndarray:
    """log(prediction) of every item with factor ``names[i] = exp(u[i]) - floor``."""
    update = {n: float(math.exp(v) - FLOOR[n]) for n, v in zip(names, u)}
    return np.array([math.log(predict(_with(d, update), p)) for p, d in items])


def choose_factors(items: list[Item], prior: Efficiency) -> list[str]:
    """The identified factors, most influential first: at most MAX_FACTORS and never more than the points.

    Sensitivity = |d log(pred)/d log(factor)| at the prior (1 ms if it is 0); a factor is identified
    when some point's sensitivity exceeds IDENTIFY_MIN, and ranked by its sum over the points."""
    sens, h = {}, 0.02
    for n in Efficiency.FITTABLE if items else ():
        x = getattr(prior, n) or OVERHEAD_FLOOR_MS
        up, down = (np.array([math.log(x * math.exp(s) + FLOOR[n])]) for s in (h, -h))
        sens[n] = np.abs(_log_preds(items, [n], up) - _log_preds(items, [n], down)) / (2 * h)
    ranked = sorted((n for n in sens if sens[n].max() > IDENTIFY_MIN), key=lambda n: -sens[n].sum())
    return ranked[:min(MAX_FACTORS, len(items))]


def fit_factors(items: list[Item], prior: Efficiency) -> dict[str, float]:
    """MAP fit of the chosen factors (see the module docstring); {} when nothing is identified."""
    names = choose_factors(items, prior)
    if not names:
        return {}
    floor = np.array([FLOOR[n] for n in names])
    u0 = np.log([getattr(prior, n) for n in names] + floor)
    lo, hi = np.log(np.array([BOUNDS_MS if n.endswith("_ms") else BOUNDS for n in names]).T + floor)
    measured = np.log([p.value for p, _ in items])
    from scipy.optimize import least_squares  # local: scipy.optimize costs ~0.5 s; only the fit needs it
    res = least_squares(lambda u: np.concatenate([_log_preds(items, names, u) - measured, PRIOR_WEIGHT * (u - u0)]),
                        np.clip(u0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi))
    return dict(zip(names, (np.exp(res.x) - floor).tolist()))


@dataclass
class GenerationFit:
    generation: str            # the GPU generation, or the engine preset for a preset fit
    prior: Efficiency
    fitted: dict[str, float]
    rows: list[int]            # the data rows the fit used


@dataclass
class Calibration:
    rows: list[dict]           # one per point: the keys of the CLI table and JSON
    fits: dict[str, GenerationFit]         # per generation: scenarios without a preset
    preset_fits: dict[str, GenerationFit] = field(default_factory=dict)   # per engine preset


def _fit_groups(points: list[Point], deps: dict, groups: dict, priors: dict) -> tuple[dict, dict, dict]:
    """Fit each group on its points; (fits, in-sample predictions, leave-one-out predictions)."""
    fits, pred, loo = {}, {}, {}
    for name, idx in groups.items():
        items, prior = [(points[i], deps[i]) for i in idx], priors[name]
        fit = fits[name] = GenerationFit(name, prior, fit_factors(items, prior), [points[i].row for i in idx])
        for k, i in enumerate(idx):
            pred[i] = predict(_with(deps[i], fit.fitted), points[i])
            loo[i] = predict(_with(deps[i], fit_factors(items[:k] + items[k + 1:], prior)), points[i])
    return fits, pred, loo


def calibrate(points: list[Point], cat: Catalog) -> Calibration:
    """Fit each engine preset's overheads on its single-stream points (and, for scenarios without a
    preset, each generation's as before), predict each point, and again leaving it out; then simulate
    the load points (:func:`agentsim.studies.calibrate_load.is_simulated`) with their preset's fitted overheads."""
    deps, legacy, reasons, by_gen, by_preset, simulated = {}, {}, {}, {}, {}, []
    for i, p in enumerate(points):
        try:
            deps[i] = deployment(cat, p)
            if is_simulated(p):
                simulated.append(i)
                continue
            legacy[i] = legacy_deployment(cat, p)
            predict(deps[i], p)
            predict(legacy[i], p)
            by_gen.setdefault(legacy[i].gpu.generation, []).append(i)
            by_preset.setdefault(engine_of(p.engine), []).append(i)
        except Unscored as e:
            reasons[i] = str(e)
    fits, _, _ = _fit_groups(points, legacy, by_gen, cat.generations)
    priors = {name: deps[idx[0]].efficiency for name, idx in by_preset.items()}
    preset_fits, pred, loo = _fit_groups(points, deps, by_preset, priors)
    for i in simulated:
        name = engine_of(points[i].engine)
        fit = preset_fits.get(name)
        deps[i] = _with(deps[i], fit.fitted if fit else {})
        overheads = {k: getattr(deps[i].efficiency, k) for k in presets.OVERHEADS}
        try:
            pred[i] = loo[i] = load_tier.predict_load(deps[i], points[i], overheads)  # never fitted: already held out
        except Unscored as e:
            reasons[i] = str(e)
    in_fit = {i for idx in by_preset.values() for i in idx}
    rows = [_row(cat, p, deps.get(i), pred.get(i), loo.get(i), reasons.get(i), i in in_fit)
            for i, p in enumerate(points)]
    return Calibration(rows, fits, preset_fits)


def _row(cat: Catalog, p: Point, dep: Deployment | None, pred, loo, reason, in_fit: bool) -> dict:
    rel = lambda v: None if v is None else v / p.value - 1  # noqa: E731
    setup = None
    if dep is not None and reason is None and is_simulated(p):
        try:
            setup = load_tier.load_setup(dep, p)
        except Unscored:  # a replaced predictor scored what load_setup cannot express
            pass
    return {"tier": "c", "row": p.row, "model": dep.model.name if dep else p.model, "gpu": dep.gpu.name if dep else p.gpu,
            "generation": dep.gpu.generation if dep else None, "metric": p.metric, "unit": p.unit,
            "measured": p.value, "predicted": pred, "rel_error": rel(pred), "loo_error": rel(loo),
            "scored": reason is None, "in_fit": in_fit, "load": is_simulated(p),
            "holdout": bool(getattr(p, "holdout", False)), "precision": p.precision, "tp": p.tp, "n_gpus": p.n_gpus,
            "input_tokens": p.input_tokens, "output_tokens": p.output_tokens, "batch_or_concurrency": p.load,
            "engine": p.engine, "preset": engine_of(p.engine), "kernels": dep.engine if dep else None,
            "kv_dtype": dep.kv_dtype if dep and reason is None else None,
            "max_batch": setup and setup.max_batch, "token_budget": setup and setup.token_budget,
            "kv_capacity_tokens": setup and setup.kv_capacity_tokens, "requests": setup and setup.requests,
            "reason": reason, "load_assumption": setup and setup.note, "command": setup and setup.command,
            "gpu_assumption": cat.assumption(p.gpu), "source": p.source}


def summary(rows: list[dict], in_fit: bool | None = True, holdout: bool | None = None) -> dict:
    """Median / max |relative error| and leave-one-out median over the scored rows (NaN if none):
    those the factors were fitted to (``in_fit=True``), the simulated load points (False) or all (None);
    ``holdout=True`` keeps only the rows the data mark as held out."""
    rows = [r for r in rows if r["scored"] and (in_fit is None or r["in_fit"] == in_fit)
            and (holdout is None or r.get("holdout", False) == holdout)]
    err = np.abs([r["rel_error"] for r in rows] or [np.nan])
    loo = np.abs([r["loo_error"] for r in rows] or [np.nan])
    return {"points": len(rows), "median_abs_error": float(np.median(err)),
            "max_abs_error": float(err.max()), "loo_median_abs_error": float(np.median(loo))}


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)  # a bare TOML key if it can be


def _fit_lines(section: str, fits: dict[str, GenerationFit], data_name: str, extra: list[str]) -> list[str]:
    lines = []
    for name, fit in sorted((g, f) for g, f in fits.items() if f.fitted):
        rows = ", ".join(map(str, fit.rows))
        note = f"fitted by agentsim calibrate on {len(fit.rows)} points of {data_name} (rows {rows}); prior "
        lines += [f"[{section}.{_toml_key(name)}]", *(f"{n} = {round(v, 5)!r}" for n, v in fit.fitted.items()),
                  *extra, "", f"[{section}.{_toml_key(name)}.sources]",
                  *(f"{n} = {json.dumps(note + str(getattr(fit.prior, n)))}" for n in fit.fitted), ""]
    return lines


def write_calibrated(fits: dict[str, GenerationFit], path: str | os.PathLike, data_name: str,
                     preset_fits: dict[str, GenerationFit] | None = None) -> None:
    """Write the fitted factors as a catalog TOML file, atomically: ``[generations.<gen>]`` (scenarios
    without a preset) and ``[engines.<preset>]`` (the presets' time outside the GPU)."""
    lines = [f"# Fitted by `agentsim calibrate` on {data_name}; overlays efficiency.toml and presets.toml "
             "(regenerate it).", ""]
    lines += _fit_lines("generations", fits, data_name, ["calibrated = true"])
    lines += _fit_lines("engines", preset_fits or {}, data_name, [])
    write_atomic(path, "\n".join(lines))

