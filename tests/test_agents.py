"""Agent sessions: properties (hypothesis), determinism and bad input.

Properties hold for every small random profile (``populations.X.params`` overrides of the three
shipped profiles), retry preset, chaos level and small cluster that hypothesis generates. They
are read off the records, not the code: the requests table (one row per attempt: ``session``,
``call_id``, ``attempt``, ``trigger``, ``arrival_s``, ``finish_s``, ``input_tokens``) and the
sessions table (sub-agents have their own ids and a ``parent_id``).

* A session never has two outstanding calls: its attempts do not overlap in time, and while its
  sub-agents run (a fan-out: their own sessions, at most ``subagent_cap`` at once) it has none.
* Context grows monotonically: each call's prompt is at least the previous call's, except right
  after a compaction (or after a failed call that restarts the task with a fresh context).
* Retries stay within the policy: at most ``max_retries + 1`` attempts per call, only failed
  retryable attempts are retried, and the gap before retry n lies within the policy's delay
  bounds for that n and outcome (or equals the gateway's retry-after where the policy honours it).
* Same seed, same sessions: identical requests and sessions tables.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentsim.run.api import simulate
from cli_helper import cli
from agentsim.util.errors import InputError
from agentsim.workload.profiles import get_profile
from agentsim.workload.retry import RETRY_POLICIES, bounds, make_retry_policy

PROPS = settings(deadline=None, derandomize=True, max_examples=40, suppress_health_check=list(HealthCheck))
PROFILES = ("interactive_coding_agent", "autonomous_api_agent", "chat_user")


# -- small random scenarios -------------------------------------------------------------------------
def _ln(draw, lo, hi, sigma_max=1.2, **extra):
    return {"kind": "lognormal", "median": draw(st.integers(lo, hi)),
            "sigma": draw(st.sampled_from([0.0, 0.5, sigma_max])), "round": "round", **extra}


@st.composite
def scenarios(draw):
    """A small cluster, one or two small populations with random profile overrides, maybe chaos."""
    duration = draw(st.sampled_from([300.0, 600.0, 900.0]))
    pops = {}
    for i in range(draw(st.integers(1, 2))):
        profile = draw(st.sampled_from(PROFILES))
        window = draw(st.integers(3_000, 40_000))
        params = {
            "turns": draw(st.integers(1, 4)),
            "initial_context": draw(st.integers(100, 3_000)),
            "shared_prefix_tokens": draw(st.sampled_from([0, 100, 500])),
            "first_message": _ln(draw, 20, 500, min=1),
            "user_message": _ln(draw, 5, 200, min=1),
            "steps_per_turn": draw(st.one_of(st.integers(1, 5), st.just(_ln(draw, 1, 4, min=1, max=12)))),
            "output_tokens": _ln(draw, 5, 300, min=1, max=2_000),
            "max_tokens": 4_000,
            "new_context": _ln(draw, 20, 1_500, min=0, max=8_000),
            "context_window": window,
            "compact_at": draw(st.sampled_from([0.3, 0.6, 0.95])),
            "compact_summary": draw(st.integers(50, max(51, window // 5))),
            "tool_calls": draw(st.sampled_from([0, 1, {"kind": "poisson", "mean": 0.5, "offset": 1}])),
            "tool_latency": {"kind": "exponential", "mean": draw(st.sampled_from([0.1, 1.0, 5.0]))},
            "think_time": {"kind": "exponential", "mean": draw(st.sampled_from([1.0, 20.0, 120.0]))},
            "long_think_s": draw(st.sampled_from([5.0, 3600.0])),
            "long_think_end_prob": draw(st.sampled_from([0.0, 0.5])),
            "subagent_prob": draw(st.sampled_from([0.0, 0.2, 0.6])),
            "subagent_count": draw(st.integers(1, 4)),
            "subagent_cap": draw(st.integers(1, 3)),
            "subagent_context": draw(st.integers(0, 800)),
            "subagent_task": _ln(draw, 10, 300, min=1),
            "subagent_steps": draw(st.integers(1, 3)),
            "subagent_returns": draw(st.integers(1, 500)),
            "timeout_s": draw(st.sampled_from([600.0, 600.0, 2.0])),
            "on_give_up": draw(st.sampled_from(["retry_step", "end_session", "fail_session"])),
            "step_retries": draw(st.integers(0, 2)),
            "step_retry_base_s": 2.0,
            "step_retry_cap_s": 10.0,
            "task_requeues": draw(st.integers(0, 1)),
        }
        kind = draw(st.sampled_from(["open", "fleet"]))
        pop = {"profile": profile, "kind": kind, "params": params,
               "retry_policy": draw(st.sampled_from(sorted(RETRY_POLICIES))), "tenants": draw(st.integers(1, 3))}
        if pop["retry_policy"] == "claude_code_watchdog":
            pop["retry_max_wait_s"] = 120.0
        if kind == "open":
            n = draw(st.integers(2, 12))                          # sessions expected in the run
            pop.update(size=50)
            params["sessions_per_user_day"] = n * 86400.0 / (50 * duration)
        else:
            w = draw(st.integers(1, 4))
            pop.update(size=w, workers=w)
        pops[f"p{i}"] = pop
    chaos = draw(st.sampled_from([0.0, 0.0, 0.2, 0.5]))
    return {
        "name": "prop", "duration_s": duration, "seed": draw(st.integers(0, 2 ** 16)), "sample_s": 300,
        "engine": {"retention": draw(st.sampled_from(["lru", "pin_session", "none"])),
                   "prefix_ttl_s": draw(st.sampled_from([5.0, 300.0])),
                   "host_kv_gb": draw(st.sampled_from([0.0, 5.0])),
                   "max_batch": draw(st.sampled_from([4, 64]))},
        "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": draw(st.integers(1, 3))}},
        "router": {"policy": draw(st.sampled_from(["session_affinity", "least_outstanding", "round_robin"]))},
        "policies": [{"name": "chaos", "probability": chaos, "outcome": draw(st.sampled_from(["529_overload",
                                                                                              "429_limit"])),
                      "retry_after_s": draw(st.sampled_from([0.0, 1.5]))}] if chaos else [],
        "populations": pops,
    }


# -- the checks ------------------------------------------------------------------------------------------
def _tol(t) -> np.ndarray:
    return 1e-9 * (1.0 + np.abs(np.asarray(t, float)))


def _calls(rq: pd.DataFrame) -> pd.DataFrame:
    """One row per logical call (its first attempt), with the outcome of its last attempt."""
    rq = rq.sort_values(["call_id", "attempt"])
    g = rq.groupby("call_id", sort=True)
    first = g.head(1).set_index("call_id")
    first = first.assign(final=g["outcome"].last().astype(str), attempts=g.size(),
                         same_prompt=g["input_tokens"].nunique() == 1)
    return first


def assert_one_outstanding_call(res) -> int:
    """No overlap of a session's attempts; none while its sub-agents run; ≤ cap sub-agents at once."""
    rq, ss = res.requests, res.sessions
    if not len(rq):
        return 0
    df = rq.assign(end=rq["finish_s"].fillna(np.inf)).sort_values(["session", "arrival_s", "request_id"])
    busy_until = df.groupby("session")["end"].cummax()
    prev = busy_until.groupby(df["session"]).shift(1)
    clash = df["arrival_s"].to_numpy() < prev.to_numpy() - _tol(df["arrival_s"])
    assert not clash.any(), df[clash][["session", "call_id", "attempt", "arrival_s", "finish_s"]].head()
    subs = ss[ss["parent_id"] >= 0]
    if len(subs):
        pops = {name: cfg for name, cfg in res.meta["scenario"]["populations"].items()}
        end = subs["end_s"].fillna(np.inf)
        by_session = dict(tuple(df.groupby("session")))
        for sid, start, stop, parent, pop in zip(subs["session_id"], subs["start_s"], end, subs["parent_id"],
                                                 subs["population"].astype(str)):
            calls = by_session.get(parent)
            if calls is not None:   # the parent sends nothing while its sub-agent runs
                t = calls["arrival_s"]
                inside = (t > start + 1e-9 * (1 + start)) & (t < stop - 1e-9 * (1 + stop))
                assert not inside.any(), (parent, sid, start, stop)
            cap = get_profile(pops[pop]["profile"], pops[pop]["params"]).subagent_cap
            sib = subs[subs["parent_id"] == parent]
            running = ((sib["start_s"] <= start + 1e-12) & (sib["end_s"].fillna(np.inf) > start + 1e-12)).sum()
            assert running <= cap, (parent, start, running, cap)
    return int(df["session"].nunique())


