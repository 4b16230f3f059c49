"""Shared pieces of the CLI: the root group, common options and output formatting."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

from .lazy import LazyGroup

if TYPE_CHECKING:
    from ..catalog import Catalog


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


def get_catalog(catalog_files: tuple[str, ...]) -> Catalog:
    from ..catalog import env_catalog_files, load_catalog  # local: pydantic and the catalog cost `--help` ~0.1 s
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
        from ..jsonout import dumps
        click.echo(dumps(rows))          # strict JSON: NaN and inf are null, never bare NaN
    elif isinstance(rows, dict):
        click.echo(render_table([{"key": k, "value": v} for k, v in rows.items()]))
    else:
        click.echo(render_table(rows, columns))
