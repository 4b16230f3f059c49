"""A synthetic coding-agent population against TraceLab's workload targets.

Targets (workloads-policies.md §0 #1, #4, #7, §1.1, §1.5, §6.1 "Validation targets"):

* prefix-cache miss rate by tokens 4–6 % (TraceLab token-weighted hit 95.7 %);
* hit rate of the first call after a human turn (``trigger == "user"``) 85 ± 5 % (TraceLab
  user-triggered steps 86.9 % Claude / 78.2 % Codex, "~84 %");
* per engaged hour (each idle gap capped at 1 h) 7 M input / 0.3 M uncached / 24 k output tokens,
  ± 20 % (TraceLab: 54.9 B input, 2.3 B uncached, 186.9 M output over 4,265 sessions × 1.8 h);
* 8.8 ± 1 LLM calls per user turn (TraceLab mean over 39,202 requests: 1 + 7.8 tool-initiated).

The stated cluster (:func:`tracelab_scenario`): 16 replicas of Llama-3-70B FP8 on H100-SXM TP4
with an FP8 KV cache (1.28 M KV tokens each), ``session_affinity`` routing, ``pin_session``
retention and a host-memory KV tier of 1,000 GB per replica. The prompt-cache TTL is the
client's (``cache_ttl_s``): Claude Code asks for 1 h on a subscription and 5 min on an API key
(workloads-policies.md §1.6); 41 % of the sessions are on a subscription [D: fitted to the two
cache targets, pooled over seeds: 40 % leaves the user-turn hit rate at 80.3 %, 42 % the miss rate at
3.9 %, both bands' lower edges (the first message of a session, 10 k new tokens, is a user-turn miss); TraceLab's
provider behaves like an ideal cache with ~10 min idle eviction, between the two]. A single 600 s TTL for all
lands the user-turn hit rate at 79 %: a bimodal TTL keeps more human turns warm for the same
token miss rate. It is lightly loaded (busy under 40 % of the time), so the cache sees session behaviour, not
memory pressure (pinned entries expire on the GPU; the host tier, which only takes forced
evictions, stays empty), and a call's generation takes ~10 s (TraceLab: 11.5 s per step).

Sessions arrive at a flat rate during the first 24 h of a Friday (a custom weekly profile that is
zero elsewhere) and the run lasts 72 h, so almost every session ends inside the run and the
per-session figures are not censored. Measured over all sessions (sub-agents included):

* miss rate = 1 − Σ cached / Σ input over completed calls; user-turn hit rate likewise over
  calls with ``trigger == "user"``;
* per engaged hour = Σ tokens of all sessions / Σ ``engaged_s`` of top-level sessions
  (sub-agents run while their parent waits, inside its engaged time); uncached = input − cached;
* calls per user turn = main-agent calls (``user`` + ``tool`` triggers, first attempts) per
  ``user`` call — sub-agent and compaction calls are reported separately.

The shipped profile (``agentsim/data/profiles.toml``) includes three derived corrections to the
§6.1 defaults (their sources say why: sub-agent frequency, output σ, no second truncation of the
turns distribution), two that fit its session cost (steps per turn and the first message: README
"Workload calibration"), and the stated population puts 30 % of the sessions on a 1 M context
window (§6.1 option; fitted to TraceLab's 154 k mean input per step [A]: 150 k; 20 % gave 134 k).

Session cost at Claude Opus 4.5 list prices (``COST_PRICES``) against TraceLab's (§1.1: mean $9.70,
p50 $0.61, p90 $13.4): each within ±25 % with its 95 % interval inside ±45 % (t-interval for the mean,
order statistics for the percentiles, ``agentsim.util.stats``), over ended sessions (the few still
running at 72 h are the longest and dearest: leaving them out biases the mean low, about −12 points). Single runs of 1,500
sessions vary a lot (one heavy session moves the user-turn hit rate by a point), so the
always-run test pools four seeds (~20 s); ``pytest -m slow`` pools six other seeds. ``python tests/test_tracelab_targets.py N SEED...`` prints the table pooled over seeds.
"""
from __future__ import annotations

import numpy as np
import pytest

from agentsim.run.api import simulate
from agentsim.util.stats import mean_interval, percentile_interval

