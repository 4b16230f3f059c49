"""Fitting each GPU generation's efficiency factors to measured points (``agentsim calibrate``).

Read in order: :func:`load_points` (CSV -> validated :class:`Point`), :data:`PREDICTORS` (metric ->
prediction from a :class:`Deployment`), :func:`fit_factors` (pick the identified factors; minimise
Σ_points log(pred/measured)² + Σ_factors (λ·log(factor/prior))², λ = PRIOR_WEIGHT, so a factor the
data barely constrain stays near its prior), :func:`calibrate` (all generations, leave-one-out) and
:func:`write_calibrated`. A predictor that cannot express a point raises :class:`Unscored`.

Two kinds of points. *Single-stream* points (concurrency 1: TTFT, ITL, ...) have closed-form
predictors and are what the factors are fitted to. *Load points* (``output_throughput`` at max load
or at concurrency N, the metrics in :data:`SIMULATED`) are predicted by running the serving engine
through :func:`agentsim.estimate.estimate` with the fitted factors (:func:`predict_output_throughput`,
assumptions from :func:`load_setup`); one simulation per optimiser evaluation would be far too slow,
so they never enter a fit. Their error is therefore out-of-sample already, and their ``loo_error``
is their ``rel_error``. A third of the load points is also marked held out (the CSV's ``holdout``
column, :func:`holdout_rows`), fixed before anything is fitted to load points, to be reported apart.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .build import default_limits
from .catalog import Catalog
from .deployment import Deployment
from .errors import InputError
from .estimate import estimate
from .hardware import Efficiency
from .servicetime import StepCoeffs, prefill_attention_pairs, step_times

METRIC_UNITS = {"ttft": "ms", "itl": "ms", "tpot": "ms", "tpot_p50": "ms",
                "decode_rate_per_user": "tokens/s", "output_throughput": "tokens/s",
                # under-load statistics as sources name them (no predictor yet: reported "not scored")
                "ttft_mean": "ms", "ttft_p50": "ms", "ttft_p99": "ms", "tpot_mean": "ms", "tpot_p99": "ms",
                "itl_mean": "ms", "itl_p50": "ms",
                "total_throughput_per_gpu": "tokens/s/GPU"}  # input + output tokens per second per GPU
PRECISION_MAP = {"fp16": "bf16", "bf16": "bf16", "fp8": "fp8", "fp4": "fp4"}
REQUIRED = ("model", "precision", "gpu", "n_gpus", "tp", "engine", "batch_or_concurrency",
            "input_tokens", "output_tokens", "metric", "value", "unit")
TOKEN_BUDGET = 8192      # prefill tokens per step (vLLM-style max_num_batched_tokens)
PRIOR_WEIGHT = 0.2       # λ: a factor 2x off its prior costs as much as a point ~14 % off
IDENTIFY_MIN = 0.05      # identified: some point moves >= 0.5 % when the factor moves 10 %
MAX_FACTORS = 4          # per generation
BOUNDS, BOUNDS_MS = (0.05, 1.0), (0.0, 100.0)  # MFU/MBU; the *_ms overheads
OVERHEAD_FLOOR_MS = 1.0  # overheads may be 0: they are fitted as log(floor + value)
FLOOR = {n: OVERHEAD_FLOOR_MS if n.endswith("_ms") else 0.0 for n in Efficiency.FITTABLE}
HOLDOUT_SEED = 20261207  # the held-out third of the load points (holdout_rows); never change it once fitted
HOLDOUT_VALUES = {"true": True, "false": False, "": False}
LOAD_REASON = ("{} at {}: the closed-form predictors cover concurrency 1 only, and only output_throughput "
               "load points are simulated")


class Unscored(Exception):
    """A predictor cannot express this point; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Point:
    """One measured row of the calibration CSV, parsed and checked (CSV spellings kept)."""
    where: str               # "FILE: row N (line L)" (N: 1-based data row), for messages
    row: int
    source: str
    model: str
    gpu: str
    precision: str           # FP16, BF16, FP8 or FP4
    n_gpus: int
    tp: int
    engine: str
    load: str                # the batch_or_concurrency text
    concurrency: int | None  # None for offline / server / max-throughput scenarios
    input_tokens: int | None
    output_tokens: int | None
    metric: str
    value: float
    unit: str
    holdout: bool = False    # in the held-out third of the load points (holdout_rows); missing column -> False


