"""``agentsim sweep FILE --grid PATH=V1,V2 …``: every grid point × replication on an executor."""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from ..run.api import load_scenario
from ..run.checks import check_runnable, check_work, estimate_work
from ..run.scenario import MAX_SLICES, with_blame
from ..studies.sweep import TASKS, point_means, sweep
from ..util.errors import InputError
from ..util.jsonout import dumps
from ..util.outdir import OutDir
from .common import Finite, _fmt, cli, emit, force_option, format_option, progress_option

TABLE_METRICS = ("requests", "ttft_p99_s", "tpot_p99_s", "e2e_s", "output_tokens_per_s", "goodput_rps",
                 "slo_attainment", "cost_usd")


def executor_options(out_help: str):
    """``--out``, ``--overwrite``, ``--address``, ``--workers``, ``--connect-timeout``, ``--slices``,
    ``--slice-sample``, ``--progress``, ``--force``."""
    def deco(f):
        return _executor_options(f, out_help)
    return deco


def _executor_options(f, out_help: str):
    for opt in reversed([
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                     help=out_help + " A non-empty DIR must hold a previous output of the same kind (or give "
                                     "--overwrite)."),
        click.option("--overwrite", is_flag=True,
                     help="Replace a non-empty --out DIR that is not a previous output of this command "
                          "(atomically: the new output is written beside it, then swapped in)."),
        click.option("--address", default=None, metavar="ADDR",
                     help="Run on the Dask distributed cluster whose scheduler is at ADDR (e.g. tcp://host:8786); "
                          "default: a local process pool."),
        click.option("--workers", type=click.IntRange(min=0), default=None,
                     help="Local pool processes (default: one per CPU; 0 = in this process)."),
        click.option("--connect-timeout", type=Finite(0.1, 3600), default=10.0, show_default=True,
                     help="Seconds to wait for the Dask scheduler."),
        click.option("--slices", type=click.IntRange(min=1, max=MAX_SLICES), default=1, show_default=True,
                     help="Run each point as N slices (tenants hashed to slices, pools at 1/N) in parallel "
                          "and merge them into one fleet summary."),
        click.option("--slice-sample", type=click.IntRange(min=1), default=None, metavar="K",
                     help="Run only K of the N slices (drawn per replication) and scale sums by N/K."),
        progress_option,
        force_option,
    ]):
        f = opt(f)
    return f


def precheck(scenario, overrides, slices: int = 1, force: bool = False) -> None:
    """Refuse a base scenario with nothing to simulate, requests no replica holds or more work per
    run than the limits allow (unless ``force``), before any point runs; print its warnings.
    Each point is validated again when it runs."""
    sc = load_scenario(scenario, list(overrides))
    try:
        notes = check_runnable(sc)
    except InputError as e:
        raise InputError(with_blame(str(e), "", overrides)) from None
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    one = sc.model_copy(update={"slice": sc.slice.model_copy(update={"count": slices})}) if slices > 1 else sc
    check_work(estimate_work(one), force, what="one run of the base scenario")


def open_out(out_dir, kind: str, overwrite: bool):
    """The checked output directory of a sweep or capacity search (None without --out)."""
    return OutDir(out_dir, kind, overwrite) if out_dir else None


def interrupted(out) -> None:
    where = out.abandon(keep=True) if out is not None else None
    if where:
        n = len(list((Path(where) / TASKS).glob("*.json")))
        click.echo(f"interrupted; {n} finished run(s) kept in {where}; rerun the same command to resume", err=True)
    else:
        click.echo("interrupted (nothing kept: give --out DIR to resume later)", err=True)
    sys.exit(130)


@contextmanager
def writing(out):
    """Guard a run that writes into ``out``: Ctrl-C keeps the finished tasks and exits 130 (a rerun
    resumes), any other error drops a staged output so DIR stays as it was."""
    try:
        yield
    except KeyboardInterrupt:
        interrupted(out)
    except BaseException:
        if out:
            out.abandon(keep=False)
        raise


def _clean(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    try:
        return v.item()
    except AttributeError:
        return v


@cli.command("sweep")
@click.argument("scenario")
@click.option("--grid", "grid", multiple=True, metavar="PATH=V1,V2,...",
              help="A scenario field and its values, e.g. --grid pools.h100.replicas=2,4,8; repeatable "
                   "(the cartesian product runs).")
@click.option("--replications", "-r", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds per point: seed, seed+1, ...")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Base seed (default: the scenario's).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field for every point.")
@executor_options("Keep each finished run in DIR/tasks (a rerun skips them: resume) and write the combined "
                  "table DIR/sweep.parquet.")
@format_option
def sweep_cmd(scenario, grid, replications, seed, overrides, out_dir, overwrite, address, workers, connect_timeout,
              slices, slice_sample, progress, force, fmt) -> None:
    """Run SCENARIO at every grid point x replication; one table row per run.

    The table (DIR/sweep.parquet with --out) has the grid values, replication, seed, key (hash of
    the scenario and seed) and every scalar summary figure. The printed table shows, per point,
    the mean over replications (± the 95 % CI half-width) of the headline figures.
    """
    precheck(scenario, overrides, slices, force)
    out = open_out(out_dir, "sweep", overwrite)
    with writing(out):
        res = sweep(scenario, list(grid), replications=replications, seed=seed, overrides=list(overrides),
                    slices=slices, slice_sample=slice_sample, address=address, workers=workers,
                    out_dir=out.write_path if out else None, progress=progress, connect_timeout=connect_timeout)
        if out:
            out.commit()
    if fmt == "json":
        rows = [{k: _clean(v) for k, v in r.items()} for r in res.table.to_dict("records")]
        click.echo(dumps(rows))
    else:
        rows = point_means(res, list(TABLE_METRICS))
        if replications > 1:   # "mean ±half-width" in one cell
            rows = [{k: f"{_fmt(v)} ±{_fmt(r[k + '_ci'])}" if f"{k}_ci" in r else v
                     for k, v in r.items() if not k.endswith("_ci")} for r in rows]
        emit(rows, "table")
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    where = f"; table: {Path(out_dir) / Path(res.path).name}" if res.path else ""
    click.echo(f"{len(res.table)} row(s): {res.ran} simulation(s) run, {res.reused} reused{where}", err=True)
