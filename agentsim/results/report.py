"""``agentsim report DIR``: a Markdown and a self-contained HTML report of a saved run.

The HTML file embeds its figures (PNG as base64 data URIs), so it can be mailed or attached on
its own; ``report.md`` links them from ``figures/``. Both state the SLOs the run was judged
against, each pool's GPU, model and parallelism, and what each figure shows. Confidence
intervals appear only for replicated runs (``-r N``), where they exist.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from ..util.atomic import write_atomic
from .plots import save_all, skipped
from .result import Result

CAPTIONS = {
    "latency_cdfs": "Latency CDFs of completed requests after warm-up: time to first token, time per output token "
                    "and end-to-end latency, one line per pool and all pools in black. The red dashed line is the "
                    "SLO threshold (with the share of requests within it); the black dot and square mark the p50 "
                    "and p99 of all pools, their bars the 95 % order-statistic interval.",
    "timeseries": "Per-pool time series at the sampling interval: arrivals and completions per interval, queue "
                  "length, running requests per replica, KV cache in use, busy share (share "
                  "of time a replica executes a step — near 1 even at a small batch), server power and replicas "
                  "up; outcomes other than completed by arrival interval; facility power (servers, other IT and "
                  "PUE) against the site limit.",
    "session_times": "Completion time of top-level agent sessions that started after warm-up, one CDF per "
                     "population; dots mark the medians.",
    "retries_per_call": "Attempts each logical agent call needed (1 = no retry), as shares of all calls.",
}
SECTIONS = (
    ("Requests", ("requests", "completed", "requests_per_s", "goodput_rps", "slo_attainment", "preemptions")),
    ("Latency (s)", ("ttft_s", "ttft_p50_s", "ttft_p99_s", "tpot_s", "tpot_p99_s", "e2e_s", "e2e_p99_s", "frontend_s", "queue_s", "prefill_s",
                     "kv_transfer_s", "kv_transfer_p99_s")),
    ("Throughput and cache", ("output_tokens_per_s", "input_tokens_per_s", "prefix_hit_rate")),
    ("Sessions", ("sessions", "session_failure_rate", "session_duration_s", "session_duration_p90_s",
                  "retries_per_call", "attempts_per_call")),
    ("Energy and cost", ("energy_j", "joules_per_token", "facility_power_mean_w", "facility_power_peak_w",
                         "cost_usd", "usd_per_m_tokens", "usd_per_m_output_tokens")),
)
#: the pools table: (header, how to read the value from the pool row and its summary entry)
POOL_COLUMNS = ("pool", "GPU", "model", "precision", "parallelism", "replicas (GPUs)", "KV tokens per replica",
                "KV contexts per replica (median context)", "support", "capacity utilisation",
                "batch occupancy", "KV occupancy", "busy share", "mean power (W)", "cost (USD)")


def _fmt(v) -> str:
    """A value for people: 4 significant digits; whole numbers with thousands separators from
    10,000 up (never scientific notation for big figures); '-' when missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 1e4:
        return f"{v:,}"
    return str(v)


def _duration(s: float) -> str:
    if s < 600:
        return f"{s:g} s"
    if s < 3 * 3600:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def _rows(summary: dict):
    for title, keys in SECTIONS:
        rows = [(k, summary[k], summary.get(f"{k}_ci_low"), summary.get(f"{k}_ci_high")) for k in keys if k in summary]
        if rows:
            yield title, rows


def _pool_rows(res: Result, summary: dict) -> list[list[str]]:
    out = []
    for r in res.pools.to_dict("records"):
        s = summary.get("pools", {}).get(r["pool"], {})
        shape = r.get("parallelism") if isinstance(r.get("parallelism"), str) else f"tp{r['tp']}pp{r['pp']}"
        out.append([str(r["pool"]), str(r["gpu"]), str(r["model"]), str(r["precision"]), shape,
                    f"{r['replicas']} ({r['gpus']})", _fmt(r.get("kv_capacity_tokens")), _fmt(s.get("kv_contexts")),
                    str(s.get("support", r.get("support", "-"))), _fmt(s.get("capacity_utilisation")),
                    _fmt(s.get("batch_occupancy")), _fmt(s.get("kv_occupancy")),
                    _fmt(s.get("busy_share", s.get("utilisation"))), _fmt(s.get("mean_power_w")),
                    _fmt(s.get("cost_usd"))])
    return out


def _slo_text(meta: dict) -> str:
    ttft, tpot = meta.get("slo_ttft_s"), meta.get("slo_tpot_s")
    parts = []
    if ttft is not None and math.isfinite(ttft):
        parts.append(f"time to first token ≤ {ttft:g} s")
    if tpot is not None and math.isfinite(tpot):
        parts.append(f"time per output token ≤ {tpot:g} s")
    if not parts:
        return "No latency SLO is set."
    return (f"SLOs: {' and '.join(parts)}. `slo_attainment` is the share of requests arriving after warm-up "
            f"that completed within both; `goodput_rps` counts those requests per second.")


UTILISATION_TEXT = ("Capacity utilisation = served output tokens/s over the output tokens/s the pool's replicas "
                    "(those up) sustain at saturation (`estimate --max-load` of its deployment with the pool's "
                    "mean prefilled and output tokens per request, the batch capped at what the KV cache holds "
                    "at the pool's mean context and lowered until the max-load TPOT meets the TPOT SLO); "
                    "batch occupancy = mean running requests / "
                    "max batch; KV occupancy = mean share of the KV cache in use; busy share = share of time a "
                    "replica executes a step (near 1 even with one request in the batch).")


