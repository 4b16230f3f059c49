"""The ``agentsim`` command line: one module per command, imported when its command runs (see ``lazy``).

Bad input anywhere below raises :class:`agentsim.util.errors.InputError`; :func:`main` prints it as
one line and exits 2, so users never see a traceback for a mistake of theirs.
"""
from __future__ import annotations

import sys
import warnings

import click

from ..util.errors import InputError
from .common import cli


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for the user (an old scenario schema, ...) as one ``warning:`` line, not a source trace."""
    if issubclass(category, UserWarning) and not issubclass(category, DeprecationWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="agentsim", standalone_mode=False)
    except InputError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        hint = f" (see: agentsim {e.ctx.command_path.partition(' ')[2]} --help)".replace("  ", " ") if e.ctx else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
