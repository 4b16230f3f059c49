"""Bit-identity with a recorded baseline: the default scenario and the engine preset, short runs.

Refactoring must not move a single number. Each case's result tables (requests, sessions,
pools, time series) and summary are hashed and compared to ``fixtures/baseline_hashes.json``,
recorded from the code before issue 15's restructuring (commit bd4fd07). A change that is *meant* to move the
numbers (a model fix) regenerates the fixture, and says so in its commit:

    .venv/bin/python tests/test_baseline.py --regenerate
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "baseline_hashes.json"
#: name -> (preset, seed, overrides): short enough for the fast suite, long enough for sessions,
#: retries, prefix-cache hits and every pool of the default fleet to show
CASES = {
    "default_900s": ("default", 1, ["duration_s=900", "warmup_s=300"]),
    "engine_mixed_300s": ("engine_mixed", 3, ["duration_s=300"]),
}


COST_KEYS = ("sim_wall_s", "events", "events_per_request")


def fingerprint(preset: str, seed: int, overrides: list[str]) -> dict[str, str]:
    """sha256 of each result table (as CSV: every float at round-trip precision) and of the summary."""
    from agentsim.run.api import simulate
    res = simulate(preset, seed=seed, overrides=overrides)
    out = {}
    for name in ("requests", "sessions", "pools", "timeseries"):
        df = getattr(res, name)
        out[name] = hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()
    # the machine's time and the engine's event count measure the simulator's cost, not the simulated system
    summary = {k: v for k, v in res.summary().items() if k not in COST_KEYS}
    out["summary"] = hashlib.sha256(json.dumps(summary, sort_keys=True, default=str).encode()).hexdigest()
    out["rows"] = str(len(res.requests))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tables_as_the_recorded_baseline(case):
    expected = json.loads(FIXTURE.read_text())[case]
    got = fingerprint(*CASES[case])
    assert int(got["rows"]) > 100, "too few requests to be a meaningful baseline"
    changed = [k for k in expected if got[k] != expected[k]]
    assert not changed, (f"{case}: {', '.join(changed)} differ from the recorded baseline; if the change is meant, "
                         f"regenerate with: python tests/test_baseline.py --regenerate")


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({c: fingerprint(*CASES[c]) for c in sorted(CASES)}, indent=2) + "\n")
    print(f"wrote {FIXTURE}")
