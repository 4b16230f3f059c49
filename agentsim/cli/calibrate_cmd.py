"""``agentsim calibrate``: fit each GPU generation's efficiency factors to measured points.

Prints every point (conditions, measured, predicted, relative and leave-one-out error, or why it
is not scored), then per generation the fitted factors against their priors and an error summary
of the single-stream points they were fitted to, then the load points: simulated by the serving
engine (``agentsim.estimate``) with the fitted factors, each with its assumptions (KV dtype, batch
limits, simulated requests), scored but never fitted.
``--write FILE`` saves the fitted factors as a catalog file (the shipped one is
``agentsim/data/calibrated.toml``).
"""
from __future__ import annotations

from pathlib import Path

import click

from .. import calibrate as cal
from ..catalog import data_path, env_catalog_files, load_catalog
from ..errors import InputError
from .common import _fmt, catalog_option, cli, emit, format_option, render_table


def generation_block(fit: cal.GenerationFit, rows: list[dict]) -> str:
    """Fitted factors vs priors and the error summary of one generation, as text."""
    s = cal.summary([r for r in rows if r["generation"] == fit.generation], in_fit=True)
    factors = [{"factor": n, "prior": getattr(fit.prior, n), "fitted": v} for n, v in fit.fitted.items()]
    head = (f"{fit.generation}: {s['points']} scored points (rows {', '.join(map(str, fit.rows))}), "
            f"{len(fit.fitted)} factors fitted")
    table = render_table(factors) if factors else "(no factor identified; priors kept)"
    tail = (f"|rel error| median {_fmt(s['median_abs_error'])}, max {_fmt(s['max_abs_error'])}; "
            f"leave-one-out median {_fmt(s['loo_median_abs_error'])}")
    return "\n".join([head, table, tail])


def load_block(rows: list[dict]) -> str:
    """The load points' assumptions and their error summary, as text."""
    load = [r for r in rows if r["metric"] in cal.SIMULATED]
    lines = ["load points: simulated by the serving engine (agentsim.estimate) with the fitted factors of "
             "their generation; scored, not fitted (a simulation per optimiser step is too slow), so "
             "their loo_error is their rel_error"]
    for r in load:
        text = r["load_assumption"] if r["scored"] else f"not scored: {r['reason']}"
        lines.append(f"  row {r['row']}: {text or '-'}")
    s = cal.summary(rows, in_fit=False)
    lines.append(f"load: {s['points']} scored points; |rel error| median {_fmt(s['median_abs_error'])}, "
                 f"max {_fmt(s['max_abs_error'])}")
    return "\n".join(lines)


@cli.command("calibrate")
@click.option("--data", "data_file", type=click.Path(dir_okay=False), default=None,
              help="Measured points (CSV with the columns of calibration.csv). "
                   "Default: the shipped agentsim/data/calibration.csv.")
@click.option("--write", "write_file", type=click.Path(dir_okay=False), default=None,
              help="Write the fitted factors to this catalog TOML file (atomically).")
@catalog_option
@format_option
def calibrate(data_file, write_file, catalog_files, fmt) -> None:
    """Fit per-generation efficiency factors (MFU, MBU, overheads) to measured points."""
    path = Path(data_file) if data_file else data_path("calibration.csv")
    points = cal.load_points(path)
    result = cal.calibrate(points, load_catalog(env_catalog_files() + tuple(catalog_files), calibrated=False))
    if fmt == "json":
        emit(result.rows, fmt)
    else:
        emit([{k: v for k, v in r.items() if k not in ("source", "load_assumption")} for r in result.rows], fmt)
        for fit in result.fits.values():
            click.echo("\n" + generation_block(fit, result.rows))
        s = cal.summary(result.rows, in_fit=True)
        click.echo(f"\nfitted: {s['points']} single-stream points; |rel error| median "
                   f"{_fmt(s['median_abs_error'])}, max {_fmt(s['max_abs_error'])}; "
                   f"leave-one-out median {_fmt(s['loo_median_abs_error'])}")
        click.echo("\n" + load_block(result.rows))
    if write_file:
        try:
            cal.write_calibrated(result.fits, write_file, path.name)
        except OSError as e:
            raise InputError(f"--write {write_file}: cannot write ({e.strerror or e})") from None
        load_catalog.cache_clear()  # a later load in this process must see the new file
        click.echo(f"wrote {write_file}", err=True)
