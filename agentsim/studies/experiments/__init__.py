"""Experiments: each answers one question a capacity planner or an agent builder asks.

Every experiment is a module ``agentsim.studies.experiments.<name>`` with

* ``QUESTION`` — the question, one sentence;
* ``run(out_dir, scale=1.0, seed=1, replications=None, workers=None, *, address=None) -> dict`` —
  simulate (its arms × seeds through :func:`run_arms`, on a process pool or the Dask cluster at
  ``address``), write ``summary.md`` (the answer with 95 % confidence intervals, method,
  settings), ``results.json`` (the same numbers, machine-readable) and figures (``<figure>.png``
  with the plotted data beside it as ``<figure>.csv``, one function per figure) into
  ``out_dir``; return the results dict;
* ``main(argv)`` — the command line (``python experiments/<name>.py`` and
  ``agentsim experiment <name>`` both end here);
* optionally ``OPTIONS`` — its own command-line options, ``(flag, settings)`` pairs that both
  command lines add — and ``run_keywords(values)``, which turns their values into ``run``'s keywords.

The command lines show progress on stderr (runs finished of each batch, as they finish).

``scale`` sizes the run: 1 is the default (minutes on two cores), below 1 shrinks it (the tests
run at 0.1–0.25), above 1 grows it (more users and GPUs per slice, longer windows or more
replications — each experiment says which); ``--full`` is each experiment's ``FULL_SCALE``.
Replications use seeds ``seed, seed + 1, …``; variants of one experiment share those seeds
(common random numbers), so their differences are paired and their intervals narrow.

This module holds what every experiment shares: the registry, a map over simulation tasks on
the shared executor (:mod:`agentsim.studies.executor`: a process pool or Dask, same results on either),
confidence intervals (independent and paired), the summary, the results and the figures
(written atomically), and the command-line parser.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import io
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...run.api import load_scenario
from ...run.build import build
from ...util.atomic import write_atomic
from ...util.errors import InputError, unknown_name
from ..executor import run_all
from ...util.jsonout import dumps
from ...util.stats import ANY, NONNEGATIVE, mean_interval, proportion_interval

#: experiment name -> module (imported on first use)
EXPERIMENTS: dict[str, str] = {name: f"{__name__}.{name}" for name in (
    "datacenter_lease", "limits_doubling", "retry_storm", "mixed_fleet_routing", "site_outage", "energy")}


def names() -> list[str]:
    return list(EXPERIMENTS)


def load(name: str):
    """The module of experiment ``name`` (an InputError naming the known ones otherwise)."""
    if name not in EXPERIMENTS:
        raise unknown_name("experiment", name, EXPERIMENTS)
    return importlib.import_module(EXPERIMENTS[name])


# -- running simulations ------------------------------------------------------------------------------
def seeds(seed: int, replications: int) -> list[int]:
    """Replication i uses seed + i (as ``agentsim run --replications``)."""
    return [seed + i for i in range(replications)]


def run_tasks(fn, tasks: list[tuple], workers: int | None = None, label: str = "", address: str | None = None) -> list:
    """``[fn(*t) for t in tasks]`` on the shared executor (:mod:`agentsim.studies.executor`): a local process
    pool of ``workers`` (0 or 1: in this process), or the Dask cluster at ``address``.

    ``fn`` must be a module-level function (workers import it by name). Results come back in task
    order and do not depend on the executor: each task is a pure function of its arguments
    (scenario and seed).
    """
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:   # progress on stderr: one line, rewritten
        end = "\n" if done == total else ""
        print(f"\r  {label}: {done}/{total} runs, {time.perf_counter() - t0:.0f} s", end=end, file=sys.stderr,
              flush=True)
    timed = run_all(_timed, [(fn, *t) for t in tasks], workers=workers, address=address,
                    progress=progress if label and PROGRESS[0] else None)
    cpu = sum(c for _, c in timed)
    CPU_SECONDS[0] += cpu
    if label:
        print(f"  {label}: {len(tasks)} runs in {time.perf_counter() - t0:.0f} s wall, {cpu:.0f} s CPU",
              file=sys.stderr)
    return [r for r, _ in timed]


def run_arms(measure, arms: dict, seeds_: list[int], workers: int | None = None, address: str | None = None,
             label: str = "") -> dict:
    """An experiment's simulations as data: every arm (key -> scenario dict) × seed through
    ``measure(scenario, seed)``; ``{key: [measure's result per seed]}``.

    Every arm runs with the same seeds (common random numbers), so differences between arms are
    paired; tasks are submitted arm by arm, seed by seed, and come back in that order.
    """
    keys = list(arms)
    results = run_tasks(measure, [(arms[k], s) for k in keys for s in seeds_], workers, label=label, address=address)
    n = len(seeds_)
    return {k: results[i * n:(i + 1) * n] for i, k in enumerate(keys)}


def replicate_until(run_seeds, estimate, seed: int, *, start: int = 3, step: int = 2, cap: int = 9,
                    rel_halfwidth: float = 0.10):
    """Replications in rounds until the answer is precise enough: ``start`` seeds, then ``step`` more
    at a time, until ``estimate(results)`` (a :class:`Stat`) has a 95 % half-width of at most
    ``rel_halfwidth`` × its mean, or ``cap`` seeds have run. ``run_seeds(seeds)`` returns one result
    per seed, in seed order.

    Deterministic whatever order the executor finishes runs in: each round's seeds are fixed
    (``seed, seed + 1, …``) and the stopping rule reads only the results of the seeds so far, in
    seed order. Returns ``(results, seeds, stat)``.
    """
    results, ss = [], []
    n = start
    while True:
        batch = seeds(seed + len(ss), n)
        results += run_seeds(batch)
        ss += batch
        est = estimate(results)
        half = (est.high - est.low) / 2 if math.isfinite(est.low) and math.isfinite(est.high) else math.inf
        if half <= rel_halfwidth * abs(est.mean) or len(ss) >= cap:
            return results, ss, est
        n = min(step, cap - len(ss))


def tidy(by: dict, seeds_: list[int], describe):
    """An experiment's runs as one tidy frame: a row per arm × seed, the arm's description
    (``describe(key) -> dict``), the seed, and every scalar its ``measure`` returned (nested dicts
    flattened with dots; series and lists left out). Written beside the summary as ``runs.csv``."""
    import pandas as pd  # local: pandas (~0.3 s) only when a report is assembled, not in pool workers
    rows = []
    for key, runs in by.items():
        for seed, r in zip(seeds_, runs):
            rows.append({**describe(key), "seed": seed, **_scalars(r)})
    return pd.DataFrame(rows)


def _scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}."))
        elif isinstance(v, (bool, int, float, np.integer, np.floating)):
            out[f"{prefix}{k}"] = v
    return out


#: show progress lines on stderr (the command line turns it on; tests leave it off)
PROGRESS = [False]
#: CPU seconds spent in simulation tasks by this process's run_tasks calls (for runtime reports)
CPU_SECONDS = [0.0]


def _timed(fn, *args):
    t = time.process_time()
    r = fn(*args)
    return r, time.process_time() - t


def simulate_one(scenario: dict, seed: int):
    """Build and run one scenario (a dict) with ``seed``; the Result."""
    return build(load_scenario(scenario), seed).run()


def default_scenario() -> dict:
    """The shipped default scenario (Colossus-like mixed fleet, coders, API agents, chat) as a dict."""
    return load_scenario("default").model_dump(mode="json")


def scale_system(sc: dict, k: float) -> dict:
    """``sc`` with every pool's replicas and every population's users (and fleet workers) times
    ``k`` (rounded, at least 1): the same system, bigger or smaller."""
    sc = copy.deepcopy(sc)
    n = lambda x: max(1, round(x * k)) if x else 0  # noqa: E731
    for p in sc["pools"].values():
        p["replicas"] = n(p["replicas"])
    for p in sc.get("populations", {}).values():
        p["size"] = n(p["size"])
        if p.get("kind") == "fleet":
            p["workers"] = min(p["size"], n(p.get("workers", 1)))
            p["workers_min"] = min(p["size"], round(p.get("workers_min", 0) * k))
            p["task_rate"] = p.get("task_rate", 0.0) * k
    for s in sc.get("streams", {}).values():
        s["rate"] = s.get("rate", 0.0) * k
    return sc


# -- statistics -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """A mean over replications with its 95 % Student-t interval (NaN bounds with one value)."""

    mean: float
    low: float
    high: float
    n: int
    values: tuple = ()

    def as_dict(self) -> dict:
        return {"mean": _num(self.mean), "ci_low": _num(self.low), "ci_high": _num(self.high), "n": self.n,
                "values": [_num(v) for v in self.values]}

    def fmt(self, digits: int = 3, unit: str = "", scale: float = 1.0) -> str:
        """``12.3 (95 % CI 11.0 to 13.6) unit``."""
        f = lambda x: _g(x * scale, digits)  # noqa: E731
        u = f" {unit}" if unit else ""
        if math.isnan(self.low):
            return f"{f(self.mean)}{u} (one replication: no CI)"
        return f"{f(self.mean)}{u} (95 % CI {f(self.low)} to {f(self.high)})"

    def excludes(self, value: float = 0.0) -> bool:
        """The interval lies entirely on one side of ``value``."""
        return not math.isnan(self.low) and (self.low > value or self.high < value)


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _g(x: float, digits: int) -> str:
    """A number for people: 3 significant digits, thousands separated, millions and billions named."""
    if x is None or not math.isfinite(x):
        return "n/a"
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.{digits}g} bn"
    if a >= 1e6:
        return f"{x / 1e6:.{digits}g} M"
    if a >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def stat(values, valid: tuple[float, float] = NONNEGATIVE) -> Stat:
    """Mean and 95 % Student-t interval of independent replications (NaNs dropped), clipped to
    ``valid``: the experiments' figures are counts, rates, latencies, energy and shares, all >= 0."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    m, lo, hi = mean_interval(x, valid=valid)
    return Stat(m, lo, hi, len(x), tuple(x))


def paired(a, b) -> Stat:
    """Mean of ``b − a`` over paired replications (same seeds), with its 95 % interval (any sign)."""
    return stat([y - x for x, y in zip(a, b)], valid=ANY)


def ratio(a, b) -> Stat:
    """Mean of the per-replication ratio ``b / a`` (paired), with its 95 % interval (>= 0)."""
    return stat([y / x if x else math.nan for x, y in zip(a, b)])


def proportion(k: int, n: int) -> tuple[float, float, float]:
    """A share ``k / n`` with its 95 % Wilson score interval."""
    return proportion_interval(k, n)


def crossing(xs, ys, target: float) -> float:
    """Where a curve sampled at increasing ``xs`` first falls through ``target`` (linear
    interpolation); ``nan`` if it never reaches it, ``+inf`` if it stays above to the last x."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = ys >= target
    if not ok[0]:
        return math.nan
    if ok.all():
        return math.inf
    i = int(np.argmin(ok))            # first x that misses the target
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return float(x0 + (y0 - target) / (y0 - y1) * (x1 - x0)) if y0 != y1 else float(x0)


# -- writing ---------------------------------------------------------------------------------------------
def jsonable(o):
    if isinstance(o, Stat):
        return o.as_dict()
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return _num(float(o))
    if isinstance(o, Path):
        return str(o)
    return o


def save_figure(fig, out_dir: str | Path, name: str, data=None) -> Path:
    """Save ``fig`` as ``out_dir/name.png`` (atomically) and its plotted ``data`` (a DataFrame)
    as ``name.csv`` beside it; closes the figure."""

    import matplotlib.pyplot as plt  # local: pyplot costs ~0.5 s; pool workers only simulate
    out = Path(out_dir)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    path = write_atomic(out / f"{name}.png", buf.getvalue())
    if data is not None:
        write_atomic(out / f"{name}.csv", data.to_csv(index=False))
    return path


def md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


@dataclass
class Report:
    """The summary of one experiment: written as ``summary.md`` and ``results.json``."""

    name: str
    question: str
    answer: str = ""
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)       # file name -> caption
    settings: dict = field(default_factory=dict)
    cpu_s: float = 0.0
    runs: object = None            # the tidy frame of every arm × seed (:func:`tidy`), written as runs.csv
    assumptions: list[tuple[str, str]] = field(default_factory=list)   # (assumption, its source)

    def __post_init__(self) -> None:
        self._cpu0 = CPU_SECONDS[0]

    def section(self, title: str, lines: list[str]) -> None:
        self.sections.append((title, list(lines)))

    def assume(self, assumption: str, source: str) -> None:
        """An input the answer rests on, with where it comes from (a reference file and section, a
        measurement, a scenario field): a planner checks these before trusting the answer."""
        self.assumptions.append((assumption, source))

    def figure(self, path: Path, caption: str) -> None:
        self.figures[Path(path).name] = caption

    def write(self, out_dir: str | Path, runtime_s: float) -> dict:
        out = Path(out_dir)
        self.cpu_s = CPU_SECONDS[0] - self._cpu0
        md = [f"# {self.name}", "", f"**Question.** {self.question}", "", f"**Answer.** {self.answer}", ""]
        assumed = ["## Assumptions, with sources", ""] + [f"- {text} — *{source}*" for text, source in self.assumptions]
        for i, (title, lines) in enumerate(self.sections):   # the answer, its table, then what it assumes
            md += [f"## {title}", ""] + lines + [""]
            if i == 0 and self.assumptions:
                md += assumed + [""]
        if self.assumptions and not self.sections:
            md += assumed + [""]
        if self.figures:
            md += ["## Figures", ""]
            for fname, caption in self.figures.items():
                md += [f"![{caption}]({fname})", "", f"*{fname}* — {caption}", ""]
        md += ["## Settings", ""]
        md += [f"- `{k}`: {v}" for k, v in self.settings.items()]
        md += [f"- runtime: {runtime_s:.0f} s wall; {self.cpu_s:.0f} s CPU in simulations "
               f"(≈ {self.cpu_s / 2:.0f} s on two idle cores)", ""]
        from ... import __version__  # local: agentsim.__version__ reads the package metadata (~10 ms) on first use
        commit = _git_commit()
        if commit:
            md.insert(-1, f"- agentsim {__version__}, commit {commit}")
        results = {"experiment": self.name, "question": self.question, "answer": self.answer,
                   "agentsim_version": __version__, "git_commit": commit, "runtime_s": runtime_s, "cpu_s": self.cpu_s,
                   "settings": self.settings,
                   "assumptions": [{"assumption": a, "source": src} for a, src in self.assumptions],
                   "figures": list(self.figures), **self.results}
        if self.runs is not None:
            write_atomic(out / "runs.csv", self.runs.to_csv(index=False))
            results["runs_csv"] = "runs.csv"
        write_atomic(out / "results.json", dumps(jsonable(results)))       # strict: NaN -> null
        write_atomic(out / "summary.md", "\n".join(md))
        results["summary_path"] = str(out / "summary.md")
        return results


def _git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when files differ), if agentsim runs from a git checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agentsim"], cwd=root, capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


# -- command line ----------------------------------------------------------------------------------------
def parser(name: str, question: str, full_scale: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"agentsim experiment {name}", description=question)
    p.add_argument("--out", default=None, help=f"output folder (default: results/{name})")
    p.add_argument("--scale", type=float, default=1.0, help="size of the run: 1 = default (minutes on two "
                   "cores); <1 smaller, >1 bigger")
    p.add_argument("--full", action="store_true", help=f"the full-size run (--scale {full_scale:g})")
    p.add_argument("--replications", "-r", type=int, default=None, help="replications (seeds seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=1, help="base seed")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores; 0 = none)")
    p.add_argument("--address", default=None, help="run on the Dask cluster whose scheduler is at ADDRESS")
    return p


def check_args(scale: float, replications: int | None, seed: int) -> None:
    if not (scale > 0 and math.isfinite(scale)):
        raise InputError(f"--scale must be a positive number, got {scale}")
    if replications is not None and replications < 2:
        raise InputError(f"--replications must be >= 2 (confidence intervals need two), got {replications}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")


def own_keywords(module, values: dict) -> dict:
    """run()'s keywords from an experiment's own options (``OPTIONS``; names with underscores), {} if none."""
    names_ = [flag.lstrip("-").replace("-", "_") for flag, _ in getattr(module, "OPTIONS", ())]
    return module.run_keywords({k: values.get(k) for k in names_}) if names_ else {}


def main_for(module_name: str):
    """The ``main(argv)`` of experiment module ``module_name``: its command line (see :func:`cli_main`)."""
    def main(argv: list[str] | None = None) -> dict:
        return cli_main(sys.modules[module_name], argv)
    return main


def cli_main(module, argv: list[str] | None = None) -> dict:
    """Parse ``argv`` for ``module`` (an experiment), run it and print where the summary went."""
    name = module.__name__.rsplit(".", 1)[-1]
    p = parser(name, module.QUESTION, module.FULL_SCALE)
    options = getattr(module, "OPTIONS", ())    # an experiment's own options: its run()'s keywords
    for flag, o in options:
        if o.get("flag"):
            p.add_argument(flag, action="store_true", help=o["help"])
        else:
            p.add_argument(flag, type=o["type"], default=o["default"], help=o["help"])
    args = p.parse_args(argv)
    scale = module.FULL_SCALE if args.full else args.scale
    PROGRESS[0] = True
    out = args.out or str(Path("results") / name)
    try:
        own = own_keywords(module, vars(args))
        res = module.run(out, scale=scale, seed=args.seed, replications=args.replications, workers=args.workers,
                         address=args.address, **own)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(res["answer"])
    print(f"summary: {res['summary_path']}  ({res['runtime_s']:.0f} s)")
    return res
