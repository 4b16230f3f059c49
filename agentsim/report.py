"""``agentsim report DIR``: a Markdown and an HTML report of a saved run (summary + figures)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from .plots import FIGURES, save_all
from .result import Result

CAPTIONS = {
    "latency_cdfs": "Latency CDFs of completed requests after warm-up, per pool and overall.",
    "timeseries": "Per-pool time series at the sampling interval, rejections by outcome, and facility power.",
    "session_times": "Completion time of top-level sessions, per population.",
    "retries_per_call": "Attempts each logical call needed (1 = no retry).",
}
SECTIONS = (
    ("Requests", ("requests", "completed", "requests_per_s", "goodput_rps", "slo_attainment", "preemptions")),
    ("Latency (s)", ("ttft_s", "ttft_p50_s", "ttft_p99_s", "tpot_s", "tpot_p99_s", "e2e_s", "e2e_p99_s", "queue_s")),
    ("Throughput and cache", ("output_tokens_per_s", "input_tokens_per_s", "prefix_hit_rate")),
    ("Sessions", ("sessions", "session_failure_rate", "session_duration_s", "session_duration_p90_s",
                  "retries_per_call", "attempts_per_call")),
    ("Energy and cost", ("energy_j", "joules_per_token", "facility_power_mean_w", "facility_power_peak_w",
                         "cost_usd", "usd_per_m_tokens", "usd_per_m_output_tokens")),
)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _rows(summary: dict):
    for title, keys in SECTIONS:
        rows = [(k, summary[k], summary.get(f"{k}_ci_low"), summary.get(f"{k}_ci_high")) for k in keys if k in summary]
        if rows:
            yield title, rows


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and the figures) into ``run_dir``."""
    d = Path(run_dir)
    reps = not (d / "requests.parquet").exists() and (d / "rep-000" / "requests.parquet").exists()
    res = Result.load(d / "rep-000" if reps else d)
    summary_path = d / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else res.summary()
    figs = save_all(res, d / "figures")
    name = res.meta.get("scenario", {}).get("name", d.name)
    desc = res.meta.get("scenario", {}).get("description", "")
    md = [f"# agentsim report: {name}", "", desc, "",
          f"Seed {res.meta.get('seed')}, {res.meta.get('duration_s', 0) / 3600:.3g} simulated hours, "
          f"agentsim {res.meta.get('agentsim_version', '?')}.", ""]
    for title, rows in _rows(summary):
        md += [f"## {title}", "", "| metric | value | 95 % CI |", "|---|---|---|"]
        md += [f"| `{k}` | {_fmt(v)} | {'' if lo is None else f'{_fmt(lo)} – {_fmt(hi)}'} |" for k, v, lo, hi in rows]
        md.append("")
    md += ["## Outcomes", "", "| outcome | requests |", "|---|---|"]
    md += [f"| {o} | {n} |" for o, n in summary.get("outcomes", {}).items()] + [""]
    if summary.get("session_outcomes"):
        md += ["## Session outcomes", "", "| outcome | sessions |", "|---|---|"]
        md += [f"| {o} | {n} |" for o, n in summary["session_outcomes"].items()] + [""]
    md += ["## Pools", "", "| pool | utilisation | mean power (W) | GPUs | cost (USD) |", "|---|---|---|---|---|"]
    md += [f"| {p} | {_fmt(v['utilisation'])} | {_fmt(v['mean_power_w'])} | {v['gpus']} | {_fmt(v['cost_usd'])} |"
           for p, v in summary.get("pools", {}).items()] + [""]
    md += ["## Figures", ""]
    for f in figs:
        md += [f"### {f.stem.replace('_', ' ')}", "", CAPTIONS.get(f.stem, ""), "", f"![{f.stem}](figures/{f.name})", ""]
    md_path = d / "report.md"
    _atomic(md_path, "\n".join(md))
    html_path = d / "report.html"
    _atomic(html_path, _html(name, desc, summary, figs))
    return md_path, html_path


def _html(name: str, desc: str, summary: dict, figs: list[Path]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>agentsim: {e(name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
             "td:first-child{text-align:left;font-family:monospace}img{max-width:100%}</style></head><body>",
             f"<h1>agentsim report: {e(name)}</h1><p>{e(desc)}</p>"]
    for title, rows in _rows(summary):
        parts.append(f"<h2>{e(title)}</h2><table><tr><th>metric</th><th>value</th><th>95 % CI</th></tr>")
        for k, v, lo, hi in rows:
            ci = "" if lo is None else f"{_fmt(lo)} – {_fmt(hi)}"
            parts.append(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td><td>{e(ci)}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Outcomes</h2><table><tr><th>outcome</th><th>requests</th></tr>")
    parts += [f"<tr><td>{e(o)}</td><td>{n}</td></tr>" for o, n in summary.get("outcomes", {}).items()]
    parts.append("</table>")
    if summary.get("session_outcomes"):
        parts.append("<h2>Session outcomes</h2><table><tr><th>outcome</th><th>sessions</th></tr>")
        parts += [f"<tr><td>{e(o)}</td><td>{n}</td></tr>" for o, n in summary["session_outcomes"].items()]
        parts.append("</table>")
    parts.append("<h2>Pools</h2><table><tr><th>pool</th><th>utilisation</th><th>mean power (W)</th><th>GPUs</th>"
                 "<th>cost (USD)</th></tr>")
    parts += [f"<tr><td>{e(p)}</td><td>{_fmt(v['utilisation'])}</td><td>{_fmt(v['mean_power_w'])}</td>"
              f"<td>{v['gpus']}</td><td>{_fmt(v['cost_usd'])}</td></tr>" for p, v in summary.get("pools", {}).items()]
    parts.append("</table><h2>Figures</h2>")
    for f in figs:
        parts.append(f"<h3>{e(f.stem.replace('_', ' '))}</h3><p>{e(CAPTIONS.get(f.stem, ''))}</p>"
                     f"<img src='figures/{e(f.name)}' alt='{e(f.stem)}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
