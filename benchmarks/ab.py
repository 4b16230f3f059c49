"""Before/after timing for the benchmarks: the same benchmark on two checkouts, interleaved.

Issue 20's targets are ratios to the code as it stood when the issue started (git tag
``issue20-start``). A ratio measured in one run, with the two arms interleaved (A, B, A, B, …),
is robust to a machine that gets busier or quieter during the run; two figures from two runs are
not. Each arm runs the benchmark script in its own subprocess with ``PYTHONPATH`` pointing at its
checkout, so both arms time exactly the same script on the same input; the script reports its
figures as JSON (``--json``) and this module takes medians and ratios.

    from ab import baseline_checkout, interleave
    arms = {"before": baseline_checkout(), "after": REPO}
    runs = interleave(arms, [sys.executable, __file__, "--runs", "1"], runs=5)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASELINE_REF = "issue20-start"
#: the commit the tag names: a clone without the tag (tags are not always fetched) still finds it
BASELINE_SHA = "04218a544d12c1244c8394e37630536f551a460a"
#: ``--after speed-only``: this checkout's code with the workload data and summary of the tag
SPEED_ONLY = "speed-only"
SPEED_ONLY_PATCH = Path(__file__).resolve().parent / "speed_only.patch"


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def baseline_checkout(ref: str = BASELINE_REF) -> Path:
    """A detached checkout of ``ref`` beside the system's temp files (made once, then reused);
    ``speed-only`` is :func:`speed_only_checkout`."""
    if ref == SPEED_ONLY:
        return speed_only_checkout()
    try:
        sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        if ref != BASELINE_REF:
            raise SystemExit(f"--after: {ref!r} is not a commit of this repository") from None
        sha = BASELINE_SHA
    path = Path(tempfile.gettempdir()) / f"agentsim-{sha[:12]}"
    if not (path / "agentsim").is_dir():
        _git("worktree", "add", "--detach", str(path), sha)
    return path


def speed_only_checkout() -> Path:
    """The speed work alone: a detached checkout of this checkout's HEAD with ``speed_only.patch``
    applied, which puts back what the tag simulated and summarised (the coding-agent profile and the
    default scenario before issue 19's calibration and warm-up, a session ended after a give-up
    counted completed, energy, cost and busy shares over the whole run). The two arms then simulate
    the same thing, and their results can be compared field by field."""
    sha = _git("rev-parse", "HEAD")
    path = Path(tempfile.gettempdir()) / f"agentsim-speed-only-{sha[:12]}"
    if not (path / "agentsim").is_dir():
        _git("worktree", "add", "--detach", str(path), sha)
        try:
            _git("apply", str(SPEED_ONLY_PATCH), cwd=path)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"{SPEED_ONLY_PATCH.name} no longer applies to HEAD ({exc.stderr.strip()}): "
                             "refresh it from the files it names") from None
    return path


def run_arm(checkout: Path, argv: list[str]) -> dict:
    """Run ``argv`` (a benchmark command taking ``--json PATH``) against ``checkout``'s agentsim."""
    env = {**os.environ, "PYTHONPATH": str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([*argv, "--json", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def interleave(arms: dict[str, Path], argv: list[str], runs: int,
               rows: list[list[str]] | None = None) -> dict[str, list[dict]]:
    """``runs`` rounds, each running every arm once in turn; each arm's list of JSON results. With
    ``rows`` (extra arguments, one list per row), every row of a round runs in its own process on
    both arms, the arm that goes first alternating from row to row, and a round's result merges its
    rows' JSON: a row run after others in one process would inherit their heap."""
    got: dict[str, list[dict]] = {name: [] for name in arms}
    flip = False
    for r in range(runs):
        merged: dict[str, dict] = {name: {} for name in arms}
        for extra in rows if rows is not None else [[]]:
            for name in (list(reversed(arms)) if flip else list(arms)):   # neither arm always goes first
                merged[name].update(run_arm(arms[name], argv + extra))
            flip = not flip
        for name in arms:
            got[name].append(merged[name])
        print(f"  round {r + 1}/{runs} done", file=sys.stderr, flush=True)
    return got


def median(results: list[dict], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)
