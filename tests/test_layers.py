"""The package's layers, checked as CI checks them: import-linter's contract in pyproject.toml.

util -> model -> serving -> provider -> workload -> results -> run -> studies -> cli, each layer
importing only from those below it. A test that plants an upward import in a copy of the package
shows the check fails on a violation; a second walks the import graph for cycles between modules.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
LINT = ("import sys; from importlinter.cli import lint_imports_command; "
        "sys.argv = ['lint-imports', '--no-logo', '--no-cache']; sys.exit(lint_imports_command())")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"})


def test_the_layers_contract_holds():
    done = _lint(ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "agentsim", tmp_path / "agentsim", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    stats = tmp_path / "agentsim" / "util" / "stats.py"
    stats.write_text(stats.read_text() + "\nfrom ..model import catalog  # planted: util must not import model\n")
    done = _lint(tmp_path, tmp_path)
    assert done.returncode == 1
    assert "agentsim.util is not allowed to import agentsim.model" in done.stdout
    assert "agentsim.util.stats -> agentsim.model.catalog" in done.stdout


def test_no_import_cycles_between_modules():
    import grimp
    graph = grimp.build_graph("agentsim")
    mods = {m for m in graph.modules if m != "agentsim"}
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in mods} for m in mods}
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    for m in mods:
        edges[m] = {d for d in edges[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycle.extend(path[path.index(d):] + [m, d] if d in path else [m, d])
                return True
            if d not in state and visit(d, path + [m]):
                return True
        state[m] = 2
        return False

    assert not any(visit(m, []) for m in sorted(mods) if m not in state), " -> ".join(cycle)


def test_old_flat_paths_still_import_with_a_warning():
    import importlib
    import agentsim
    from agentsim.model import catalog
    sys.modules.pop("agentsim.catalog", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("agentsim.catalog")
    assert old is catalog and catalog.__spec__.name == "agentsim.model.catalog"
    assert any(issubclass(w.category, DeprecationWarning) and "agentsim.model.catalog" in str(w.message) for w in caught)
    assert set(agentsim.MOVED) >= {"catalog", "engine", "scenario", "sweep", "policies", "experiments"}


def test_simpy_private_attributes_only_in_their_one_home():
    """Only agentsim/util/events.py touches SimPy below its public API (the engine's speed needs it)."""
    import re
    pattern = re.compile(r"\._now\b|\._value\b|\._ok\b|\b_eid\b|\._queue\b")
    pkg = ROOT / "agentsim"
    hits = [str(p.relative_to(ROOT)) for p in pkg.rglob("*.py")
            if p.name != "events.py" and any(pattern.search(line) and "scn._value" not in line
                                             for line in p.read_text().splitlines())]
    assert hits == []
