"""The load tier of ``agentsim calibrate``: measured points under load, through ``agentsim estimate``.

A load point (offline / max throughput, or a closed loop of N > 1 clients; throughput, TTFT or TPOT)
is simulated as one ``agentsim estimate`` run with its engine's preset and only what its row states
(model, GPU, tp/pp, precision, lengths, load): no per-point setup. :func:`load_setup` says what that
run is and prints its command; :func:`simulate_load_point` runs it with the fitted overheads (a
catalog overlay, identical to the shipped catalog once calibrated.toml is current, so the printed
command reproduces the figure). Load points are scored, never fitted.
"""
from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import presets
from ..run.scenario import parse
from .calibration_points import Point, Unscored, engine_of
from ..model.deployment import Deployment
from ..util.errors import InputError
from .estimate import estimate, estimate_scenario

LOAD_SEED = 1             # fixed: the calibration table is deterministic
LOAD_WAVES = 20           # simulated requests = LOAD_WAVES x the requests in flight, so the 10th-90th
LOAD_REQUESTS = (200, 100_000)  # percentile window sees a steady backlog; clamped to these bounds
_MAX_LOAD = re.compile(r"max|offline", re.I)

#: metric -> (estimate key, how to turn its value into the CSV's unit given the point, what that is in words)
_MS = (lambda v, p: v * 1e3, "x 1000 (ms)")
LOAD_METRICS = {
    "output_throughput": ("steady_output_tokens_per_s", lambda v, p: v, ""),
    "output_throughput_per_gpu": ("steady_output_tokens_per_s", lambda v, p: v / p.n_gpus, "/ n_gpus"),
    "total_throughput_per_gpu": ("steady_output_tokens_per_s",
                                 lambda v, p: v * (p.input_tokens + p.output_tokens) / p.output_tokens / p.n_gpus,
                                 "x (input+output)/output / n_gpus"),
    "ttft": ("steady_ttft_s", *_MS), "ttft_p50": ("steady_ttft_p50_s", *_MS),
    "ttft_p90": ("steady_ttft_p90_s", *_MS), "ttft_p99": ("steady_ttft_p99_s", *_MS),
    "tpot": ("steady_tpot_s", *_MS), "itl": ("steady_tpot_s", *_MS),
    "tpot_p50": ("steady_tpot_p50_s", *_MS), "tpot_p90": ("steady_tpot_p90_s", *_MS),
    "tpot_p99": ("steady_tpot_p99_s", *_MS),
    "decode_rate_per_user": ("steady_tpot_s", lambda v, p: 1.0 / v, "1 / value"),
    # a prefill phase measured alone (PD prefill nodes): requests of one output token
    "prefill_throughput_per_node": ("steady_output_tokens_per_s",
                                    lambda v, p: v * p.input_tokens / p.output_tokens / (p.n_gpus / 8),
                                    "x input/output / (n_gpus / 8)"),
}
#: latency metrics of an offline run (every request at t=0) have no steady window: all requests count
OFFLINE_KEYS = {k: k.removeprefix("steady_") for k, *_ in LOAD_METRICS.values() if k.startswith("steady_t")}


def is_simulated(p: Point) -> bool:
    """Simulated by the engine: anything but a single stream (concurrency 1 has closed forms)."""
    return p.concurrency != 1 and p.metric in LOAD_METRICS


@dataclass(frozen=True)
class LoadSetup:
    """How a load point is simulated: the estimate run, and what the engine ran with."""
    preset: str
    max_load: bool            # every request at once (offline), else ``concurrency`` clients
    concurrency: int | None
    kv_dtype: str
    max_batch: int
    token_budget: int
    kv_capacity_tokens: int
    requests: int
    note: str                 # why these settings, one clause per assumption
    command: str              # the one `agentsim estimate` command that reproduces the prediction
    key: str                  # the estimate figure the metric is read from


def _kwargs(dep: Deployment, p: Point, preset: str, max_load: bool, requests: int) -> dict:
    mode = {"mode": "offline"} if max_load else {"concurrency": p.concurrency}
    stated = {"range_ratio": p.range_ratio} if p.range_ratio < 1 else {}
    engine = {"preset": preset, **({"token_budget": p.token_budget} if p.token_budget else {})}
    shape = {"ep": dep.ep, "dp_attention": dep.dp} if dep.ep > 1 or dep.dp > 1 else {}
    return dict(model=dep.model.name, gpu=dep.gpu.name, tp=dep.tp, pp=dep.pp, precision=dep.precision,
                input_tokens=p.input_tokens, output_tokens=p.output_tokens, requests=requests,
                engine=engine, **shape, **stated, **mode)


def command(kw: dict, key: str, how: str = "") -> str:
    """The CLI spelling of an estimate run (names quoted when they hold spaces)."""
    q = lambda s: json.dumps(s) if re.search(r"[^A-Za-z0-9_.+-]", str(s)) else str(s)  # noqa: E731
    load = "--mode offline" if kw.get("mode") == "offline" else f"--concurrency {kw['concurrency']}"
    return (f"agentsim estimate --model {q(kw['model'])} --gpu {q(kw['gpu'])} --tp {kw['tp']} --pp {kw['pp']} "
            + (f"--ep {kw['ep']} --dp-attention {kw['dp_attention']} " if "ep" in kw else "")
            + f"--precision {kw['precision']} --input-tokens {kw['input_tokens']} --output-tokens {kw['output_tokens']} "
            + (f"--range-ratio {kw['range_ratio']:g} " if "range_ratio" in kw else "")
            + (f"--token-budget {kw['engine']['token_budget']} " if "token_budget" in kw["engine"] else "")
            + f"--engine {kw['engine']['preset']} {load} --requests {kw['requests']} --seed {LOAD_SEED} "
            f"--format json  # {key}{' ' + how if how else ''}")


