"""Output directories that never lose or mix results.

Every command with ``--out DIR`` goes through :class:`OutDir`, which decides *before anything
runs* whether DIR may be written:

* DIR missing or empty: written in place (created only when the first result is written, so a
  run rejected up front leaves nothing behind).
* DIR holds a previous output of the same kind (a single run, replications, a sliced run, a
  sweep, a capacity search, a replay, an experiment): commands that resume (sliced runs, sweeps,
  capacity searches, experiments) write in place and reuse what is finished; the others write
  into a staging sibling that replaces DIR in one swap when they finish.
* anything else (not ours, or ours of another kind, e.g. ``run -r 2`` into a single run's
  directory): refused unless ``--overwrite``, which also stages and swaps, so DIR is the old
  content or the new, never a mixture.

An interrupted staged write keeps its finished part beside DIR as ``DIR.partial`` and leaves DIR
as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

#: kinds of output directory, by the command that writes them
KINDS = ("run", "replications", "sliced", "replay", "sweep", "capacity", "experiment")
#: commands that resume from a previous output of their kind (they keep finished tasks in it)
RESUMING = ("sliced", "sweep", "capacity", "experiment")


def kind_of(path: Path) -> set[str]:
    """The kinds of output ``path`` holds (empty: not an agentsim output)."""
    names = set(os.listdir(path))
    kinds: set[str] = set()
    if "manifest.json" in names and "requests.parquet" in names:
        kinds.add(_single_kind(path))
    if any(n.startswith("rep-") for n in names) and "manifest.json" not in names:
        kinds.add("replications")
    if "tasks" in names and (path / "tasks").is_dir():
        if "sweep.parquet" in names:
            kinds.add("sweep")
        elif "capacity.json" in names:
            kinds.add("capacity")
        else:       # an interrupted run of one of these (only finished tasks so far)
            kinds.update({"sliced", "sweep", "capacity"})
        if names <= {"tasks", "summary.json"}:
            kinds.add("sliced")
    if "results.json" in names and "summary.md" in names:
        kinds.add("experiment")
    return kinds


def _single_kind(path: Path) -> str:
    try:
        meta = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "run"
    return "replay" if isinstance(meta, dict) and "trace" in meta else "run"


def _check_writable(path: Path) -> None:
    """Fail now if ``path`` could not be created or written, creating nothing."""
    probe_in = path if path.is_dir() else None
    if probe_in is None:
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"output directory {path}: not writable ({parent} is a file, not a directory)")
                probe_in = parent
                break
    if probe_in is None:
        probe_in = Path.cwd()
    try:
        Path(tempfile.mkdtemp(prefix=".agentsim-probe-", dir=probe_in)).rmdir()
    except OSError as e:
        raise InputError(f"output directory {path}: not writable ({e.strerror})") from None


class OutDir:
    """Where a command writes: ``path`` itself or a staging sibling that replaces it at the end.

    Construct it after the inputs are validated and before simulating; write under
    :attr:`write_path`; call :meth:`commit` when done, or :meth:`abandon` on an interrupt.
    """

    def __init__(self, path: str | Path, kind: str, overwrite: bool = False, flag: str = "--out") -> None:
        self.path, self.kind = Path(path), kind
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{flag} {self.path}: is a file, not a directory")
        _check_writable(self.path)
        existing = self.path.is_dir() and any(self.path.iterdir())
        kinds = kind_of(self.path) if existing else set()
        if existing and kind not in kinds and not overwrite:
            what = f"holds a previous {'/'.join(sorted(kinds))} output" if kinds else "is not empty"
            raise InputError(f"{flag} {self.path}: {what}, not a {kind} output; give an empty or new directory, "
                             f"or add --overwrite to replace it")
        self.staging: Path | None = None
        self._abs = self.path.resolve()         # "." and "sub/.." have no usable name or parent
        if existing and (overwrite or kind not in RESUMING):
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self._abs.name}.agentsim-", dir=self._abs.parent))

    @property
    def write_path(self) -> Path:
        return self.staging or self.path

    @property
    def staged(self) -> bool:
        return self.staging is not None

    def commit(self) -> None:
        """Swap the staged output in: the old directory moves aside, the new one takes its name."""
        if self.staging is None:
            return
        old = Path(tempfile.mkdtemp(prefix=f".{self._abs.name}.old-", dir=self._abs.parent))
        os.replace(self._abs, old / "previous")
        try:
            os.replace(self.staging, self._abs)
        except BaseException:
            os.replace(old / "previous", self._abs)
            raise
        self.staging = None
        shutil.rmtree(old, ignore_errors=True)

    def abandon(self, keep: bool) -> Path | None:
        """After an interrupt: keep the staged part as ``DIR.partial`` (or drop it); DIR is untouched."""
        if self.staging is None:
            return self.path if keep else None
        staging, self.staging = self.staging, None
        if keep and any(staging.iterdir()):
            partial = self._abs.with_name(self._abs.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            os.replace(staging, partial)
            return partial
        shutil.rmtree(staging, ignore_errors=True)
        return None
