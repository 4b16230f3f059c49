"""The measured points of the calibration CSV: parsing with one-line errors, the held-out third.

Shared by the single-stream fit (:mod:`agentsim.studies.calibrate`) and the load tier
(:mod:`agentsim.studies.calibrate_load`), which is why it is a module of its own.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..util.atomic import write_atomic
from ..util.errors import InputError

METRIC_UNITS = {"ttft": "ms", "itl": "ms", "tpot": "ms", "tpot_p50": "ms",
                "decode_rate_per_user": "tokens/s", "output_throughput": "tokens/s",
                # under-load statistics as sources name them (no predictor yet: reported "not scored")
                "ttft_mean": "ms", "ttft_p50": "ms", "ttft_p99": "ms", "tpot_mean": "ms", "tpot_p99": "ms",
                "itl_mean": "ms", "itl_p50": "ms",
                "total_throughput_per_gpu": "tokens/s/GPU",  # input + output tokens per second per GPU
                "output_throughput_per_gpu": "tokens/s/GPU",
                # large-EP sources (issue 16) quote per 8-GPU node, each phase measured alone
                "prefill_throughput_per_node": "input tokens/s per node (8 GPUs)",
                "decode_throughput_per_node": "output tokens/s per node (8 GPUs)",
                "decode_throughput_per_gpu": "output tokens/s/GPU"}
PRECISION_MAP = {"fp16": "bf16", "bf16": "bf16", "fp8": "fp8", "fp4": "fp4"}
REQUIRED = ("model", "precision", "gpu", "n_gpus", "tp", "engine", "batch_or_concurrency",
            "input_tokens", "output_tokens", "metric", "value", "unit")
HOLDOUT_SEED = 20261207  # the held-out third of the load points (holdout_rows); never change it once fitted
HOLDOUT_VALUES = {"true": True, "false": False, "": False}
_TRTLLM = re.compile(r"tensorrt-llm|trt-llm|trtllm", re.I)


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
    # settings the source states beyond the columns above (optional columns; missing -> the defaults)
    range_ratio: float = 1.0       # the client drew lengths uniformly from [ratio x L, L] (--random-range-ratio)
    token_budget: int | None = None  # the engine's tokens per step (max_num_tokens), when the source sets it
    unmodelled: str = ""           # a stated setting the engine cannot express: the point is not scored
    ep: int = 1                    # expert-parallel ranks (optional column; issue 16)
    dp_attention: int = 1          # data-parallel attention ranks; pp = n_gpus / (tp x dp_attention)


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
    ep = _number(rec, "ep", where, int, optional=True) or 1
    dp = _number(rec, "dp_attention", where, int, optional=True) or 1
    if n_gpus % (tp * dp):
        raise InputError(f"{where}: field n_gpus: {n_gpus} is not a multiple of tp x dp_attention = {tp * dp} "
                         "(pp = n_gpus / (tp x dp_attention))")
    load, holdout = _text(rec, "batch_or_concurrency"), _text(rec, "holdout")
    if holdout.lower() not in HOLDOUT_VALUES:
        raise InputError(f"{where}: field holdout: {holdout!r} not allowed; allowed: true, false (empty or no "
                         "holdout column = false)")
    ratio = _number(rec, "range_ratio", where, optional=True)
    if ratio is not None and not 0 < ratio <= 1:
        raise InputError(f"{where}: field range_ratio: {ratio!r} not allowed; allowed: a number in (0, 1] "
                         "(empty = 1, fixed lengths)")
    budget = _number(rec, "token_budget", where, int, optional=True)
    if budget is not None and budget < 1:
        raise InputError(f"{where}: field token_budget: {budget!r} not allowed; allowed: an integer >= 1 (empty = "
                         "the preset's)")
    return Point(where, row, _text(rec, "source"), _text(rec, "model"), _text(rec, "gpu"), precision, n_gpus, tp,
                 _text(rec, "engine"), load, _concurrency(load, where),
                 _number(rec, "input_tokens", where, int, optional=True),
                 _number(rec, "output_tokens", where, int, optional=True), metric, _number(rec, "value", where), unit,
                 HOLDOUT_VALUES[holdout.lower()], 1.0 if ratio is None else ratio, budget, _text(rec, "unmodelled"),
                 ep, dp)


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
    write_atomic(path, out.getvalue())
    return held


def engine_of(text: str) -> str:
    """The engine whose measured kernels price a point: TensorRT-LLM (and NIM on it), SGLang, else vLLM."""
    t = text.lower()
    if _TRTLLM.search(t) or "nim" in t:
        return "trtllm"
    return "sglang" if "sglang" in t else "vllm"
