"""Standard figures, each a function of a :class:`~agentsim.result.Result` (no simulation here).

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

LATENCIES = (("ttft_s", "Time to first token"), ("tpot_s", "Time per output token"), ("e2e_s", "End-to-end latency"))


def _cdf_xy(x) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(np.asarray(x, dtype=float))
    x = x[np.isfinite(x)]
    return x, np.arange(1, len(x) + 1) / len(x) if len(x) else np.empty(0)


def completed(res):
    df = res.requests
    warm = res.meta.get("warmup_s", 0.0)
    return df[(df["outcome"] == "completed") & (df["arrival_s"] >= warm)]


def latency_cdfs(res) -> plt.Figure:
    """CDFs of TTFT, TPOT and E2E of completed requests (after warm-up), one line per pool."""
    done = completed(res)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (col, title) in zip(axes, LATENCIES):
        for pool, grp in done.groupby("pool", observed=True):
            x, y = _cdf_xy(grp[col])
            if len(x):
                ax.step(x, y, where="post", label=f"{pool} (n={len(x):,})")
        x, y = _cdf_xy(done[col])
        if len(x):
            ax.step(x, y, where="post", color="black", lw=2, label=f"all (n={len(x):,})")
            ax.set_xscale("log" if x[0] > 0 and x[-1] / x[0] > 100 else "linear")
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction of completed requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Latency distributions — {res.meta.get('scenario', {}).get('name', '')}")
    fig.tight_layout()
    return fig


TIMESERIES = (("arrivals", "arrivals / interval"), ("completed", "completed / interval"),
              ("queued", "queued requests"), ("busy_frac", "utilisation (busy share)"),
              ("power_w", "server power (kW)"), ("replicas_up", "replicas up"))


def timeseries(res) -> plt.Figure:
    """Per-pool time series: arrivals, completions, queue, utilisation, power, replicas up; plus
    rejections by outcome over time."""
    ts = res.timeseries
    fig, axes = plt.subplots(4, 2, figsize=(14, 13), sharex=True)
    axes = axes.ravel()
    hours = lambda t: np.asarray(t, float) / 3600  # noqa: E731
    for ax, (col, label) in zip(axes, TIMESERIES):
        for pool, grp in ts.groupby("pool", observed=True):
            y = grp[col].to_numpy() / (1000 if col == "power_w" else 1)
            ax.plot(hours(grp["time_s"]), y, label=str(pool), drawstyle="steps-pre")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[len(TIMESERIES)]
    rej = rejections_over_time(res)
    for outcome in rej.columns:
        ax.plot(hours(rej.index), rej[outcome].to_numpy(), label=outcome, drawstyle="steps-pre")
    ax.set_title("outcomes other than completed, per interval")
    ax.set_ylabel("requests / interval")
    ax.grid(alpha=0.3)
    if len(rej.columns):
        ax.legend(fontsize=8)
    ax = axes[len(TIMESERIES) + 1]
    if len(ts):
        fac = ts.groupby("time_s", observed=True)["facility_power_w"].sum()
        ax.plot(hours(fac.index), fac.to_numpy() / 1e6, color="black", drawstyle="steps-pre", label="facility draw")
        limit = max((s.get("facility_mw", 0) for s in res.meta.get("sites", {}).values()), default=0)
        peak = float(fac.max()) / 1e6
        if limit and peak >= 0.05 * limit:
            ax.axhline(limit, color="red", ls="--", label=f"facility limit {limit:g} MW")
        elif limit:
            ax.text(0.02, 0.92, f"facility limit {limit:g} MW; peak draw {peak:.3g} MW ({100 * peak / limit:.2g} %)",
                    transform=ax.transAxes, fontsize=8)
        ax.legend(fontsize=8)
    ax.set_title("facility power (MW, incl. other IT and PUE)")
    ax.set_ylabel("MW")
    ax.grid(alpha=0.3)
    for ax in axes[-2:]:
        ax.set_xlabel("simulated time (hours)")
    fig.suptitle("Time series per pool")
    fig.tight_layout()
    return fig


def rejections_over_time(res):
    """Requests per sampling interval by outcome (all outcomes but ``completed``)."""
    import pandas as pd
    df = res.requests
    interval = res.meta.get("scenario", {}).get("sample_s", 60.0) or 60.0
    bad = df[df["outcome"] != "completed"]
    if not len(bad):
        return pd.DataFrame()
    bucket = (np.floor(bad["arrival_s"].to_numpy() / interval) + 1) * interval
    out = pd.crosstab(bucket, bad["outcome"].astype(str))
    end = max(float(res.meta.get("duration_s", 0.0)), float(out.index.max()))
    out = out.reindex(np.arange(1, int(np.ceil(end / interval - 1e-9)) + 1) * interval, fill_value=0)
    out.index.name = "time_s"
    return out


def session_times(res) -> plt.Figure:
    """CDF of completed top-level sessions' durations (started after warm-up), one line per population."""
    ss = res.sessions
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if len(ss):
        top = ss[(ss["kind"] == "session") & (ss["outcome"] == "completed")
                 & (ss["start_s"] >= res.meta.get("warmup_s", 0.0))]
        for pop, grp in top.groupby("population", observed=True):
            x, y = _cdf_xy(grp["duration_s"])
            if len(x):
                ax.step(x, y, where="post", label=f"{pop} (n={len(x):,})")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_title("Session completion time")
    ax.set_xlabel("seconds from session start to end")
    ax.set_ylabel("fraction of completed sessions")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def retries_per_call(res) -> plt.Figure:
    """How many attempts each logical call needed (bars: share of calls)."""
    df = res.requests
    fig, ax = plt.subplots(figsize=(8, 4.5))
    calls = df[df["call_id"] >= 0]
    if len(calls):
        attempts = calls.groupby("call_id")["attempt"].max().to_numpy() + 1
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


FIGURES = {"latency_cdfs": latency_cdfs, "timeseries": timeseries, "session_times": session_times,
           "retries_per_call": retries_per_call}


def save_all(res, out_dir: str | Path) -> list[Path]:
    """Write every standard figure as PNG into ``out_dir`` (atomically, one by one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in FIGURES.items():
        fig = fn(res)
        tmp = out / f".{name}.png.tmp"
        try:
            fig.savefig(tmp, dpi=110, format="png")
            tmp.replace(out / f"{name}.png")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            plt.close(fig)
        paths.append(out / f"{name}.png")
    return paths
