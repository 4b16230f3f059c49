"""``agentsim validate``: the engine in its textbook limits against queueing theory.

Runs the checks of :mod:`agentsim.studies.validate` (fixed seeds, 99 % batch-means intervals, a stated
discretisation bound per row) and prints one row per compared quantity; exits 1 if any fails.
"""
from __future__ import annotations

import sys

import click

from ..studies.validate import CHECKS, COLUMNS, run
from .common import cli, emit, format_option


@cli.command("validate")
@click.option("--check", "checks", multiple=True, type=click.Choice(list(CHECKS)), metavar="NAME",
              help=f"Run only this check; repeatable. Checks: {', '.join(CHECKS)}.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Name each check on stderr as it finishes.")
@format_option
def validate(checks, progress, fmt) -> None:
    """Compare the engine with queueing theory (M/M/c, P-K, PS, M/G/inf, MVA, Erlang B, M/M/c/K,
    retries, token buckets) and check exact sample-path properties. Exit code 1 if a check fails.

    A row passes when the theoretical value lies in [ci_low - bound, ci_high + bound] (99 %
    batch-means interval widened by the discretisation bound) and the interval's half-width is
    at most 3 % of the theoretical value; exact rows compare with a float tolerance.
    """
    report = None
    if progress:
        def report(name: str, seconds: float) -> None:
            click.echo(f"validate: {name} done in {seconds:.1f} s", err=True)
    rows = run(list(checks) or None, progress=report)
    out = [{c: r[c] for c in COLUMNS} for r in rows]
    emit(out, fmt, list(COLUMNS))
    failed = [r["check"] for r in rows if not r["passed"]]
    if failed:
        click.echo(f"validate: {len(failed)} of {len(rows)} rows failed: {'; '.join(failed)}", err=True)
        sys.exit(1)
    click.echo(f"validate: all {len(rows)} rows of {len({r['group'] for r in rows})} checks passed", err=True)
