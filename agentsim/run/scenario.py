"""Scenarios as validated data: pydantic models, TOML loading and ``--set`` overrides.

A scenario names everything a run needs: sites, pools of replicas (GPU, model, precision,
tp/pp, count), engine limits and policies, the router, faults and outages, and the request
streams. Every field has a default where one makes sense and a description (``agentsim scenario
schema`` prints them all). Paths such as ``pools.h100.replicas`` name fields everywhere: in
``--set``, in sweeps and in capacity searches. This is the only module that reads scenario files.
"""
from __future__ import annotations

import copy
import difflib
import json
import re
from datetime import datetime
import tomllib
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ..provider.clock import DEFAULT_START
from ..provider.gateway import parse_policies
from ..util.errors import InputError, not_utf8

# -- bounds: agentsim.util.bounds (re-exported here for the schema and the CLI) ---------------------
from ..util.bounds import (MAX_DURATION_S, MAX_RATE, MAX_REQUESTS, MAX_REPLICAS, MAX_USERS, MAX_COUNT, MAX_TOKENS, MAX_TTL_S, MAX_HOST_KV_GB, MAX_SLO_S, MAX_SLICES, MAX_SEED)  # noqa: E402,F401
from .scenario_parts import (Model, EngineSettings, Site, Faults, Pool, Router, Outage, Stream,  # noqa: F401
                             Population, Slice, Disaggregation, KvTierSettings)


#: the scenario file format this release reads; files state theirs as ``schema_version`` (missing =
#: this one). What an older version must change (none so far: version 2 only added fields).
SCHEMA_VERSION = 2
SCHEMA_CHANGES = {1: "nothing to change: version 2 only adds fields (engine.preset, engine.chunked_prefill, "
                     "streams.X.cached_tokens); set schema_version = 2"}


class ScenarioVersionWarning(UserWarning):
    """A scenario file written for an older schema: read as is, with what to change."""


