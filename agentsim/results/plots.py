"""Standard figures, each a function of a :class:`~agentsim.results.result.Result` (no simulation here).

Every function returns a matplotlib ``Figure`` whose plotted data is exactly the Result's data
(a CDF's x values are the sorted latencies, its last y is 1), so tests and notebooks can read
it back. ``save_all`` writes the set as PNG files.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..util.atomic import write_atomic  # noqa: E402
from ..util.stats import NONNEGATIVE, percentile_interval  # noqa: E402

LATENCIES = (("ttft_s", "Time to first token"), ("tpot_s", "Time per output token"), ("e2e_s", "End-to-end latency"))
#: the scenario field holding each latency's SLO threshold (drawn on its CDF)
SLO_OF = {"ttft_s": "slo_ttft_s", "tpot_s": "slo_tpot_s"}
#: percentiles marked on the overall CDF (with their order-statistic 95 % interval)
MARKS = (50, 99)


def _cdf_xy(x) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(np.asarray(x, dtype=float))
    x = x[np.isfinite(x)]
    return x, np.arange(1, len(x) + 1) / len(x) if len(x) else np.empty(0)


def completed(res):
    df = res.requests
    warm = res.meta.get("warmup_s", 0.0)
    return df[(df["outcome"] == "completed") & (df["arrival_s"] >= warm)]


# -- scales that follow the run -------------------------------------------------------------------------
def time_unit(duration_s: float) -> tuple[float, str]:
    """Seconds per axis unit and its name for a run of ``duration_s``: minutes up to 3 hours,
    hours up to 3 days, days beyond (a two-minute run is not plotted in hours)."""
    if duration_s <= 3 * 3600:
        return 60.0, "minutes"
    if duration_s <= 3 * 86400:
        return 3600.0, "hours"
    return 86400.0, "days"


def power_unit(peak_w: float) -> tuple[float, str]:
    """Watts per axis unit and its name: W below 1 kW, kW below 1 MW, MW above."""
    if peak_w >= 1e6:
        return 1e6, "MW"
    if peak_w >= 1e3:
        return 1e3, "kW"
    return 1.0, "W"


def interval_label(seconds: float) -> str:
    """``900`` -> ``'15 min'``; ``3600`` -> ``'1 h'``; ``30`` -> ``'30 s'``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _sample_s(res) -> float:
    return float(res.meta.get("scenario", {}).get("sample_s", 60.0) or 60.0)


def _slo(res, col: str) -> float | None:
    """The SLO threshold of a latency column, if the run has a finite, meaningful one."""
    key = SLO_OF.get(col)
    v = res.meta.get(key, res.meta.get("scenario", {}).get(key)) if key else None
    return float(v) if v is not None and np.isfinite(v) and 0 < v < 1e6 else None


# -- latency CDFs -------------------------------------------------------------------------------------------
def latency_cdfs(res) -> plt.Figure:
    """CDFs of TTFT, TPOT and E2E of completed requests (after warm-up), one line per pool; the
    SLO threshold as a dashed vertical line; p50 and p99 of all pools marked, with the 95 %
    order-statistic interval of each as a horizontal bar."""
    done = completed(res)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (col, title) in zip(axes, LATENCIES):
        for pool, grp in done.groupby("pool", observed=True):
            x, y = _cdf_xy(grp[col])
            if len(x):
                ax.step(x, y, where="post", label=f"{pool} (n={len(x):,})")
        x, y = _cdf_xy(done[col])
        if len(x):
            ax.step(x, y, where="post", color="black", lw=2, label=f"all (n={len(x):,})")
            ax.set_xscale("log" if x[0] > 0 and x[-1] / x[0] > 100 else "linear")
            for q, marker in zip(MARKS, ("o", "s")):
                est, lo, hi = percentile_interval(x, q, valid=NONNEGATIVE)
                err = [[est - lo if np.isfinite(lo) else 0], [hi - est if np.isfinite(hi) else 0]]
                ax.errorbar([est], [q / 100], xerr=err, fmt=marker, color="black", ms=5, capsize=3, lw=1,
                            label=f"p{q} = {_secs(est)}")
        slo = _slo(res, col)
        if slo is not None:
            share = float((done[col] <= slo).mean()) if len(done) else float("nan")
            ax.axvline(slo, color="red", ls="--", lw=1.2, label=f"SLO {_secs(slo)} ({100 * share:.1f} % within)")
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction of completed requests")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    warm = res.meta.get("warmup_s", 0.0)
    fig.suptitle(f"Latency distributions — {res.meta.get('scenario', {}).get('name', '')} "
                 f"(completed requests{f' arriving after the {_secs(warm)} warm-up' if warm else ''})")
    fig.tight_layout()
    return fig


