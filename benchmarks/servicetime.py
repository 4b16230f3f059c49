"""Service-time core throughput: step evaluations per wall-second, vectorized vs a scalar loop.

Steps are random mixed aggregates (half carry a prefill chunk of 1-8,191 tokens after 0-100k cached
ones, all carry 0-511 decodes at contexts 1-32k, 30 % of chunks complete and sample a token),
drawn up front with a fixed-seed numpy generator. Deployments (coefficients built once, untimed):
Llama-3-8B on 1x H100-SXM, Llama-3-70B on 4x H100-SXM, Mixtral-8x7B on 2x H100-SXM (MoE), and
DeepSeek-V3 fp8 on 8x H200 (MoE + MLA).

* **vectorized**: ``step_times`` over all N steps, once per deployment (D calls of N), and once
  with the deployments stacked (``StepCoeffs.stack(...).column()``, one call giving D x N). It
  computes what the loop computes, the step time; ``step_cost`` (time plus compute, memory,
  comm and energy arrays) is timed too and shown for reference.
* **loop**: a plain Python loop calling ``StepCoeffs.step_time`` on the first M steps of each
  deployment (the reference engine's scalar form); the same M steps are checked against the
  vectorized result (rel 1e-12) before anything is reported.

After one untimed warm-up of each form, each measurement runs ``--runs`` times, interleaved; the
median wall time is reported (``time.perf_counter``). The step model before the per-operator fit
(``benchmarks/roofline_v1.py``, a closed-form roofline) is timed in the same run on the same steps as
the baseline. Targets: >= 5,000,000 evaluations/s vectorized, at most 3x the previous model's cost per
evaluation, and >= 50x the loop.

    python benchmarks/servicetime.py           # N = 1,000,000 steps, M = 100,000 loop steps
    python benchmarks/servicetime.py --quick   # N = 50,000, M = 10,000
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from agentsim import Deployment, StepCoeffs, load_catalog, step_cost, step_times
from agentsim.model.servicetime import prefill_attention_pairs

sys.path.insert(0, str(Path(__file__).parent))
import roofline_v1  # noqa: E402  (the previous step model, kept only as this benchmark's baseline)

DEPLOYMENTS = [  # (model, gpu, tp, precision)
    ("Llama-3-8B", "H100-SXM", 1, "bf16"),
    ("Llama-3-70B", "H100-SXM", 4, "bf16"),
    ("Mixtral-8x7B", "H100-SXM", 2, "bf16"),
    ("DeepSeek-V3", "H200", 8, "fp8"),
]
TARGET_RATE = 5_000_000    # evaluations per second, vectorized
TARGET_VS_OLD = 3.0        # at most this many times the previous model's cost per evaluation
TARGET_RATIO = 50          # vectorized vs the scalar loop


def random_steps(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    chunk = np.where(rng.random(n) < 0.5, rng.integers(1, 8192, n), 0).astype(float)
    cached = rng.integers(0, 100_000, n).astype(float)
    decodes = rng.integers(0, 512, n).astype(float)
    return dict(prefill_tokens=chunk,
                prefill_attn=prefill_attention_pairs(chunk, cached),
                prefill_kv=np.where(chunk > 0, cached + chunk, 0.0),
                decodes=decodes,
                decode_context=decodes * rng.integers(1, 32_768, n),
                sampled=decodes + ((rng.random(n) < 0.3) & (chunk > 0)))


def run_vectorized(coeffs: list[StepCoeffs], steps: dict) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    out = [step_times(c, **steps) for c in coeffs]
    return time.perf_counter() - t0, out


def run_old(old: list, steps: dict) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    out = [roofline_v1.step_times(c, **steps) for c in old]
    return time.perf_counter() - t0, out


def run_stacked(stacked: StepCoeffs, steps: dict) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = step_times(stacked, **steps)
    return time.perf_counter() - t0, out


def run_breakdown(coeffs: list[StepCoeffs], steps: dict) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    out = [step_cost(c, **steps).time_s for c in coeffs]
    return time.perf_counter() - t0, out


def run_loop(coeffs: list[StepCoeffs], cols: tuple[list, ...]) -> tuple[float, list[list[float]]]:
    pt, pa, pk, nd, dc, sm = cols
    t0 = time.perf_counter()
    out = []
    for c in coeffs:
        f = c.step_time
        out.append([f(pt[i], pa[i], pk[i], nd[i], dc[i], sm[i]) for i in range(len(pt))])
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 50,000 and M = 10,000 (a second or so)")
    ap.add_argument("--n", type=int, help="vectorized steps per deployment (default 1,000,000)")
    ap.add_argument("--m", type=int, help="loop steps per deployment (default 100,000)")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (median reported)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    n = args.n or (50_000 if args.quick else 1_000_000)
    m = min(n, args.m or (10_000 if args.quick else 100_000))

    cat = load_catalog()
    deps = [Deployment.from_catalog(cat, mo, g, tp=tp, precision=p) for mo, g, tp, p in DEPLOYMENTS]
    coeffs = [StepCoeffs.of(d) for d in deps]
    old = [roofline_v1.StepCoeffs.of(d) for d in deps]
    stacked = StepCoeffs.stack(coeffs).column()
    steps = random_steps(n)
    cols = tuple(steps[k][:m].tolist() for k in
                 ("prefill_tokens", "prefill_attn", "prefill_kv", "decodes", "decode_context", "sampled"))
    d = len(coeffs)

    run_vectorized(coeffs, steps), run_stacked(stacked, steps), run_breakdown(coeffs, steps)  # warm-up, untimed
    run_loop(coeffs, cols)
    run_old(old, steps)
    vec_t, stk_t, brk_t, loop_t, old_t = [], [], [], [], []
    for _ in range(args.runs):              # interleaved, so drift hits all forms alike
        w, vec = run_vectorized(coeffs, steps)
        vec_t.append(w)
        w, stk = run_stacked(stacked, steps)
        stk_t.append(w)
        w, brk = run_breakdown(coeffs, steps)
        brk_t.append(w)
        w, loop = run_loop(coeffs, cols)
        loop_t.append(w)
        w, _ = run_old(old, steps)
        old_t.append(w)

    # the numbers are only worth reporting if the forms agree
    for i in range(d):
        np.testing.assert_allclose(vec[i][:m], loop[i], rtol=1e-12)
        np.testing.assert_allclose(stk[i], vec[i], rtol=1e-12)
        np.testing.assert_array_equal(brk[i], vec[i])

    rate = {"vectorized": d * n / statistics.median(vec_t), "stacked": d * n / statistics.median(stk_t),
            "breakdown": d * n / statistics.median(brk_t), "loop": d * m / statistics.median(loop_t),
            "previous_model": d * n / statistics.median(old_t)}
    best = max(rate["vectorized"], rate["stacked"])
    ratio = {k: rate[k] / rate["loop"] for k in ("vectorized", "stacked")}

    print(f"service-time benchmark: {d} deployments ({', '.join(x.label for x in deps)})")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}; "
          f"median of {args.runs} run(s); N = {n:,} steps vectorized, M = {m:,} steps looped, per deployment")
    rows = [("step_times, one call per deployment", d * n, statistics.median(vec_t), rate["vectorized"]),
            ("step_times, deployments stacked (D x N)", d * n, statistics.median(stk_t), rate["stacked"]),
            ("step_cost (with breakdown), per deployment", d * n, statistics.median(brk_t), rate["breakdown"]),
            ("scalar loop, StepCoeffs.step_time", d * m, statistics.median(loop_t), rate["loop"]),
            ("previous model (roofline v1) step_times", d * n, statistics.median(old_t), rate["previous_model"])]
    print(f"| {'form':<42} | {'evaluations':>11} | {'median wall s':>13} | {'evals/s':>14} | {'x loop':>7} |")
    print(f"|{'-' * 44}|{'-' * 13}|{'-' * 15}|{'-' * 16}|{'-' * 9}|")
    for name, evals, wall, r in rows:
        print(f"| {name:<42} | {evals:>11,} | {wall:>13.4f} | {r:>14,.0f} | {r / rate['loop']:>7.1f} |")
    cost_vs_old = rate["previous_model"] / best
    print(f"cost per evaluation vs the previous model: {cost_vs_old:.2f}x")
    checks = [(f"vectorized >= {TARGET_RATE:,} evals/s", best >= TARGET_RATE),
              (f"<= {TARGET_VS_OLD:g}x the previous model's cost", cost_vs_old <= TARGET_VS_OLD),
              (f"vectorized >= {TARGET_RATIO}x the loop", max(ratio.values()) >= TARGET_RATIO)]
    print("targets: " + "; ".join(f"{name}: {'PASS' if ok else 'MISS'}" for name, ok in checks))
    if args.json:
        args.json.write_text(json.dumps({"n": n, "m": m, "deployments": [x.label for x in deps], "runs": args.runs,
                                         "walls": {"vectorized": vec_t, "stacked": stk_t,
                                                   "breakdown": brk_t, "loop": loop_t, "previous_model": old_t},
                                         "evals_per_s": rate, "ratio": ratio,
                                         "targets": {name: ok for name, ok in checks}}, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
