"""Sweeps: every grid point × replication of a scenario on a ``concurrent.futures`` executor.

``sweep(scenario, grid=["pools.h100.replicas=2,4,8", "router.policy=round_robin,speed_aware"])``
runs the cartesian product of the grid, each point with ``replications`` seeds (``seed``,
``seed+1``, …), and returns one table: a row per point × replication with the grid values, the
replication, the seed, ``key`` (a hash of the validated scenario and the seed) and the summary's
scalar figures (nested keys flattened with dots: ``outcomes.completed``,
``pools.h100.busy_share``). ``sim_wall_s`` is left out: it is the only figure that depends on
the machine, and the table is identical whatever the executor.

Executors: a local process pool (``workers`` processes; 0 runs in this process), a Dask
distributed cluster when ``address`` names its scheduler, or any ``concurrent.futures.Executor``
passed in. The pool starts its workers with ``forkserver`` (``spawn`` where that is missing), so
a script that calls :func:`sweep` needs the usual ``if __name__ == "__main__":`` guard. A task
is a pure function of (scenario, seed): the catalog files named by
``AGENTSIM_CATALOG`` here are added to the scenario before it is sent, so a worker's
environment does not matter; Dask workers need agentsim installed and the scenario's catalog
and replay files at the same paths.

With ``out_dir`` every finished task is kept as ``out_dir/tasks/<key>.json`` (plus ``.npz``
latency arrays for slices), written atomically as it finishes; a rerun skips the keys already
there, so an interrupted sweep resumes where it stopped. The combined table is rebuilt from the
task files at the end and written atomically to ``out_dir/sweep.parquet``. The key covers the
validated scenario (after the grid values are applied), the seed and the contents of the
catalog and replay files — not the agentsim version: clear ``tasks/`` after changing the model.

With ``slices = N`` each point × replication runs as N slices (or ``slice_sample`` of them),
each slice a task of its own, merged by :func:`agentsim.studies.slicing.merge` (see there).
"""
from __future__ import annotations

import concurrent.futures as cf
from collections import deque
import hashlib
import itertools
import json
import math
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..model.catalog import env_catalog_files, load_catalog
from ..run import scenario as scn
from ..run.api import _mean_with_ci, load_scenario
from ..run.build import build
from ..util.atomic import write_atomic
from ..util.jsonout import flatten
from ..util.errors import InputError
from ..util.stats import mean_interval, summary_range
from .executor import Executor, default_workers
from .grid import check_path, parse_grid, value
from .slicing import merge, rounding_notes, slice_indices, slice_record, slice_seed

TABLE = "sweep.parquet"
TASKS = "tasks"
#: figures left out of tables: they measure the machine, not the system
MACHINE_FIGURES = ("sim_wall_s",)


# -- tasks, keys and the store ---------------------------------------------------------------------
def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def task_key(data: dict, seed: int) -> str:
    """Hash of a validated scenario's JSON dump, the seed and its catalog / replay files' contents."""
    files = list(data.get("catalog", [])) + [s["file"] for s in data.get("streams", {}).values() if s.get("file")]
    blob = json.dumps({"scenario": data, "seed": seed, "files": {f: _file_digest(f) for f in files}},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def run_task(data: dict, seed: int, detail: bool) -> tuple[dict, dict]:
    """One simulation on a worker: ``(payload, arrays)``.

    ``payload["summary"]`` is the summary; with ``detail`` (slices) also ``payload["slice"]``,
    the record :func:`agentsim.studies.slicing.merge` needs, and its latency arrays.
    """
    sc = scn.Scenario.model_validate(data)
    catalog = load_catalog(tuple(sc.catalog))
    res = build(sc, seed, catalog=catalog).run()
    payload: dict = {"summary": res.summary(), "seed": seed}
    arrays: dict = {}
    if detail:
        payload["slice"], arrays = slice_record(res)
    return _jsonable(payload), arrays


def _jsonable(o):
    """Plain JSON types (NaN kept: the standard json module round-trips it exactly)."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return o


class TaskStore:
    """Finished tasks in ``root/tasks``: ``<key>.json`` (the commit mark) and ``<key>.npz``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.dir = self.root / TASKS
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"output directory {self.root}: not writable ({e.strerror})") from None

    def has(self, key: str) -> bool:
        return (self.dir / f"{key}.json").exists()

    def get(self, key: str) -> tuple[dict, dict]:
        payload = json.loads((self.dir / f"{key}.json").read_text())
        arrays: dict = {}
        if payload.get("arrays"):
            with np.load(self.dir / f"{key}.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        return payload, arrays

    def put(self, key: str, payload: dict, arrays: dict) -> None:
        payload = dict(payload, arrays=bool(arrays))
        if arrays:
            write_atomic(self.dir / f"{key}.npz", lambda f: np.savez(f, **arrays))
        write_atomic(self.dir / f"{key}.json", json.dumps(payload))

    def keys(self) -> set[str]:
        return {p.stem for p in self.dir.glob("*.json")}


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda f: df.to_parquet(f, index=False))