def _secs(v: float) -> str:
    """A duration for a label: ``0.0123`` -> ``'12.3 ms'``, ``75`` -> ``'75 s'``, ``5400`` -> ``'1.5 h'``."""
    if not np.isfinite(v):
        return "n/a"
    if v < 1:
        return f"{v * 1000:.3g} ms"
    if v < 600:
        return f"{v:.3g} s"
    if v < 3 * 3600:
        return f"{v / 60:.3g} min"
    return f"{v / 3600:.3g} h"


# -- time series ----------------------------------------------------------------------------------------------
#: per-pool panels: column, title ({iv} = the sampling interval); power is scaled to W/kW/MW
TIMESERIES = (("arrivals", "arrivals per {iv}"), ("completed", "completed per {iv}"),
              ("queued", "queued requests (end of interval)"), ("running_per_replica", "running requests per replica"),
              ("kv_used_frac", "KV cache in use (share)"), ("busy_frac", "busy share (time executing a step)"),
              ("power_w", "server power"), ("replicas_up", "replicas up"))


def _pool_series(res, col: str, grp):
    if col == "running_per_replica":
        # per replica, not over max_batch: with long agent contexts the KV cache binds at a batch
        # far below max_batch, and a share of max_batch would read as a flat line at 0
        pools = res.pools.set_index("pool") if len(res.pools) else None
        if pools is None or grp.name not in pools.index:
            return grp["running"].to_numpy(float) * np.nan
        return grp["running"].to_numpy(float) / float(pools.loc[grp.name, "replicas"])
    return grp[col].to_numpy(float)


def _interval_steps(ax, t_end_s, y, interval_s: float, t_div: float, **kw):
    """Draw per-interval values as steps that cover each whole interval: a sample stamped at the
    end of its interval (``t_end_s``) holds from ``t − interval`` to ``t``. The first interval gets
    its own leading point, so it is drawn like every other (not as a lone spike at its end)."""
    t = np.asarray(t_end_s, float)
    y = np.asarray(y, float)
    if len(t):
        t = np.concatenate([[max(t[0] - interval_s, 0.0)], t])
        y = np.concatenate([[y[0]], y])
    return ax.plot(t / t_div, y, drawstyle="steps-pre", **kw)


def timeseries(res) -> plt.Figure:
    """Per-pool time series: arrivals and completions per sampling interval (the interval is in
    the title), queue, batch and KV occupancy, busy share, server power, replicas up (integer
    ticks); plus outcomes other than completed over time (only when there are any) and facility
    power against the site limit. Time in minutes, hours or days and power in W, kW or MW, by the
    run's length and size."""
    ts = res.timeseries
    duration = float(res.meta.get("duration_s", 0.0) or (ts["time_s"].max() if len(ts) else 0))
    interval = min(_sample_s(res), duration) if duration > 0 else _sample_s(res)   # a run shorter than one sample
    iv = interval_label(interval)
    t_div, t_unit = time_unit(duration)
    rej = rejections_over_time(res)
    extra = (["rejections"] if len(rej.columns) else []) + (["facility"] if len(ts) else [])
    n = len(TIMESERIES) + len(extra)
    rows = (n + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.2 * rows + 0.6), sharex=True, squeeze=False)
    axes = axes.ravel()
    p_div, p_unit = power_unit(float(ts["power_w"].max()) if len(ts) else 0.0)
    groups = list(ts.groupby("pool", observed=True)) if len(ts) else []
    for ax, (col, title) in zip(axes, TIMESERIES):
        _pool_panel(ax, res, col, title, groups, interval, iv, t_div, p_div, p_unit)
    k = len(TIMESERIES)
    if "rejections" in extra:
        _rejections_panel(axes[k], rej, interval, iv, t_div)
        k += 1
    if "facility" in extra:
        _facility_panel(axes[k], res, ts, interval, t_div)
        k += 1
    for ax in axes[k:]:
        ax.remove()
    for ax in axes[:k]:
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[max(0, k - 2):k]:
        ax.set_xlabel(f"simulated time ({t_unit})")
    fig.suptitle(f"Time series per pool, sampled every {iv}")
    fig.tight_layout()
    return fig


