"""``estimate``: one deployment, one workload shape, one answer — through the real engine.

A thin layer over a generated one-pool scenario: a closed loop of C clients, Poisson arrivals at
R requests/s, or every request at once (``max_load``, which also yields the saturation rate).
Its JSON keys are shared with ``summary.json`` wherever a figure is the same.
"""
from __future__ import annotations

import math
import sys
import types

import numpy as np

from ..results.result import _latency_stats
from ..run.api import simulate
from ..run.build import build
from ..run.scenario import parse
from ..util.errors import InputError

HORIZON_S = 1e7   # runs end when the last request does; this only bounds pathological inputs


MODES = ("offline", "server")


def estimate_scenario(*, model: str, gpu: str, tp: int = 1, pp: int = 1, precision: str = "bf16",
                      input_tokens: int, output_tokens: int, cached_tokens: int = 0, concurrency: int | None = None,
                      rate: float | None = None, max_load: bool = False, requests: int = 1000,
                      replicas: int = 1, engine: dict | None = None, catalog: list[str] = (),
                      mode: str | None = None, ttft_p99: float | None = None, tpot_p99: float | None = None,
                      range_ratio: float = 1.0, ep: int = 1, dp_attention: int = 1) -> dict:
    """The scenario dict ``estimate`` simulates (exactly one of concurrency / rate / max_load / mode).

    ``ep`` and ``dp_attention`` shape the deployment as :class:`agentsim.scenario.Pool` does (left out
    of the pool when 1, so tensor-parallel scenarios are the same dicts as before).

    ``range_ratio`` < 1 draws each request's input and output lengths uniformly from the integers
    in ``[floor(ratio x L), L]``, as the benchmark clients' ``--random-range-ratio`` does (SGLang's
    and InferenceX's ``bench_serving``); fixed lengths make closed-loop clients finish in waves.

    ``mode="offline"`` is ``max_load``; a ``mode="server"`` run is a search over Poisson rates
    (:func:`server_search`), so its scenario here is the offline one it starts from."""
    if mode is not None and mode not in MODES:
        raise InputError(f"estimate: --mode {mode!r} unknown; allowed: {', '.join(MODES)}")
    _check_bounds(mode, ttft_p99, tpot_p99)
    modes = [concurrency is not None, rate is not None, bool(max_load) or mode is not None]
    if sum(modes) != 1 or (max_load and mode == "server"):
        raise InputError("estimate: give exactly one of --concurrency C, --rate R, --mode offline|server "
                         "or --max-load (= --mode offline)")
    max_load = bool(max_load) or mode is not None
    if requests < 1:
        raise InputError(f"estimate: --requests must be >= 1, got {requests}")
    if concurrency is not None:
        stream = {"kind": "concurrency", "concurrency": concurrency, "count": requests}
    elif rate is not None:
        if rate <= 0:
            raise InputError(f"estimate: --rate must be > 0 requests/s, got {rate}")
        stream = {"kind": "poisson", "rate": rate, "count": requests}
    else:
        stream = {"kind": "all_at_once", "count": requests}
    if not 0 <= cached_tokens < input_tokens:
        raise InputError(f"estimate: --cached-tokens must be in [0, --input-tokens), got {cached_tokens} "
                         f"with --input-tokens {input_tokens}")
    if not 0 < range_ratio <= 1:
        raise InputError(f"estimate: --range-ratio must be in (0, 1], got {range_ratio}")
    stream.update(input_tokens=_lengths(input_tokens, range_ratio), output_tokens=_lengths(output_tokens, range_ratio))
    if cached_tokens and cached_tokens >= math.floor(range_ratio * input_tokens):
        raise InputError(f"estimate: --cached-tokens must be below the shortest prompt, "
                         f"floor(--range-ratio x --input-tokens) = {math.floor(range_ratio * input_tokens)}; got {cached_tokens}")
    if cached_tokens:
        stream["cached_tokens"] = cached_tokens
    return {
        "name": "estimate", "duration_s": HORIZON_S, "sample_s": HORIZON_S, "catalog": list(catalog),
        "engine": dict(engine or {}),
        "pools": {"main": {"gpu": gpu, "model": model, "tp": tp, "pp": pp, "precision": precision,
                           "replicas": replicas, **({"ep": ep} if ep != 1 else {}),
                           **({"dp_attention": dp_attention} if dp_attention != 1 else {})}},
        "router": {"policy": "least_outstanding"},
        "streams": {"load": stream},
        "slo_ttft_s": 1e9, "slo_tpot_s": 1e9,
    }


def _lengths(length: int, ratio: float):
    """A fixed length, or the integers in [floor(ratio x length), length] drawn uniformly."""
    if ratio >= 1:
        return length
    return {"kind": "uniform", "low": math.floor(ratio * length), "high": length + 1, "round": "floor",
            "max": length}


