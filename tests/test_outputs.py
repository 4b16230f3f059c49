"""The output rules: intervals inside their valid range, strict JSON, one missing-value
convention, the warm-up flag, combined ResultSet tables, a short repr, and figures whose units
and panels follow the run.

The statistics are property-tested with hypothesis (derandomized: the same examples every run).
The runs are small (a stream-only scenario of two minutes, and a replicated one): a few seconds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agentsim.results import plots  # noqa: E402
from agentsim.util import stats
from agentsim.run.api import ResultSet, _mean_with_ci, ci, simulate  # noqa: E402
from agentsim.util.jsonout import dumps  # noqa: E402
from agentsim.results.result import MISSING_IDS  # noqa: E402
from cli_helper import cli

STREAMS = """\
name = "streams-only"
duration_s = 120
warmup_s = 10
seed = 3
sample_s = 10
slo_ttft_s = 0.5
slo_tpot_s = 0.05

[pools.a]
gpu = "H100-SXM"
model = "Llama-3-8B"
replicas = 1

[streams.load]
kind = "poisson"
rate = 4
input_tokens = { kind = "constant", value = 2000 }
output_tokens = { kind = "constant", value = 100 }
"""

PROPS = settings(derandomize=True, max_examples=150, deadline=None)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)




def strict_json(text: str):
    """Parse ``text`` refusing NaN/Infinity (what a strict JSON reader does)."""
    def refuse(c):
        raise AssertionError(f"bare {c} in JSON output")
    return json.loads(text, parse_constant=refuse)


# -- statistics: every interval inside its valid range -------------------------------------------------------
@PROPS
@given(st.lists(nonneg, min_size=2, max_size=30))
def test_mean_interval_of_nonnegative_figures_stays_nonnegative_and_holds_the_mean(xs):
    m, lo, hi = stats.mean_interval(xs, valid=stats.NONNEGATIVE)
    assert 0 <= lo <= m * (1 + 1e-12) + 1e-9 and m <= hi * (1 + 1e-12) + 1e-9
    assert m == pytest.approx(np.mean(xs))


@PROPS
@given(st.lists(st.floats(min_value=0, max_value=1), min_size=2, max_size=30))
def test_mean_interval_of_shares_stays_in_unit_interval(xs):
    m, lo, hi = stats.mean_interval(xs, valid=stats.UNIT)
    assert 0 <= lo <= hi <= 1


@PROPS
@given(st.lists(finite, min_size=2, max_size=30))
def test_unclipped_mean_interval_is_student_t(xs):
    from scipy import stats as sst
    x = np.asarray(xs)
    m, lo, hi = stats.mean_interval(xs)
    h = sst.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    assert (m, lo, hi) == pytest.approx((x.mean(), x.mean() - h, x.mean() + h), rel=1e-9, abs=1e-9)
    assert ci(xs) == (m, lo, hi)                     # api.ci is the same function (figures did not move)


@PROPS
@given(st.integers(0, 500), st.integers(0, 500))
def test_wilson_interval_is_inside_unit_interval_and_holds_the_share(k, extra):
    n = k + extra
    p, lo, hi = stats.proportion_interval(k, n)
    if n == 0:
        assert math.isnan(p)
        return
    assert 0 <= lo <= p <= hi <= 1
    assert (lo == 0) == (k == 0) and (hi == 1) == (k == n)


@PROPS
@given(st.lists(nonneg, min_size=1, max_size=400), st.sampled_from([50, 90, 99]))
def test_percentile_interval_brackets_the_percentile_between_sample_values(xs, q):
    est, lo, hi = stats.percentile_interval(xs, q, valid=stats.NONNEGATIVE)
    assert min(xs) <= est <= max(xs)
    if not math.isnan(lo):
        assert (lo in xs or lo == est) and 0 <= lo <= est
    if not math.isnan(hi):
        assert (hi in xs or hi == est) and est <= hi


def test_percentile_interval_of_a_large_sample_is_tight_and_covers():
    rng = np.random.default_rng(7)
    x = rng.exponential(1.0, 20_000)
    est, lo, hi = stats.percentile_interval(x, 99)
    assert lo < est < hi and lo < -math.log(0.01) < hi and hi - lo < 0.5


@PROPS
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=20))
def test_paired_difference_is_the_interval_of_the_differences(pairs):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    assert stats.paired_difference(a, b) == stats.mean_interval([y - x for x, y in pairs])


@PROPS
@given(st.lists(st.lists(nonneg, min_size=5, max_size=5), min_size=1, max_size=6))
def test_mean_band_is_clipped_columnwise(rows):
    m, lo, hi = stats.mean_band(np.array(rows), valid=stats.NONNEGATIVE)
    assert (lo >= 0).all() and (lo <= m + 1e-9).all() and (m <= hi + 1e-9).all()


def test_replication_summary_intervals_stay_in_range():
    # the cases: preemptions [-5.9, 6.9], attainment 1.003, p99 TTFT [-0.11, 0.45]
    sums = [{"preemptions": 0, "slo_attainment": 1.0, "ttft_p99_s": 0.02, "pools": {"a": {"busy_share": 0.5}}},
            {"preemptions": 1, "slo_attainment": 0.99, "ttft_p99_s": 0.3, "pools": {"a": {"busy_share": 0.6}}},
            {"preemptions": 0, "slo_attainment": 1.0, "ttft_p99_s": 0.01, "pools": {"a": {"busy_share": 0.7}}}]
    s = _mean_with_ci(sums)
    assert s["preemptions_ci_low"] == 0 and s["ttft_p99_s_ci_low"] == 0
    assert s["slo_attainment_ci_high"] == 1 and s["slo_attainment_ci_low"] < 1
    # and without the clip they would have left the range (the test can fail)
    assert ci([0, 1, 0])[1] < 0 and ci([1.0, 0.99, 1.0])[2] > 1
    assert stats.summary_range("pools.h100.busy_share") == stats.UNIT
    assert stats.summary_range("pools.h100.capacity_utilisation") == stats.NONNEGATIVE


# -- runs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def streams_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("scn") / "streams.toml"
    p.write_text(STREAMS)
    return p


@pytest.fixture(scope="module")
def res(streams_file):
    return simulate(str(streams_file))


@pytest.fixture(scope="module")
def reps(streams_file) -> ResultSet:
    return simulate(str(streams_file), replications=2)


def test_warmup_column_flags_the_rows_summary_leaves_out(res):
    rq = res.requests
    assert rq["warmup"].dtype == bool and rq["warmup"].any() and not rq["warmup"].all()
    assert (rq["warmup"] == (rq["arrival_s"] < res.meta["warmup_s"])).all()
    s = res.summary()
    assert int((~rq["warmup"]).sum()) == s["requests"]
    done = rq[~rq["warmup"] & (rq["outcome"] == "completed")]
    assert float(np.percentile(done["ttft_s"], 99)) == s["ttft_p99_s"]   # a naive percentile now agrees


def test_missing_values_are_nan_never_minus_one(res, reps):
    rq = res.requests
    for c in MISSING_IDS:
        assert not (rq[c] == -1).any(), c
    assert rq["call_id"].isna().all() and rq["session"].isna().all()       # stream traffic: no call, no session
    assert (rq.select_dtypes("number") == -1).sum().sum() == 0
    ss = reps[0].sessions
    assert not len(ss) or not (ss["parent_id"] == -1).any()


def test_resultset_tables_stack_the_replications(reps):
    assert len(reps) == 2
    for table in ("requests", "sessions", "timeseries", "pools"):
        combined = getattr(reps, table)
        assert "replication" in combined and "seed" in combined
        assert len(combined) == sum(len(getattr(r, table)) for r in reps.results)
    rq = reps.requests
    assert list(rq["replication"].unique()) == [0, 1] and list(rq["seed"].unique()) == [3, 4]
    for i, r in enumerate(reps.results):
        part = rq[rq["replication"] == i].drop(columns=["replication", "seed"]).reset_index(drop=True)
        np.testing.assert_array_equal(part["request_id"], r.requests["request_id"])
        np.testing.assert_array_equal(part["ttft_s"], r.requests["ttft_s"])
    frame = reps.summary_frame()
    assert list(frame["replication"]) == [0, 1] and list(frame["seed"]) == [3, 4]
    for i, r in enumerate(reps.results):
        assert frame.loc[i, "ttft_p99_s"] == r.summary()["ttft_p99_s"]
        assert frame.loc[i, "requests"] == r.summary()["requests"]
    s = reps.summary()
    assert s["ttft_p99_s"] == pytest.approx(frame["ttft_p99_s"].mean())


def test_repr_is_short(res, reps):
    for r in (repr(res), repr(reps)):
        assert len(r) < 700 and r.count("\n") <= 5
    assert "streams-only" in repr(res) and "seed=3" in repr(res)


def test_capacity_utilisation_is_served_over_max_load_and_cached(res):
    from agentsim.studies import utilisation
    utilisation.max_load.cache_clear()
    cap = utilisation.capacity_utilisation(res)["a"]
    runs = utilisation.max_load.cache_info().misses              # max-load estimates it took (TPOT bisection)
    assert 1 <= runs <= 12
    again = utilisation.capacity_utilisation(res)["a"]          # a second computation hits the cache only
    assert utilisation.max_load.cache_info().misses == runs and again == cap
    assert cap["max_load_tpot_s"] <= res.meta["slo_tpot_s"]       # measured at the TPOT SLO
    done = res.requests[~res.requests["warmup"] & (res.requests["outcome"] == "completed")]
    assert cap["served_output_tokens_per_s"] == pytest.approx(res.summary()["output_tokens_per_s"])
    assert cap["capacity_utilisation"] == pytest.approx(cap["served_output_tokens_per_s"]
                                                        / cap["capacity_output_tokens_per_s"])
    assert cap["shape_prefill_tokens"] == 2000 and cap["shape_output_tokens"] == 100 and len(done)
    # 4 requests/s x 100 tokens on an H100 serving an 8B model: far from saturation
    assert 0 < cap["capacity_utilisation"] < 0.5
    assert 0 <= cap["kv_occupancy"] <= 1 and 0 <= cap["batch_occupancy"] <= 1
    s = res.summary()["pools"]["a"]
    assert s["capacity_utilisation"] == cap["capacity_utilisation"] and "busy_share" in s and "utilisation" not in s


# -- JSON ----------------------------------------------------------------------------------------------------
def test_dumps_turns_every_non_finite_number_into_null():
    import pandas as pd
    text = dumps({"a": math.nan, "b": [np.float64("inf"), np.int64(3), pd.NA], "c": {"d": -math.inf}, 1: (1.5,)})
    assert strict_json(text) == {"a": None, "b": [None, 3, None], "c": {"d": None}, "1": [1.5]}


def test_no_bare_nan_in_any_json_output(streams_file, tmp_path):
    # a run so short that nothing completes after warm-up: every latency figure is NaN
    out = tmp_path / "run"
    code, text, err = cli("run", str(streams_file), "--no-progress", "--no-figures", "--format", "json",
                          "--set", "duration_s=10.5", "--out", str(out))
    assert code == 0, err
    s = strict_json(text)
    assert s["ttft_s"] is None and s["tpot_p99_s"] is None and s["completed"] == 0
    for f in ("summary.json", "manifest.json"):
        strict_json((out / f).read_text())
    code, text, err = cli("run", str(streams_file), "--no-progress", "-r", "2", "--format", "json",
                          "--set", "duration_s=10.5")
    assert code == 0, err
    assert strict_json(text)["ttft_s_ci_low"] is None
    code, text, err = cli("estimate", "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--input-tokens", "100",
                          "--output-tokens", "1", "--concurrency", "1", "--requests", "3", "--format", "json")
    assert code == 0, err
    strict_json(text)                    # tpot is NaN with one output token
    assert "NaN" not in text
    code, text, err = cli("sweep", str(streams_file), "--grid", "streams.load.rate=1,2", "--workers", "0",
                          "--no-progress", "--format", "json", "--set", "duration_s=10.5")
    assert code == 0, err
    rows = strict_json(text)
    assert len(rows) == 2 and all(r["ttft_s"] is None for r in rows)


# -- tables ---------------------------------------------------------------------------------------------------
def test_table_has_no_interval_column_for_one_run_and_no_scientific_notation(streams_file):
    code, text, err = cli("run", str(streams_file), "--no-progress", "--set", "duration_s=60")
    assert code == 0, err
    assert text.splitlines()[0].split() == ["metric", "value"]
    big = [ln for ln in text.splitlines() if ln.startswith(("energy_j", "input_tokens_per_s"))] or text.splitlines()
    assert not any("e+" in ln for ln in big)
    from agentsim.cli.common import _fmt
    assert _fmt(371_123.4) == "371,123" and _fmt(2.051e4) == "20,510" and _fmt(math.nan) == "-"
    code, text, err = cli("run", str(streams_file), "--no-progress", "-r", "2", "--set", "duration_s=60")
    assert code == 0, err
    assert text.splitlines()[0].split() == ["metric", "value", "ci_low", "ci_high"]


# -- figures -----------------------------------------------------------------------------------------------------
def test_units_follow_the_run():
    assert plots.time_unit(120) == (60.0, "minutes") and plots.time_unit(86400) == (3600.0, "hours")
    assert plots.time_unit(7 * 86400) == (86400.0, "days")
    assert plots.power_unit(3e5) == (1e3, "kW") and plots.power_unit(3e6) == (1e6, "MW")
    assert plots.interval_label(900) == "15 min" and plots.interval_label(10) == "10 s"


def test_two_minute_run_is_plotted_in_minutes_with_slo_lines(res):
    fig = plots.timeseries(res)
    try:
        bottom = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]
        assert bottom and set(bottom) == {"simulated time (minutes)"}
        titles = [ax.get_title() for ax in fig.axes]
        assert "arrivals per 10 s" in titles and not any("MW" in t for t in titles)
        # the rejections panel is there exactly when some request did not complete
        assert any(t.startswith("outcomes other than") for t in titles) == bool((res.requests["outcome"]
                                                                                != "completed").any())
        x = np.concatenate([ln.get_xdata() for ln in fig.axes[0].get_lines()])
        assert 0 <= x.min() and x.max() <= 2.0 + 1e-9                          # 0-2 minutes
    finally:
        plt.close(fig)
    fig = plots.latency_cdfs(res)
    try:
        for ax, slo in zip(fig.axes[:2], (0.5, 0.05)):
            slo_lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("SLO")]
            assert len(slo_lines) == 1 and set(slo_lines[0].get_xdata()) == {slo}
            labels = [t.get_text() for t in ax.get_legend().get_texts()]
            assert any(lb.startswith("p50 = ") for lb in labels) and any(lb.startswith("p99 = ") for lb in labels)
        assert not [ln for ln in fig.axes[2].get_lines() if ln.get_label().startswith("SLO")]   # no E2E SLO
    finally:
        plt.close(fig)


def test_no_session_or_retry_figure_without_sessions_or_retries(res, tmp_path):
    assert not len(res.sessions)
    assert plots.skipped(res).keys() == {"session_times", "retries_per_call"}
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "session_times.png").write_bytes(b"stale")   # from an earlier run in this folder
    paths = plots.save_all(res, tmp_path / "figs")
    assert [p.name for p in paths] == ["latency_cdfs.png", "timeseries.png"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["latency_cdfs.png", "timeseries.png"]


def test_report_of_a_stream_only_run_says_which_figures_are_left_out(res, tmp_path):
    from agentsim.results.report import write_report
    d = tmp_path / "run"
    res.save(d)
    md_path, html_path = write_report(d)
    md, page = md_path.read_text(), html_path.read_text()
    assert "Not drawn: session times" in md and "Not drawn: retries per call" in md
    assert "H100-SXM" in md and "Llama-3-8B" in md and "| tp1 |" in md
    assert "time to first token ≤ 0.5 s" in md and "95 % CI" not in md
    assert page.count("data:image/png;base64,") == 2 and "figures/" not in page


def test_a_run_shorter_than_its_sampling_interval_states_the_real_interval(streams_file):
    # the default preset samples every 15 min; a two-minute run of it has one 2-minute interval
    r = simulate(str(streams_file), overrides=["sample_s=900", "policies=[{name='chaos',probability=0.3}]"])
    assert (r.requests["outcome"] != "completed").any()
    fig = plots.timeseries(r)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert "arrivals per 2 min" in titles and not any("15 min" in t for t in titles)
        for ax in fig.axes:
            for ln in ax.get_lines():
                x = np.asarray(ln.get_xdata(), float)
                if len(x) > 2:                                   # data lines, not a limit line
                    assert x.max() <= 2.0 + 1e-9, ax.get_title()      # nothing drawn past the end of the run
    finally:
        plt.close(fig)


def test_a_pool_that_served_nothing_has_zero_capacity_utilisation(res):
    from agentsim.studies import utilisation
    from agentsim.results.result import Result
    idle = Result(requests=res.requests[res.requests["outcome"] != "completed"], timeseries=res.timeseries,
                  pools=res.pools, meta={k: v for k, v in res.meta.items() if k != "capacity"}, sessions=res.sessions)
    cap = utilisation.capacity_utilisation(idle)["a"]
    assert cap["capacity_utilisation"] == 0.0 and cap["served_output_tokens_per_s"] == 0.0
    assert math.isnan(cap["capacity_output_tokens_per_s"])       # no request shape to estimate it with


def test_capacity_is_measured_at_the_tpot_slo(res):
    from agentsim.studies import utilisation
    from agentsim.results.result import Result
    free = utilisation.capacity_utilisation(res)["a"]
    # a TPOT SLO tighter than the max-load run's TPOT at the KV-capped batch: the batch comes down
    # until the max-load TPOT meets it, and the pool can carry less
    slo = 0.8 * free["max_load_tpot_s"]
    tight = Result(requests=res.requests, timeseries=res.timeseries, pools=res.pools,
                   meta={**{k: v for k, v in res.meta.items() if k != "capacity"}, "slo_tpot_s": slo},
                   sessions=res.sessions)
    cap = utilisation.capacity_utilisation(tight)["a"]
    assert free["max_load_tpot_s"] > slo >= cap["max_load_tpot_s"]
    assert 1 <= cap["max_load_batch"] < free["max_load_batch"]
    assert cap["capacity_output_tokens_per_s"] < free["capacity_output_tokens_per_s"]
    assert cap["capacity_utilisation"] > free["capacity_utilisation"]