def _pool_panel(ax, res, col: str, title: str, groups, interval: float, iv: str, t_div: float, p_div: float,
                p_unit: str) -> None:
    """One per-pool series (a line per pool) with the axis limits its kind of value needs."""
    label = title.format(iv=iv) + (f" ({p_unit})" if col == "power_w" else "")
    for pool, grp in groups:
        grp.name = pool
        y = _pool_series(res, col, grp) / (p_div if col == "power_w" else 1)
        _interval_steps(ax, grp["time_s"], y, interval, t_div, label=str(pool))
    ax.set_ylabel(label)
    ax.set_title(label)
    ax.grid(alpha=0.3)
    if col in ("arrivals", "completed", "queued", "replicas_up"):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if col in ("kv_used_frac", "busy_frac"):
        ax.set_ylim(-0.02, 1.02)
    if col in ("arrivals", "completed", "queued", "running_per_replica", "power_w", "replicas_up"):
        top = max((float(np.nanmax(ln.get_ydata())) for ln in ax.get_lines() if len(ln.get_ydata())), default=0)
        ax.set_ylim(0, max(1.0, 1.05 * top if np.isfinite(top) else 1.0))   # all zeros: 0-1, not 0-0.05
    if groups:
        ax.legend(fontsize=8)


def _rejections_panel(ax, rej, interval: float, iv: str, t_div: float) -> None:
    """Outcomes other than completed over time, by arrival."""
    for outcome in rej.columns:
        _interval_steps(ax, rej.index, rej[outcome].to_numpy(), interval, t_div, label=outcome)
    ax.set_title(f"outcomes other than completed, per {iv} (by arrival)")
    ax.set_ylabel(f"requests per {iv}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _facility_panel(ax, res, ts, interval: float, t_div: float) -> None:
    """Facility power over time against the sites' limit (a line when the draw comes near it, else a note)."""
    fac = ts.groupby("time_s", observed=True)["facility_power_w"].sum()
    f_div, f_unit = power_unit(float(fac.max()))
    _interval_steps(ax, fac.index, fac.to_numpy() / f_div, interval, t_div, color="black", label="facility draw")
    limit_mw = max((s.get("facility_mw", 0) for s in res.meta.get("sites", {}).values()), default=0)
    peak_mw = float(fac.max()) / 1e6
    if limit_mw and peak_mw >= 0.05 * limit_mw:
        ax.axhline(limit_mw * 1e6 / f_div, color="red", ls="--", label=f"facility limit {limit_mw:g} MW")
    elif limit_mw:
        ax.text(0.02, 0.04, f"facility limit {limit_mw:g} MW; peak draw {peak_mw * 1e6 / f_div:.3g} {f_unit} "
                f"({100 * peak_mw / limit_mw:.2g} % of the limit)", transform=ax.transAxes, fontsize=8)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"facility power ({f_unit}, incl. other IT and PUE)")
    ax.set_ylabel(f_unit)
    ax.grid(alpha=0.3)


def rejections_over_time(res):
    """Requests per sampling interval by outcome (all outcomes but ``completed``)."""
    df = res.requests
    interval = _sample_s(res)
    bad = df[df["outcome"] != "completed"]
    if not len(bad):
        return pd.DataFrame()
    duration = float(res.meta.get("duration_s", 0.0))
    # interval ends, the last one cut at the end of the run (like the sampler's last sample)
    cut = (lambda t: np.minimum(t, duration)) if duration > 0 else (lambda t: t)  # noqa: E731
    bucket = cut((np.floor(bad["arrival_s"].to_numpy() / interval) + 1) * interval)
    out = pd.crosstab(bucket, bad["outcome"].astype(str))
    end = max(duration, float(out.index.max()))
    out = out.reindex(np.unique(cut(np.arange(1, int(np.ceil(end / interval - 1e-9)) + 1) * interval)), fill_value=0)
    out.index.name = "time_s"
    return out


