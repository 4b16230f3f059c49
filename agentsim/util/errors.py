"""One exception type for bad input, so the CLI can print one clear line and exit 2.

Every message names the thing that was wrong (file, row, field), the value given and what is
allowed. Library code raises it; only ``cli.py`` turns it into an exit code.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """Bad user input: a scenario field, a CLI flag, a catalog or trace file."""


def unknown_name(kind: str, value: str, known: Iterable[str], where: str = "") -> InputError:
    """An ``InputError`` for an unknown name, suggesting the nearest known one."""
    known = sorted(known)
    near = difflib.get_close_matches(str(value), known, n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    loc = f"{where}: " if where else ""
    return InputError(f"{loc}unknown {kind} {value!r}.{hint} Known: {', '.join(known)}")


def not_utf8(e: UnicodeDecodeError) -> str:
    """What to say about a file that is not UTF-8 text (binary, Latin-1, UTF-16, ...)."""
    return (f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 (binary files cannot be read)")
