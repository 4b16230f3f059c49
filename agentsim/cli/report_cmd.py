"""``agentsim plot DIR`` and ``agentsim report DIR``: figures and reports of a saved run.

Both take the ``--out DIR`` of a single run or of replications (``run -r N``: ``DIR/rep-NNN``).
Every file they read is checked first, so a damaged directory (a truncated Parquet file, a
broken ``summary.json``) is one line naming the file and what is wrong, not a traceback.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import pyarrow.parquet as pq

from ..results.plots import save_all
from ..results.report import write_report
from ..results.result import Result
from ..studies.utilisation import capacity_utilisation
from ..util.errors import InputError
from .common import cli

TABLES = ("requests.parquet", "timeseries.parquet", "pools.parquet", "sessions.parquet")


def _run_dir(d: str) -> Path:
    p = Path(d)
    if not p.is_dir():
        raise InputError(f"result directory {d}: not found (give the --out DIR of an agentsim run)")
    if not (p / "requests.parquet").exists() and not (p / "rep-000" / "requests.parquet").exists():
        raise InputError(f"result directory {d}: no requests.parquet in it (not an agentsim run?)")
    return p


def result_dirs(d: Path) -> list[Path]:
    """The result folders of a run directory: itself, or its replications in order."""
    if (d / "requests.parquet").exists():
        return [d]
    return sorted(r for r in d.glob("rep-[0-9][0-9][0-9]") if r.is_dir())


def check_files(d: Path) -> None:
    """Read every file ``plot``/``report`` will read far enough to know it is whole."""
    for f in [d / "summary.json"] + [r / n for r in result_dirs(d) for n in ("manifest.json", "summary.json")]:
        if f.exists():
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"result file {f}: not UTF-8 text (damaged?)") from None
            except ValueError as e:
                raise InputError(f"result file {f}: not valid JSON ({e}); rerun the run that wrote it") from None
    for r in result_dirs(d):
        for n in TABLES:
            f = r / n
            if not f.exists():
                continue
            try:
                pq.read_metadata(f)
            except Exception as e:     # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
                raise InputError(f"result file {f}: not a readable Parquet file ({str(e).splitlines()[0]}); "
                                 "rerun the run that wrote it") from None


@cli.command("plot")
@click.argument("run_dir")
def plot(run_dir: str) -> None:
    """Write the standard figures of a saved run to RUN_DIR/figures/*.png (replications: to
    RUN_DIR/rep-NNN/figures)."""
    d = _run_dir(run_dir)
    check_files(d)
    for r in result_dirs(d):
        for path in save_all(Result.load(r), r / "figures"):
            click.echo(str(path))


@cli.command("report")
@click.argument("run_dir")
def report(run_dir: str) -> None:
    """Write RUN_DIR/report.md and RUN_DIR/report.html (summary tables and figures)."""
    d = _run_dir(run_dir)
    check_files(d)
    for path in write_report(d, capacity=capacity_utilisation):
        click.echo(str(path))