class Scenario(Model):
    """Everything one run needs. Units: seconds, tokens, USD, W."""

    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION,
                                description=f"the file format it was written for (this release reads 1 to {SCHEMA_VERSION})")
    name: str = Field("scenario", description="a label for reports")
    start: datetime = Field(DEFAULT_START, description="wall-clock time at t = 0 (ISO 8601 with offset); "
                                                        "drives diurnal profiles and peak hours")
    description: str = Field("", description="free text")
    duration_s: float = Field(3600.0, gt=0, le=MAX_DURATION_S, description="simulated time (s); requests still running then are "
                                                        "recorded as in_flight")
    warmup_s: float = Field(0.0, ge=0, le=MAX_DURATION_S, description="requests arriving before this are left out of summaries")
    seed: int = Field(1, ge=0, le=MAX_SEED, description="base seed (overridden by --seed)")
    sample_s: float = Field(60.0, gt=0, le=MAX_DURATION_S, description="interval of the time series (s)")
    catalog: list[str] = Field(default_factory=list, description="extra catalog TOML files (relative to the scenario)")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    sites: dict[str, Site] = Field(default_factory=lambda: {"default": Site()})
    pools: dict[str, Pool] = Field(description="replica pools by name")
    router: Router = Field(default_factory=Router)
    disaggregation: Disaggregation = Field(default_factory=Disaggregation,
                                           description="KV hand-off settings for pools with role prefill / decode")
    kv_tier: KvTierSettings = Field(default_factory=KvTierSettings,
                                    description="a cluster-wide KV tier of session prefixes (off by default)")
    outages: list[Outage] = Field(default_factory=list)
    streams: dict[str, Stream] = Field(default_factory=dict, description="request streams by name")
    populations: dict[str, Population] = Field(default_factory=dict, description="agent and chat populations")
    policies: list[dict[str, Any]] = Field(default_factory=list, description="gateway policy chain, in order: "
                                                                            "each {name = ..., params...}")
    slice: Slice = Field(default_factory=Slice, description="run a 1/count slice: tenants hashed to slices, "
                                                            "each pool and stream scaled to its share")
    slo_ttft_s: float = Field(2.0, gt=0, le=MAX_SLO_S, description="TTFT bound for goodput")
    slo_tpot_s: float = Field(0.1, gt=0, le=MAX_SLO_S, description="TPOT bound for goodput")

    @model_validator(mode="after")
    def _refs(self) -> "Scenario":
        if self.schema_version < SCHEMA_VERSION:
            warnings.warn(f"scenario schema_version {self.schema_version}: {SCHEMA_CHANGES[self.schema_version]}",
                          ScenarioVersionWarning, stacklevel=2)
        if not self.pools:
            raise ValueError("a scenario needs at least one pool")
        if self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s ({self.warmup_s:g}) must be below duration_s ({self.duration_s:g}): "
                             "nothing after the warm-up would be measured")
        for name, pool in self.pools.items():
            if pool.site not in self.sites:
                raise ValueError(f"pools.{name}.site {pool.site!r} is not in [sites] ({', '.join(self.sites)})")
            unknown = set(pool.engine) - set(EngineSettings.model_fields)
            if unknown:
                bad = sorted(unknown)[0]
                near = difflib.get_close_matches(bad, list(EngineSettings.model_fields), n=1)
                raise ValueError(f"pools.{name}.engine.{bad} is not an engine setting"
                                 + (f" (did you mean {near[0]!r}?)" if near else ""))
            try:
                EngineSettings(**{**self.engine.model_dump(), **pool.engine})
            except ValidationError as e:
                er = e.errors()[0]
                raise ValueError(f"pools.{name}.engine.{'.'.join(map(str, er['loc']))}: "
                                 f"{er['msg']} (got {er.get('input')!r})") from None
        share = self.disaggregation.prefill_gpu_share
        roles = {r: [n for n, p in self.pools.items() if p.role == r] for r in ("prefill", "decode")}
        if share is not None and (len(roles["prefill"]) != 1 or len(roles["decode"]) != 1):
            raise ValueError(f"disaggregation.prefill_gpu_share {share:g} needs exactly one pool with role prefill and "
                             f"one with role decode; prefill: {roles['prefill'] or 'none'}, decode: "
                             f"{roles['decode'] or 'none'}")
        try:
            parse_policies(self.policies)
        except InputError as e:
            raise ValueError(str(e)) from None
        for i, o in enumerate(self.outages):
            kind, _, target = o.target.partition(":")
            table = self.pools if kind == "pool" else self.sites
            if target not in table:
                raise ValueError(f"outages[{i}].target {o.target!r}: no such {kind} ({', '.join(table)})")
            if o.start_s >= self.duration_s:
                raise ValueError(f"outages[{i}] starts at {o.start_s} s, after the run ends ({self.duration_s} s)")
        return self

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start needs a UTC offset, e.g. 2026-06-01T00:00:00Z")
        return v

    def pool_engine(self, name: str) -> EngineSettings:
        """The engine settings of one pool: [engine] with the pool's overrides."""
        # exclude_unset: a preset fills only the fields nobody set, so which ones were set must survive
        return EngineSettings(**{**self.engine.model_dump(exclude_unset=True), **self.pools[name].engine})