def load_points(path: str | os.PathLike) -> list[Point]:
    """Read and validate a calibration CSV; a bad field raises InputError naming file, row and field."""
    try:
        reader = csv.DictReader(io.StringIO(Path(path).read_text(encoding="utf-8-sig")))
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
        points = [_parse_row(rec, i, f"{path}: row {i} (line {reader.line_num})") for i, rec in enumerate(reader, 1)]
    except (OSError, UnicodeError, csv.Error) as e:
        raise InputError(f"calibration data {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not points:
        raise InputError(f"{path}: no data rows")
    return points


def _text(rec: dict, field: str) -> str:
    return (rec.get(field) or "").strip()  # a short row gives None


def _number(rec: dict, field: str, where: str, kind=float, optional: bool = False):
    text = _text(rec, field)
    if not text and optional:
        return None
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        allowed = f"a positive {'integer' if kind is int else 'number'}" + (" or empty" if optional else "")
        raise InputError(f"{where}: field {field}: {text!r} is not {allowed}")
    return value


def _concurrency(text: str, where: str) -> int | None:
    """N for 'N' / 'concurrency N' / 'batch N'; None for offline, server or max-throughput scenarios."""
    m = re.fullmatch(r"(?:concurrency|batch)?\s*(\d+)", text, re.I)
    if m or re.search(r"offline|server|max", text, re.I):
        return int(m.group(1)) if m else None
    raise InputError(f"{where}: field batch_or_concurrency: {text!r} not understood; allowed: N, "
                     "'concurrency N', 'batch N', or a scenario naming offline/server/max")


def _parse_row(rec: dict, row: int, where: str) -> Point:
    metric, unit, precision = _text(rec, "metric"), _text(rec, "unit"), _text(rec, "precision")
    for field, value, allowed in (("metric", metric, list(METRIC_UNITS)), ("unit", unit, [METRIC_UNITS.get(metric)]),
                                  ("precision", precision.upper(), [k.upper() for k in PRECISION_MAP])):
        if value not in allowed:
            raise InputError(f"{where}: field {field}: {value!r} not allowed; allowed: {', '.join(allowed)}")
    n_gpus, tp = _number(rec, "n_gpus", where, int), _number(rec, "tp", where, int)
    if n_gpus % tp:
        raise InputError(f"{where}: field n_gpus: {n_gpus} is not a multiple of tp={tp} (pp = n_gpus/tp)")
    load, holdout = _text(rec, "batch_or_concurrency"), _text(rec, "holdout")
    if holdout.lower() not in HOLDOUT_VALUES:
        raise InputError(f"{where}: field holdout: {holdout!r} not allowed; allowed: true, false (empty or no "
                         "holdout column = false)")
    return Point(where, row, _text(rec, "source"), _text(rec, "model"), _text(rec, "gpu"), precision, n_gpus, tp,
                 _text(rec, "engine"), load, _concurrency(load, where),
                 _number(rec, "input_tokens", where, int, optional=True),
                 _number(rec, "output_tokens", where, int, optional=True), metric, _number(rec, "value", where), unit,
                 HOLDOUT_VALUES[holdout.lower()])


# -- the held-out third of the load points -------------------------------------------------------
def is_load_point(p: Point) -> bool:
    """Measured under load: concurrency N > 1, or an offline / server / max-throughput scenario."""
    return p.concurrency is None or p.concurrency > 1


def measurement_key(p: Point) -> str:
    """One measurement's conditions (every column but metric, value, unit, notes and holdout): the rows of one
    run (its throughput, TTFT and TPOT) share it and are held out together."""
    fields = (p.source, p.model, p.precision, p.gpu, p.n_gpus, p.tp, p.engine, p.load, p.input_tokens, p.output_tokens)
    return "|".join("" if f is None else str(f) for f in fields)


def holdout_rows(points: list[Point]) -> set[int]:
    """The data rows (``Point.row``) in the held-out third of the load points; fixed before any fit.

    Rule: group the load points (:func:`is_load_point`) by :func:`measurement_key`, so one run's throughput,
    TTFT and TPOT stay together; split the groups into two strata, those with a latency row (unit ms) and
    the rest; in each stratum sort the distinct keys, permute them with
    ``numpy.random.default_rng(HOLDOUT_SEED).permutation`` and take whole groups in that order until at
    least round(n/3) of the stratum's n rows are taken. Single-stream points are never held out. The CSV's
    ``holdout`` column stores the result (:func:`write_holdout_column`; a test rechecks it); adding load
    rows may reshuffle it.
    """
    groups: dict[str, list[Point]] = {}
    for p in points:
        if is_load_point(p):
            groups.setdefault(measurement_key(p), []).append(p)
    taken: set[int] = set()
    for latency in (True, False):
        keys = sorted(k for k, g in groups.items() if any(p.unit == "ms" for p in g) == latency)
        target, stratum = round(sum(len(groups[k]) for k in keys) / 3), set()
        for i in np.random.default_rng(HOLDOUT_SEED).permutation(len(keys)):
            if len(stratum) >= target:
                break
            stratum |= {p.row for p in groups[keys[i]]}
        taken |= stratum
    return taken


def write_holdout_column(path: str | os.PathLike) -> set[int]:
    """Set the CSV's ``holdout`` column (added last if missing) from :func:`holdout_rows`, atomically;
    every other cell is kept as it is. Returns the held-out rows."""
    held = holdout_rows(load_points(path))
    text = Path(path).read_text(encoding="utf-8-sig")
    header, *records = csv.reader(io.StringIO(text))
    if "holdout" not in header:
        header.append("holdout")
    col = header.index("holdout")
    out = io.StringIO()
    writer = csv.writer(out)  # CRLF line ends, as the shipped file has
    writer.writerow(header)
    for i, rec in enumerate(records, 1):
        rec += [""] * (len(header) - len(rec))
        rec[col] = "true" if i in held else "false"
        writer.writerow(rec)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".holdout.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(out.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return held


def engine_of(text: str) -> str:
    """The engine whose measured kernels price a point: TensorRT-LLM (and NIM on it), SGLang, else vLLM."""
    t = text.lower()
    if _TRTLLM.search(t) or "nim" in t:
        return "trtllm"
    return "sglang" if "sglang" in t else "vllm"


def deployment(cat: Catalog, p: Point) -> Deployment:
    """The point's deployment (pp = n_gpus/tp); an impossible one (weights do not fit, ...) is Unscored."""
    try:
        model, gpu = cat.model(p.model), cat.gpu(p.gpu)
    except InputError as e:
        raise InputError(f"{p.where}: {e}") from None
    try:
        return Deployment(model=model, gpu=gpu, efficiency=cat.efficiency(gpu), tp=p.tp, pp=p.n_gpus // p.tp,
                          precision=PRECISION_MAP[p.precision.lower()], engine=engine_of(p.engine))
    except InputError as e:
        raise Unscored(f"not a valid deployment: {e}") from None


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


# -- load points: the serving engine through agentsim.estimate -----------------------------------
LOAD_SEED = 1             # fixed: the calibration table is deterministic
LOAD_WAVES = 20           # simulated requests = LOAD_WAVES x the requests in flight, so the 10th-90th
LOAD_REQUESTS = (200, 100_000)  # percentile window sees a steady backlog; clamped to these bounds
TRTLLM_KV_FRACTION = 0.90  # trtllm-bench's --kv_cache_free_gpu_mem_fraction default (for its heuristic)
_TRTLLM = re.compile(r"tensorrt-llm|trt-llm|trtllm", re.I)
_MAX_LOAD = re.compile(r"max|offline", re.I)
KV_NOTE_TRTLLM = ("fp8 KV: TensorRT-LLM at FP8 serves NVIDIA ModelOpt FP8 checkpoints, whose hf_quant_config "
                  "sets kv_cache_quant_algo FP8 (trtllm-bench maps FP8 weights to an FP8 KV cache too)")
KV_NOTE_DEFAULT = "bf16 KV: the engine default (vLLM's kv_cache_dtype 'auto' keeps the 16-bit type)"


@dataclass(frozen=True)
class LoadSetup:
    """How a load point is simulated: the assumptions shown with it in the table and JSON."""
    max_load: bool            # every request at once (else a closed loop of ``concurrency`` clients)
    concurrency: int | None
    kv_dtype: str
    max_batch: int
    token_budget: int
    kv_capacity_tokens: int
    requests: int
    note: str                 # why these settings, one sentence per assumption


def trtllm_bench_limits(dep: Deployment, isl: int, osl: int) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) that ``trtllm-bench throughput`` picks when given neither.

    TensorRT-LLM ``bench/build/tuning.py`` (calc_engine_setting, finetune_setting): the requests of
    ``isl + osl`` tokens that fit a KV pool of TRTLLM_KV_FRACTION of the memory left after the
    weights, capped at 4096 and divided by pp, rounded up (to 32 below 256, 128 below 1024, else
    256; at least 64); tokens = that x (1 + isl/osl), capped at 32768 and rounded up (at least 2048).
    ``bench/benchmark/utils/general.py`` (get_settings) leaves chunked prefill off, so max_num_tokens
    is raised to isl + max_batch_size. Memory here is the catalog's HBM, not the GPU's reported GiB.
    """
    kv_per_token = dep.model.kv_bytes_per_token(dep.kv_dtype, dep.tp) * dep.tp  # whole replica
    cache = TRTLLM_KV_FRACTION * (dep.n_gpus * dep.gpu.hbm_bytes - dep.model.weight_bytes(dep.precision))
    raw_bs = min(cache / (kv_per_token * (isl + osl)), 4096) / dep.pp
    raw_tokens = min(raw_bs * (1 + isl / osl), 32768)
    step = 32 if raw_bs < 256 else 128 if raw_bs < 1024 else 256
    max_bs = max(64, step * math.ceil(raw_bs / step)) if step == 32 else step * math.ceil(raw_bs / step)
    step = 256 if raw_tokens < 4096 else 512 if raw_tokens < 8192 else 1024
    max_tokens = max(2048, step * math.ceil(raw_tokens / step))
    return max_bs, max(max_tokens, isl + max_bs)


def load_setup(dep: Deployment, p: Point) -> LoadSetup:
    """The simulation of a load point and its assumptions; Unscored when it cannot be expressed.

    * Load: "max"/"offline" -> every request at once (``max_load``); "concurrency N" -> a closed
      loop of N clients. Either way the figure is the steady output rate (tokens/s between the
      10th and 90th percentile completion), over LOAD_WAVES x the requests in flight.
    * KV dtype: FP8 for TensorRT-LLM at FP8/FP4 weights (KV_NOTE_TRTLLM), else the engine default.
    * Limits: build.default_limits, except trtllm-bench's own heuristic for TRT-LLM max-load rows
      (:func:`trtllm_bench_limits`). TRT-LLM's default scheduler (GUARANTEED_NO_EVICT) admits a
      request only when its whole ISL+OSL fits the KV pool; with fixed lengths that is
      max_batch <= KV tokens // (ISL+OSL), which is how it is expressed (the engine itself preempts,
      as vLLM does).
    """
    if p.input_tokens is None or p.output_tokens is None:
        raise Unscored(f"load point ({p.load}) without input/output lengths: the engine simulates fixed "
                       "lengths and needs both")
    isl, osl = p.input_tokens, p.output_tokens
    max_load = p.concurrency is None
    if max_load and not _MAX_LOAD.search(p.load):
        raise Unscored(f"load point ({p.load}): only max-load (offline) and closed-loop concurrency N "
                       "scenarios are simulated")
    trt = bool(_TRTLLM.search(p.engine))
    kv_dtype = "fp8" if trt and dep.precision in ("fp8", "fp4") else "bf16"
    notes = [KV_NOTE_TRTLLM if kv_dtype == "fp8" else KV_NOTE_DEFAULT]
    try:
        dep = replace(dep, kv_dtype=kv_dtype)
    except InputError as e:
        raise Unscored(f"not a valid deployment with {kv_dtype} KV: {e}") from None
    cap = dep.kv_capacity_tokens
    if trt and max_load:
        max_batch, budget = trtllm_bench_limits(dep, isl, osl)
        notes.append(f"trtllm-bench's heuristic for {isl}/{osl} tokens: max_batch_size {max_batch}, "
                     f"max_num_tokens {budget} (chunked prefill off)")
    else:
        max_batch, budget = default_limits(dep)
        notes.append(f"engine default limits (max_batch {max_batch}, token_budget {budget})")
    if trt:
        fit = cap // (isl + osl)
        if fit < 1:
            raise Unscored(f"one request of {isl + osl} tokens does not fit the {cap}-token KV cache")
        if fit < max_batch:
            max_batch = fit
            notes.append(f"max_batch {fit} = KV {cap} tokens // {isl + osl}: TRT-LLM's GUARANTEED_NO_EVICT "
                         "scheduler admits only requests whose whole ISL+OSL fits")
    in_flight = min(max_batch, max(1, cap // (isl + osl))) if max_load else p.concurrency
    requests = int(np.clip(LOAD_WAVES * in_flight, *LOAD_REQUESTS))
    notes.append(f"{requests} requests {'all at once' if max_load else f'from {p.concurrency} clients'}, "
                 "steady output rate between the 10th and 90th percentile completion")
    return LoadSetup(max_load, p.concurrency, kv_dtype, max_batch, budget, cap, requests, "; ".join(notes))


def _catalog_overlay(dep: Deployment) -> str:
    """Catalog TOML defining ``dep``'s GPU, model and generation exactly as ``dep`` has them.

    The estimate path loads its own catalog (shipped files, calibrated.toml, $AGENTSIM_CATALOG);
    this overlay, read last, makes it simulate the deployment calibrate holds, with the factors
    just fitted (or the priors) and any GPU or model that came from --catalog files."""
    def table(section: str, name: str, obj) -> list[str]:
        key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
        values = obj.model_dump(exclude={"name", "sources"})
        return [f"[{section}.{key}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None), ""]
    return "\n".join(table("gpus", dep.gpu.name, dep.gpu) + table("models", dep.model.name, dep.model)
                     + table("generations", dep.gpu.generation, dep.efficiency))


def simulate_load_point(dep: Deployment, p: Point) -> dict:
    """``estimate()`` of the load point on ``dep`` (its efficiency factors included), as load_setup says."""
    s = load_setup(dep, p)
    text = _catalog_overlay(dep)
    mode = {"max_load": True} if s.max_load else {"concurrency": s.concurrency}
    # load_catalog is cached by path: a content-named file never maps one path to two contents
    with tempfile.TemporaryDirectory(prefix="agentsim-calibrate-") as tmp:
        overlay = Path(tmp) / f"overlay-{hashlib.sha256(text.encode()).hexdigest()[:16]}.toml"
        overlay.write_text(text, encoding="utf-8")
        out = estimate(seed=LOAD_SEED, model=dep.model.name, gpu=dep.gpu.name, tp=dep.tp, pp=dep.pp,
                       precision=dep.precision, input_tokens=p.input_tokens, output_tokens=p.output_tokens,
                       requests=s.requests, engine={"kv_dtype": s.kv_dtype, "kernels": dep.engine, "max_batch": s.max_batch,
                                                    "token_budget": s.token_budget},
                       catalog=[str(overlay)], **mode)
    used = (out["kv_capacity_tokens"], out["max_batch"], out["token_budget"])
    if used != (s.kv_capacity_tokens, s.max_batch, s.token_budget):
        raise RuntimeError(f"{p.where}: the engine ran with (kv, max_batch, budget) {used}, "
                           f"not the assumed {(s.kv_capacity_tokens, s.max_batch, s.token_budget)}")
    return out


def predict_output_throughput(dep: Deployment, p: Point) -> float:
    """Steady output tokens/s of the load point, simulated by the serving engine."""
    return simulate_load_point(dep, p)["steady_output_tokens_per_s"]


Predictor = Callable[[Deployment, Point], float]
_decode_ms: Predictor = lambda dep, p: decode_step_s(dep, p) * 1e3  # noqa: E731
PREDICTORS: dict[str, Predictor] = {
    "ttft": predict_ttft_ms, "itl": _decode_ms, "tpot": _decode_ms, "tpot_p50": _decode_ms,
    "decode_rate_per_user": lambda dep, p: 1.0 / decode_step_s(dep, p),
    "output_throughput": predict_output_throughput}
#: metrics whose predictor runs the engine: scored with the fitted factors, never fitted
SIMULATED = frozenset({"output_throughput"})


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
    generation: str
    prior: Efficiency
    fitted: dict[str, float]
    rows: list[int]            # the data rows the fit used


@dataclass
class Calibration:
    rows: list[dict]           # one per point: the keys of the CLI table and JSON
    fits: dict[str, GenerationFit]


def calibrate(points: list[Point], cat: Catalog) -> Calibration:
    """Fit every generation on its single-stream points, predict each point, and again leaving it out;
    then simulate the load points (:data:`SIMULATED`) with their generation's fitted factors."""
    deps, reasons, by_gen, fits, pred, loo, simulated = {}, {}, {}, {}, {}, {}, []
    for i, p in enumerate(points):
        try:
            deps[i] = deployment(cat, p)
            if p.metric in SIMULATED:
                simulated.append(i)
                continue
            predict(deps[i], p)
            by_gen.setdefault(deps[i].gpu.generation, []).append(i)
        except Unscored as e:
            reasons[i] = str(e)
    for gen, idx in by_gen.items():
        items, prior = [(points[i], deps[i]) for i in idx], cat.generations[gen]
        fit = fits[gen] = GenerationFit(gen, prior, fit_factors(items, prior), [points[i].row for i in idx])
        for k, i in enumerate(idx):
            pred[i] = predict(_with(deps[i], fit.fitted), points[i])
            loo[i] = predict(_with(deps[i], fit_factors(items[:k] + items[k + 1:], prior)), points[i])
    for i in simulated:
        fit = fits.get(deps[i].gpu.generation)
        deps[i] = _with(deps[i], fit.fitted if fit else {})
        try:
            pred[i] = loo[i] = predict(deps[i], points[i])  # never fitted: its error is already held out
        except Unscored as e:
            reasons[i] = str(e)
    in_fit = {i for idx in by_gen.values() for i in idx}
    rows = [_row(cat, p, deps.get(i), pred.get(i), loo.get(i), reasons.get(i), i in in_fit)
            for i, p in enumerate(points)]
    return Calibration(rows, fits)