def load_setup(dep: Deployment, p: Point) -> LoadSetup:
    """The estimate run of a load point and its assumptions; Unscored when it cannot be expressed.

    ``dep`` is the point's deployment under its engine's preset (:func:`agentsim.studies.calibrate.deployment`).
    """
    if p.input_tokens is None or p.output_tokens is None:
        raise Unscored(f"load point ({p.load}) without input/output lengths: the engine simulates fixed "
                       "lengths and needs both")
    if p.unmodelled:
        raise Unscored(f"the run used {p.unmodelled}, which the engine does not model")
    if re.search(r"server", p.load, re.I):
        raise Unscored(f"server scenario ({p.load}): the row states no TTFT/TPOT bounds for --mode server")
    max_load = p.concurrency is None
    if max_load and not _MAX_LOAD.search(p.load):
        raise Unscored(f"load point ({p.load}): only offline (max) and closed-loop concurrency N loads are simulated")
    preset = engine_of(p.engine)
    key = LOAD_METRICS[p.metric][0]
    key = OFFLINE_KEYS.get(key, key) if max_load else key
    probe = _kwargs(dep, p, preset, max_load, 1)
    try:
        sc = parse(estimate_scenario(**{k: v for k, v in probe.items() if k != "mode"},
                                     **({"max_load": True} if max_load else {})))
        settings = presets.settings(sc.pool_engine("main"), dep.precision)
        max_batch, budget, notes = presets.preset_limits(preset, dep, list(sc.streams.values()), settings)
    except InputError as e:
        raise Unscored(f"not expressible: {e}") from None
    cap = dep.kv_capacity_tokens
    if cap < p.input_tokens + p.output_tokens:
        raise Unscored(f"one request of {p.input_tokens + p.output_tokens} tokens does not fit the {cap}-token KV cache")
    in_flight = min(max_batch, max(1, cap // (p.input_tokens + p.output_tokens))) if max_load else p.concurrency
    if settings.chunked_prefill is False and p.input_tokens + min(in_flight, max_batch) - 1 > budget:
        # an unchunked prompt needs a step with room for all of it beside the running decodes: at these
        # limits it waits for the batch to drain, so the measured run cannot have used them
        raise Unscored(f"{p.input_tokens}-token prompts unchunked beside up to {min(in_flight, max_batch) - 1} "
                       f"decodes exceed the {preset} preset's {budget}-token step budget; the source does not "
                       "state the limits it ran with (max_num_tokens / chunked prefill)")
    requests = int(np.clip(LOAD_WAVES * in_flight, *LOAD_REQUESTS))
    kw = _kwargs(dep, p, preset, max_load, requests)
    kv_note = f"{dep.kv_dtype} KV ({preset} preset at {dep.precision} weights)"
    notes = [kv_note, *notes, f"{requests} requests {'all at once' if max_load else f'from {p.concurrency} clients'}"
             + (", steady output rate between the 10th and 90th percentile completion" if key.startswith("steady") else "")]
    return LoadSetup(preset, max_load, p.concurrency, dep.kv_dtype, max_batch, budget, cap, requests,
                     "; ".join(notes), command(kw, key, LOAD_METRICS[p.metric][2]), key)


def catalog_overlay(dep: Deployment, preset: str, overheads: dict[str, float]) -> str:
    """Catalog TOML defining ``dep``'s GPU, model and generation as ``dep`` has them, and the
    preset's overheads: the estimate path then simulates exactly the deployment calibrate holds."""
    def table(section: str, name: str, values: dict) -> list[str]:
        key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
        return [f"[{section}.{key}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None), ""]
    dump = lambda obj: obj.model_dump(exclude={"name", "sources"})  # noqa: E731
    return "\n".join(table("gpus", dep.gpu.name, dump(dep.gpu)) + table("models", dep.model.name, dump(dep.model))
                     + table("engines", preset, overheads))


def simulate_load_point(dep: Deployment, p: Point, overheads: dict[str, float]) -> dict:
    """``estimate()`` of the load point as :func:`load_setup` says, with the preset's ``overheads``."""
    s = load_setup(dep, p)
    text = catalog_overlay(dep, s.preset, overheads)
    kw = _kwargs(dep, p, s.preset, s.max_load, s.requests)
    # load_catalog is cached by path: a content-named file never maps one path to two contents
    with tempfile.TemporaryDirectory(prefix="agentsim-calibrate-") as tmp:
        overlay = Path(tmp) / f"overlay-{hashlib.sha256(text.encode()).hexdigest()[:16]}.toml"
        overlay.write_text(text, encoding="utf-8")
        out = estimate(seed=LOAD_SEED, catalog=[str(overlay)], **kw)
    used = (out["kv_capacity_tokens"], out["max_batch"], out["token_budget"])
    if used != (s.kv_capacity_tokens, s.max_batch, s.token_budget):
        raise RuntimeError(f"{p.where}: the engine ran with (kv, max_batch, budget) {used}, "
                           f"not the assumed {(s.kv_capacity_tokens, s.max_batch, s.token_budget)}")
    return out


def predict_load(dep: Deployment, p: Point, overheads: dict[str, float]) -> float:
    """The load point's metric from its simulation, in the CSV's unit (the figure load_setup names)."""
    key = load_setup(dep, p).key
    return float(LOAD_METRICS[p.metric][1](simulate_load_point(dep, p, overheads)[key], p))