# -- running tasks on the executor -----------------------------------------------------------------
class Pool:
    """Runs tasks on an executor, opened on first use, keeping results in an optional store."""

    def __init__(self, executor: cf.Executor | None = None, address: str | None = None, workers: int | None = None,
                 out_dir: str | Path | None = None, progress: bool = True, connect_timeout: float = 10.0) -> None:
        self.executor = Executor(executor, address, workers, connect_timeout)
        self.workers = workers
        self.store = TaskStore(out_dir) if out_dir is not None else None
        self.progress = progress
        self.ran = 0
        self.reused = 0
        self._memo: dict[str, tuple[dict, dict]] = {}

    def connect(self) -> None:
        """Open the executor now (a Dask address is checked here, before any work)."""
        self.executor.open()

    def close(self, interrupted: bool = False) -> None:
        self.executor.close(interrupted)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, et, ev, tb) -> None:
        self.close(interrupted=et is not None)

    def get(self, key: str) -> tuple[dict, dict]:
        if key in self._memo:
            return self._memo[key]
        return self.store.get(key)

    def run(self, tasks: list[tuple[str, dict, int, bool]], desc: str = "sweep") -> None:
        """Run ``(key, scenario, seed, detail)`` tasks whose key is not done yet; results via :meth:`get`."""
        todo: dict[str, tuple] = {}
        done = 0
        for t in tasks:
            if t[0] in todo:
                continue
            if t[0] in self._memo or (self.store is not None and self.store.has(t[0])):
                done += 1
                continue
            todo[t[0]] = t
        self.reused += done
        if not todo:
            return
        executor = self.executor.open()
        from tqdm import tqdm  # local: tqdm costs ~50 ms and is only for a progress bar on a terminal
        bar = tqdm(total=done + len(todo), initial=done, unit="run", desc=desc, file=sys.stderr, leave=False,
                   disable=None if self.progress else True, dynamic_ncols=True)
        futures: dict = {}
        pending = deque(todo.values())
        window = 1 if self.executor.inline else (
            len(pending) if self.executor.remote else 4 * (self.workers or default_workers()))
        try:
            while pending or futures:
                while pending and len(futures) < window:
                    key, data, seed, detail = pending.popleft()
                    futures[executor.submit(run_task, data, seed, detail)] = key
                finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
                for fut in sorted(finished, key=lambda f: futures[f]):
                    key = futures.pop(fut)
                    payload, arrays = fut.result()
                    arrays = {k: np.asarray(v) for k, v in arrays.items()}
                    if self.store is not None:
                        self.store.put(key, payload, arrays)
                    else:   # kept in memory only without a store (with one, results are read back from it)
                        self._memo[key] = (json.loads(json.dumps(dict(payload, arrays=bool(arrays)))), arrays)
                    self.ran += 1
                    bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()


# -- planning rows ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One point × replication: its tasks (one, or one per slice) and how to merge them."""

    labels: dict
    replication: int
    seed: int
    key: str
    tasks: list[tuple[str, dict, int, bool]]
    slices: int = 1

    def summary(self, pool: Pool) -> dict:
        if self.slices == 1:
            payload, _ = pool.get(self.tasks[0][0])
            return payload["summary"]
        recs = []
        for key, *_ in self.tasks:
            payload, arrays = pool.get(key)
            recs.append((payload["slice"], arrays))
        return merge(recs, self.slices)


def with_env_catalog(sc: scn.Scenario) -> scn.Scenario:
    """``AGENTSIM_CATALOG`` files of this process made part of the scenario (workers may lack it)."""
    extra = [f for f in env_catalog_files() if f not in sc.catalog]
    return sc.model_copy(update={"catalog": [str(Path(f).resolve()) for f in extra] + list(sc.catalog)}) \
        if extra else sc


def plan_rows(sc: scn.Scenario, labels: dict, seeds: list[int], slices: int = 1,
              slice_sample: int | None = None) -> list[Row]:
    """The rows of one point: a task per replication, or per slice of each replication."""
    sc = with_env_catalog(sc)
    rows = []
    if slices > 1 and sc.slice.count > 1:
        raise InputError(f"--slices {slices}: the scenario already runs slice {sc.slice.index} of {sc.slice.count} "
                         f"(leave slice out of the scenario to run all slices)")
    for r, seed in enumerate(seeds):
        if slices == 1:
            data = sc.model_dump(mode="json")
            key = task_key(data, seed)
            rows.append(Row(labels, r, seed, key, [(key, data, seed, False)]))
            continue
        tasks = []
        for i in slice_indices(slices, slice_sample, seed):
            data = sc.model_copy(update={"slice": scn.Slice(count=slices, index=i)}).model_dump(mode="json")
            s = slice_seed(seed, slices, i)
            tasks.append((task_key(data, s), data, s, True))
        row_key = hashlib.sha256(json.dumps([t[0] for t in tasks]).encode()).hexdigest()[:24]
        rows.append(Row(labels, r, seed, row_key, tasks, slices))
    return rows


def load_point(scenario, overrides: list[str]) -> scn.Scenario:
    return load_scenario(scenario, overrides)


