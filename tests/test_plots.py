"""Figures and reports show the Result's data, not just a file that exists.

Every function in :data:`agentsim.results.plots.FIGURES` is run on one small run that has something to
show in every panel: two pools of different GPUs (an outage takes one down for a while), two
populations (a fleet of coding agents, open chat users) so sessions and logical calls exist, a
``chaos`` policy failing 20 % of attempts so calls are retried, a warm-up, and a facility limit
low enough to be drawn. The plotted artists are read back and compared with the Result:

* latency CDFs (TTFT, TPOT, E2E), per pool and overall: x = the sorted values of completed
  requests after warm-up, y = i/n, last y = 1;
* time series: each panel's line per pool equals that column of ``Result.timeseries`` (power in
  kW); the rejections panel equals the counts by outcome and arrival interval; facility power
  equals the per-interval sum and reconciles with the summary's mean and peak;
* session times: a CDF per population of completed top-level sessions' durations;
* attempts per call: bar heights are the shares of logical calls by attempt count, summing to 1,
  and reconcile with the populations' counters in the manifest.

Then ``save_all`` (atomic, complete PNGs), ``agentsim plot DIR`` and ``agentsim report DIR``
(report.md: every section and every figure; report.html: parsed, images and tables checked).
"""
from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from agentsim.results import plots  # noqa: E402
from agentsim.run.api import simulate  # noqa: E402
from agentsim.results.report import SECTIONS  # noqa: E402
from agentsim.results.result import Result  # noqa: E402
from cli_helper import cli

SCENARIO = """\
name = "plots-small"
duration_s = 1200
warmup_s = 60
seed = 5
sample_s = 120
policies = [{ name = "chaos", probability = 0.2, outcome = "529_overload" }]

[engine]
retention = "pin_session"
prefix_ttl_s = 300
host_kv_gb = 5

[sites.default]
facility_mw = 0.01

[pools.h100]
gpu = "H100-SXM"
model = "Llama-3-8B"
replicas = 2

[pools.h200]
gpu = "H200"
model = "Llama-3-8B"
replicas = 1

[router]
policy = "session_affinity"

[[outages]]
target = "pool:h100"
start_s = 300
end_s = 500

[populations.coders]
profile = "interactive_coding_agent"
kind = "fleet"
size = 4
workers = 4

[populations.coders.params]
turns = 2
context_window = 30000
think_time = 5.0
tool_latency = 0.5
initial_context = 3000
shared_prefix_tokens = 1000

[populations.chat]
profile = "chat_user"
size = 200
params = { sessions_per_user_day = 60 }
"""

FIGURE_NAMES = ("latency_cdfs", "timeseries", "session_times", "retries_per_call")




def is_complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND"


def cdf_lines(ax) -> dict:
    """The CDF lines of an axis (labelled ``name (n=...)``), by name; SLO lines and marks left out."""
    return {label_name(ln): ln for ln in ax.get_lines() if "(n=" in ln.get_label()}


def steps_xy(line, interval_s: float, unit_s: float):
    """A per-interval step line's samples: its data minus the leading point that opens the first
    interval (x in seconds)."""
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    assert x[0] * unit_s == pytest.approx(max(x[1] * unit_s - interval_s, 0.0)) and y[0] == y[1]
    return x[1:] * unit_s, y[1:]


def label_name(line) -> str:
    """``'h100 (n=1,234)'`` -> ``'h100'``."""
    return line.get_label().split(" (n=")[0]


def label_n(line) -> int:
    return int(re.search(r"\(n=([\d,]+)\)", line.get_label()).group(1).replace(",", ""))


def assert_cdf(line, values) -> None:
    """The line is the empirical CDF of ``values``: x sorted values, y = i/n, last y = 1."""
    v = np.sort(np.asarray(values, float))
    v = v[np.isfinite(v)]
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    assert len(v) > 0
    np.testing.assert_array_equal(x, v)
    np.testing.assert_array_equal(y, np.arange(1, len(v) + 1) / len(v))
    assert y[-1] == 1.0 and np.all(np.diff(x) >= 0) and np.all(np.diff(y) > 0)
    assert line.get_drawstyle() == "steps-post"
    assert label_n(line) == len(v)


