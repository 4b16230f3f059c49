"""Routing at fleet size: CPU time per request at 1, 64 and 1,024 replicas, the same load on each.

Workload: Llama-3-8B on H100-SXM replicas behind ``least_outstanding`` (issue 20: at 64 replicas its
scan was 23 % of the loop), a Poisson stream of ``--per-replica`` req/s per replica (1024 -> 128
tokens) and a fixed number of requests, so every size does the same engine work per request and
only what grows with the fleet (routing, SimPy's event heap) can move the cost per request.
``--router`` times another router the same way.

    python benchmarks/routing.py                  # 1, 64, 1024 replicas, median of 3
    python benchmarks/routing.py --sizes 1 64 --requests 20000
    python benchmarks/agents.py --ab              # this, before vs after, interleaved (with the agents rows)

Reported per size: ``Simulation.run()`` CPU seconds (``time.process_time``) per request in µs and its
ratio to one replica, the router's own CPU time per request (timed around each call), and the events
per request. Enough requests that every replica of the largest fleet serves ~100 (at fewer the
runs are mostly ramp-up and ramp-down, whose batches are smaller).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from agentsim.run.api import load_scenario
from agentsim.run.build import build

SIZES = (1, 64, 1024)


def scenario(replicas: int, requests: int, per_replica: float, router: str, seed: int = 1) -> dict:
    rate = per_replica * replicas
    return {"name": f"routing-{replicas}", "seed": seed, "duration_s": 3 * requests / rate + 60, "sample_s": 1e6,
            "pools": {"h100": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": replicas}},
            "router": {"policy": router},
            "streams": {"s": {"kind": "poisson", "rate": rate, "count": requests,
                              "input_tokens": 1024, "output_tokens": 128}}}


def one(replicas: int, requests: int, per_replica: float, router: str) -> dict:
    sim = build(load_scenario(scenario(replicas, requests, per_replica, router)))
    real, spent = sim.cluster.router, [0.0]
    clock = time.process_time

    def timed(cands, req):      # the router's own CPU time (the same wrapper on both arms of --ab)
        c = clock()
        pick = real(cands, req)
        spent[0] += clock() - c
        return pick

    sim.cluster.router = timed
    c0, t0 = time.process_time(), time.perf_counter()
    res = sim.run()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    rq = res.requests
    return {"replicas": replicas, "cpu_s": cpu, "wall_s": wall, "loop_s": sim.wall_s, "requests": len(rq),
            "router_s": spent[0],
            "completed": int((rq["outcome"] == "completed").sum()), "events": int(res.meta["events"]),
            "replicas_used": int(rq["replica"].nunique())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="replica counts")
    ap.add_argument("--requests", type=int, default=100_000, help="requests at every size")
    ap.add_argument("--per-replica", type=float, default=10.0, help="arrival rate per replica (req/s)")
    ap.add_argument("--router", default="least_outstanding")
    ap.add_argument("--runs", type=int, default=3, help="runs per size (median reported)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    rows = {}
    for n in args.sizes:
        runs = [one(n, args.requests, args.per_replica, args.router) for _ in range(args.runs)]
        assert all({k: r[k] for k in ("requests", "completed", "events")} ==
                   {k: runs[0][k] for k in ("requests", "completed", "events")} for r in runs), "runs must be identical"
        rows[n] = {**runs[0], "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                   "wall_s": statistics.median(r["wall_s"] for r in runs),
                   "us_per_request": 1e6 * statistics.median(r["cpu_s"] for r in runs) / runs[0]["requests"],
                   "router_us_per_request": 1e6 * statistics.median(r["router_s"] for r in runs) / runs[0]["requests"]}
    base = rows[args.sizes[0]]["us_per_request"]
    print(f"routing benchmark: {args.router}, {args.requests:,} requests at {args.per_replica:g} req/s per replica "
          f"(Llama-3-8B, H100), median of {args.runs}; python {sys.version.split()[0]}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| replicas | CPU µs/request | ratio to first | router µs/request | events/request | completed | replicas used |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n:,} | {r['us_per_request']:.1f} | {r['us_per_request'] / base:.2f} | {r['router_us_per_request']:.2f} | "
              f"{r['events'] / r['requests']:.2f} | {r['completed']:,} | {r['replicas_used']:,} |")
    if args.json:
        args.json.write_text(json.dumps({"router": args.router, "rows": {str(k): v for k, v in rows.items()}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