def assert_context_monotone(res) -> int:
    """Each call's prompt ≥ the previous call's, except after a compaction or a failed call."""
    rq = res.requests
    if not len(rq):
        return 0
    calls = _calls(rq)
    assert calls["same_prompt"].all(), "every attempt of a call sends the same prompt"
    calls = calls.sort_values(["session", "arrival_s", "request_id"])
    g = calls.groupby("session", sort=False)
    prev_in = g["input_tokens"].shift(1)
    prev_trigger = g["trigger"].shift(1).astype(object)
    prev_final = g["final"].shift(1)
    drop = calls["input_tokens"] < prev_in
    excused = (prev_trigger == "compaction") | ((prev_final != "completed") & prev_final.notna())
    bad = drop & ~excused
    assert not bad.any(), calls[bad][["session", "trigger", "input_tokens"]].head()
    # compaction actually shrinks the context (to shared prefix + summary + the next message)
    return int(drop.sum())


def assert_retries_within_policy(res) -> int:
    rq = res.requests
    if not len(rq):
        return 0
    sc = res.meta["scenario"]
    chaos = sc["policies"][0] if sc["policies"] else None
    retry_after = chaos.get("retry_after_s", 0.0) if chaos else 0.0
    checked = 0
    for name, pop in sc["populations"].items():
        policy = make_retry_policy(res.meta["populations"][name]["retry_policy"])
        r = rq[rq["population"] == name].sort_values(["call_id", "attempt"])
        if not len(r):
            continue
        g = r.groupby("call_id")
        assert (g["attempt"].max() <= policy.max_retries).all()
        assert (g["attempt"].max() + 1 == g.size()).all()
        nxt = g[["arrival_s", "attempt"]].shift(-1)
        has = nxt["arrival_s"].notna().to_numpy()
        cur = r[has]
        assert cur["outcome"].isin(sorted(policy.retry_on)).all(), cur["outcome"].value_counts()
        gap = nxt["arrival_s"].to_numpy()[has] - cur["finish_s"].to_numpy()
        tol = _tol(cur["finish_s"])
        for k, outcome, ra, d, t in zip(cur["attempt"], cur["outcome"].astype(str), cur["retry_after_s"], gap, tol):
            lo, hi = bounds(policy, int(k), outcome)
            honoured = ra == ra and ra > 0 and policy.honour_retry_after and ra <= policy.retry_after_max_s
            if honoured or (ra == ra and ra > 0 and policy.name == "grpc_default"):
                assert abs(d - ra) <= t, (policy.name, k, outcome, d, ra)
            else:
                assert lo - t <= d <= hi + t, (policy.name, k, outcome, d, lo, hi)
            checked += 1
        if chaos and retry_after:
            assert (r.loc[r["outcome"] == chaos.get("outcome", "529_overload"), "retry_after_s"] == retry_after).all()
    return checked