TARGETS = {   # name: (target, low, high, unit)
    "miss_rate": (0.05, 0.04, 0.06, "%"),
    "user_turn_hit_rate": (0.85, 0.80, 0.90, "%"),
    "input_per_engaged_h": (7.0e6, 7.0e6 * 0.8, 7.0e6 * 1.2, "M"),
    "uncached_per_engaged_h": (0.3e6, 0.3e6 * 0.8, 0.3e6 * 1.2, "M"),
    "output_per_engaged_h": (24e3, 24e3 * 0.8, 24e3 * 1.2, "k"),
    "calls_per_user_turn": (8.8, 7.8, 9.8, ""),
}

OUTPUT_1_24 = {"kind": "lognormal", "median": 214, "sigma": 1.24, "round": "round", "min": 1, "max": 32000}

#: a fifth of the sessions on a 1 M context window (see the module docstring)
SHARE_1M = 0.3
#: TraceLab's session cost distribution at provider list prices (USD) and the price list it is read at
COST_TARGETS = {"mean": 9.70, "p50": 0.61, "p90": 13.4, "p99": 178.0}
COST_PRICES = "opus"

#: prompt-cache TTLs (workloads-policies.md §1.6 / §6.1: Claude Code asks for a 1 h TTL on a
#: subscription, 5 min on an API key) and the subscribers' share of sessions [D: fitted, see below]
TTL_SUBSCRIPTION_S, TTL_API_S = 3600.0, 300.0
SHARE_SUBSCRIPTION = 0.41


def tracelab_scenario(n_sessions: int, seed: int, params: dict | None = None, share_1m: float = SHARE_1M,
                      share_subscription: float = SHARE_SUBSCRIPTION) -> dict:
    """The stated cluster and a coding population of about ``n_sessions`` sessions (see module doc)."""
    # A custom week that is 1 for the 24 h of Friday and 0 elsewhere; weekly mean 1 => the weekday
    # profile (Mon-Fri) carries all arrivals, so Friday gets size × 2/day × 7 days / 5 sessions.
    per_user = 2.0 * 7 / 5
    pops = {}
    for plan, p_share, ttl in (("sub", share_subscription, TTL_SUBSCRIPTION_S), ("api", 1 - share_subscription, TTL_API_S)):
        for window, w_share, extra in (("", 1 - share_1m, {}), ("_1m", share_1m, {"context_window": 1_000_000})):
            share = p_share * w_share
            if share <= 0:
                continue
            pops[f"coders_{plan}{window}"] = {
                "profile": "interactive_coding_agent", "size": max(1, round(n_sessions * share / per_user)),
                "arrival": "custom", "weekday": [1.0] * 24, "weekend": [0.0] * 24, "start_weekday": 4,
                "params": {**(params or {}), "cache_ttl_s": ttl, **extra}}
    return {
        "name": "tracelab-coding", "duration_s": 72 * 3600.0, "seed": seed, "sample_s": 3600.0,
        "engine": {"retention": "pin_session", "prefix_ttl_s": 600.0, "host_kv_gb": 1000.0, "kv_dtype": "fp8"},
        "pools": {"h100": {"gpu": "H100-SXM", "model": "Llama-3-70B", "precision": "fp8", "tp": 4,
                           "replicas": 16}},
        "router": {"policy": "session_affinity"},
        "populations": pops,
    }


def sums(res) -> dict:
    """The raw totals the targets are ratios of (so that runs can be pooled)."""
    rq, ss = res.requests, res.sessions
    done = rq[rq["outcome"] == "completed"]
    cached = done["cached_gpu_tokens"] + done["cached_host_tokens"]
    user = done["trigger"] == "user"
    top = ss[ss["kind"] == "session"]
    first = rq[rq["attempt"] == 0]["trigger"].value_counts()
    return {
        "input": float(done["input_tokens"].sum()), "cached": float(cached.sum()),
        "user_input": float(done.loc[user, "input_tokens"].sum()), "user_cached": float(cached[user].sum()),
        "s_input": float(ss["input_tokens"].sum()), "s_cached": float(ss["cached_tokens"].sum()),
        "s_output": float(ss["output_tokens"].sum()), "engaged_h": float(top["engaged_s"].sum()) / 3600.0,
        "user_calls": float(first["user"]), "tool_calls": float(first["tool"]),
        "other_calls": float(first["subagent"] + first["compaction"]),
        "sessions": int(len(top)), "in_flight": int((top["outcome"] == "in_flight").sum()),
        "calls": int((rq["attempt"] == 0).sum()), "turns": float(top["turns"].sum()),
        "output": float(done["output_tokens"].sum()), "completed": int(len(done)),
        "failed_attempts": int((rq["outcome"] != "completed").sum()),
        "other_failures": int((~rq["outcome"].isin(["completed", "in_flight", "timed_out"])).sum()),
        "utilisation": float(res.summary()["pools"]["h100"]["busy_share"]),
        "sim_wall_s": float(res.meta["sim_wall_s"]),
        "session_usd": res.session_costs(COST_PRICES).tolist(),
    }


