"""``agentsim capacity FILE --slo 'ttft_p99_s<=2' --vary PATH``: bisection for the SLO's fleet or load."""
from __future__ import annotations

import math
import sys

import click

from ..studies.capacity import capacity, parse_slo
from ..util.atomic import write_atomic
from ..util.jsonout import dumps
from .common import Finite, _fmt, cli, emit, format_option
from .sweep_cmd import _clean, executor_options, open_out, precheck, writing


@cli.command("capacity")
@click.argument("scenario")
@click.option("--slo", "slos", multiple=True, required=True, metavar="METRIC<=X",
              help="An SLO over a summary key: METRIC<=X or METRIC>=X, e.g. 'ttft_p99_s<=2'; repeatable "
                   "(all must hold).")
@click.option("--vary", required=True, metavar="PATH",
              help="The field to search: a pool's replicas (or engine.max_batch), a population's size, a "
                   "stream's rate, ...")
@click.option("--goal", type=click.Choice(["min", "max"]), default=None,
              help="min: smallest value meeting the SLO (default for replicas, max_batch, ...); max: largest "
                   "(default for size, rate, concurrency, ...).")
@click.option("--low", type=Finite(), default=None, help="Smallest value to consider (default: --step).")
@click.option("--high", type=Finite(), default=None, help="Largest value to consider (default: open, galloping).")
@click.option("--step", type=Finite(0, low_open=True), default=None, help="Resolution of the answer (default 1).")
@click.option("--replications", "-r", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per probed value (the same seeds at every value).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Base seed (default: the scenario's).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a scenario field.")
@executor_options("Keep each finished run in DIR/tasks (a rerun skips them: resume) and write the search "
                  "and its answer to DIR/capacity.json.")
@format_option
def capacity_cmd(scenario, slos, vary, goal, low, high, step, replications, seed, overrides, out_dir, overwrite,
                 address, workers, connect_timeout, slices, slice_sample, progress, force, fmt) -> None:
    """Find the smallest fleet (or largest load) at which every SLO holds.

    Each probed value runs R replications; an SLO holds when the mean over them meets the bound.
    The answer comes with each SLO metric's 95 % CI at the answer and at its neighbour (one step
    to the other side); "confident" means those intervals separate cleanly. Exit code 1 when no
    value in range meets the SLO.
    """
    parsed = [parse_slo(s) for s in slos]   # a bad SLO fails before anything runs
    precheck(scenario, overrides, slices, force)
    out = open_out(out_dir, "capacity", overwrite)
    with writing(out):
        res = capacity(scenario, parsed, vary, goal=goal, low=low, high=high, step=step, replications=replications,
                       seed=seed, overrides=list(overrides), slices=slices, slice_sample=slice_sample,
                       address=address, workers=workers, out_dir=out.write_path if out else None,
                       progress=progress, connect_timeout=connect_timeout)
        d = res.as_dict()
        if out:
            write_atomic(out.write_path / "capacity.json", dumps(_jsonclean(d)))
            out.commit()
    if fmt == "json":
        click.echo(dumps(_jsonclean(d)))
    else:
        metrics = list(dict.fromkeys(s.metric for s in res.slos))
        rows = []
        for p in d["probes"]:
            row = {vary: p["value"], "meets": "yes" if p["holds"] else "no"}
            for m in metrics:
                row[m] = p[m]
                if replications > 1:
                    row[f"{m} 95% CI"] = f"[{_fmt(p[f'{m}_ci_low'])}, {_fmt(p[f'{m}_ci_high'])}]"
            rows.append(row)
        emit(rows, "table")
        click.echo("")
        if res.answer is not None:
            click.echo(f"answer: {vary} = {res.answer} ({'smallest' if res.goal == 'min' else 'largest'} value "
                       f"meeting {', '.join(map(str, res.slos))}; {replications} replication(s) per value)")
            for label, v in (("at the answer", res.answer), ("at the neighbour", res.neighbour)):
                if v is None:
                    continue
                parts = [f"{s.metric} = {_fmt(d[f'{_k(label)}:{s.metric}'])} "
                         f"[{_fmt(d[f'{_k(label)}:{s.metric}_ci_low'])}, {_fmt(d[f'{_k(label)}:{s.metric}_ci_high'])}]"
                         for s in res.slos]
                click.echo(f"  {label} ({vary} = {v}): " + "; ".join(parts))
            verdict = "yes" if res.confident else "no (the 95 % intervals overlap the bound; raise --replications)"
            click.echo(f"  confident: {verdict}")
        if res.note:
            click.echo(f"note: {res.note}")
    if res.answer is None:
        click.echo(f"error: no value of {vary} in range meets the SLO ({res.note})", err=True)
        sys.exit(1)


def _k(label: str) -> str:
    return "answer" if label == "at the answer" else "neighbour"


def _jsonclean(o):
    if isinstance(o, dict):
        return {k: _jsonclean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_jsonclean(v) for v in o]
    return _clean(o) if isinstance(o, float) and (math.isnan(o) or math.isinf(o)) else o