# -- properties ------------------------------------------------------------------------------------------
@PROPS
@given(scenarios())
def test_property_one_outstanding_call_per_session(sc):
    assert_one_outstanding_call(simulate(sc))


@PROPS
@given(scenarios())
def test_property_context_grows_except_at_compaction(sc):
    assert_context_monotone(simulate(sc))


@PROPS
@given(scenarios())
def test_property_retries_within_policy_bounds(sc):
    assert_retries_within_policy(simulate(sc))


@settings(deadline=None, derandomize=True, max_examples=10, suppress_health_check=list(HealthCheck))
@given(scenarios())
def test_property_same_seed_same_sessions(sc):
    a, b = simulate(sc), simulate(sc)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    strip = lambda m: {k: v for k, v in m.items() if k != "sim_wall_s"}  # noqa: E731
    assert strip(a.meta) == strip(b.meta)


def test_properties_are_not_vacuous():
    """The generator reaches the interesting cases: fan-outs, compactions, retries, overlaps checked."""
    sc = {
        "name": "busy", "duration_s": 1800, "seed": 5, "sample_s": 600,
        "engine": {"retention": "pin_session", "prefix_ttl_s": 300, "host_kv_gb": 5},
        "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": 2}},
        "router": {"policy": "session_affinity"},
        "policies": [{"name": "chaos", "probability": 0.3, "outcome": "529_overload"}],
        "populations": {"coders": {"profile": "interactive_coding_agent", "kind": "fleet", "size": 6, "workers": 6,
                                   "params": {"turns": 3, "context_window": 30_000, "compact_summary": 3_000,
                                              "subagent_prob": 0.3, "subagent_count": 4, "subagent_cap": 2,
                                              "think_time": 5.0, "tool_latency": 0.5, "initial_context": 4_000,
                                              "shared_prefix_tokens": 2_000}}},
    }
    res = simulate(sc)
    ss = res.sessions
    assert (ss["parent_id"] >= 0).sum() >= 20
    assert assert_one_outstanding_call(res) > 10
    assert assert_context_monotone(res) >= 5          # compactions shrank the prompt
    assert (res.requests["trigger"] == "compaction").sum() >= 5
    assert assert_retries_within_policy(res) > 100
    # sub-agents of one parent really ran side by side (up to the cap of 2)
    subs = ss[ss["parent_id"] >= 0]
    overlaps = 0
    for _, sib in subs.groupby("parent_id"):
        s, e = sib["start_s"].to_numpy(), sib["end_s"].fillna(np.inf).to_numpy()
        overlaps += int(sum(((s <= x) & (e > x)).sum() >= 2 for x in s))
    assert overlaps > 0


