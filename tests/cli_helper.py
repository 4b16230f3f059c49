"""``agentsim ARGS`` run in-process for the tests: one helper instead of a copy per test file."""
from __future__ import annotations

import contextlib
import io

from agentsim.cli import main as cli_main


def cli(*args: str) -> tuple[int, str, str]:
    """``agentsim ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli_main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()
