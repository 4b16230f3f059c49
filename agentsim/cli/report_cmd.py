"""``agentsim plot DIR`` and ``agentsim report DIR``: figures and reports of a saved run."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .common import cli


def _run_dir(d: str) -> Path:
    p = Path(d)
    if not p.is_dir():
        raise InputError(f"result directory {d}: not found (give the --out DIR of an agentsim run)")
    if not (p / "requests.parquet").exists() and not (p / "rep-000" / "requests.parquet").exists():
        raise InputError(f"result directory {d}: no requests.parquet in it (not an agentsim run?)")
    return p


@cli.command("plot")
@click.argument("run_dir")
def plot(run_dir: str) -> None:
    """Write the standard figures of a saved run to RUN_DIR/figures/*.png."""
    from ..plots import save_all
    from ..result import Result
    d = _run_dir(run_dir)
    for path in save_all(Result.load(d), d / "figures"):
        click.echo(str(path))


@cli.command("report")
@click.argument("run_dir")
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.md and RUN_DIR/report.html (summary tables and figures)."""
    from ..report import write_report
    for path in write_report(_run_dir(run_dir)):
        click.echo(str(path))