# -- determinism -------------------------------------------------------------------------------------------
def _coding(**over):
    sc = {
        "name": "coding", "duration_s": 3600, "seed": 1, "sample_s": 600,
        "engine": {"retention": "pin_session", "prefix_ttl_s": 600, "host_kv_gb": 200},
        "pools": {"h100": {"gpu": "H100-SXM", "model": "Llama-3-70B", "precision": "fp8", "tp": 4, "replicas": 4}},
        "router": {"policy": "session_affinity"},
        "populations": {"coders": {"profile": "interactive_coding_agent", "size": 1500}},
    }
    sc.update(over)
    return sc


def test_same_seed_same_sessions_different_seed_different_sessions():
    a, b, c = simulate(_coding(), seed=4), simulate(_coding(), seed=4), simulate(_coding(), seed=5)
    assert len(a.sessions) > 20 and len(a.requests) > 500
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    assert not a.sessions[["start_s", "turns", "calls"]].equals(c.sessions[["start_s", "turns", "calls"]])


def test_a_changed_retry_policy_leaves_the_sampled_sessions_alone():
    """Each profile distribution draws from its own stream: without failures, the client's retry
    preset changes nothing about the sessions (common random numbers across policies)."""
    a = simulate(_coding(), seed=2)
    b = simulate(_coding(populations={"coders": {"profile": "interactive_coding_agent", "size": 1500,
                                                 "retry_policy": "aws_full_jitter"}}), seed=2)
    assert (a.requests["attempt"] == 0).all()
    cols = ["session_id", "start_s", "turns", "calls", "input_tokens", "output_tokens"]
    pd.testing.assert_frame_equal(a.sessions[cols], b.sessions[cols])


# -- bad input ---------------------------------------------------------------------------------------------
BASE_TOML = """
name = "bad"
duration_s = 60
[pools.h100]
gpu = "H100-SXM"
model = "Llama-3-8B"
[populations.coders]
profile = "interactive_coding_agent"
size = 10
"""