def write_report(run_dir: str | Path, capacity=None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and the figures) into ``run_dir``.

    ``capacity(result)``, when given, computes capacity utilisation for a run saved without it (the
    CLI passes :func:`agentsim.capacity_utilisation`; a report never runs simulations itself)."""
    d = Path(run_dir)
    reps = not (d / "requests.parquet").exists() and (d / "rep-000" / "requests.parquet").exists()
    res = Result.load(d / "rep-000" if reps else d)
    summary_path = d / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if capacity is not None and not reps and \
            not all("capacity_utilisation" in p for p in summary.get("pools", {}).values()):
        capacity(res)                            # a run saved before it was computed: compute it now
        summary = {**summary, "pools": res.summary()["pools"]} if summary else res.summary()
    summary = summary or res.summary()
    figs = save_all(res, d / "figures")
    left_out = skipped(res)
    meta = res.meta
    name = meta.get("scenario", {}).get("name", d.name)
    desc = meta.get("scenario", {}).get("description", "")
    n_reps = summary.get("replications", 1)
    intro = (f"Seed {meta.get('seed')}{f' (replication 0 of {n_reps}; figures show this one, tables the mean of all)' if reps else ''}, "
             f"{_duration(float(meta.get('duration_s', 0)))} simulated, the first "
             f"{_duration(float(meta.get('warmup_s', 0)))} warm-up (left out of the tables and the latency and "
             f"session figures), agentsim {meta.get('agentsim_version', '?')}.")
    with_ci = any(k.endswith("_ci_low") for k in summary)
    md = [f"# agentsim report: {name}", "", desc, "", intro, "", _slo_text(meta), ""]
    for title, rows in _rows(summary):
        if with_ci:
            md += [f"## {title}", "", "| metric | value | 95 % CI |", "|---|---|---|"]
            md += [f"| `{k}` | {_fmt(v)} | {'-' if lo is None else f'{_fmt(lo)} – {_fmt(hi)}'} |"
                   for k, v, lo, hi in rows]
        else:
            md += [f"## {title}", "", "| metric | value |", "|---|---|"]
            md += [f"| `{k}` | {_fmt(v)} |" for k, v, lo, hi in rows]
        md.append("")
    md += ["## Outcomes", "", "| outcome | requests |", "|---|---|"]
    md += [f"| {o} | {n} |" for o, n in summary.get("outcomes", {}).items()] + [""]
    if summary.get("session_outcomes"):
        md += ["## Session outcomes", "", "| outcome | sessions |", "|---|---|"]
        md += [f"| {o} | {n} |" for o, n in summary["session_outcomes"].items()] + [""]
    md += ["## Pools", "", UTILISATION_TEXT, "", "| " + " | ".join(POOL_COLUMNS) + " |",
           "|" + "---|" * len(POOL_COLUMNS)]
    md += ["| " + " | ".join(r) + " |" for r in _pool_rows(res, summary)] + [""]
    md += ["## Figures", ""]
    for f in figs:
        md += [f"### {f.stem.replace('_', ' ')}", "", CAPTIONS.get(f.stem, ""), "", f"![{f.stem}](figures/{f.name})", ""]
    for n, why in left_out.items():
        md += [f"Not drawn: {n.replace('_', ' ')} — {why}.", ""]
    md_path = d / "report.md"
    write_atomic(md_path, "\n".join(md))
    html_path = d / "report.html"
    write_atomic(html_path, _html(name, desc, intro, _slo_text(meta), summary, with_ci, _pool_rows(res, summary),
                             figs, left_out))
    return md_path, html_path


def _html(name: str, desc: str, intro: str, slo: str, summary: dict, with_ci: bool, pool_rows, figs: list[Path],
          left_out: dict) -> str:
    e = html.escape
    code = lambda text: e(text).replace("`", "")  # noqa: E731  (Markdown backticks read as plain text here)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>agentsim: {e(name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left;font-family:monospace}img{max-width:100%}</style></head><body>",
             f"<h1>agentsim report: {e(name)}</h1><p>{e(desc)}</p><p>{e(intro)}</p><p>{code(slo)}</p>"]
    for title, rows in _rows(summary):
        head = "<th>metric</th><th>value</th>" + ("<th>95 % CI</th>" if with_ci else "")
        parts.append(f"<h2>{e(title)}</h2><table><tr>{head}</tr>")
        for k, v, lo, hi in rows:
            ci = f"<td>{e('-' if lo is None else f'{_fmt(lo)} – {_fmt(hi)}')}</td>" if with_ci else ""
            parts.append(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td>{ci}</tr>")
        parts.append("</table>")
    parts.append("<h2>Outcomes</h2><table><tr><th>outcome</th><th>requests</th></tr>")
    parts += [f"<tr><td>{e(o)}</td><td>{n}</td></tr>" for o, n in summary.get("outcomes", {}).items()]
    parts.append("</table>")
    if summary.get("session_outcomes"):
        parts.append("<h2>Session outcomes</h2><table><tr><th>outcome</th><th>sessions</th></tr>")
        parts += [f"<tr><td>{e(o)}</td><td>{n}</td></tr>" for o, n in summary["session_outcomes"].items()]
        parts.append("</table>")
    parts.append(f"<h2>Pools</h2><p>{code(UTILISATION_TEXT)}</p><table><tr>"
                 + "".join(f"<th>{e(c)}</th>" for c in POOL_COLUMNS) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in pool_rows]
    parts.append("</table><h2>Figures</h2>")
    for f in figs:
        data = base64.b64encode(f.read_bytes()).decode("ascii")
        parts.append(f"<h3>{e(f.stem.replace('_', ' '))}</h3><p>{e(CAPTIONS.get(f.stem, ''))}</p>"
                     f"<img src='data:image/png;base64,{data}' alt='{e(f.stem)}'>")
    for n, why in left_out.items():
        parts.append(f"<p>Not drawn: {e(n.replace('_', ' '))} — {e(why)}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