ESTIMATE_KEYS = ("requests", "ttft_s", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_s", "tpot_p50_s",
                 "tpot_p90_s", "tpot_p99_s", "frontend_s", "queue_s", "prefill_s", "e2e_s", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s",
                 "output_tokens_per_s", "input_tokens_per_s", "requests_per_s", "sim_wall_s", "events")


def _check_bounds(mode: str | None, ttft_p99: float | None, tpot_p99: float | None) -> None:
    """Server mode needs both latency bounds, finite and positive; other modes take none."""
    given = {"--ttft-p99": ttft_p99, "--tpot-p99": tpot_p99}
    if mode != "server":
        extra = [f for f, v in given.items() if v is not None]
        if extra:
            raise InputError(f"estimate: {', '.join(extra)} only apply with --mode server")
        return
    for flag, v in given.items():
        if v is None:
            raise InputError(f"estimate: --mode server needs {flag} S (the p99 bound in seconds)")
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6):
            raise InputError(f"estimate: {flag} must be a finite number of seconds in (0, 1e6), got {v!r}")


def estimate(seed: int = 1, **kw) -> dict:
    """Simulate and return the estimate figures (plus the saturation figures for max-load runs).

    ``steady_output_tokens_per_s`` is the output rate between the 10th and 90th percentile completion,
    which leaves out the warm-up and the drain that ``output_tokens_per_s`` (first arrival to last
    completion) includes; at max load it is also ``saturation_output_tokens_per_s``.
    ``mode="server"`` returns the figures at the highest Poisson rate meeting ``ttft_p99`` and
    ``tpot_p99`` (:func:`server_search`).
    """
    if kw.get("mode") == "server":
        min_s = kw.get("min_duration_s", SERVER_MIN_S)
        if not (isinstance(min_s, (int, float)) and 0 <= min_s <= 1e6):
            raise InputError(f"estimate: --min-duration must be in [0, 1e6] seconds, got {min_s!r}")
        estimate_scenario(**{k: v for k, v in kw.items() if k != "min_duration_s"})   # validate first
        return server_search(seed=seed, **kw)
    return _run(seed, **kw)


def _run(seed: int, **kw) -> dict:
    """One simulation of the generated scenario and its figures."""
    if kw.get("mode") == "offline":
        kw = {**kw, "mode": None, "max_load": True}
    if kw.get("max_load"):
        kw["requests"] = max(kw.get("requests", 1000), saturation_requests(**kw))
    res = simulate(estimate_scenario(**kw), seed=seed)
    s = res.summary()
    out = {k: s[k] for k in ESTIMATE_KEYS}
    done = res.requests[res.requests["outcome"] == "completed"]
    first = float(res.requests["arrival_s"].min()) if len(res.requests) else 0.0
    last = float(done["finish_s"].max()) if len(done) else 0.0
    span = max(last - first, 1e-12)
    out["output_tokens_per_s"] = float(done["output_tokens"].sum()) / span
    out["input_tokens_per_s"] = float(done["input_tokens"].sum()) / span
    out["requests_per_s"] = len(done) / span
    out["steady_output_tokens_per_s"] = steady_output_rate(done["finish_s"].to_numpy(),
                                                           done["output_tokens"].to_numpy())
    out.update(steady_latencies(done))
    if kw.get("max_load"):
        out["saturation_rps"] = saturation_rate(done["finish_s"].to_numpy())
        out["saturation_output_tokens_per_s"] = out["steady_output_tokens_per_s"]
    pool = res.pools.iloc[0]
    out.update(kv_capacity_tokens=int(pool["kv_capacity_tokens"]), max_batch=int(pool["max_batch"]),
               token_budget=int(pool["token_budget"]), preemptions=int(pool["preemptions"]),
               kernels=str(pool["kernels"]), support=str(pool["support"]))
    return out


SERVER_STEPS = 14          # bisection steps on the rate: the bracket shrinks to 2^-14 of the saturation rate
SERVER_LOW = 1e-3          # the lowest rate tried, as a share of the saturation rate
SERVER_MIN_S = 600.0       # MLPerf LoadGen's server run length (mlcommons/inference mlperf.conf:
                           # *.Server.min_duration = 600000 ms): a short run hides a slowly growing queue


