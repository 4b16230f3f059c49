"""Acceptance: speed-aware routing against round robin on a mixed H100/H200/B200 cluster.

"Speed-aware routing beats round robin on mean E2E for a mixed H100/H200/B200 cluster at 70 % of
its saturation rate (the sum of the pools' ``--max-load`` rates): the confidence interval of the
paired difference over replications excludes zero."

Method. One model everywhere (Llama-3-70B FP8), the pool shapes of the ``engine_mixed`` preset
(4 x H100-SXM TP4, 2 x H200 TP2, 2 x B200 TP2), fixed request sizes (1024 in, 256 out) so that
``estimate(max_load=True)`` measures exactly this workload. Each pool's saturation rate is
``saturation_rps`` of one replica x its replicas; Poisson traffic runs at 70 % of their sum. Both
routers run with the same seeds: arrivals and sizes come from per-name RNG streams, so the two
runs of a seed see identical requests (common random numbers, checked below) and the paired
differences of mean E2E are independent across seeds. A 95 % Student-t interval over them must
exclude zero.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
from scipy import stats

from agentsim.run.api import simulate
from agentsim.studies.estimate import estimate

MODEL, PRECISION = "Llama-3-70B", "fp8"
POOLS = {"h100": ("H100-SXM", 4, 4), "h200": ("H200", 2, 2), "b200": ("B200", 2, 2)}   # gpu, tp, replicas
INPUT, OUTPUT = 1024, 256
# all-at-once requests for the saturation measurement: >= 10x what one replica holds at once
# (~500-600 requests of 1280 tokens fit in the KV of these deployments), so that the window between
# the 10th and 90th percentile completion sees a steady backlog and not the first batch finishing together
SAT_REQUESTS = 8000
LOAD = 0.70
DURATION_S, WARMUP_S = 240.0, 60.0
SEEDS = tuple(range(1, 6))


@lru_cache(maxsize=None)
def saturation(gpu: str, tp: int, requests: int = SAT_REQUESTS) -> float:
    return estimate(model=MODEL, gpu=gpu, tp=tp, precision=PRECISION, input_tokens=INPUT, output_tokens=OUTPUT,
                    max_load=True, requests=requests)["saturation_rps"]


def cluster_saturation(pools=POOLS) -> float:
    return sum(saturation(g, tp) * n for g, tp, n in pools.values())


def mixed_scenario(policy: str, rate: float, pools=POOLS, duration_s=DURATION_S, warmup_s=WARMUP_S) -> dict:
    return {
        "name": f"acceptance-{policy}", "duration_s": duration_s, "warmup_s": warmup_s, "sample_s": duration_s,
        "pools": {k: {"gpu": g, "model": MODEL, "precision": PRECISION, "tp": tp, "replicas": n}
                  for k, (g, tp, n) in pools.items()},
        "router": {"policy": policy},
        "streams": {"chat": {"kind": "poisson", "rate": rate, "input_tokens": INPUT, "output_tokens": OUTPUT}},
    }


@lru_cache(maxsize=None)
def run(policy: str, seed: int):
    """One replication at 70 % of saturation (cached: the tests below share runs)."""
    return simulate(mixed_scenario(policy, LOAD * cluster_saturation()), seed=seed)


def mean_e2e(policy: str, seed: int) -> float:
    return run(policy, seed).summary()["e2e_s"]


def paired_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval of the paired differences a_i - b_i."""
    d = np.asarray(a, float) - np.asarray(b, float)
    h = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - h), float(d.mean() + h)


def report(label: str, base: str, other: str, xs, ys) -> tuple[float, float, float]:
    m, lo, hi = paired_ci(xs, ys)
    print(f"\n{label}: saturation {cluster_saturation():.2f} req/s "
          f"({', '.join(f'{k} {saturation(g, tp):.2f}x{n}' for k, (g, tp, n) in POOLS.items())}), "
          f"rate {LOAD * cluster_saturation():.2f} req/s, {len(xs)} replications")
    print(f"  mean E2E {base}: {np.mean(xs):.3f} s  {np.round(xs, 3).tolist()}")
    print(f"  mean E2E {other}: {np.mean(ys):.3f} s  {np.round(ys, 3).tolist()}")
    print(f"  paired difference {base} - {other}: {m:.3f} s, 95 % CI [{lo:.3f}, {hi:.3f}]")
    return m, lo, hi