# -- the run ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("scn") / "plots.toml"
    p.write_text(SCENARIO)
    return p


@pytest.fixture(scope="module")
def res(scenario_file) -> Result:
    r = simulate(str(scenario_file))
    # the premises: every panel has something to show
    rq = r.requests
    assert set(rq["pool"].dropna().astype(str)) == {"h100", "h200"}
    assert (rq["outcome"] == "529_overload").sum() > 50 and (rq["attempt"] > 0).sum() > 50
    assert (rq["arrival_s"] < r.meta["warmup_s"]).sum() > 10
    top = r.sessions[(r.sessions["kind"] == "session") & (r.sessions["outcome"] == "completed")]
    assert set(top["population"].astype(str)) == {"coders", "chat"}
    assert r.timeseries["replicas_up"].min() < r.timeseries["replicas_up"].max()
    return r


@pytest.fixture(scope="module")
def figs(res):
    out = {name: fn(res) for name, fn in plots.FIGURES.items()}
    yield out
    for f in out.values():
        plt.close(f)


def test_figures_registry_is_the_documented_set():
    assert tuple(plots.FIGURES) == FIGURE_NAMES


# -- latency CDFs -----------------------------------------------------------------------------------------
def test_latency_cdfs_are_the_sorted_latencies_per_pool_and_overall(res, figs):
    fig = figs["latency_cdfs"]
    done = res.requests[(res.requests["outcome"] == "completed") & (res.requests["arrival_s"] >= res.meta["warmup_s"])]
    assert len(fig.axes) == 3
    for ax, (col, title) in zip(fig.axes, plots.LATENCIES):
        assert ax.get_title() == title and ax.get_xlabel() == "seconds"
        lines = cdf_lines(ax)
        assert set(lines) == {"h100", "h200", "all"}
        for pool in ("h100", "h200"):
            assert_cdf(lines[pool], done.loc[done["pool"] == pool, col])
        assert_cdf(lines["all"], done[col])
        # the per-pool counts add up to the overall count, which is the summary's (TTFT, E2E)
        assert label_n(lines["h100"]) + label_n(lines["h200"]) == label_n(lines["all"])
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[:3] == [ln.get_label() for ln in lines.values()]
    s = res.summary()
    assert label_n(cdf_lines(fig.axes[0])["all"]) == s["completed"]
    # the overall TTFT CDF crosses 0.5 at the summary's median (numpy's linear interpolation)
    all_ttft = cdf_lines(fig.axes[0])["all"]
    x = np.asarray(all_ttft.get_xdata())
    assert x[0] <= s["ttft_p50_s"] <= x[-1]
    assert np.percentile(x, 50) == pytest.approx(s["ttft_p50_s"], rel=1e-12)