def _row(cat: Catalog, p: Point, dep: Deployment | None, pred, loo, reason, in_fit: bool) -> dict:
    rel = lambda v: None if v is None else v / p.value - 1  # noqa: E731
    setup = None
    if dep is not None and reason is None and p.metric in SIMULATED:
        try:
            setup = load_setup(dep, p)
        except Unscored:  # a replaced predictor scored what load_setup cannot express
            pass
    return {"tier": "c", "row": p.row, "model": dep.model.name if dep else p.model, "gpu": dep.gpu.name if dep else p.gpu,
            "generation": dep.gpu.generation if dep else None, "metric": p.metric, "unit": p.unit,
            "measured": p.value, "predicted": pred, "rel_error": rel(pred), "loo_error": rel(loo),
            "scored": reason is None, "in_fit": in_fit, "precision": p.precision, "tp": p.tp, "n_gpus": p.n_gpus,
            "input_tokens": p.input_tokens, "output_tokens": p.output_tokens, "batch_or_concurrency": p.load,
            "engine": p.engine, "kernels": dep.engine if dep else None,
            "kv_dtype": (setup.kv_dtype if setup else dep.kv_dtype) if dep and reason is None else None,
            "max_batch": setup and setup.max_batch, "token_budget": setup and setup.token_budget,
            "kv_capacity_tokens": setup and setup.kv_capacity_tokens, "requests": setup and setup.requests,
            "reason": reason, "load_assumption": setup and setup.note, "gpu_assumption": cat.assumption(p.gpu),
            "holdout": p.holdout, "source": p.source}