def measure(*results) -> dict:
    """The six target figures (and context for the report), pooled over ``results``."""
    t = [sums(r) for r in results]
    S = {k: sum(x[k] for x in t) for k in t[0] if k != "session_usd"}
    S["session_usd"] = np.concatenate([x["session_usd"] for x in t])
    S["utilisation"] /= len(t)
    h = S["engaged_h"]
    return {
        **S,
        "miss_rate": 1.0 - S["cached"] / S["input"],
        "user_turn_hit_rate": S["user_cached"] / S["user_input"],
        "input_per_engaged_h": S["s_input"] / h,
        "uncached_per_engaged_h": (S["s_input"] - S["s_cached"]) / h,
        "output_per_engaged_h": S["s_output"] / h,
        "calls_per_user_turn": (S["user_calls"] + S["tool_calls"]) / S["user_calls"],
        "calls_per_user_turn_incl_subagents": (S["user_calls"] + S["tool_calls"] + S["other_calls"]) / S["user_calls"],
        "mean_turns": S["turns"] / S["sessions"], "mean_prompt": S["input"] / S["completed"],
        "mean_output": S["output"] / S["completed"],
    }


def table(m: dict, title: str) -> str:
    lines = [title, f"  {'target':<26} {'measured':>12} {'target':>10} {'range':>19}  ok"]
    for k, (t, lo, hi, unit) in TARGETS.items():
        v = m[k]
        if unit == "%":
            f = lambda x: f"{100 * x:.1f} %"  # noqa: E731
        elif unit == "M":
            f = lambda x: f"{x / 1e6:.2f} M"  # noqa: E731
        elif unit == "k":
            f = lambda x: f"{x / 1e3:.1f} k"  # noqa: E731
        else:
            f = lambda x: f"{x:.2f}"  # noqa: E731
        ok = lo <= v <= hi
        lines.append(f"  {k:<26} {f(v):>12} {f(t):>10} {f(lo) + '-' + f(hi):>19}  {'yes' if ok else 'NO'}"
                     f"  ({100 * (v / t - 1):+.0f} %)")
    lines.append(f"  ({m['sessions']:,} sessions, {m['in_flight']} still running at 72 h, {m['calls']:,} calls, "
                 f"{m['engaged_h']:,.0f} engaged h, mean turns {m['mean_turns']:.2f}, mean prompt "
                 f"{m['mean_prompt'] / 1e3:.0f} k, mean output {m['mean_output']:.0f}, calls/turn incl. sub-agents "
                 f"and compactions {m['calls_per_user_turn_incl_subagents']:.2f}, failed attempts "
                 f"{m['failed_attempts']}, utilisation {100 * m['utilisation']:.0f} %, "
                 f"sim wall {m['sim_wall_s']:.1f} s)")
    usd = m["session_usd"]
    parts = []
    for stat in ("mean", "p50", "p90", "p99"):
        est, lo, hi = cost_statistic(usd, stat)
        parts.append(f"{stat} ${est:.2f} [{lo:.2f}, {hi:.2f}] vs ${COST_TARGETS[stat]:.2f} "
                     f"({100 * (est / COST_TARGETS[stat] - 1):+.0f} %)")
    lines.append(f"  session cost at {COST_PRICES} list prices, {len(usd):,} ended sessions (95 % intervals): "
                 + "; ".join(parts))
    return "\n".join(lines)


def within(m: dict, key: str) -> bool:
    _, lo, hi, _ = TARGETS[key]
    return lo <= m[key] <= hi


# -- always-run: ~1,500 sessions each, four seeds pooled --------------------------------------------
N_QUICK, SEEDS = 1500, (1, 2, 3, 4)


@pytest.fixture(scope="module")
def measured():
    m = measure(*(simulate(tracelab_scenario(N_QUICK, s)) for s in SEEDS))
    print("\n" + table(m, f"TraceLab targets, interactive_coding_agent, {N_QUICK:,} sessions x seeds {SEEDS}:"))
    return m


def test_print_measured_vs_target(measured):
    """The table, always (run with -s to see it; also shown on any failure)."""
    print("\n" + table(measured, f"interactive_coding_agent, {N_QUICK:,} sessions x seeds {SEEDS}:"))
    assert measured["sessions"] > 0.9 * N_QUICK * len(SEEDS)