# -- time series --------------------------------------------------------------------------------------------
def test_timeseries_lines_equal_the_timeseries_columns_per_pool(res, figs):
    fig = figs["timeseries"]
    ts = res.timeseries
    assert len(fig.axes) == len(plots.TIMESERIES) + 2          # + outcomes other than completed, facility power
    pools = res.pools.set_index("pool")
    for ax, (col, label) in zip(fig.axes, plots.TIMESERIES):
        assert ax.get_ylabel().startswith(label.format(iv="2 min"))
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {"h100", "h200"}, col
        for pool, ln in lines.items():
            grp = ts[ts["pool"] == pool].sort_values("time_s")
            assert len(grp) == 10                               # 1200 s / 120 s
            x, y = steps_xy(ln, 120, 60)                        # a 20-minute run is plotted in minutes
            np.testing.assert_allclose(x, grp["time_s"].to_numpy())
            if col == "running_per_replica":
                expected = grp["running"].to_numpy() / pools.loc[pool, "replicas"]
            else:
                expected = grp[col].to_numpy() / (1000 if col == "power_w" else 1)   # power in kW at this size
            np.testing.assert_array_equal(y, expected)
    assert fig.axes[0].get_ylabel() == "arrivals per 2 min"
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_title().startswith("server power")] == ["server power (kW)"]
    # the outage is visible: h100 has 2 replicas up, 0 during 300-500 s; the ticks are whole replicas
    up_ax = fig.axes[[c for c, _ in plots.TIMESERIES].index("replicas_up")]
    up = {ln.get_label(): np.asarray(ln.get_ydata()) for ln in up_ax.get_lines()}
    assert up["h100"].max() == 2 and up["h100"].min() == 0 and set(up["h200"]) == {1}
    ticks = [t for t in up_ax.get_yticks() if up_ax.get_ylim()[0] <= t <= up_ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    # x axis in minutes on the bottom row
    assert [ax.get_xlabel() for ax in fig.axes[-2:]] == ["simulated time (minutes)"] * 2


def test_timeseries_rejections_panel_counts_outcomes_by_arrival_interval(res, figs):
    ax = figs["timeseries"].axes[len(plots.TIMESERIES)]
    interval = res.meta["scenario"]["sample_s"]
    bad = res.requests[res.requests["outcome"] != "completed"]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == set(bad["outcome"].astype(str))
    assert "529_overload" in lines
    bucket = (np.floor(bad["arrival_s"].to_numpy() / interval) + 1) * interval
    total = 0
    for outcome, ln in lines.items():
        x, y = steps_xy(ln, interval, 60)
        for t, n in zip(x, y):
            assert n == (np.isclose(bucket, t) & (bad["outcome"] == outcome).to_numpy()).sum(), (outcome, t)
        total += y.sum()
    assert total == len(bad)                                  # every non-completed request is counted once


def test_rejections_panel_shows_zero_for_intervals_without_rejections(scenario_file):
    # chaos only in the first two and the last two intervals: the ones between have no rejection
    r = simulate(str(scenario_file), overrides=[
        "policies=[{name='chaos',probability=0.5,outcome='529_overload',windows=[[0,240],[960,1200]]}]",
        "outages=[]"])
    interval = r.meta["scenario"]["sample_s"]
    fig = plots.timeseries(r)
    try:
        ln = {ln.get_label(): ln for ln in fig.axes[len(plots.TIMESERIES)].get_lines()}["529_overload"]
        grid = np.arange(1, 11) * interval
        x, y = steps_xy(ln, interval, 60)
        np.testing.assert_allclose(x, grid)   # every interval, zeros included
        assert (y[2:8] == 0).all() and (y[:2] > 0).all()
    finally:
        plt.close(fig)


def test_timeseries_facility_power_is_the_sum_over_pools_and_reconciles_with_the_summary(res, figs):
    ax = figs["timeseries"].axes[-1]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    draw = lines["facility draw"]
    by_t = res.timeseries.groupby("time_s", observed=True)["facility_power_w"].sum()
    x, y = steps_xy(draw, res.meta["scenario"]["sample_s"], 60)
    np.testing.assert_allclose(x, by_t.index.to_numpy())
    np.testing.assert_allclose(y, by_t.to_numpy() / 1e3, rtol=1e-12)     # a few kW: plotted in kW, not MW
    s = res.summary()
    assert np.mean(y) * 1e3 == pytest.approx(s["facility_power_mean_w"], rel=1e-12)
    assert np.max(y) * 1e3 == pytest.approx(s["facility_power_peak_w"], rel=1e-12)
    # the 0.01 MW limit is drawn, in the axis' unit (the peak is within 5 % of it or more)
    limit = [ln for label, ln in lines.items() if label.startswith("facility limit")]
    assert len(limit) == 1 and set(limit[0].get_ydata()) == {10.0}
    assert ax.get_ylabel() == "kW"


# -- sessions ------------------------------------------------------------------------------------------------
def test_session_times_are_cdfs_of_completed_top_level_sessions_per_population(res):
    # without a warm-up, so that this holds whether or not the figure leaves warm-up out (see below)
    no_warmup = Result(requests=res.requests, timeseries=res.timeseries, pools=res.pools,
                       meta={**res.meta, "warmup_s": 0.0}, sessions=res.sessions)
    fig = plots.session_times(no_warmup)
    ax = fig.axes[0]
    plt.close(fig)
    ss = res.sessions
    top = ss[(ss["kind"] == "session") & (ss["outcome"] == "completed")]
    lines = cdf_lines(ax)
    assert set(lines) == {"coders", "chat"}
    for pop, ln in lines.items():
        assert_cdf(ln, top.loc[top["population"] == pop, "duration_s"])
    # sub-agents and unfinished sessions are not in it
    assert sum(label_n(ln) for ln in lines.values()) == len(top) < len(ss)
    assert ax.get_xscale() == "log" and "seconds" in ax.get_xlabel()


def test_session_times_leave_out_warm_up_like_the_summary(res, figs):
    ax = figs["session_times"].axes[0]
    ss = res.sessions
    top = ss[(ss["kind"] == "session") & (ss["outcome"] == "completed") & (ss["start_s"] >= res.meta["warmup_s"])]
    for name, ln in cdf_lines(ax).items():
        assert_cdf(ln, top.loc[top["population"] == name, "duration_s"])
    assert sum(label_n(ln) for ln in cdf_lines(ax).values()) == res.summary()["session_outcomes"]["completed"]


# -- retries --------------------------------------------------------------------------------------------------
def test_retries_bars_are_the_shares_of_calls_by_attempt_count(res, figs):
    ax = figs["retries_per_call"].axes[0]
    rq = res.requests
    calls = rq[rq["call_id"] >= 0]
    attempts = calls.groupby("call_id").size()                  # attempts recorded per logical call
    assert (attempts == calls.groupby("call_id")["attempt"].max() + 1).all()
    values, counts = np.unique(attempts.to_numpy(), return_counts=True)
    bars = ax.patches
    assert len(bars) == len(values) >= 3
    heights = np.array([b.get_height() for b in bars])
    centres = np.array([b.get_x() + b.get_width() / 2 for b in bars])
    np.testing.assert_allclose(centres, values)
    np.testing.assert_allclose(heights, counts / counts.sum(), rtol=1e-12)
    assert heights.sum() == pytest.approx(1.0, rel=1e-12)
    assert 0.5 < heights[0] < 0.95                              # most calls need one attempt, not all
    # and the bars reconcile with the populations' own counters
    pops = res.meta["populations"].values()
    n_calls = sum(p["calls"] for p in pops)
    assert len(attempts) == n_calls
    assert (values * counts).sum() == sum(p["attempts"] for p in pops) == len(calls)
    assert f"{n_calls:,} calls" in ax.get_title()
    assert f"mean {attempts.mean():.3f}" in ax.get_title()
    assert list(ax.get_xticks()) == list(values)


def test_retries_figure_without_agent_calls_says_so(res):
    empty = Result(requests=res.requests[res.requests["call_id"] < 0], timeseries=res.timeseries,
                   pools=res.pools, meta=res.meta, sessions=res.sessions)
    fig = plots.retries_per_call(empty)
    try:
        assert "no agent calls" in fig.axes[0].get_title() and not fig.axes[0].patches
    finally:
        plt.close(fig)


def test_every_panel_is_labelled(figs):
    for name, fig in figs.items():
        for ax in fig.axes:
            assert ax.get_title(), (name, "title")
            assert ax.get_ylabel(), (name, ax.get_title(), "ylabel")
            if len(ax.get_lines()) > 1:
                assert ax.get_legend() is not None, (name, ax.get_title(), "legend")


# -- save_all, plot, report --------------------------------------------------------------------------------------
def test_save_all_writes_complete_pngs_and_nothing_else(res, tmp_path):
    out = tmp_path / "figs"
    open_before = set(plt.get_fignums())
    paths = plots.save_all(res, out)
    assert paths == [out / f"{n}.png" for n in FIGURE_NAMES]
    assert sorted(os.listdir(out)) == sorted(f"{n}.png" for n in FIGURE_NAMES)
    for p in paths:
        assert is_complete_png(p), p
    # again over existing files: replaced, still nothing temporary
    again = plots.save_all(res, out)
    assert again == paths and sorted(os.listdir(out)) == sorted(f"{n}.png" for n in FIGURE_NAMES)
    assert set(plt.get_fignums()) == open_before                  # every figure it made was closed


@pytest.fixture(scope="module")
def run_dir(res, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run") / "out"
    res.save(d)
    return d


def test_plot_command_writes_the_figures_it_lists(run_dir):
    code, out, err = cli("plot", str(run_dir))
    assert code == 0, err
    listed = out.split()
    assert listed == [str(run_dir / "figures" / f"{n}.png") for n in FIGURE_NAMES]
    for p in listed:
        assert is_complete_png(Path(p))
    assert sorted(os.listdir(run_dir / "figures")) == sorted(f"{n}.png" for n in FIGURE_NAMES)


@pytest.fixture(scope="module")
def report(run_dir):
    code, out, err = cli("report", str(run_dir))
    assert code == 0, err
    assert out.split() == [str(run_dir / "report.md"), str(run_dir / "report.html")]
    summary = json.loads((run_dir / "summary.json").read_text())
    return (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text(), summary


def _fmt(v) -> str:
    from agentsim.results.report import _fmt as report_fmt
    return report_fmt(v)


MD_SECTIONS = [t for t, _ in SECTIONS] + ["Outcomes", "Pools", "Figures"]


def test_report_md_has_every_section_with_the_summary_values(report, run_dir, res):
    md, _, summary = report
    headings = re.findall(r"^## (.+)$", md, flags=re.M)
    assert [h for h in headings if h in MD_SECTIONS] == MD_SECTIONS       # all of them, in this order
    assert md.startswith("# agentsim report: plots-small")
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]*) \|", md, flags=re.M))
    expected = [k for _, keys in SECTIONS for k in keys if k in summary]
    assert list(rows) == expected
    assert {"requests", "ttft_p99_s", "session_failure_rate", "retries_per_call", "energy_j"} <= set(rows)
    for k, v in rows.items():
        assert v.strip() == _fmt(summary[k]), k
    sections = {sec.split("\n", 1)[0]: sec for sec in re.split(r"^## ", md, flags=re.M)[1:]}
    outcomes = dict(re.findall(r"^\| (\w+) \| (\d+) \|$", sections["Outcomes"], re.M))
    assert {k: int(v) for k, v in outcomes.items()} == summary["outcomes"]
    pools_md = sections["Pools"]
    # each pool's deployment and its capacity utilisation, occupancies, busy share, power, cost
    from agentsim import capacity_utilisation
    cap = capacity_utilisation(res)           # the same figures the report computed for the saved run
    for r in run_dir_pools(run_dir):
        p = {**summary["pools"][r["pool"]], **cap[r["pool"]]}
        row = (f"| {r['pool']} | {r['gpu']} | {r['model']} | {r['precision']} | {r['parallelism']} | "
               f"{r['replicas']} ({r['gpus']}) | {_fmt(r['kv_capacity_tokens'])} | {_fmt(p['kv_contexts'])} | "
               f"{p['support']} | {_fmt(p['capacity_utilisation'])} | {_fmt(p['batch_occupancy'])} | "
               f"{_fmt(p['kv_occupancy'])} | {_fmt(p['busy_share'])} | {_fmt(p['mean_power_w'])} | {_fmt(p['cost_usd'])} |")
        assert row in pools_md
    assert "Capacity utilisation =" in pools_md and "busy share" in pools_md
    # the SLOs are stated; a single run has no (empty) interval column
    assert "time to first token ≤ 2 s and time per output token ≤ 0.1 s" in md
    assert "95 % CI" not in md
    # every figure: a heading, its caption and a link to a complete PNG
    links = re.findall(r"!\[(\w+)\]\((figures/\w+\.png)\)", md)
    assert links == [(n, f"figures/{n}.png") for n in FIGURE_NAMES]
    for _, href in links:
        assert is_complete_png(run_dir / href)
    from agentsim.results.report import CAPTIONS
    for n in FIGURE_NAMES:
        assert CAPTIONS[n] in md
    names = os.listdir(run_dir)
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]


