"""Shared test setup: helper modules in tests/ (e.g. ``engine_harness``, ``cli_helper``) importable
from the test files, and the fixtures more than one test file uses."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture(scope="session")
def cat():
    """The shipped catalog (GPUs and models), loaded once."""
    from agentsim.model.catalog import load_catalog  # local: conftest is imported before test collection
    return load_catalog()
