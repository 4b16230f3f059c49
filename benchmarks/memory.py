"""Memory of recorded requests: peak RSS of a run recording 1,000,000 requests, and bytes per request.

The issue's target: records are columnar, so 1,000,000 recorded requests stay under 1 GB peak
RSS. Each measurement is ``agentsim run FILE --no-progress --no-figures --out DIR --format json``
in a fresh interpreter (the user's path: simulation, the Result's DataFrames, the summary, the
Parquet files), on a scenario whose one Poisson stream sends exactly N requests to 8 replicas of
Llama-3-8B on H100 (256 input / 16 output tokens, ~60 % load), so N rows are recorded. Peak RSS
comes from outside, from ``os.wait4`` on that child (its own ``ru_maxrss``). Inside the child a
hook on ``Result.from_simulation`` reads, per recorded request:

* recorder bytes: the ``Recorder``'s typed arrays (``sys.getsizeof``: allocated, with the
  arrays' growth slack) and the logical size (columns x 8 bytes);
* DataFrame bytes: ``Result.requests.memory_usage(deep=True).sum() / len(requests)``.

The baseline is the same run with N / 10 requests, measured in the same invocation: the marginal
bytes per request are (RSS(N) - RSS(N/10)) / (0.9 N), which removes the interpreter, numpy,
pandas, pyarrow and the catalogs.

    python benchmarks/memory.py            # 1,000,000 vs 100,000 requests, median of 3 (a few minutes)
    python benchmarks/memory.py --quick    # 100,000 vs 10,000, one run each
    python benchmarks/memory.py --requests 2000000 --runs 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_BYTES = 1 << 30          # the 1 GB at 1,000,000 requests
REPLICAS = 8
RATE_PER_REPLICA = 60.0        # req/s: ~60 % of a Llama-3-8B H100 replica at 256 in / 16 out

SCENARIO = """\
name = "memory-{n}"
description = "{n} Poisson requests on {replicas} x Llama-3-8B / H100-SXM"
duration_s = {duration}
seed = 1
sample_s = 60

[pools.h100]
gpu = "H100-SXM"
model = "Llama-3-8B"
replicas = {replicas}

[streams.load]
kind = "poisson"
rate = {rate}
count = {n}
input_tokens = {{ kind = "lognormal", median = 256, sigma = 0.5, min = 16, max = 2048 }}
output_tokens = {{ kind = "lognormal", median = 16, sigma = 0.5, min = 1, max = 128 }}
"""

# Runs in the child: ``agentsim run`` in-process, with a hook that measures the records.
CHILD = r"""
import contextlib, json, sys
import agentsim.results.result as R
from agentsim.results.metrics import FLOAT_COLUMNS, INT_COLUMNS
stats = {}
_orig = R.Result.from_simulation.__func__

def _measured(cls, sim):
    rec = sim.recorder
    arrays = [*rec.ints.values(), *rec.floats.values()]
    stats["recorded"] = rec.count
    stats["recorder_columns"] = len(INT_COLUMNS) + len(FLOAT_COLUMNS)
    stats["recorder_logical_bytes"] = sum(a.itemsize * len(a) for a in arrays)
    stats["recorder_allocated_bytes"] = sum(sys.getsizeof(a) for a in arrays)
    res = _orig(cls, sim)
    stats["rows"] = len(res.requests)
    stats["df_columns"] = len(res.requests.columns)
    stats["df_bytes"] = int(res.requests.memory_usage(deep=True).sum())
    stats["events"] = sim.events
    stats["sim_wall_s"] = sim.wall_s
    return res

R.Result.from_simulation = classmethod(_measured)
from agentsim.cli import main
with contextlib.redirect_stdout(open("/dev/null", "w")):
    main(["run", sys.argv[1], "--no-progress", "--no-figures", "--out", sys.argv[2], "--format", "json"])
