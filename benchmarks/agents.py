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
    python benchmarks/agents.py --ab          # before (git tag issue20-start) vs this checkout, interleaved

``--ab`` (issue 20) times the code at the start of the issue and this checkout in turns (A, B, B, A, …,
``--rounds`` rounds, each arm a fresh process: ``benchmarks/ab.py``) and prints medians and ratios for:
the agents workload above (``--sessions``); the default scenario's whole process (``agentsim run
--format json --set duration_s=86400 --set warmup_s=1800``, the default as the issue found it, in a child
process with ``-P`` in a scratch directory, checked to import its arm's agentsim: wall and CPU time of the
child process; its summary compared between the arms on the keys both report, the simulator's own cost —
events, wall time — left out);
and ``benchmarks/routing.py`` (least_outstanding at 1, 64 and 1,024 replicas). Each arm's result
columns (and a hash of its requests table) must be identical, or it stops.
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import simpy

import agentsim
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
    digest = hashlib.sha256(pd.util.hash_pandas_object(rq, index=False).to_numpy().tobytes()).hexdigest()
    return {"requests_sha256": digest, "run_s": sim.wall_s, "total_s": total, "run_cpu_s": c2 - c1, "total_cpu_s": cpu_total,
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
    ap.add_argument("--ab", action="store_true", help="before (issue20-start) vs this checkout, interleaved: "
                    "this workload, the default scenario's whole process and the routing rows")
    ap.add_argument("--rounds", type=int, default=5, help="with --ab: rounds (medians of this many runs per arm)")
    ap.add_argument("--only", nargs="+", choices=("agents", "process", "routing"),
                    default=["agents", "process", "routing"], help="with --ab: which rows")
    ap.add_argument("--after", metavar="REF", help="with --ab: time a detached checkout of this commit as 'after' "
                    "(speed-only: HEAD with benchmarks/speed_only.patch, the workload as the tag simulated it) "
                    "(default: this checkout as it is; a snapshot lets you keep editing while it runs)")
    ap.add_argument("--default-process", action="store_true", help=argparse.SUPPRESS)   # one arm's process row
    args = ap.parse_args(argv)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    if args.default_process:
        return default_process(args.json)
    if args.ab:
        return ab(args)
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


def default_process(out: Path) -> int:
    """Run ``agentsim run --format json`` (the default scenario) as a child process; write its wall and
    CPU time and a hash of its summary (the machine's own timing left out) to ``out``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # the default scenario as issue 20 started with it (one day from 00:00, 30 min warm-up): the shipped
    # default later gained a whole warm-up day (issue 19), and both arms must run the same input
    cmd = ("import sys, agentsim; print('agentsim from', agentsim.__file__, file=sys.stderr); "
           "from agentsim.cli import main; main(['run', '--format', 'json', '--set', 'duration_s=86400', "
           "'--set', 'warmup_s=1800'])")
    # -P and a scratch working directory: ``python -c`` puts the working directory first on sys.path,
    # and run from a checkout that made every arm import the checkout's agentsim, not its own
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, "-P", "-c", cmd], cwd=scratch,
                              capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if f"agentsim from {agentsim.__file__}\n" not in done.stderr:     # the arm's own code, or no figure
        raise SystemExit(f"the child process imported another agentsim than {agentsim.__file__}: {done.stderr[:300]}")
    summary = json.loads(done.stdout)
    for cost in ("sim_wall_s", "events", "events_per_request"):   # the simulator's cost, not the system's
        summary.pop(cost, None)
    out.write_text(json.dumps({"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                               "summary": summary}, default=str))
    return 0


def ab(args) -> int:
    """Before vs after, interleaved (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ab import baseline_checkout, interleave, median
    after = baseline_checkout(args.after) if args.after else Path(__file__).resolve().parent.parent
    arms = {"before": baseline_checkout(), "after": after}
    here = str(after / "benchmarks" / "agents.py")       # the after arm's script drives both arms
    rows: list[list[str]] = []
    load0 = os.getloadavg()

    def row(label, unit, before, after, higher_is_better):
        ratio = after / before if higher_is_better else before / after
        rows.append([label, unit, f"{before:,.2f}", f"{after:,.2f}", f"{ratio:.2f}x"])
        print(f"  {label}: {before:,.2f} -> {after:,.2f} {unit} ({ratio:.2f}x)", file=sys.stderr, flush=True)

    def same(got, keys):
        for k in keys:
            vals = {json.dumps(r[k], sort_keys=True) for arm in got.values() for r in arm}
            if len(vals) != 1:
                raise SystemExit(f"before and after differ in {k}: {sorted(vals)}")

    if "agents" in args.only:
        n = 1_000 if args.quick else args.sessions
        got = interleave(arms, [sys.executable, here, "--runs", "1", "--sessions", str(n), "--fleet", args.fleet],
                         args.rounds)
        runs = {a: [g["runs"][0] for g in v] for a, v in got.items()}
        # results must agree; SimPy events are the simulator's cost, not a result (fewer is the point)
        same(runs, ("sessions", "subagents", "calls", "attempts", "completed", "busy_share", "requests_sha256"))
        calls = runs["after"][0]["calls"]
        for key, label in (("run_s", "agents: event loop, LLM calls/s"), ("total_s", "agents: simulate(), LLM calls/s"),
                           ("run_cpu_s", "agents: event loop, calls per CPU-s"),
                           ("total_cpu_s", "agents: simulate(), calls per CPU-s")):
            row(label, "calls/s", calls / median(runs["before"], key), calls / median(runs["after"], key), True)
    if "process" in args.only:
        got = interleave(arms, [sys.executable, here, "--default-process"], args.rounds)
        # the summaries must agree on every key both arms report (a key one arm adds is a new figure,
        # not a different result: the tag has no usd_per_user_month, for one)
        shared = set.intersection(*(set(r["summary"]) for arm in got.values() for r in arm))
        same({a: [{"summary": {k: r["summary"][k] for k in sorted(shared)}} for r in v] for a, v in got.items()},
             ("summary",))
        extra = sorted(set().union(*(set(r["summary"]) for arm in got.values() for r in arm)) - shared)
        if extra:
            print(f"  summary keys only one arm reports (not compared): {', '.join(extra)}", file=sys.stderr)
        row("default scenario process, wall", "s", median(got["before"], "wall_s"), median(got["after"], "wall_s"), False)
        row("default scenario process, CPU", "s", median(got["before"], "cpu_s"), median(got["after"], "cpu_s"), False)
    if "routing" in args.only:
        got = interleave(arms, [sys.executable, str(Path(here).parent / "routing.py"), "--runs", "1"], args.rounds)
        sizes = list(got["after"][0]["rows"])
        for size in sizes:
            per = {a: [{"us": g["rows"][size]["us_per_request"], "router_us": g["rows"][size]["router_us_per_request"]}
                        for g in v] for a, v in got.items()}
            same({a: [{k: g["rows"][size][k] for k in ("requests", "completed")} for g in v]
                  for a, v in got.items()}, ("requests", "completed"))
            row(f"routing, least_outstanding, {int(size):,} replicas: CPU per request", "µs",
                median(per["before"], "us"), median(per["after"], "us"), False)
            row(f"routing, least_outstanding, {int(size):,} replicas: router calls per request", "µs",
                median(per["before"], "router_us"), median(per["after"], "router_us"), False)
        for arm in got:
            base = median([g["rows"][sizes[0]] for g in got[arm]], "us_per_request")
            for size in sizes[1:]:
                cost = median([g["rows"][size] for g in got[arm]], "us_per_request")
                rows.append([f"routing: {arm}, {int(size):,} replicas per request / 1 replica", "ratio",
                             "", "", f"{cost / base:.2f}"])
    head = ["row", "unit", "before (median)", "after (median)", "speed-up"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"before = {arms['before']} (issue20-start), after = {arms['after']}; {args.rounds} interleaved rounds, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load0[0]:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