def server_search(seed: int = 1, **kw) -> dict:
    """MLPerf's server scenario: the highest Poisson rate whose TTFT and TPOT p99 meet the bounds.

    Bisection on the rate between SERVER_LOW and 1 x the offline saturation rate, each probe the
    same number of Poisson arrivals with the same ``seed`` (deterministic): ``requests`` or, if more,
    ``min_duration_s`` (default SERVER_MIN_S) of arrivals at the saturation rate, since near
    saturation the queue grows with the run's length and a short run would pass. Returns the figures at
    the rate found, with ``server_rate_rps``, the bounds, ``server_meets`` (False: even the lowest
    rate misses a bound; its figures are returned), ``server_next_rps`` (the lowest rate probed that
    misses a bound; None when the saturation rate meets both) and ``offline_saturation_rps``.
    """
    ttft, tpot = kw.pop("ttft_p99"), kw.pop("tpot_p99")
    kw.pop("mode")
    min_s = kw.pop("min_duration_s", SERVER_MIN_S)
    offline = _run(seed, **{**kw, "max_load": True})
    sat = offline["saturation_rps"]
    kw["requests"] = max(kw.get("requests", 1000), math.ceil(sat * min_s))

    def probe(rate: float) -> tuple[bool, dict]:
        out = _run(seed, **{**kw, "rate": rate})
        ok = out["ttft_p99_s"] <= ttft and not out["tpot_p99_s"] > tpot
        return ok, out

    lo, hi = SERVER_LOW * sat, sat
    ok, best = probe(lo)
    meets = ok
    if not ok:
        hi = lo
    else:
        ok_hi, out_hi = probe(hi)
        if ok_hi:
            lo, best, hi = hi, out_hi, None
        else:
            for _ in range(SERVER_STEPS):
                mid = 0.5 * (lo + hi)
                ok, out = probe(mid)
                if ok:
                    lo, best = mid, out
                else:
                    hi = mid
    best.update(server_rate_rps=lo, server_next_rps=hi, server_meets=meets, server_ttft_p99_bound_s=ttft, server_tpot_p99_bound_s=tpot,
                offline_saturation_rps=sat, offline_output_tokens_per_s=offline["steady_output_tokens_per_s"],
                server_requests=kw["requests"])
    return best


def saturation_requests(**kw) -> int:
    """Requests a max-load run needs for a steady backlog: ten full batches per replica.

    With fewer, the first batch finishing together dominates the 10th–90th percentile window and
    the rate comes out up to twice too high.
    """
    pool = build(parse(estimate_scenario(**{**kw, "requests": 1}))).cluster.pools[0]
    per_request = kw["input_tokens"] + kw["output_tokens"]
    batch = max(1, min(pool.config.max_batch, pool.config.kv_capacity // per_request))
    return 10 * kw.get("replicas", 1) * batch


def steady_latencies(done) -> dict:
    """TTFT and TPOT (mean, p50, p90, p99) of the completed requests that arrived in the steady window
    (between the 10th and 90th percentile completion): without the first wave, which a closed loop
    of N clients sends at once and which queues behind itself. NaN when none arrived there (all at once)."""
    t = np.sort(done["finish_s"].to_numpy())
    t = t[np.isfinite(t)]
    if len(t) >= 10:
        lo, hi = t[int(0.1 * len(t))], t[int(0.9 * len(t))]
        arrival = done["arrival_s"].to_numpy()
        done = done[(arrival >= lo) & (arrival <= hi)]
    else:
        done = done.iloc[:0]
    out = {"steady_requests": int(len(done))}
    for name in ("ttft", "tpot"):
        out.update({f"steady_{k}": v for k, v in _latency_stats(name, done[f"{name}_s"].to_numpy()).items()})
    return out


def saturation_rate(finish_times: np.ndarray) -> float:
    """Completions per second between the 10th and 90th percentile completion (steady backlog)."""
    t = np.sort(finish_times[np.isfinite(finish_times)])
    if len(t) < 10:
        return len(t) / t[-1] if len(t) and t[-1] > 0 else float("nan")
    lo, hi = int(0.1 * len(t)), int(0.9 * len(t))
    return (hi - lo) / max(t[hi] - t[lo], 1e-12)


def steady_output_rate(finish_times: np.ndarray, output_tokens: np.ndarray) -> float:
    """Output tokens per second of the completions between the 10th and 90th percentile completion.

    The same window as :func:`saturation_rate`: the requests finishing in ``(t[lo], t[hi]]``
    count, so with fixed output lengths this is ``saturation_rate x output_tokens``.
    """
    ok = np.isfinite(finish_times)
    order = np.argsort(finish_times[ok], kind="stable")
    t, o = finish_times[ok][order], np.asarray(output_tokens, dtype=float)[ok][order]
    if len(t) < 10:
        return float(o.sum() / t[-1]) if len(t) and t[-1] > 0 else float("nan")
    lo, hi = int(0.1 * len(t)), int(0.9 * len(t))
    return float(o[lo + 1:hi + 1].sum() / max(t[hi] - t[lo], 1e-12))


def _make_callable() -> None:
    """Let ``agentsim.estimate(...)`` call :func:`estimate`.

    The package exports the function under this module's own name, and importing the module
    (``from agentsim.studies.estimate import ...``) sets ``agentsim.studies.estimate`` to the module: a callable
    module keeps ``agentsim.studies.estimate`` one object that works both ways, however it was imported.
    """

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kw) -> dict:
            return estimate(*args, **kw)

    sys.modules[__name__].__class__ = CallableModule


_make_callable()
