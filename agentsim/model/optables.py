"""Reader for measured per-operation GPU timing tables (NVIDIA ``aiconfigurator-core``, Apache-2.0).

The package ships parquet tables of kernel latencies measured on real GPUs for the operations an LLM
step is made of (GEMMs, context and generation attention, MLA modules, MoE experts, all-reduce and
MoE all-to-all), per GPU system, serving engine and engine version. agentsim uses its **data**, never
its estimators: :mod:`agentsim.model.opfit` fits the shipped step model to these rows.

The package is an optional extra (``pip install 'agentsim[optables]'``, an ~82 MB platform wheel):
nothing here is needed at run time, only to refit (``agentsim calibrate --refit``) or to report the
op-level fit. Tables come back as tidy frames with ``latency_s`` in seconds and sizes as integers.
"""
from __future__ import annotations

import hashlib
from importlib import metadata, util
from pathlib import Path

from ..util.errors import InputError

PACKAGE = "aiconfigurator-core"
PIN = "0.12.*"

#: our catalog GPU name -> the package's system directory
SYSTEMS = {
    "A100-SXM-80GB": "a100_sxm",
    "H100-SXM": "h100_sxm",
    "H200": "h200_sxm",
    "B200": "b200_sxm",
    "GB200": "gb200",
    "L40S": "l40s",
}

#: op class -> (table directory, parquet file)
OPS = {
    "gemm": ("gemm", "gemm_perf.parquet"),
    "context_attention": ("attention", "context_attention_perf.parquet"),
    "generation_attention": ("attention", "generation_attention_perf.parquet"),
    "mla_context": ("mla", "mla_context_module_perf.parquet"),
    "mla_generation": ("mla", "mla_generation_module_perf.parquet"),
    "moe": ("moe", "moe_perf.parquet"),
    "all_reduce": ("comm", "custom_allreduce_perf.parquet"),
    "nccl": ("comm", "nccl_perf.parquet"),
    "all_to_all": ("comm", "moe_a2a_perf.parquet"),
}

#: engine preferred for the shipped fit, then the fall-backs (same order for every GPU)
ENGINES = ("vllm", "sglang", "trtllm")


def data_root() -> Path:
    """The installed package's ``systems/data`` directory, or one clear message what to install."""
    spec = util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the measured op tables need the optional package {PACKAGE} "
                         f"(install with: pip install 'agentsim[optables]', which pins {PACKAGE}=={PIN})")
    root = Path(list(spec.submodule_search_locations)[0]) / "systems" / "data"
    if not root.is_dir():
        raise InputError(f"{PACKAGE} is installed but has no systems/data directory at {root}; "
                         f"reinstall {PACKAGE}=={PIN}")
    return root


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "absent"


def _version_key(v: str) -> tuple:
    parts = []
    for p in v.replace("rc", ".").replace("post", ".").replace("dev", ".").split("."):
        parts.append(int(p) if p.isdigit() else -1)
    return tuple(parts)


def table_path(root: Path, gpu: str, op: str, engine: str | None = None, version: str | None = None) -> Path:
    """The parquet file for one GPU / op / engine / version (newest version, first engine by default)."""
    if gpu not in SYSTEMS:
        raise InputError(f"gpu {gpu!r} has no measured op tables; allowed: {', '.join(SYSTEMS)}")
    if op not in OPS:
        raise InputError(f"op {op!r} unknown; allowed: {', '.join(OPS)}")
    folder, name = OPS[op]
    base = root / SYSTEMS[gpu] / folder
    engines = ([engine] if engine else list(ENGINES)) if op != "nccl" else ["nccl"]
    for eng in engines:
        d = base / eng
        if not d.is_dir():
            continue
        versions = sorted((v.name for v in d.iterdir() if (v / name).is_file()), key=_version_key)
        if version is not None:
            versions = [v for v in versions if v == version]
        if versions:
            return d / versions[-1] / name
    raise InputError(f"no {op} table for gpu {gpu} (engine {engine or 'any'}, version {version or 'newest'}) "
                     f"under {base}")


def read(gpu: str, op: str, engine: str | None = None, version: str | None = None, root: Path | None = None):
    """One table as a tidy frame: the package's columns plus ``latency_s`` (its ``latency`` is in ms)."""
    import pandas as pd  # local: pandas is only needed when tables are read

    path = table_path(root or data_root(), gpu, op, engine, version)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # a truncated or foreign file: name it
        raise InputError(f"{path}: not a readable parquet table ({exc})") from None
    df["latency_s"] = df["latency"].astype(float) * 1e-3
    df["gpu"] = gpu
    df["engine"] = path.parent.parent.name
    df["engine_version"] = path.parent.name
    return df


def tables_hash(paths: list[Path]) -> str:
    """SHA-256 over the bytes of the tables a fit read (sorted by path), first 16 hex digits."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
