"""Policy experiments: the expected direction, with confidence intervals over paired replications.

Each experiment runs its two arms with the same seeds. A population draws from named RNG streams
(``pop/<name>/<field>``), so both arms start the same sessions of the same users and differ only
where the policy changes what happens (common random numbers). The figure of merit is the mean
paired difference over the seeds with a 95 % Student-t interval; a test passes when the interval
lies entirely on the expected side of zero.

* Doubling the 5-hour budget (``usage_windows.budget_scale = 2``, which is what the
  ``*_post_2026_05_06`` plans do) lets a heavy ``pro`` population of interactive coding agents
  keep working: more output tokens served, a busier pool.
* Removing the peak-hour throttle (``peak_throttle.enabled = false``: usage no longer weighs 1.5x
  on weekdays 05–11 Pacific) lets heavy users keep sending during the peak: more load on a fixed,
  tight cluster, so requests arriving in the peak wait longer for admission.

The default-size versions take well under a minute each on two cores; ``-m slow`` runs larger
populations and more seeds. Run with ``-s`` to see the figures.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from agentsim.run.build import build
from agentsim.run.scenario import parse

PEAK_START_S, PEAK_END_S = 2 * 3600.0, 8 * 3600.0     # 12:00–18:00 UTC for a run starting 10:00 UTC


def paired_ci(a, b, level: float = 0.95) -> dict:
    """Mean of b − a over paired replications with its Student-t interval, and the arms' means."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    h = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return {"a": float(a.mean()), "b": float(b.mean()), "diff": float(d.mean()),
            "lo": float(d.mean() - h), "hi": float(d.mean() + h), "rel": float(d.mean() / a.mean()), "n": len(d)}


def show(name: str, r: dict) -> None:
    print(f"\n{name}: {r['a']:.4g} -> {r['b']:.4g}; paired diff {r['diff']:+.4g} "
          f"[{r['lo']:+.4g}, {r['hi']:+.4g}] 95% CI ({r['rel']:+.1%}), n={r['n']}")


def coding_scenario(policies, *, users: int, sessions_per_day: float, replicas: int, hours: float,
                    start: str = "2026-06-01T10:00:00Z", plan: str = "pro") -> dict:
    """Interactive coding agents on a subscription plan, served by one pool of 70B replicas."""
    return {"name": "policy-experiment", "duration_s": hours * 3600, "sample_s": 600, "start": start,
            "engine": {"retention": "pin_session", "prefix_ttl_s": 3600, "host_kv_gb": 200},
            "pools": {"h100": {"gpu": "H100-SXM", "model": "Llama-3-70B", "precision": "fp8", "tp": 4,
                               "replicas": replicas}},
            "router": {"policy": "session_affinity"},
            "policies": policies,
            "populations": {"coders": {"profile": "interactive_coding_agent", "size": users, "plan": plan,
                                       "params": {"sessions_per_user_day": sessions_per_day}}}}


def run(sc: dict, seed: int):
    return build(parse(sc), seed=seed).run()


# =================================================================================================
# doubling the 5-hour budget
# =================================================================================================
def budget_experiment(seeds, **size) -> dict:
    tokens, busy, windows = {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}
    for seed in seeds:
        for scale in (1, 2):
            res = run(coding_scenario([{"name": "usage_windows", "budget_scale": scale}], **size), seed)
            df = res.requests
            tokens[scale].append(df.loc[df["outcome"] == "completed", "output_tokens"].sum())
            busy[scale].append(res.pools.loc[0, "busy_frac"])
            windows[scale].append((df["outcome"] == "429_window").sum())
    return {"tokens": paired_ci(tokens[1], tokens[2]), "busy": paired_ci(busy[1], busy[2]),
            "429_window": paired_ci(windows[1], windows[2])}


def _check_budget(out: dict) -> None:
    show("served output tokens, pro x1 -> x2 5-hour budget", out["tokens"])
    show("pool busy_frac, pro x1 -> x2 5-hour budget", out["busy"])
    show("429_window rejections, pro x1 -> x2 5-hour budget", out["429_window"])
    assert out["tokens"]["lo"] > 0, out["tokens"]
    assert out["busy"]["lo"] > 0, out["busy"]
    assert out["429_window"]["hi"] < 0, out["429_window"]


