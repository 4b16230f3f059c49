"""Scenarios as validated data: pydantic models, TOML loading and ``--set`` overrides.

A scenario names everything a run needs: sites, pools of replicas (GPU, model, precision,
tp/pp, count), engine limits and policies, the router, faults and outages, and the request
streams. Every field has a default where one makes sense and a description (``agentsim scenario
schema`` prints them all). Paths such as ``pools.h100.replicas`` name fields everywhere: in
``--set``, in sweeps and in capacity searches. This is the only module that reads scenario files.
"""
from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- building blocks ------------------------------------------------------------------------------
class Dist(Model):
    """A distribution of positive integers (token counts) or seconds."""

    kind: Literal["constant", "lognormal", "uniform", "exponential"] = Field(
        "constant", description="constant: `value`; lognormal: `median`, `sigma`; uniform: `low`, `high`; "
                                "exponential: `mean`")
    value: float = Field(0, ge=0, description="constant value")
    median: float = Field(0, ge=0, description="lognormal median")
    sigma: float = Field(0, ge=0, description="lognormal shape (σ of the log)")
    low: float = Field(0, ge=0, description="uniform lower bound")
    high: float = Field(0, ge=0, description="uniform upper bound")
    mean: float = Field(0, ge=0, description="exponential mean")
    min: float = Field(0, ge=0, description="clip below")
    max: float = Field(1e12, gt=0, description="clip above")

    @model_validator(mode="after")
    def _check(self) -> "Dist":
        need = {"constant": ("value",), "lognormal": ("median",), "uniform": ("high",), "exponential": ("mean",)}
        for f in need[self.kind]:
            if getattr(self, f) <= 0:
                raise ValueError(f"a {self.kind} distribution needs {f} > 0")
        if self.kind == "uniform" and self.low > self.high:
            raise ValueError(f"uniform needs low <= high (got low={self.low}, high={self.high})")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self


