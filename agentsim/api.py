"""The Python entry points: ``simulate(scenario, seed=..., replications=...)``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import stats

from . import scenario as scn
from .build import build
from .errors import InputError
from .result import Result

PRESETS_DIR = "scenarios"


def preset_names() -> list[str]:
    folder = resources.files("agentsim") / PRESETS_DIR
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_path(name: str) -> Path:
    path = Path(str(resources.files("agentsim") / PRESETS_DIR / f"{name}.toml"))
    if not path.exists():
        from .errors import unknown_name
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


def ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of independent replications."""
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - h, m + h


def _mean_with_ci(sums: list[dict], with_ci: bool = True) -> dict:
    """Average numeric keys over replications (nested dicts recursively; a missing key is 0),
    adding ``_ci_low``/``_ci_high`` beside each top-level number."""
    out: dict = {}
    keys = list(dict.fromkeys(k for s in sums for k in s))
    for key in keys:
        vals = [s.get(key) for s in sums]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, dict) for v in present):
            out[key] = _mean_with_ci([v if isinstance(v, dict) else {} for v in vals], with_ci=False)
        elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            m, lo, hi = ci([0 if v is None else v for v in vals])
            out[key] = m
            if with_ci:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = lo, hi
        else:
            out[key] = present[0] if present else None
    return out


@dataclass
class ResultSet:
    """Independent replications of one scenario; ``summary()`` adds 95 % confidence intervals."""

    results: list[Result]

    def summary(self) -> dict:
        return _mean_with_ci([r.summary() for r in self.results]) | {"replications": len(self.results)}

    def __getitem__(self, i: int) -> Result:
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)


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
