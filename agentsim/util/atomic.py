"""One atomic file write: a temporary sibling, then a rename.

Every file agentsim writes (summaries, tables, task records, figures) goes through
:func:`write_atomic`, so a reader — or a rerun after an interrupt — sees the old file or the
new one, never half of one. The temporary file is unique (``mkstemp``) so that concurrent
writers of the same path cannot collide, and it is given the permissions an ordinary
``open()`` would (``0o666`` less the umask) because ``mkstemp`` makes it private.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

from .errors import InputError

#: what :func:`write_atomic` writes: text (UTF-8), bytes, or a function writing to a binary file
Data = Union[str, bytes, Callable]


def write_atomic(path: str | Path, data: Data) -> Path:
    """Write ``data`` to ``path`` (its folder created if missing) in one rename; returns ``path``.

    An ``OSError`` (a full disk, a read-only folder) becomes an InputError naming the folder:
    it is the user's output location, not a bug.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"output directory {path.parent}: not writable ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise InputError(f"output directory {path.parent}: not writable ({e.strerror})") from None
        raise
    return path


def _umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