def _dist(v: Any) -> Any:
    """A bare number means a constant distribution."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return {"kind": "constant", "value": v}
    return v


class EngineSettings(Model):
    """Scheduler and cache settings of a replica (vLLM V1-like defaults)."""

    max_batch: int | None = Field(None, ge=1, description="max running requests; default 1024 on >=70 GB "
                                                          "non-A100 GPUs, else 256 (vLLM max_num_seqs)")
    token_budget: int | None = Field(None, ge=1, description="tokens per step (chunked prefill); default "
                                                             "8192 on >=70 GB non-A100 GPUs, else 2048")
    admission: str = Field("fcfs", description="admission order: fcfs | priority")
    retention: str = Field("lru", description="prefix-cache retention: lru | pin_session | none")
    prefix_ttl_s: float = Field(300.0, ge=0, description="prefix-cache TTL (s) after last use")
    host_kv_gb: float = Field(0.0, ge=0, description="host-memory KV tier per replica (GB); 0 = none")
    mem_util: float = Field(0.90, gt=0, le=1, description="share of HBM for weights + KV")
    reserve_gb_per_gpu: float = Field(2.0, ge=0, description="HBM kept for activations / CUDA graphs")
    kv_dtype: Literal["bf16", "fp8"] = Field("bf16", description="KV cache element type")


class Site(Model):
    pue: float = Field(1.2, ge=1, description="facility power usage effectiveness")
    other_it_fraction: float = Field(0.0, ge=0, description="non-server IT load (network, storage) as a share "
                                                              "of server power")
    facility_mw: float = Field(0.0, ge=0, description="facility power limit (MW) to compare the draw with; 0 = none")


class Faults(Model):
    mtbf_h: float = Field(0.0, ge=0, description="mean time between replica failures (hours); 0 = none")
    mttr_h: float = Field(1.0, gt=0, description="mean time to repair (hours)")


class Pool(Model):
    """Replicas of one deployment on one GPU type at one site."""

    gpu: str = Field(description="catalog GPU name or alias")
    model: str = Field(description="catalog model name or alias (or frontier-moe-<T>-a<A>)")
    replicas: int = Field(1, ge=1, description="number of replicas")
    tp: int = Field(1, ge=1, description="tensor-parallel degree (within a node)")
    pp: int = Field(1, ge=1, description="pipeline stages (across nodes)")
    precision: Literal["bf16", "fp8", "fp4"] = Field("bf16", description="weights and activations")
    site: str = Field("default", description="site name (see [sites])")
    usd_per_gpu_hour: float | None = Field(None, ge=0, description="override the catalog price")
    engine: dict[str, Any] = Field(default_factory=dict, description="overrides of [engine] for this pool")
    faults: Faults = Field(default_factory=Faults)


class Router(Model):
    policy: str = Field("least_outstanding", description="round_robin | least_outstanding | power_of_two | "
                                                          "speed_aware | session_affinity")
    affinity_load_bound: float = Field(1.25, ge=1, description="session_affinity: leave the home replica when "
                                                                "its load exceeds this x the mean (+1)")


class Outage(Model):
    target: str = Field(description="'pool:<name>' or 'site:<name>'")
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> "Outage":
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if not (self.target.startswith("pool:") or self.target.startswith("site:")):
            raise ValueError(f"target must be 'pool:<name>' or 'site:<name>', got {self.target!r}")
        return self


class Stream(Model):
    """An engine-level request stream (agent sessions come with populations)."""

    kind: Literal["poisson", "concurrency", "all_at_once", "replay"] = Field(
        "poisson", description="poisson: `rate`; concurrency: `concurrency` closed-loop clients; all_at_once: "
                               "`count` requests at t=0; replay: timestamps and sizes from `file`")
    rate: float = Field(0.0, ge=0, description="poisson: requests per second")
    concurrency: int = Field(0, ge=0, description="concurrency: clients, each sends its next request when "
                                                  "the last one ends")
    think_s: Dist | None = Field(None, description="concurrency: pause between a client's requests")
    count: int = Field(0, ge=0, description="requests to send (0 = until the end of the run); all_at_once: required")
    input_tokens: Dist = Field(default_factory=lambda: Dist(kind="constant", value=1024))
    output_tokens: Dist = Field(default_factory=lambda: Dist(kind="constant", value=128))
    model: str | None = Field(None, description="only pools serving this model receive the stream (default: all)")
    file: str | None = Field(None, description="replay: CSV with columns arrival_s,input_tokens,output_tokens")
    priority: int = Field(0, description="admission priority (lower goes first with admission=priority)")

    @field_validator("input_tokens", "output_tokens", "think_s", mode="before")
    @classmethod
    def _dists(cls, v: Any) -> Any:
        return _dist(v)

    @model_validator(mode="after")
    def _needs(self) -> "Stream":
        need = {"poisson": ("rate", self.rate > 0), "concurrency": ("concurrency", self.concurrency > 0),
                "all_at_once": ("count", self.count > 0), "replay": ("file", bool(self.file))}
        field, ok = need[self.kind]
        if not ok:
            raise ValueError(f"a {self.kind} stream needs {field}")
        return self


class Scenario(Model):
    """Everything one run needs. Units: seconds, tokens, USD, W."""

    name: str = Field("scenario", description="a label for reports")
    description: str = Field("", description="free text")
    duration_s: float = Field(3600.0, gt=0, description="simulated time (s); requests still running then are "
                                                        "recorded as in_flight")
    warmup_s: float = Field(0.0, ge=0, description="requests arriving before this are left out of summaries")
    seed: int = Field(1, ge=0, description="base seed (overridden by --seed)")
    sample_s: float = Field(60.0, gt=0, description="interval of the time series (s)")
    catalog: list[str] = Field(default_factory=list, description="extra catalog TOML files (relative to the scenario)")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    sites: dict[str, Site] = Field(default_factory=lambda: {"default": Site()})
    pools: dict[str, Pool] = Field(description="replica pools by name")
    router: Router = Field(default_factory=Router)
    outages: list[Outage] = Field(default_factory=list)
    streams: dict[str, Stream] = Field(default_factory=dict, description="request streams by name")
    slo_ttft_s: float = Field(2.0, gt=0, description="TTFT bound for goodput")
    slo_tpot_s: float = Field(0.1, gt=0, description="TPOT bound for goodput")

    @model_validator(mode="after")
    def _refs(self) -> "Scenario":
        if not self.pools:
            raise ValueError("a scenario needs at least one pool")
        for name, pool in self.pools.items():
            if pool.site not in self.sites:
                raise ValueError(f"pools.{name}.site {pool.site!r} is not in [sites] ({', '.join(self.sites)})")
            unknown = set(pool.engine) - set(EngineSettings.model_fields)
            if unknown:
                bad = sorted(unknown)[0]
                near = difflib.get_close_matches(bad, list(EngineSettings.model_fields), n=1)
                raise ValueError(f"pools.{name}.engine.{bad} is not an engine setting"
                                 + (f" (did you mean {near[0]!r}?)" if near else ""))
        for i, o in enumerate(self.outages):
            kind, _, target = o.target.partition(":")
            table = self.pools if kind == "pool" else self.sites
            if target not in table:
                raise ValueError(f"outages[{i}].target {o.target!r}: no such {kind} ({', '.join(table)})")
            if o.start_s >= self.duration_s:
                raise ValueError(f"outages[{i}] starts at {o.start_s} s, after the run ends ({self.duration_s} s)")
        return self

    def pool_engine(self, name: str) -> EngineSettings:
        """The engine settings of one pool: [engine] with the pool's overrides."""
        return EngineSettings(**{**self.engine.model_dump(), **self.pools[name].engine})


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


def explain(err: ValidationError, where: str, root: type[BaseModel] = Scenario) -> str:
    """One message naming each bad field, its value and what is allowed."""
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc, root)
            names = list(owner.model_fields) if owner is not None else []
            near = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            out.append(f"{where}: unknown field {path!r}{hint} (allowed here: {', '.join(names)})")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        out.append(f"{where}: {path}: {msg}{shown}" if path else f"{where}: {msg}")
    return "; ".join(out)


def parse(data: dict, where: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise InputError(explain(e, where)) from None


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


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read a scenario file, apply ``path.to.field=value`` overrides, validate."""
    data = read_toml(path)
    base = Path(path).parent
    data = apply_overrides(data, overrides)
    data["catalog"] = [str((base / c).resolve()) if not Path(c).is_absolute() else c for c in data.get("catalog", [])]
    for s in data.get("streams", {}).values():
        if isinstance(s, dict) and s.get("file") and not Path(s["file"]).is_absolute():
            s["file"] = str((base / s["file"]).resolve())
    return parse(data, where=str(path))


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
    import copy
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