BAD = [
    ("populations.coders.profile=interactive_coder", ["unknown profile 'interactive_coder'",
                                                      "Did you mean 'interactive_coding_agent'"]),
    ("populations.coders.retry_policy=anthropic", ["retry_policy 'anthropic' unknown", "anthropic_sdk"]),
    ("populations.coders.params.thinktime=5", ["unknown profile parameter 'thinktime'", "think_time"]),
    ("populations.coders.params.think_time={kind='lognormal',median=-5,sigma=1}", ["think_time.median", "-5"]),
    ("populations.coders.params.steps_per_turn={kind='lognormal',median=2,sigma=-1}", ["steps_per_turn.sigma"]),
    ("populations.coders.params.turns={kind='lognormal',median=0,sigma=1}", ["turns", "median > 0"]),
    ("populations.coders.params.turns.sigma=-1", ["turns.sigma"]),
    ("populations.coders.params.turns={kind='lognormal',median=nan,sigma=1}", ["turns.median", "nan"]),
    ("populations.coders.params.initial_context={kind='uniform',low=30000,high=15000}",
     ["initial_context", "low <= high"]),
    ("populations.coders.params.output_tokens={kind='exponential',mean=0}", ["output_tokens", "mean > 0"]),
    ("populations.coders.params.turns={kind='gamma',mean=5,cv=0}", ["turns.cv"]),
    ("populations.coders.params.turns={kind='geometric',mean=-1}", ["turns.mean"]),
    ("populations.coders.params.turns={kind='mixture',weights=[1,2],components=[1]}", ["turns", "mixture"]),
    ("populations.coders.params.turns={kind='mixture',weights=[-1,2],components=[1,2]}", ["turns", "weights"]),
    ("populations.coders.params.turns={kind='mixture',weights=[1],components=[{kind='uniform',low=5,high=1}]}",
     ["turns.components.0", "low <= high"]),
    ("populations.coders.params.turns={kind='lognormal',median=2,sigma=1,min=10,max=5}", ["turns", "exceeds max"]),
    ("populations.coders.params.turns={kind='weibull',median=2}", ["turns.kind", "weibull"]),
    ("populations.coders.params.turns=-3", ["turns", "-3"]),
    ("populations.coders.params.subagent_prob=1.5", ["subagent_prob", "1.5"]),
    ("populations.coders.params.long_think_end_prob=-0.1", ["long_think_end_prob"]),
    ("populations.coders.params.compact_at=0", ["compact_at"]),
    ("populations.coders.params.subagent_cap=0", ["subagent_cap"]),
    ("populations.coders.params.timeout_s=-1", ["timeout_s"]),
    ("populations.coders.params.on_give_up=retry", ["on_give_up"]),
    ("populations.coders.size=-1", ["populations.coders.size"]),
    ("populations.coders.arrival=weekly", ["arrival 'weekly' unknown"]),
    ("policies=[{name='chaos',probability=2}]", ["policies[0].probability"]),
    ("policies=[{name='chaos',probability=0.1,outcome='completed'}]", ["policies[0]", "not a rejection outcome"]),
    ("policies=[{name='choas'}]", ["unknown policy 'choas'", "chaos"]),
]


@pytest.fixture
def bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BASE_TOML)
    return path


def _run_cli(capsys, args) -> tuple[int, str]:
    """``agentsim run ARGS`` in-process (tests/cli_helper.py): (exit code, stderr)."""
    code, _, err = cli("run", *args, "--no-progress", "--format", "json")
    return code, err


@pytest.mark.parametrize("override,needles", BAD, ids=[b[0].split("=", 1)[0] + "=" + b[0].split("=", 1)[1][:24]
                                                      for b in BAD])
def test_bad_input_is_one_clear_line_and_exit_2(capsys, bad_toml, override, needles):
    code, err = _run_cli(capsys, [str(bad_toml), "--set", override])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_input_through_the_real_command(bad_toml):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", "from agentsim.cli import main; main()", "run", str(bad_toml),
                           "--no-progress", "--set", "populations.coders.retry_policy=claude-code"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "retry_policy 'claude-code' unknown" in proc.stderr
    assert "did you mean 'claude_code'" in proc.stderr


def test_bad_input_from_python_raises_input_error():
    sc = _coding(populations={"coders": {"profile": "interactive_coding_agent", "size": 10,
                                         "params": {"turns": {"kind": "uniform", "low": 5, "high": 1}}}})
    with pytest.raises(InputError, match="low <= high"):
        simulate(sc)
    with pytest.raises(InputError, match="unknown profile 'chat'"):
        simulate(_coding(populations={"coders": {"profile": "chat", "size": 10}}))


def test_unknown_retry_policy_in_profile_params_is_exit_2(capsys, bad_toml):
    code, err = _run_cli(capsys, [str(bad_toml), "--set", "populations.coders.params.retry_policy=anthropic"])
    assert code == 2 and "unknown retry policy 'anthropic'" in err and len(err.strip().splitlines()) == 1


def test_unknown_retry_policy_in_profile_params_names_the_field(capsys, bad_toml):
    _, err = _run_cli(capsys, [str(bad_toml), "--set", "populations.coders.params.retry_policy=anthropic"])
    # a --set mistake is blamed on the --set (issue 14), not on the scenario file
    assert "params.retry_policy" in err and err.startswith("error: --set 'populations.coders.params.retry_policy=")


INFINITE = [
    "populations.coders.params.turns={kind='lognormal',median=2,sigma=inf}",
    "populations.coders.params.think_time={kind='exponential',mean=inf}",
    "populations.coders.params.output_tokens={kind='uniform',low=0,high=inf}",
]


@pytest.mark.parametrize("override", INFINITE)
def test_infinite_distribution_parameters_are_rejected(capsys, bad_toml, override):
    code, err = _run_cli(capsys, [str(bad_toml), "--set", override, "--set", "populations.coders.size=20000",
                                  "--set", "duration_s=300"])
    assert code == 2 and err.startswith("error: ")