# -- loading and overrides ------------------------------------------------------------------------
def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for 'did you mean')."""
    cls: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        fields = getattr(cls, "model_fields", None)
        if fields is None:
            continue
        if part in fields:
            ann = fields[part].annotation
            args = getattr(ann, "__args__", ())
            cls = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if cls is None and args:  # dict[str, Model] / list[Model]
                cls = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        # a dict key (pool name): stay on the value model
    return cls


TABLES = {"pools": "pool", "streams": "stream", "populations": "population", "sites": "site"}


def _set_paths(overrides) -> list[tuple[str, str]]:
    """``(item, path)`` of each ``--set PATH=VALUE``, last first (a later one wins)."""
    return [(item, item.partition("=")[0].strip()) for item in reversed(list(overrides))]


def blame(message: str, overrides=()) -> str | None:
    """The ``--set`` item a message is about (its path is the message's field, above or below it)."""
    message = re.sub(r"\[(\d+)\]", r".\1", message)      # policies[3] is the --set path policies.3
    head = message.split(":", 1)[0].split(" ", 1)[0]
    for item, p in _set_paths(overrides):
        if head == p or head.startswith(p + ".") or head.startswith(p + "[") or p.startswith(head + "."):
            return item
    for item, p in _set_paths(overrides):
        if re.search(rf"(?<![\w.]){re.escape(p)}(?![\w])", message):
            return item
    return None


def with_blame(message: str, where: str, overrides=()) -> str:
    """``message`` as the user caused it: ``--set 'X=V': ...`` for an override, else ``WHERE: ...``."""
    item = blame(message, overrides)
    return f"--set {item!r}: {message}" if item else (f"{where}: {message}" if where else message)


def _exists(data: dict, loc: tuple) -> bool:
    """Whether the nested path ``loc`` is present in ``data``."""
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def explain(err: ValidationError, where: str, root: type[BaseModel] = Scenario, overrides=(),
            base: dict | None = None) -> str:
    """One message naming each bad field, its value and what is allowed.

    A field an override set is blamed on that ``--set`` (not on the scenario file), and a
    ``--set`` naming a pool, stream, population or site the scenario does not have says so.
    """
    out = []
    new_entries: set[tuple[str, str]] = set()
    new_tables: dict[str, list[str]] = {}     # a table a --set started -> the required fields it lacks
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if (base is not None and e["type"] == "missing" and len(loc) >= 3 and loc[0] in TABLES
                and loc[1] not in (base.get(loc[0]) or {})):
            item = next((i for i, p in _set_paths(overrides) if p.startswith(f"{loc[0]}.{loc[1]}.")), None)
            if item is not None:
                if (loc[0], loc[1]) not in new_entries:
                    new_entries.add((loc[0], loc[1]))
                    have = ", ".join(base.get(loc[0]) or {}) or "none"
                    out.append(f"--set {item!r}: there is no {TABLES[loc[0]]} {loc[1]!r} in {where} "
                               f"({loc[0]}: {have}); a new one needs {loc[2]} and the other required fields")
                continue
        if base is not None and e["type"] == "missing" and len(loc) >= 2 and not _exists(base, loc[:-1]):
            # a table the file does not have, started by a --set: its other required fields are missing
            parent = ".".join(str(p) for p in loc[:-1])
            item = next((i for i, p in _set_paths(overrides) if p.startswith(parent + ".")), None)
            if item is not None:
                if parent not in new_tables:
                    new_tables[parent] = []
                    out.append((item, parent))
                new_tables[parent].append(str(loc[-1]))
                continue
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc, root)
            names = list(owner.model_fields) if owner is not None else []
            near = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            text = f"unknown field {path!r}{hint} (allowed here: {', '.join(names)})"
            item = blame(path, overrides)
            out.append(f"--set {item!r}: {text}" if item else f"{where}: {text}")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        text = f"{path}: {msg}{shown}" if path else msg
        out.append(with_blame(text, where, overrides))
    return "; ".join(f"--set {m[0]!r}: {m[1]} is not in {where}; a new one needs {', '.join(new_tables[m[1]])}"
                     if isinstance(m, tuple) else m for m in out)


def parse(data: dict, where: str = "scenario", *, overrides=(), base: dict | None = None) -> Scenario:
    """Validate ``data`` (``base`` with ``overrides`` applied, when given: errors then name them)."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise InputError(explain(e, where, overrides=overrides, base=base)) from None


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"scenario file {path}: not found") from None
    except IsADirectoryError:
        raise InputError(f"scenario file {path}: is a directory") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"scenario file {path}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"scenario file {path}: {not_utf8(e)}") from None


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read a scenario file, apply ``path.to.field=value`` overrides, validate."""
    original = read_toml(path)
    base = Path(path).parent
    data = apply_overrides(original, overrides)
    data["catalog"] = [str((base / c).resolve()) if not Path(c).is_absolute() else c for c in data.get("catalog", [])]
    for s in data.get("streams", {}).values():
        if isinstance(s, dict) and s.get("file") and not Path(s["file"]).is_absolute():
            s["file"] = str((base / s["file"]).resolve())
    return parse(data, where=str(path), overrides=overrides, base=original)


def _value(text: str) -> Any:
    """A ``--set`` value: TOML/JSON literal if it parses, else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set ``a.b.c=value`` paths in a nested dict (copying, never mutating the input)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise InputError(f"--set {item!r}: expected PATH=VALUE, e.g. pools.h100.replicas=8")
        keys = path.strip().split(".")
        node = data
        for k in keys[:-1]:
            if isinstance(node, list):
                try:
                    node = node[int(k)]
                except (ValueError, IndexError):
                    raise InputError(f"--set {item!r}: {k!r} is not an index of the list at that path") from None
                continue
            node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise InputError(f"--set {item!r}: {k!r} is a value, not a table")
        node[keys[-1]] = _value(text)
    return data


def schema() -> dict:
    """The JSON schema of a scenario file, with every field's description."""
    return Scenario.model_json_schema()
