"""Fast start: a command imports only what it uses.

``agentsim --help`` lists the commands from the table in ``agentsim.cli.lazy`` without importing
them; ``agentsim estimate`` needs numpy and pandas but none of scipy, matplotlib or dask; ``import
agentsim`` loads no third-party package. Each check runs in a fresh interpreter (this test
process has imported everything already). The table tests keep the table and the command modules
from drifting apart.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

import agentsim
from agentsim.cli import lazy
from agentsim.cli.common import cli

HEAVY = ("scipy", "matplotlib", "dask", "distributed")

# Runs agentsim's CLI on argv, then prints a JSON line: exit code, output, and which packages were imported.
DRIVER = """
import contextlib, io, json, sys
from agentsim.cli import main
out, code = io.StringIO(), 0
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "out": out.getvalue(),
                  "modules": sorted({m.split(".")[0] for m in sys.modules} & set(%r)),
                  "commands": sorted(m for m in sys.modules if m.startswith("agentsim.cli.") and m.endswith("_cmd"))}))
""" % (HEAVY,)


def drive(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def listed(help_text: str) -> list[str]:
    """The command names of a ``--help`` text's Commands section."""
    section = help_text.partition("\nCommands:\n")[2]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "]


def test_help_lists_every_command_and_imports_none():
    r = drive("--help")
    assert r["code"] in (0, None)
    assert r["modules"] == [], f"--help imported {r['modules']}"
    assert r["commands"] == [], f"--help imported command modules {r['commands']}"
    assert listed(r["out"]) == sorted(lazy.COMMANDS)


def test_small_estimate_imports_no_scipy_matplotlib_dask():
    r = drive("estimate", "--model", "llama-3.1-8b", "--gpu", "h100", "--tp", "1", "--input-tokens", "128",
              "--output-tokens", "16", "--concurrency", "1", "--requests", "20", "--format", "json")
    assert r["code"] in (0, None)
    assert json.loads(r["out"])["requests"] == 20
    assert r["modules"] == [], f"estimate imported {r['modules']}"
    assert r["commands"] == ["agentsim.cli.estimate_cmd"]


def test_import_agentsim_is_cheap_and_offers_the_entry_points():
    code = ("import sys, agentsim; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'numpy', 'pandas', 'pydantic', 'simpy', 'click', 'scipy', 'matplotlib', 'dask'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
    for name in agentsim.__all__:
        assert getattr(agentsim, name) is not None
    from agentsim.run.api import simulate
    from agentsim.model.catalog import Catalog
    from agentsim.results.result import Result
    from agentsim.run.scenario import Scenario
    from agentsim.model.servicetime import step_times
    assert (agentsim.simulate, agentsim.Scenario, agentsim.Result) == (simulate, Scenario, Result)
    assert (agentsim.Catalog, agentsim.step_times) == (Catalog, step_times)
    assert set(agentsim.__all__) <= set(dir(agentsim))
    with pytest.raises(AttributeError):
        agentsim.no_such_name  # noqa: B018


def test_agentsim_estimate_is_one_callable_object():
    """``agentsim.studies.estimate`` is both the function's export and the submodule's name: callable either way."""
    code = ("import agentsim.studies.estimate as m, agentsim; from agentsim import estimate as f; "
            "print(m is f is agentsim.studies.estimate, sorted(f(model='llama-3.1-8b', gpu='h100', input_tokens=64, "
            "output_tokens=8, concurrency=1, requests=5))[:2], callable(agentsim.studies.estimate.estimate_scenario))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "True ['e2e_p50_s', 'e2e_p90_s'] True"


def test_command_table_matches_the_command_modules():
    """Every module in the table defines its command, and every command module's commands are in the table."""
    for name, (module, _) in lazy.COMMANDS.items():
        lazy.load(name)
        assert name in cli.commands, f"agentsim.cli.{module} does not define {name!r}"
        assert cli.commands[name].callback.__module__ == f"agentsim.cli.{module}"
    for path in Path(lazy.__file__).parent.glob("*_cmd.py"):
        __import__(f"agentsim.cli.{path.stem}")
    assert sorted(cli.commands) == sorted(lazy.COMMANDS), "a command module registers a command not in the table"


@pytest.mark.parametrize("limit", [20, 45, 62, 74, 200])
def test_table_help_is_what_each_command_lists(limit):
    for name, (_, text) in lazy.COMMANDS.items():
        lazy.load(name)
        real = cli.commands[name].get_short_help_str(limit)
        assert click.Command(name, help=text).get_short_help_str(limit) == real, name


def test_help_is_the_same_before_and_after_the_commands_load():
    code = ("import contextlib, io; from agentsim.cli import main, lazy\n"
            "def h():\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out): main(['--help'])\n"
            "    return out.getvalue()\n"
            "before = h()\n"
            "[lazy.load(n) for n in lazy.COMMANDS]\n"
            "print(before == h())")
    for columns in ("60", "80", "200"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                             env={**os.environ, "COLUMNS": columns}).stdout
        assert out.strip() == "True", columns