@pytest.mark.parametrize("key", list(TARGETS))
def test_coding_population_against_tracelab(measured, key):
    assert within(measured, key), (key, measured[key], TARGETS[key])


COST_BAND = 0.25     # issue 19: p50, p90 and mean each within ±25 % of TraceLab's
COST_INTERVAL_BAND = 0.45   # ... and the 95 % interval inside ±45 % (the data pin the figure down)


def cost_statistic(usd: np.ndarray, stat: str) -> tuple[float, float, float]:
    """A session-cost statistic and its 95 % interval: Student-t for the mean, order statistics
    for a percentile (agentsim.util.stats)."""
    if stat == "mean":
        return mean_interval(usd)
    return percentile_interval(usd, float(stat[1:]))


@pytest.mark.parametrize("stat", ["p50", "p90", "mean"])
def test_session_cost_against_tracelab(measured, stat):
    """TraceLab's session cost at provider list prices: mean $9.70, p50 $0.61, p90 $13.4
    (workloads-policies.md §1.1), read at Claude Opus 4.5 list prices (limits.toml ``prices.opus``)
    over the ended sessions of the four pooled seeds. The profile's one cost-fitted parameter (the
    first message's median) was fitted on the p50; the mean and p90 are held out."""
    est, lo, hi = cost_statistic(measured["session_usd"], stat)
    target = COST_TARGETS[stat]
    assert abs(est / target - 1) <= COST_BAND, (stat, est, lo, hi, target)
    assert target * (1 - COST_INTERVAL_BAND) <= lo and hi <= target * (1 + COST_INTERVAL_BAND), (stat, est, lo, hi)


def test_the_cluster_is_lightly_loaded(measured):
    assert measured["utilisation"] < 0.4
    # the only failures: the client's 600 s timeout, mostly of long outputs (median ~16 k tokens: at
    # 100 k+ contexts the measured decode kernels give 20-40 ms a token), a fraction of a per cent
    # (0.49 % on seeds 1-4, 0.55 % on seeds 5-10 with 30 % of sessions on a 1 M window)
    assert measured["failed_attempts"] <= 1e-2 * measured["calls"]
    assert measured["other_failures"] == 0
    assert measured["in_flight"] <= 0.02 * measured["sessions"]


def test_subscribers_keep_more_human_turns_warm():
    """The mechanism behind the user-turn figure: the 1 h TTL population hits far more often after
    a human turn than the 5 min one (same profile, same cluster, same seed)."""
    res = simulate(tracelab_scenario(N_QUICK, SEEDS[0]))
    rq = res.requests
    done = rq[(rq["outcome"] == "completed") & (rq["trigger"] == "user")]
    hit = {}
    for plan in ("sub", "api"):
        sel = done[done["population"].astype(str).str.startswith(f"coders_{plan}")]
        assert len(sel) > 1000, plan
        hit[plan] = float((sel["cached_gpu_tokens"] + sel["cached_host_tokens"]).sum() / sel["input_tokens"].sum())
    assert hit["sub"] > hit["api"] + 0.1, hit   # 1 h vs 5 min: P(think > TTL) 3.7 % vs 27 %


SLOW_N, SLOW_SEEDS = N_QUICK, (5, 6, 7, 8, 9, 10)


@pytest.mark.slow
def test_slow_pooled_over_seeds():
    m = measure(*(simulate(tracelab_scenario(SLOW_N, s)) for s in SLOW_SEEDS))
    print("\n" + table(m, f"{SLOW_N:,} sessions x seeds {SLOW_SEEDS}, pooled:"))
    assert [k for k in TARGETS if not within(m, k)] == []
    # held out of the cost fit (seeds 1-4): the three session-cost figures on six other seeds
    off = {stat: cost_statistic(m["session_usd"], stat)[0] / COST_TARGETS[stat] - 1 for stat in ("p50", "p90", "mean")}
    assert all(abs(v) <= COST_BAND for v in off.values()), off


if __name__ == "__main__":   # python tests/test_tracelab_targets.py [N] [SEED...]: both tables, pooled over seeds
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N_QUICK
    seeds = [int(x) for x in sys.argv[2:]] or list(SEEDS)
    print(table(measure(*(simulate(tracelab_scenario(n, s)) for s in seeds)),
                f"interactive_coding_agent, {n:,} sessions, seeds {seeds}:"))