# -- the pieces the acceptance rests on ---------------------------------------------------------------
def test_saturation_rate_is_the_capacity_of_a_replica():
    """At 80 % of the measured rate a replica keeps up; at 125 % it completes about the measured rate."""
    g, tp, _ = POOLS["h100"]
    sat = saturation(g, tp)
    pools = {"one": (g, tp, 1)}
    for frac in (0.8, 1.25):
        res = simulate(mixed_scenario("round_robin", frac * sat, pools=pools), seed=1)
        s = res.summary()
        if frac < 1:
            # completions per second over the measured window (a replica keeping up completes what
            # arrives; counting only requests that arrived in the window would miss the last E2E's
            # worth); tolerance: 3 standard deviations of a Poisson count over the window
            done = res.requests[res.requests["outcome"] == "completed"]
            window = DURATION_S - WARMUP_S
            completed = int(((done["finish_s"] > WARMUP_S) & (done["finish_s"] <= DURATION_S)).sum())
            expected = frac * sat * window
            assert completed == pytest.approx(expected, rel=3 / math.sqrt(expected))
            # keeping up: what is left in flight at the end is what Little's law holds, lambda x E[T]
            # (a replica falling behind leaves a backlog that grows with the run instead)
            assert s["outcomes"].get("in_flight", 0) < 1.5 * s["requests_per_s"] * s["e2e_s"]
        else:
            done = res.requests[res.requests["outcome"] == "completed"]
            steady = done[done["finish_s"] > DURATION_S / 2]   # the backlog is long by then
            rate = len(steady) / (DURATION_S - DURATION_S / 2)
            assert rate == pytest.approx(sat, rel=0.10)
            assert s["outcomes"]["in_flight"] > 0.1 * s["requests"]


def test_the_two_routers_see_the_same_requests():
    a = run("round_robin", SEEDS[0]).requests
    b = run("speed_aware", SEEDS[0]).requests
    assert len(a) == len(b) > 1000
    np.testing.assert_array_equal(a["arrival_s"], b["arrival_s"])
    np.testing.assert_array_equal(a["input_tokens"], b["input_tokens"])
    np.testing.assert_array_equal(a["output_tokens"], b["output_tokens"])
    assert not np.array_equal(a["replica"], b["replica"])


def test_the_paired_comparison_detects_a_real_difference():
    """The method has power: least_outstanding beats round robin in this very setup."""
    rr = [mean_e2e("round_robin", s) for s in SEEDS]
    lo = [mean_e2e("least_outstanding", s) for s in SEEDS]
    m, low, high = report("least_outstanding vs round_robin", "round_robin", "least_outstanding", rr, lo)
    assert low > 0, (m, low, high)


# -- the acceptance criterion -------------------------------------------------------------------------
def test_speed_aware_beats_round_robin_at_70_percent_of_saturation():
    rr = [mean_e2e("round_robin", s) for s in SEEDS]
    sa = [mean_e2e("speed_aware", s) for s in SEEDS]
    m, low, high = report("speed_aware vs round_robin", "round_robin", "speed_aware", rr, sa)
    assert low > 0, f"paired difference RR - SA = {m:.3f} s, 95 % CI [{low:.3f}, {high:.3f}] does not exclude 0 " \
                    f"in favour of speed_aware"


@pytest.mark.slow
@pytest.mark.parametrize("pools", [
    POOLS,
    {"h100": ("H100-SXM", 4, 2), "h200": ("H200", 2, 2), "b200": ("B200", 2, 2)},
    {"h100": ("H100-SXM", 2, 2), "h200": ("H200", 1, 2), "b200": ("B200", 1, 2)},
], ids=["preset-shape", "two-each", "small-tp"])
def test_speed_aware_beats_round_robin_long(pools):
    rate = LOAD * cluster_saturation(pools)
    seeds = range(1, 11)
    rr = [simulate(mixed_scenario("round_robin", rate, pools, 900, 120), seed=s).summary()["e2e_s"] for s in seeds]
    sa = [simulate(mixed_scenario("speed_aware", rate, pools, 900, 120), seed=s).summary()["e2e_s"] for s in seeds]
    m, low, high = paired_ci(rr, sa)
    print(f"\n{pools}: RR {np.mean(rr):.3f} s, SA {np.mean(sa):.3f} s, RR - SA {m:.3f} s [{low:.3f}, {high:.3f}]")
    assert low > 0


def test_max_load_saturation_with_default_requests_is_the_steady_rate():
    g, tp, _ = POOLS["h100"]
    default = estimate(model=MODEL, gpu=g, tp=tp, precision=PRECISION, input_tokens=INPUT, output_tokens=OUTPUT,
                       max_load=True)["saturation_rps"]
    steady = saturation(g, tp, 16000)
    assert default == pytest.approx(steady, rel=0.15), (default, steady)