def test_doubling_the_5_hour_budget_raises_served_tokens_and_utilisation():
    """300 heavy pro users (6 sessions a day), 8 replicas, 6 hours, 8 paired seeds."""
    _check_budget(budget_experiment(range(1, 9), users=300, sessions_per_day=6, replicas=8, hours=6))


@pytest.mark.slow
def test_doubling_the_5_hour_budget_large():
    """1 500 heavy pro users over a 12-hour weekday, 32 replicas, 10 paired seeds."""
    _check_budget(budget_experiment(range(1, 11), users=1_500, sessions_per_day=6, replicas=32, hours=12,
                                    start="2026-06-01T06:00:00Z"))


def test_post_may_2026_plan_is_pro_with_the_doubled_budget():
    """Without a peak throttle in the chain, ``pro_post_2026_05_06`` and ``pro`` × 2 are the same run."""
    size = dict(users=150, sessions_per_day=8, replicas=4, hours=6)
    a = run(coding_scenario([{"name": "usage_windows", "budget_scale": 2}], **size), 7).requests
    b = run(coding_scenario([{"name": "usage_windows"}], plan="pro_post_2026_05_06", **size), 7).requests
    assert (a["outcome"] == "429_window").sum() > 0
    assert a.equals(b)


# =================================================================================================
# removing the peak throttle
# =================================================================================================
def peak_experiment(seeds, **size) -> dict:
    queue, ttft, busy, served = ({True: [], False: []} for _ in range(4))
    for seed in seeds:
        for enabled in (True, False):
            sc = coding_scenario([{"name": "peak_throttle", "enabled": enabled}, {"name": "usage_windows"}], **size)
            res = run(sc, seed)
            df = res.requests
            peak = df[(df["arrival_s"] >= PEAK_START_S) & (df["arrival_s"] < PEAK_END_S) & (df["outcome"] == "completed")]
            queue[enabled].append(peak["queue_s"].mean())
            ttft[enabled].append(peak["ttft_s"].mean())
            served[enabled].append(peak["output_tokens"].sum())
            ts = res.timeseries
            busy[enabled].append(ts.loc[(ts["time_s"] > PEAK_START_S) & (ts["time_s"] <= PEAK_END_S), "busy_frac"].mean())
    return {k: paired_ci(v[True], v[False]) for k, v in
            (("queue_s", queue), ("ttft_s", ttft), ("busy", busy), ("served", served))}


def _check_peak(out: dict) -> None:
    show("peak-hour mean queue_s, throttle on -> off", out["queue_s"])
    show("peak-hour mean ttft_s, throttle on -> off", out["ttft_s"])
    show("peak-hour busy_frac, throttle on -> off", out["busy"])
    show("peak-hour output tokens served, throttle on -> off", out["served"])
    assert out["served"]["lo"] > 0, out["served"]       # heavy users keep sending at peak …
    assert out["busy"]["lo"] > 0, out["busy"]           # … the fixed cluster is busier …
    assert out["queue_s"]["lo"] > 0, out["queue_s"]     # … and requests wait longer
    assert out["ttft_s"]["lo"] > 0, out["ttft_s"]


def test_removing_the_peak_throttle_raises_peak_hour_queueing_delay():
    """200 heavy pro users on 4 replicas (busy ~0.45–0.6 in the peak), Monday 10:00–18:00 UTC
    (the peak is 12:00–18:00 UTC = 05:00–11:00 PDT), 8 paired seeds."""
    _check_peak(peak_experiment(range(1, 9), users=200, sessions_per_day=6, replicas=4, hours=8))


@pytest.mark.slow
def test_removing_the_peak_throttle_large():
    """1 000 heavy pro users on 20 replicas, 10 paired seeds."""
    _check_peak(peak_experiment(range(1, 11), users=1_000, sessions_per_day=6, replicas=20, hours=8))


def test_a_throttle_with_weight_one_is_no_throttle():
    """Dropping the usage weight (``usage_weight = 1``) and switching the throttle off are the same run."""
    size = dict(users=60, sessions_per_day=6, replicas=2, hours=4)
    a = run(coding_scenario([{"name": "peak_throttle", "enabled": False}, {"name": "usage_windows"}], **size), 3)
    b = run(coding_scenario([{"name": "peak_throttle", "usage_weight": 1.0}, {"name": "usage_windows"}], **size), 3)
    c = run(coding_scenario([{"name": "peak_throttle"}, {"name": "usage_windows"}], **size), 3)
    assert a.requests.equals(b.requests)
    assert not a.requests.equals(c.requests)