json.dump(stats, open(sys.argv[3], "w"))
"""


def scenario_text(n: int) -> str:
    rate = REPLICAS * RATE_PER_REPLICA
    return SCENARIO.format(n=n, replicas=REPLICAS, rate=rate, duration=round(n / rate * 1.2 + 120))


def measure(n: int, work: Path) -> dict:
    """One fresh interpreter running ``agentsim run`` on N requests: its peak RSS and the records' sizes."""
    scn = work / f"memory-{n}.toml"
    scn.write_text(scenario_text(n))
    out, stats_path = work / f"out-{n}", work / f"stats-{n}.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(scn), str(out), str(stats_path)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"measurement of {n:,} requests failed (exit {proc.returncode})")
    stats = json.loads(stats_path.read_text())
    if stats["recorded"] != n or stats["rows"] != n:
        sys.exit(f"expected {n:,} recorded requests, got {stats['recorded']:,} ({stats['rows']:,} rows)")
    stats["peak_rss_bytes"] = usage.ru_maxrss * 1024        # Linux: kilobytes
    stats["wall_s"] = wall
    stats["parquet_bytes"] = (out / "requests.parquet").stat().st_size
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=None, help="recorded requests (default 1,000,000; "
                                                                 "--quick 100,000)")
    ap.add_argument("--runs", type=int, default=None, help="runs per size, median reported (default 3; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="100,000 vs 10,000 requests, one run each")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    a = ap.parse_args()
    n = a.requests or (100_000 if a.quick else 1_000_000)
    runs = a.runs or (1 if a.quick else 3)
    base_n = n // 10
    results: dict[int, list[dict]] = {base_n: [], n: []}
    with tempfile.TemporaryDirectory(prefix="agentsim-memory-") as tmp:
        for i in range(runs):                       # interleaved, so drift hits both sizes alike
            for size in (base_n, n):
                results[size].append(measure(size, Path(tmp)))
                r = results[size][-1]
                print(f"  run {i + 1}/{runs}: {size:>9,} requests  peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB  "
                      f"wall {r['wall_s']:6.1f} s", file=sys.stderr)

    def med(size: int, key: str) -> float:
        return statistics.median(r[key] for r in results[size])

    rss_n, rss_base = med(n, "peak_rss_bytes"), med(base_n, "peak_rss_bytes")
    marginal = (rss_n - rss_base) / (n - base_n)
    rec = results[n][0]
    figures = {
        "requests": n, "baseline_requests": base_n, "runs": runs,
        "peak_rss_mib": rss_n / 2**20, "baseline_peak_rss_mib": rss_base / 2**20,
        "marginal_rss_bytes_per_request": marginal,
        "dataframe_bytes_per_request": med(n, "df_bytes") / n,
        "dataframe_columns": rec["df_columns"],
        "recorder_bytes_per_request": med(n, "recorder_allocated_bytes") / n,
        "recorder_logical_bytes_per_request": med(n, "recorder_logical_bytes") / n,
        "recorder_columns": rec["recorder_columns"],
        "parquet_bytes_per_request": med(n, "parquet_bytes") / n,
        "sim_wall_s": med(n, "sim_wall_s"), "events_per_request": med(n, "events") / n,
        "rss_at_1m_projected_mib": (rss_base + marginal * (1_000_000 - base_n)) / 2**20,
    }
    rows = [
        ("recorded requests", f"{n:,} (baseline {base_n:,}); median of {runs}"),
        ("peak RSS", f"{figures['peak_rss_mib']:,.1f} MiB (baseline {figures['baseline_peak_rss_mib']:,.1f} MiB)"),
        ("marginal RSS per request", f"{marginal:,.0f} B  (peak RSS difference / {n - base_n:,})"),
        ("Result.requests per request", f"{figures['dataframe_bytes_per_request']:,.0f} B  "
                                        f"({rec['df_columns']} columns, memory_usage(deep=True))"),
        ("Recorder per request", f"{figures['recorder_bytes_per_request']:,.0f} B allocated, "
                                 f"{figures['recorder_logical_bytes_per_request']:,.0f} B logical "
                                 f"({rec['recorder_columns']} columns x 8 B)"),
        ("requests.parquet per request", f"{figures['parquet_bytes_per_request']:,.0f} B"),
        ("simulation", f"{figures['sim_wall_s']:,.1f} s, {figures['events_per_request']:.2f} events per request"),
    ]
    if n != 1_000_000:
        rows.append(("projected at 1,000,000", f"{figures['rss_at_1m_projected_mib']:,.0f} MiB "
                                                 "(baseline + marginal x requests)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    at_1m = rss_n if n == 1_000_000 else rss_base + marginal * (1_000_000 - base_n)
    verdict = "under" if at_1m < LIMIT_BYTES else "OVER"
    print(f"{'1 GB target':<{width}}  {verdict} ({at_1m / 2**20:,.0f} MiB at 1,000,000 recorded requests)")
    if a.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