# -- the sweep -------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    table: pd.DataFrame
    summaries: list[dict]          # nested summary per row, in table order
    replications: int
    ran: int = 0
    reused: int = 0
    path: Path | None = None
    grid: list[tuple[str, list]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, point: int = 0) -> dict:
        """The nested summary of one point, with 95 % CIs over its replications when R > 1."""
        rows = self.summaries[point * self.replications:(point + 1) * self.replications]
        if self.replications == 1:
            return rows[0]
        return _mean_with_ci(rows) | {"replications": self.replications}


def sweep(scenario, grid=(), *, replications: int = 1, seed: int | None = None, overrides: list[str] = (),
          slices: int = 1, slice_sample: int | None = None, executor: cf.Executor | None = None,
          address: str | None = None, workers: int | None = None, out_dir: str | Path | None = None,
          progress: bool = True, connect_timeout: float = 10.0) -> SweepResult:
    """Run every grid point × replication; see the module docstring."""
    if replications < 1:
        raise InputError(f"--replications must be >= 1, got {replications}")
    if slices < 1:
        raise InputError(f"--slices must be >= 1, got {slices}")
    grid = parse_grid(grid)
    base = load_point(scenario, list(overrides))
    dump = base.model_dump(mode="json")
    for path, _ in grid:
        check_path(dump, path, "--grid")
    seed = base.seed if seed is None else seed
    seeds = [seed + i for i in range(replications)]
    rows: list[Row] = []
    notes: list[str] = []
    combos = list(itertools.product(*[vals for _, vals in grid])) if grid else [()]
    for combo in combos:
        sets = [f"{p}={v}" for (p, _), v in zip(grid, combo)]
        sc = load_point(scenario, list(overrides) + sets)
        labels = {p: _label(value(v)) for (p, _), v in zip(grid, combo)}
        rows.extend(plan_rows(sc, labels, seeds, slices, slice_sample))
        if slices > 1:
            notes += [n for n in rounding_notes(sc, slices) if n not in notes]
    out = Path(out_dir) if out_dir is not None else None
    with Pool(executor, address, workers, out, progress, connect_timeout) as pool:
        if address:
            pool.connect()
        pool.run([t for row in rows for t in row.tasks], desc=base.name)
        summaries = [row.summary(pool) for row in rows]
    table = make_table(rows, summaries, slices)
    if out is not None:
        write_parquet_atomic(table, out / TABLE)
    return SweepResult(table, summaries, replications, pool.ran, pool.reused, out / TABLE if out else None,
                       [(p, [value(v) for v in vals]) for p, vals in grid], notes)


def _label(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def make_table(rows: list[Row], summaries: list[dict], slices: int = 1) -> pd.DataFrame:
    """One row per point × replication: grid values, replication, seed, key, scalar figures."""
    records = []
    for row, s in zip(rows, summaries):
        figures = {k: v for k, v in flatten(s).items() if k not in MACHINE_FIGURES}
        records.append({**row.labels, "replication": row.replication, "seed": row.seed, "key": row.key, **figures})
    df = pd.DataFrame.from_records(records)
    for c in df.columns:   # a count missing from some rows (an outcome that did not occur) is 0, not NaN
        if c.startswith(("outcomes.", "session_outcomes.")):
            df[c] = df[c].fillna(0)
            if slices == 1:
                df[c] = df[c].astype("int64")
    return df


def point_means(result: SweepResult, metrics: list[str]) -> list[dict]:
    """Per grid point: the grid values and each metric's mean (and 95 % CI half-width when R > 1)."""
    t = result.table
    paths = [p for p, _ in result.grid]
    out = []
    for i in range(0, len(t), result.replications):
        part = t.iloc[i:i + result.replications]
        row = {p: part.iloc[0][p] for p in paths}
        for m in metrics:
            if m not in part:
                continue
            mean, lo, hi = mean_interval(part[m].tolist(), valid=summary_range(m))
            row[m] = mean
            if result.replications > 1:
                row[f"{m}_ci"] = (hi - lo) / 2 if not math.isnan(hi) else math.nan
        out.append(row)
    return out


# -- running ----------------------------------------------------------------------------------------
def run_sliced(scenario, count: int, *, seed: int | None = None, replications: int = 1, sample: int | None = None,
               overrides: Iterable[str] = (), executor=None, address: str | None = None, workers: int | None = None,
               out_dir=None, progress: bool = False) -> dict:
    """Run ``count`` slices (or ``sample`` of them) of ``scenario`` and merge them into one summary.

    Runs on ``executor`` (any ``concurrent.futures.Executor``), else on a Dask cluster at
    ``address``, else on a local process pool of ``workers`` (0: in this process). With
    ``replications`` > 1 every numeric key gets ``_ci_low`` / ``_ci_high`` (95 % Student-t over
    replications, as ``simulate``). ``out_dir`` keeps each slice's result for resuming.
    """
    res = sweep(scenario, grid=[], replications=replications, seed=seed, overrides=list(overrides),
                slices=count, slice_sample=sample, executor=executor, address=address, workers=workers,
                out_dir=out_dir, progress=progress)
    for note in res.notes:
        warnings.warn(note, stacklevel=2)
    return res.summary()
