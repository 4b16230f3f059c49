"""Compatibility: scenario files carry a schema version; an older one is read with what to change."""
from __future__ import annotations

import warnings

import pytest

from agentsim.run.scenario import SCHEMA_VERSION, ScenarioVersionWarning, parse

from cli_helper import cli

BASE = {"pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-8B"}},
        "streams": {"s": {"kind": "poisson", "rate": 1.0}}}


def test_a_file_without_a_version_is_this_release_and_says_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse(BASE).schema_version == SCHEMA_VERSION


def test_an_older_version_is_read_with_what_to_change():
    with pytest.warns(ScenarioVersionWarning, match="schema_version 1: nothing to change.*set schema_version = 2"):
        sc = parse({**BASE, "schema_version": 1})
    assert sc.pools["a"].gpu == "H100-SXM"


def test_the_cli_says_it_in_one_warning_line(tmp_path):
    f = tmp_path / "old.toml"
    f.write_text('schema_version = 1\n[pools.a]\ngpu = "H100-SXM"\nmodel = "Llama-3-8B"\n'
                 '[streams.s]\nkind = "poisson"\nrate = 1.0\n')
    code, _, err = cli("run", str(f), "--set", "duration_s=5", "--no-progress", "--format", "json")
    assert code == 0
    lines = [l for l in err.splitlines() if "schema_version" in l]
    assert lines == [lines[0]] and lines[0].startswith("warning: scenario schema_version 1")


def test_a_newer_version_is_refused_naming_the_field(tmp_path):
    f = tmp_path / "new.toml"
    f.write_text(f'schema_version = {SCHEMA_VERSION + 1}\n[pools.a]\ngpu = "H100-SXM"\nmodel = "Llama-3-8B"\n')
    code, _, err = cli("run", str(f), "--no-progress")
    assert code == 2 and "schema_version" in err and str(SCHEMA_VERSION) in err and len(err.strip().splitlines()) == 1
