"""Shared pieces of the CLI: the root group, common options and output formatting."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

from .lazy import LazyGroup

if TYPE_CHECKING:
    from ..model.catalog import Catalog


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="agentsim")
def cli() -> None:
    """agentsim: simulate agent inference on heterogeneous GPU clusters."""


def catalog_option(f):
    """``--catalog FILE`` (repeatable): extra GPUs, models, generations or aliases."""
    return click.option("--catalog", "catalog_files", multiple=True, type=click.Path(dir_okay=False),
                        help="Extra catalog TOML file (GPUs, models, generations, aliases); repeatable. "
                             "Also read from $AGENTSIM_CATALOG.")(f)


def format_option(f):
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                        show_default=True, help="Output format.")(f)


#: bounds of counting flags shared by several commands
MAX_WORKERS = 4_096


def progress_option(f):
    """``--progress/--no-progress``: the same flag, default and help on every command that runs."""
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Progress on stderr.")(f)


def force_option(f):
    """``--force``: run even when the work estimate is above the limits (agentsim.run.checks)."""
    return click.option("--force", is_flag=True,
                        help="Run even if the estimated work (requests, events, memory) is above the limits.")(f)


def out_options(help_text: str):
    """``--out DIR`` and ``--overwrite`` (see agentsim.util.outdir for what may be written where)."""
    def deco(f):
        f = click.option("--overwrite", is_flag=True,
                         help="Replace a non-empty --out DIR that is not a previous output of this command "
                              "(atomically: the new output is written beside it, then swapped in).")(f)
        return click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
                            help=help_text + " A non-empty DIR must hold a previous output of the same kind "
                                             "(or give --overwrite).")(f)
    return deco


class Finite(click.ParamType):
    """A float flag that is a finite number within [low, high] (``inf`` and ``nan`` are typos too).

    click's FloatRange lets ``nan`` through every bound and ``inf`` through an open upper one.
    """

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open

    def _allowed(self) -> str:
        lo = "" if self.low is None else f"{self.low:g} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high:g}"
        return f"a finite number {lo}x{hi}".replace("number x", "number") if not lo and not hi else \
            f"a finite number with {lo}x{hi}"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            x = value
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number; allowed: {self._allowed()}.", param, ctx)
        bad = not math.isfinite(x) or (self.high is not None and (x >= self.high if self.high_open else x > self.high)) or (
            self.low is not None and (x <= self.low if self.low_open else x < self.low))
        if bad:
            self.fail(f"{value!r} is not {self._allowed()}.", param, ctx)
        return x


def get_catalog(catalog_files: tuple[str, ...]) -> Catalog:
    from ..model.catalog import env_catalog_files, load_catalog  # local: pydantic and the catalog cost `--help` ~0.1 s
    return load_catalog(env_catalog_files() + tuple(catalog_files))


def _fmt(v) -> str:
    """A table cell: 4 significant digits; from 10,000 up whole numbers with thousands separators
    (never scientific notation for big figures); '-' for missing."""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        if v == 0 or 1e-3 <= abs(v):
            return f"{v:.4g}"
        return f"{v:.3e}"
    if v is None:
        return "-"
    return str(v)


def render_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Aligned plain-text table of ``rows`` (same keys as the JSON form)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _numeric(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def emit(rows, fmt: str, columns: list[str] | None = None) -> None:
    """Print ``rows`` (a list of dicts, or a dict for JSON objects) as a table or JSON."""
    if fmt == "json":
        from ..util.jsonout import dumps  # local: json + jsonout cost ~2 ms that agentsim --help does not need
        click.echo(dumps(rows))          # strict JSON: NaN and inf are null, never bare NaN
    elif isinstance(rows, dict):
        click.echo(render_table([{"key": k, "value": v} for k, v in rows.items()]))
    else:
        click.echo(render_table(rows, columns))