def run_dir_pools(run_dir) -> list[dict]:
    import pandas as pd
    return pd.read_parquet(run_dir / "pools.parquet").to_dict("records")


class _Doc(HTMLParser):
    """Headings, images and tables of an HTML page, and whether its tags balance."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.images: list[dict] = []
        self.tables: list[list[list[str]]] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            if tag == "img":
                self.images.append(dict(attrs))
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th", "h1", "h2", "h3", "title"):
            self._text = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._text).strip())
        elif tag in ("h1", "h2", "h3"):
            self.headings.append((tag, "".join(self._text).strip()))

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def test_report_html_is_well_formed_with_the_tables_and_images(report, run_dir):
    _, html_text, summary = report
    assert html_text.lower().startswith("<!doctype html>")
    doc = _Doc()
    doc.feed(html_text)
    doc.close()
    assert doc.errors == [] and doc.stack == []
    assert doc.headings[0] == ("h1", "agentsim report: plots-small")
    h2 = [t for tag, t in doc.headings if tag == "h2"]
    wanted = [t for t, _ in SECTIONS] + ["Outcomes", "Figures"]
    assert [t for t in h2 if t in wanted] == wanted
    # images: every figure embedded (self-contained: base64 PNG data URIs, the same bytes as the files)
    assert [i["alt"] for i in doc.images] == list(FIGURE_NAMES)
    for i, n in zip(doc.images, FIGURE_NAMES):
        assert i["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(i["src"].split(",", 1)[1]) == (run_dir / "figures" / f"{n}.png").read_bytes()
    assert "src='figures/" not in html_text and 'src="figures/' not in html_text
    # tables: a header row (no interval column for a single run), then one row per metric
    assert not [t for t in doc.tables if "95 % CI" in t[0]]
    metric_tables = [t for t in doc.tables if t[0] == ["metric", "value"]]
    assert len(metric_tables) == len([1 for _, keys in SECTIONS if any(k in summary for k in keys)])
    for t in doc.tables:
        assert all(len(r) == len(t[0]) for r in t), t
    values = {r[0]: r[1] for t in metric_tables for r in t[1:]}
    assert values == {k: _fmt(summary[k]) for _, keys in SECTIONS for k in keys if k in summary}
    outcome_tables = [t for t in doc.tables if t[0] == ["outcome", "requests"]]
    assert len(outcome_tables) == 1
    assert {r[0]: int(r[1]) for r in outcome_tables[0][1:]} == summary["outcomes"]


def test_report_html_has_the_same_sections_as_the_markdown(report):
    md, html_text, _ = report
    doc = _Doc()
    doc.feed(html_text)
    assert [t for tag, t in doc.headings if tag == "h2"] == re.findall(r"^## (.+)$", md, flags=re.M)


def test_report_shows_every_table_of_the_summary(report):
    md, html_text, summary = report
    nested = [k for k, v in summary.items() if isinstance(v, dict)]
    assert set(nested) == {"outcomes", "pools", "session_outcomes"}
    # each nested table has a section whose rows name its entries (with the counts, for outcomes)
    sections = re.split(r"^## ", md, flags=re.M)
    for key in nested:
        rows = [f"| {name} | {v} |" if isinstance(v, int) else f"| {name} |" for name, v in summary[key].items()]
        assert any(all(r in sec for r in rows) for sec in sections), (key, rows)


def test_report_of_a_replicated_run_shows_confidence_intervals(scenario_file, tmp_path):
    out = tmp_path / "reps"
    code, _, err = cli("run", str(scenario_file), "--replications", "2", "--out", str(out), "--no-progress",
                       "--no-figures", "--set", "duration_s=400", "--format", "json")
    assert code == 0, err
    code, _, err = cli("report", str(out))
    assert code == 0, err
    md = (out / "report.md").read_text()
    assert re.search(r"^\| `ttft_s` \| [^|]+ \| [\d.e+-]+ – [\d.e+-]+ \|$", md, flags=re.M)


def test_no_retries_figure_when_every_call_took_one_attempt(res, tmp_path):
    # the same run with every retry dropped: one bar at 1 attempt says nothing, so it is not drawn
    first = Result(requests=res.requests[res.requests["attempt"] == 0], timeseries=res.timeseries,
                   pools=res.pools, meta=res.meta, sessions=res.sessions)
    assert plots.has_data(res, "retries_per_call") and not plots.has_data(first, "retries_per_call")
    names = [p.name for p in plots.save_all(first, tmp_path)]
    assert "retries_per_call.png" not in names and "session_times.png" in names
    assert "every logical call succeeded on its first attempt" in plots.skipped(first)["retries_per_call"]