def summary(rows: list[dict], in_fit: bool | None = True) -> dict:
    """Median / max |relative error| and leave-one-out median over the scored rows (NaN if none):
    those the factors were fitted to (``in_fit=True``), the simulated load points (False) or all (None)."""
    rows = [r for r in rows if r["scored"] and (in_fit is None or r["in_fit"] == in_fit)]
    err = np.abs([r["rel_error"] for r in rows] or [np.nan])
    loo = np.abs([r["loo_error"] for r in rows] or [np.nan])
    return {"points": len(rows), "median_abs_error": float(np.median(err)),
            "max_abs_error": float(err.max()), "loo_median_abs_error": float(np.median(loo))}


def write_calibrated(fits: dict[str, GenerationFit], path: str | os.PathLike, data_name: str) -> None:
    """Write the fitted factors as a catalog TOML file (``[generations.<gen>]``), atomically."""
    lines = [f"# Fitted by `agentsim calibrate` on {data_name}; overlays efficiency.toml (regenerate it).", ""]
    for gen, fit in sorted((g, f) for g, f in fits.items() if f.fitted):
        key = gen if re.fullmatch(r"[A-Za-z0-9_-]+", gen) else json.dumps(gen)  # a bare TOML key if it can be
        rows = ", ".join(map(str, fit.rows))
        note = f"fitted by agentsim calibrate on {len(fit.rows)} points of {data_name} (rows {rows}); prior "
        lines += [f"[generations.{key}]", *(f"{n} = {round(v, 5)!r}" for n, v in fit.fitted.items()),
                  "calibrated = true", "", f"[generations.{key}.sources]",
                  *(f"{n} = {json.dumps(note + str(getattr(fit.prior, n)))}" for n in fit.fitted), ""]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".calibrate.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a catalog file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
