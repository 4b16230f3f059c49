"""The Python entry points: ``simulate(scenario, seed=..., replications=...)``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from . import scenario as scn
from ..util.jsonout import flatten
from ..util.stats import mean_interval, summary_range
from .build import build
from ..util.errors import InputError, unknown_name
from ..results.result import Result

PRESETS_DIR = "scenarios"


def preset_names() -> list[str]:
    folder = resources.files("agentsim") / PRESETS_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_path(name: str) -> Path:
    path = Path(str(resources.files("agentsim") / PRESETS_DIR / f"{name}.toml"))
    if not path.exists():
        raise unknown_name("preset", name, preset_names())
    return path


def load_scenario(spec, overrides: list[str] = ()) -> scn.Scenario:
    """A Scenario from an object, a dict, a TOML path or a preset name."""
    if isinstance(spec, scn.Scenario):
        if overrides:
            base = spec.model_dump(mode="json")
            return scn.parse(scn.apply_overrides(base, list(overrides)), overrides=overrides, base=base)
        return spec
    if isinstance(spec, dict):
        return scn.parse(scn.apply_overrides(spec, list(overrides)), overrides=overrides, base=spec)
    return scn.load(resolve(spec), list(overrides))


def resolve(spec) -> Path:
    """The file a scenario argument names: a path ending in ``.toml``, else a shipped preset.

    A preset name wins over anything in the working directory (a folder named ``default``
    must not shadow the default preset); an existing file without the suffix is still read.
    """
    path = Path(spec)
    if path.suffix == ".toml":
        return path
    if str(spec) in preset_names():
        return preset_path(str(spec))
    if path.is_file():
        return path
    return preset_path(str(spec))


def replication_seeds(seed: int, replications: int) -> list[int]:
    """Replication i runs with seed + i (documented, so any one can be rerun alone)."""
    return [seed + i for i in range(replications)]


def ci(values, level: float = 0.95, valid: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of independent replications, clipped to ``valid``
    (see :mod:`agentsim.util.stats`, where every interval is computed)."""
    return mean_interval(values, level, valid)


def _mean_with_ci(sums: list[dict], with_ci: bool = True) -> dict:
    """Average numeric keys over replications (nested dicts recursively; a missing key is 0),
    adding ``_ci_low``/``_ci_high`` beside each top-level number, clipped to the key's valid range
    (:func:`agentsim.util.stats.summary_range`: shares in [0, 1], everything else >= 0)."""
    out: dict = {}
    keys = list(dict.fromkeys(k for s in sums for k in s))
    for key in keys:
        vals = [s.get(key) for s in sums]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            out[key] = _mean_with_ci([v if isinstance(v, dict) else {} for v in vals], with_ci=False)
        elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            m, lo, hi = ci([0 if v is None else v for v in vals], valid=summary_range(key))
            out[key] = m
            if with_ci:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = lo, hi
        else:
            out[key] = present[0] if present else None
    return out


@dataclass
class ResultSet:
    """Independent replications of one scenario (replication i ran with seed + i).

    ``summary()`` averages the replications' summaries and adds 95 % confidence intervals
    (``_ci_low``/``_ci_high``, clipped to each figure's valid range). ``requests``, ``sessions``,
    ``timeseries`` and ``pools`` are the replications' tables stacked, and ``summary_frame()`` one
    row per replication; each carries ``replication`` (0, 1, …) and ``seed`` columns, so a figure
    per replication is a ``groupby("replication")`` away.
    """

    results: list[Result]

    def summary(self) -> dict:
        """Means over replications with 95 % CIs (the pools' capacity figures where
        :func:`agentsim.capacity_utilisation` computed them for every replication)."""
        return _mean_with_ci([r.summary() for r in self.results]) | {"replications": len(self.results)}

    def _stack(self, table: str):
        frames = [getattr(r, table).assign(replication=i, seed=r.meta.get("seed"))
                  for i, r in enumerate(self.results)]
        frames = [f for f in frames if len(f.columns) > 2]       # a run with no such table adds no rows
        if not frames:
            return pd.DataFrame({"replication": pd.Series(dtype=int), "seed": pd.Series(dtype=int)})
        # categoricals with different categories (e.g. outcomes seen) union to strings; keep them categorical
        out = pd.concat(frames, ignore_index=True)
        for c in frames[0].columns:
            if isinstance(frames[0][c].dtype, pd.CategoricalDtype) and not isinstance(out[c].dtype, pd.CategoricalDtype):
                out[c] = out[c].astype("category")
        return out

    @property
    def requests(self):
        """Every replication's requests, with ``replication`` and ``seed`` columns."""
        return self._stack("requests")

    @property
    def sessions(self):
        """Every replication's sessions, with ``replication`` and ``seed`` columns."""
        return self._stack("sessions")

    @property
    def timeseries(self):
        """Every replication's time series, with ``replication`` and ``seed`` columns."""
        return self._stack("timeseries")

    @property
    def pools(self):
        """Every replication's pool table, with ``replication`` and ``seed`` columns."""
        return self._stack("pools")

    def summary_frame(self):
        """One row per replication: its summary's figures (nested keys dotted, e.g.
        ``pools.h100.busy_share``), with ``replication`` and ``seed`` columns first."""
        rows = [{"replication": i, "seed": r.meta.get("seed"), **flatten(r.summary())}
                for i, r in enumerate(self.results)]
        return pd.DataFrame(rows)

    def __getitem__(self, i: int) -> Result:
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        first = self.results[0] if self.results else None
        name = first.meta.get("scenario", {}).get("name", "?") if first is not None else "?"
        seeds = [r.meta.get("seed") for r in self.results]
        return (f"<ResultSet {name!r}: {len(self.results)} replications, seeds {seeds}>\n"
                f"  .summary() means with 95 % CIs; .summary_frame(), .requests, .sessions, .timeseries, .pools "
                f"stack the replications with a replication column")


def simulate(scenario, seed: int | None = None, replications: int = 1, *, overrides: list[str] = (),
             step_mode: bool = False, check_invariants: bool = False, progress=None):
    """Run ``scenario`` (object, dict, TOML path or preset name); a Result, or a ResultSet if R > 1."""
    sc = load_scenario(scenario, overrides)
    if replications < 1:
        raise InputError(f"replications must be >= 1, got {replications}")
    seed = sc.seed if seed is None else seed
    results = [build(sc, s, step_mode=step_mode, check_invariants=check_invariants).run(progress)
               for s in replication_seeds(seed, replications)]
    return results[0] if replications == 1 else ResultSet(results)
