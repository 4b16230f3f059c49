"""Agent-session throughput: sessions and LLM calls simulated per wall-second, one core.

Workload: 10,000 ``interactive_coding_agent`` sessions (shipped profile, fixed seed) on a 64-replica
mixed cluster serving Llama-3-70B FP8 — 32 × H100-SXM TP4, 16 × H200 TP2, 16 × B200 TP2 —
with ``session_affinity`` routing, ``pin_session`` prefix retention (600 s TTL) and a 500 GB host
KV tier per replica. Sessions arrive at a flat rate during the first 24 h of a Friday (a custom
weekly profile, zero elsewhere) and the run lasts 72 h, so nearly every session finishes: the
count is whatever the arrival process gives for an expectation of 10,000 (about ±1 %).

Each configuration runs ``--runs`` times (same seed, identical work) and the table shows the
median and min–max of three timings:

* ``run`` — ``Simulation.run()``'s event loop alone (``sim.wall_s``, SimPy ``env.run``);
* ``total`` — ``simulate()`` end to end: scenario validation, build, the event loop and the
  Result (DataFrames of every request and session);
* the same two as process CPU time (``time.process_time``), which a busy shared machine
  distorts less than wall time (``Simulation.run`` also builds the Result: ``run`` CPU time
  includes it, the ``run`` wall time does not).

LLM calls are logical calls (distinct ``call_id``: a call and its retries count once); attempts
(rows of the requests table) are shown too. Events are SimPy's event-id counter.

The ``--fleet deepseek-ep`` row (issue 16) runs the same sessions on the default scenario's
DeepSeek-V3 shapes instead: 10 × H100 dp 16 × ep 16, 6 × H200 dp 8 × ep 8 and 2 × GB200 dp 16 × ep 16
(FP8 weights on Hopper, FP4 on GB200, FP8 KV): 18 replicas of 8-16 GPUs with batches of thousands.

    python benchmarks/agents.py               # full size, median of 3 (a few minutes)
    python benchmarks/agents.py --quick       # 1,000 sessions
    python benchmarks/agents.py --fleet deepseek-ep   # the same sessions on the EP/DP fleet
    python benchmarks/agents.py --profile     # also cProfile one run, by own time
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import simpy

from agentsim.run.api import load_scenario
from agentsim.run.build import build

TARGET_CALLS_PER_S = 20_000
SEED = 1


FLEETS = {"llama70b": "64 replicas (32 H100 TP4, 16 H200 TP2, 16 B200 TP2)",
          "deepseek-ep": "18 replicas (10 H100 dp16 x ep16, 6 H200 dp8 x ep8, 2 GB200 dp16 x ep16)"}


def _pools(fleet: str) -> dict:
    if fleet == "deepseek-ep":
        ds = lambda gpu, prec, size, n: {"gpu": gpu, "model": "DeepSeek-V3", "precision": prec, "tp": 1,  # noqa: E731
                                         "dp_attention": size, "ep": size, "replicas": n}
        return {"h100": ds("H100-SXM", "fp8", 16, 10), "h200": ds("H200", "fp8", 8, 6), "gb200": ds("GB200", "fp4", 16, 2)}
    pool = lambda gpu, tp, n: {"gpu": gpu, "model": "Llama-3-70B", "precision": "fp8", "tp": tp,  # noqa: E731
                               "replicas": n}
    return {"h100": pool("H100-SXM", 4, 32), "h200": pool("H200", 2, 16), "b200": pool("B200", 2, 16)}


def scenario(sessions: int, seed: int = SEED, fleet: str = "llama70b") -> dict:
    per_user_friday = 2.0 * 7 / 5      # 2 sessions/user/day, a week's worth on the one non-zero day
    engine = {"retention": "pin_session", "prefix_ttl_s": 600.0, "host_kv_gb": 500.0}
    if fleet == "deepseek-ep":
        engine["kv_dtype"] = "fp8"
    return {
        "name": "agents-benchmark", "duration_s": 72 * 3600.0, "seed": seed, "sample_s": 600.0,
        "engine": engine,
        "pools": _pools(fleet),
        "router": {"policy": "session_affinity"},
        "populations": {"coders": {"profile": "interactive_coding_agent", "size": round(sessions / per_user_friday),
                                   "arrival": "custom", "weekday": [1.0] * 24, "weekend": [0.0] * 24,
                                   "start_weekday": 4}},
    }


def one_run(spec: dict, prof: cProfile.Profile | None = None) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    sc = load_scenario(spec)
    sim = build(sc)
    if prof is not None:
        prof.enable()
    c1 = time.process_time()
    res = sim.run()
    c2 = time.process_time()
    if prof is not None:
        prof.disable()
    total = time.perf_counter() - t0
    cpu_total = time.process_time() - c0
    rq, ss = res.requests, res.sessions
    return {"run_s": sim.wall_s, "total_s": total, "run_cpu_s": c2 - c1, "total_cpu_s": cpu_total,
            "sessions": int((ss["kind"] == "session").sum()),
            "subagents": int((ss["kind"] == "subagent").sum()), "calls": int(rq["call_id"].nunique()),
            "attempts": int(len(rq)), "completed": int((rq["outcome"] == "completed").sum()),
            "events": int(res.meta["events"]), "busy_share": {k: round(v["busy_share"], 3)
                                                                for k, v in res.summary()["pools"].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=10_000, help="expected top-level sessions")
    ap.add_argument("--quick", action="store_true", help="1,000 sessions")
    ap.add_argument("--runs", type=int, default=3, help="runs (median reported)")
    ap.add_argument("--profile", action="store_true", help="cProfile one extra run and print the top functions")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--pin", type=int, metavar="CPU", help="pin the process to this CPU")
    ap.add_argument("--fleet", choices=sorted(FLEETS), default="llama70b",
                    help="llama70b: the benchmark's workload; deepseek-ep: the default scenario's EP/DP shapes")
    args = ap.parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    n = 1_000 if args.quick else args.sessions
    spec = scenario(n, fleet=args.fleet)
    runs = [one_run(spec) for _ in range(args.runs)]
    first = runs[0]
    for r in runs[1:]:
        assert {k: r[k] for k in ("sessions", "calls", "attempts", "events")} == \
               {k: first[k] for k in ("sessions", "calls", "attempts", "events")}, "runs must be identical"

    def stat(key):
        xs = [r[key] for r in runs]
        return statistics.median(xs), min(xs), max(xs)

    rows = []
    for label, key in (("run (event loop)", "run_s"), ("total (simulate)", "total_s"),
                       ("run, CPU time", "run_cpu_s"), ("total, CPU time", "total_cpu_s")):
        med, lo, hi = stat(key)
        rows.append([label, f"{med:.2f} ({lo:.2f}-{hi:.2f})", f"{first['sessions'] / med:,.0f}",
                     f"{first['calls'] / med:,.0f}", f"{first['attempts'] / med:,.0f}",
                     f"{first['events'] / med:,.0f}"])
    head = ["timing", "wall s median (min-max)", "sessions/s", "LLM calls/s", "attempts/s", "events/s"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"agents benchmark: {first['sessions']:,} coding-agent sessions (+{first['subagents']:,} sub-agents), "
          f"{first['calls']:,} LLM calls, {first['attempts']:,} attempts ({first['completed']:,} completed), "
          f"{first['events']:,} events ({first['events'] / first['calls']:.1f}/call); {FLEETS[args.fleet]}, "
          f"busy share {first['busy_share']}")
    print(f"median of {args.runs} run(s), python {sys.version.split()[0]}, simpy {simpy.__version__}, "
          f"numpy {np.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
    run_rate = first["calls"] / stat("run_s")[0]
    total_rate = first["calls"] / stat("total_s")[0]
    cpu_rate = first["calls"] / stat("total_cpu_s")[0]
    print(f"target >= {TARGET_CALLS_PER_S:,} LLM calls/s: event loop {run_rate:,.0f} "
          f"({'PASS' if run_rate >= TARGET_CALLS_PER_S else 'MISS'}), end to end {total_rate:,.0f} "
          f"({'PASS' if total_rate >= TARGET_CALLS_PER_S else 'MISS'}), end to end per CPU-second {cpu_rate:,.0f} "
          f"({'PASS' if cpu_rate >= TARGET_CALLS_PER_S else 'MISS'})")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "calls_per_s_run": run_rate, "calls_per_s_total": total_rate,
                                         "target": TARGET_CALLS_PER_S}, indent=2))
    if args.profile:
        prof = cProfile.Profile()
        one_run(spec, prof)
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print("\ncProfile of Simulation.run(), by own time:")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