# -- a bug found on the way: a failed compaction call ----------------------------------------------------
def _failing_compaction() -> dict:
    return {
        "name": "compaction-fails", "duration_s": 60, "seed": 3, "sample_s": 60,
        "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": 1}},
        "policies": [{"name": "chaos", "probability": 1.0, "outcome": "529_overload", "windows": [[0, 3.0]]}],
        "populations": {"p": {"profile": "chat_user", "kind": "fleet", "size": 1, "workers": 1,
                              "retry_policy": "anthropic_sdk",
                              "params": {"initial_context": 5000, "context_window": 4000, "compact_at": 0.5,
                                         "compact_summary": 300, "regenerate": False, "on_give_up": "fail_session",
                                         "turns": 2, "think_time": 1}}},
    }


def test_a_failed_compaction_call_is_a_failed_call():
    res = simulate(_failing_compaction())
    rq = res.requests.sort_values("request_id")
    first = rq[rq["session"] == rq["session"].iloc[0]]
    calls = _calls(first).sort_values("arrival_s")
    assert calls["trigger"].iloc[0] == "compaction" and calls["final"].iloc[0] != "completed"
    s0 = res.sessions.iloc[0]
    assert s0["failed_calls"] >= 1 and s0["outcome"] == "failed"
    assert len(calls) == 1, "with on_give_up = fail_session nothing follows the failed compaction"


def test_a_session_ended_by_errors_is_abandoned_not_completed():
    """on_give_up = end_session: the user leaves after the client gave up on a call (a chat user after
    the one regeneration); such a session must not count as completed."""
    sc = _failing_compaction()
    sc["policies"][0]["windows"] = [[0, 60.0]]                 # every attempt is shed
    sc["populations"]["p"]["params"].update(on_give_up="end_session", regenerate=True)
    res = simulate(sc)
    s0 = res.sessions.iloc[0]
    assert s0["failed_calls"] >= 1 and s0["outcome"] == "abandoned", s0.to_dict()
    assert (res.requests["outcome"] == "completed").sum() == 0


# -- a bug found on the way: the host tier's accounting of shared prefixes -----------------------------
def test_host_tier_accounting_with_a_shared_prefix():
    from agentsim.serving.prefix_cache import CacheConfig, PrefixCache
    c = PrefixCache(CacheConfig(retention="lru", ttl_s=300.0, host_tokens=100))
    shared = ("system", 0)
    c.put_shared(shared, 40, 0.0, free=1_000)
    c.evict(1_000, 1.0)                              # to the host tier
    assert c.lookup_shared(shared, 40, 2.0) == (0, 40)
    c.put_shared(shared, 40, 2.0, free=1_000)        # a GPU copy again (the host copy stays)
    c.evict(1_000, 3.0)                              # to the host tier again
    assert c.host_used == sum(c.host.values())       # 80 against 40 held
    c.put(("s", 1), 30, 4.0)
    c.evict(1_000, 5.0)
    c.put(("s", 2), 80, 6.0)
    c.evict(1_000, 7.0)                              # KeyError: 'dictionary is empty'
    assert c.host_used == sum(c.host.values()) <= 100


# -- a bug found on the way: the call after a compaction hits the pre-compaction cache entry -----------
def test_the_call_after_a_compaction_prefills_its_summary():
    shared = 1_000
    sc = {"name": "compaction-cache", "duration_s": 3_000, "seed": 3, "sample_s": 600,
          "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B", "replicas": 1}},
          "engine": {"retention": "pin_session", "prefix_ttl_s": 600},
          "populations": {"p": {"profile": "interactive_coding_agent", "kind": "fleet", "size": 1, "workers": 1,
                                "params": {"initial_context": 3_000, "shared_prefix_tokens": shared,
                                           "context_window": 12_000, "compact_at": 0.9, "compact_summary": 2_000,
                                           "turns": 1, "steps_per_turn": 30, "tool_latency": 0.5,
                                           "subagent_prob": 0.0}}}}
    rq = simulate(sc).requests.sort_values(["session", "arrival_s", "request_id"])
    prev = rq.groupby("session")["trigger"].shift(1)
    after = rq[(prev == "compaction") & (rq["outcome"] == "completed")]
    assert len(after) >= 3
    cached = after["cached_gpu_tokens"] + after["cached_host_tokens"]
    assert (cached <= shared).all(), after[["input_tokens", "cached_gpu_tokens", "prefill_tokens"]]