# -- sessions and retries --------------------------------------------------------------------------------------
def _top_sessions(res):
    ss = res.sessions
    if not len(ss):
        return ss
    return ss[(ss["kind"] == "session") & (ss["outcome"] == "completed")
              & (ss["start_s"] >= res.meta.get("warmup_s", 0.0))]


def session_times(res) -> plt.Figure:
    """CDF of completed top-level sessions' durations (started after warm-up), one line per
    population, with each population's median marked."""
    top = _top_sessions(res)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(top):
        for pop, grp in top.groupby("population", observed=True):
            x, y = _cdf_xy(grp["duration_s"])
            if len(x):
                line, = ax.step(x, y, where="post", label=f"{pop} (n={len(x):,})")
                ax.plot([np.percentile(x, 50)], [0.5], "o", color=line.get_color(), ms=4)
        d = top["duration_s"].to_numpy(float)
        d = d[np.isfinite(d) & (d > 0)]
        # log only when durations span orders of magnitude (a few similar sessions read better linear)
        ax.set_xscale("log" if len(d) and d.max() / d.min() > 100 else "linear")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        ax.set_title("Session completion time (dots: medians)")
    else:
        ax.set_title("Session completion time (no completed sessions in this run)")
    ax.set_xlabel("seconds from session start to end")
    ax.set_ylabel("fraction of completed sessions")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _attempts(res) -> np.ndarray:
    df = res.requests
    calls = df[df["call_id"] >= 0]
    return calls.groupby("call_id")["attempt"].max().to_numpy() + 1 if len(calls) else np.empty(0, int)


def retries_per_call(res) -> plt.Figure:
    """How many attempts each logical call needed (bars: share of calls)."""
    attempts = _attempts(res)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(attempts):
        values, counts = np.unique(attempts, return_counts=True)
        ax.bar(values, counts / counts.sum(), color="tab:blue")
        ax.set_xticks(values)
        ax.set_title(f"Attempts per call ({len(attempts):,} calls, mean {attempts.mean():.3f})")
    else:
        ax.set_title("Attempts per call (no agent calls in this run)")
    ax.set_xlabel("attempts (1 = no retry)")
    ax.set_ylabel("share of calls")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def has_data(res, name: str) -> bool:
    """Whether figure ``name`` has something to show for this run: no session figure without
    completed sessions, no retries figure when every call took one attempt (a single bar)."""
    if name == "session_times":
        return len(_top_sessions(res)) > 0
    if name == "retries_per_call":
        return len(np.unique(_attempts(res))) > 1
    if name == "latency_cdfs":
        return len(completed(res)) > 0
    if name == "timeseries":
        return len(res.timeseries) > 0
    return True


def skipped(res) -> dict[str, str]:
    """Figures left out for this run, with the reason (for the report)."""
    why = {"session_times": "no completed agent sessions in this run (stream traffic only, or none finished)",
           "retries_per_call": "every logical call succeeded on its first attempt, or there were no agent calls",
           "latency_cdfs": "no request completed after warm-up", "timeseries": "no time series was sampled"}
    return {n: why[n] for n in FIGURES if not has_data(res, n)}


FIGURES = {"latency_cdfs": latency_cdfs, "timeseries": timeseries, "session_times": session_times,
           "retries_per_call": retries_per_call}


def save_all(res, out_dir: str | Path) -> list[Path]:
    """Write the standard figures that have data (:func:`has_data`) as PNG into ``out_dir``
    (atomically, one by one); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in FIGURES.items():
        stale = out / f"{name}.png"
        if not has_data(res, name):
            stale.unlink(missing_ok=True)     # a figure of an earlier run in this folder would mislead
            continue
        fig = fn(res)
        try:
            write_atomic(out / f"{name}.png", lambda f: fig.savefig(f, dpi=110, format="png"))
        finally:
            plt.close(fig)
        paths.append(out / f"{name}.png")
    return paths
