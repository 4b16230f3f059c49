"""Loading the GPU, model and efficiency catalogs from TOML files, and resolving names.

The shipped files live in ``agentsim/data``. Users add their own GPUs, models, generations or
aliases in a TOML file of the same shape, passed as ``--catalog FILE`` (CLI), listed in the
``AGENTSIM_CATALOG`` environment variable (paths separated by ``os.pathsep``), or given to
:func:`load_catalog`. Later files override earlier ones, entry by entry.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from ..util.paths import data_path  # noqa: F401  (re-exported)
from ..util.errors import InputError, unknown_name
from .hardware import GPU, Efficiency
from .llm import ModelSpec, parse_frontier_name
from .presets import OVERHEADS

DATA_FILES = ("gpus.toml", "efficiency.toml", "models.toml", "aliases.toml", "calibrated.toml")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line per problem: ``where.field: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}{'.' + loc if loc else ''}: {msg}{got}")
    return "; ".join(lines)


@dataclass(frozen=True)
class Catalog:
    """Everything known about GPUs, models and efficiencies, with alias resolution."""

    gpus: dict[str, GPU] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    generations: dict[str, Efficiency] = field(default_factory=dict)
    gpu_aliases: dict[str, str] = field(default_factory=dict)
    model_aliases: dict[str, str] = field(default_factory=dict)
    assumptions: dict[str, str] = field(default_factory=dict)
    engines: dict[str, dict] = field(default_factory=dict)   # fitted time outside the GPU per engine preset

    def _resolve(self, kind: str, name: str, table: dict, aliases: dict[str, str]) -> str:
        if name in table:
            return name
        by_norm = {_norm(k): k for k in table}
        key = _norm(name)
        if key in by_norm:
            return by_norm[key]
        if key in aliases:
            return aliases[key]
        raise unknown_name(kind, name, table)

    def gpu_name(self, name: str) -> str:
        return self._resolve("GPU", name, self.gpus, self.gpu_aliases)

    def gpu(self, name: str) -> GPU:
        return self.gpus[self.gpu_name(name)]

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[self._resolve("model", name, self.models, self.model_aliases)]
        except InputError:
            parametric = parse_frontier_name(name)
            if parametric is None:
                raise
            return parametric

    def efficiency(self, gpu: GPU | str) -> Efficiency:
        gpu = self.gpu(gpu) if isinstance(gpu, str) else gpu
        try:
            return self.generations[gpu.generation]
        except KeyError:
            raise unknown_name("GPU generation", gpu.generation, self.generations, where=f"GPU {gpu.name}") from None

    def assumption(self, spelling: str) -> str:
        """Why an ambiguous spelling was mapped the way it was ('' if it was not ambiguous)."""
        return self.assumptions.get(_norm(spelling), "")


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"catalog file {path}: not found") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"catalog file {path}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"catalog file {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                         f"{e.start}); save it as UTF-8") from None
    except IsADirectoryError:
        raise InputError(f"catalog file {path}: is a directory") from None


def _merge(doc: dict, path: Path, acc: dict) -> None:
    known = {"gpus", "models", "generations", "aliases", "engines"}
    for section in doc:
        if section not in known:
            raise unknown_name("catalog section", section, known, where=f"catalog file {path}")
    for name, entry in doc.get("gpus", {}).items():
        try:
            acc["gpus"][name] = GPU(name=name, **entry)
        except (ValidationError, TypeError) as e:
            raise InputError(format_validation_error(e, f"{path}: gpus.{name}")
                             if isinstance(e, ValidationError) else f"{path}: gpus.{name}: {e}") from None
    for name, entry in doc.get("models", {}).items():
        try:
            acc["models"][name] = ModelSpec(name=name, **entry)
        except (ValidationError, TypeError) as e:
            raise InputError(format_validation_error(e, f"{path}: models.{name}")
                             if isinstance(e, ValidationError) else f"{path}: models.{name}: {e}") from None
    for name, entry in doc.get("generations", {}).items():
        base = acc["generations"].get(name)
        base_d = base.model_dump() if base else {}
        merged = {**base_d, **entry, "sources": {**base_d.get("sources", {}), **entry.get("sources", {})}}
        try:
            acc["generations"][name] = Efficiency(**merged)
        except ValidationError as e:
            raise InputError(format_validation_error(e, f"{path}: generations.{name}")) from None
    for name, entry in doc.get("engines", {}).items():
        acc["engines"][name] = {**acc["engines"].get(name, {}), **_engine_entry(entry, f"{path}: engines.{name}")}
    aliases = doc.get("aliases", {})
    for kind in ("gpus", "models"):
        for spelling, target in aliases.get(kind, {}).items():
            acc[f"{kind}_aliases"][_norm(spelling)] = target
    for spelling, why in aliases.get("assumptions", {}).items():
        acc["assumptions"][_norm(spelling)] = why


def _engine_entry(entry: dict, where: str) -> dict:
    """A preset's fitted overheads: known names, non-negative finite numbers (``sources`` kept)."""
    out = {}
    for k, v in entry.items():
        if k == "sources":
            out[k] = dict(v)
        elif k not in OVERHEADS:
            raise unknown_name("engine field", k, OVERHEADS, where=where)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise InputError(f"{where}.{k}: {v!r} is not a non-negative number")
        else:
            out[k] = float(v)
    return out


def env_catalog_files() -> tuple[str, ...]:
    """Extra catalog files named by ``AGENTSIM_CATALOG`` (read by the CLI, never by constructors)."""
    raw = os.environ.get("AGENTSIM_CATALOG", "")
    return tuple(p for p in raw.split(os.pathsep) if p)


@lru_cache(maxsize=16)
def load_catalog(extra_files: tuple[str, ...] = (), calibrated: bool = True) -> Catalog:
    """Shipped catalog plus ``extra_files`` (later entries override earlier ones).

    ``calibrated=False`` leaves out the fitted factors of ``data/calibrated.toml`` and keeps the
    priors, which is what ``agentsim calibrate`` fits from.
    """
    acc: dict = {"gpus": {}, "models": {}, "generations": {}, "gpus_aliases": {}, "models_aliases": {},
                 "assumptions": {}, "engines": {}}
    paths = [data_path(n) for n in DATA_FILES] + [Path(p) for p in extra_files]
    for path in paths:
        if path.name == "aliases.toml" and path.parent == data_path("x").parent:
            doc = {"aliases": _read_toml(path)}
        elif path.name == "calibrated.toml" and path.parent == data_path("x").parent and (
                not calibrated or not path.exists()):
            continue
        else:
            doc = _read_toml(path)
        _merge(doc, path, acc)
    cat = Catalog(gpus=acc["gpus"], models=acc["models"], generations=acc["generations"],
                  gpu_aliases=acc["gpus_aliases"], model_aliases=acc["models_aliases"],
                  assumptions=acc["assumptions"], engines=acc["engines"])
    for kind, aliases, table in (("GPU", cat.gpu_aliases, cat.gpus), ("model", cat.model_aliases, cat.models)):
        for spelling, target in aliases.items():
            if target not in table:
                raise unknown_name(kind, target, table, where=f"alias {spelling!r}")
    for gpu in cat.gpus.values():
        cat.efficiency(gpu)
    return cat
