"""The engine against queueing theory (agentsim.studies.validate), in two tiers.

* CI: every check once with its fixed seed — each theoretical value inside its 99 % interval
  widened by the stated discretisation bound, each interval's half-width at most 3 % of the
  value, every exact row exact; and ``agentsim validate`` itself (columns, JSON, exit codes).
* ``@pytest.mark.slow``: coverage — for 100 seeds per check, the 95 % intervals (shorter runs)
  must contain the theoretical value at least 90 times. This is what says the intervals are
  honest (batches long enough, warm-up deleted, the discretisation bound not an excuse).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import pytest

from agentsim.studies import validate as v
from cli_helper import cli


@pytest.fixture(scope="module")
def rows():
    return v.run()


@pytest.mark.parametrize("group", list(v.CHECKS))
def test_check_passes_with_its_fixed_seed(rows, group):
    mine = [r for r in rows if r["group"] == group]
    assert mine, group
    for r in mine:
        assert r["passed"], r
        if r["kind"] == "statistical":
            assert r["ci_low"] <= r["simulated"] <= r["ci_high"]
            assert (r["ci_high"] - r["ci_low"]) / 2 <= v.MAX_REL_HALF_WIDTH * abs(r["expected"]), r
            # the bound is a small correction, never the reason a row passes
            assert r["bound"] <= 0.5 * (r["ci_high"] - r["ci_low"]) / 2, r
        else:
            assert r["ci_low"] == r["ci_high"] == r["simulated"]


def test_covers_the_required_models(rows):
    names = " | ".join(r["check"] for r in rows)
    for needle in ("M/M/3 W", "Erlang C", "M/G/inf", "MVA", "X (1/s)", "R (s)", "R = N/X - Z",
                   "(1-p^m)/(1-p)", "token bucket", "Erlang B", "P-K", "PS", "Little"):
        assert needle in names, needle
    assert len({r["check"] for r in rows}) == len(rows), "check names must be unique"


def test_rows_have_the_documented_columns(rows):
    for r in rows:
        assert set(v.COLUMNS) <= set(r)
        assert isinstance(r["passed"], bool)


def test_interval_helpers():
    m, lo, hi = v.batch_means(list(range(60)) * 10, k=30, level=0.99)
    assert lo < m < hi and m == pytest.approx(29.5)
    assert v.number_seen_at_arrival([0.0, 1.0, 2.0, 2.5], [1.5, 3.0, 2.2, 4.0]).tolist() == [0, 1, 1, 1]
    occ = v.occupancy([0.0, 1.0], [2.0, 3.0], [0.0, 4.0], kmax=1)[0]
    assert occ.tolist() == [1.0, 2.0, 1.0]          # N = 0 on [3, 4), 1 on [0, 1) and [2, 3), 2 on [1, 2)


# -- the command ----------------------------------------------------------------------------------------
def run_cli(capsys, *args):
    """``agentsim validate ARGS`` in-process (tests/cli_helper.py): (exit code, stdout, stderr)."""
    capsys.readouterr()
    return cli("validate", *args)


def test_cli_json_and_table_use_the_same_columns(capsys):
    code, out, _ = run_cli(capsys, "--check", "token_bucket", "--format", "json", "--no-progress")
    assert code == 0
    data = json.loads(out)
    assert data and all(list(r) == list(v.COLUMNS) for r in data)
    assert all(r["passed"] is True for r in data)
    code, out, err = run_cli(capsys, "--check", "token_bucket")
    assert code == 0
    assert out.splitlines()[0].split() == list(v.COLUMNS)
    assert "token_bucket done" in err and "passed" in err


def test_cli_exits_1_when_a_check_fails(capsys, monkeypatch):
    failing = v.row("always fails", 1.0, (2.0, 1.9, 2.1))
    monkeypatch.setitem(v.CHECKS, "token_bucket", lambda **kw: [failing])
    code, out, err = run_cli(capsys, "--check", "token_bucket", "--format", "json", "--no-progress")
    assert code == 1
    assert json.loads(out)[0]["passed"] is False
    assert "1 of 1 rows failed: always fails" in err


def test_cli_rejects_an_unknown_check(capsys):
    code, _, err = run_cli(capsys, "--check", "nope")
    assert code == 2 and "nope" in err


# -- slow tier: coverage of the 95 % intervals ------------------------------------------------------------------
COVERAGE_SEEDS = range(1000, 1100)
COVERAGE_SCALE = 0.25
STATISTICAL = [name for name in v.CHECKS if name != "token_bucket"]


def _coverage_run(args):
    name, seed = args
    rows = v.CHECKS[name](seed=seed, level=0.95, scale=COVERAGE_SCALE)
    return [(r["check"], r["kind"], r["covered"], r["passed"]) for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("name", STATISTICAL)
def test_95_percent_intervals_cover_the_truth(name):
    """≥ 90 of 100 seeds: a 95 % interval misses 5 times in 100 on average; 90 is ~2.3 sd below."""
    workers = int(os.environ.get("AGENTSIM_TEST_WORKERS", "2"))
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_coverage_run, [(name, s) for s in COVERAGE_SEEDS]))
    covered = defaultdict(int)
    for out in results:
        for check, kind, cov, ok in out:
            if kind == "statistical":
                covered[check] += cov
            else:
                assert ok, (check, out)            # exact rows hold on every seed
    assert covered
    report = {k: f"{n}/{len(COVERAGE_SEEDS)}" for k, n in covered.items()}
    print(f"coverage {name}: {report}")
    assert all(n >= 90 for n in covered.values()), report
