"""JSON as agentsim writes it everywhere: strict JSON, a missing or non-finite number is ``null``.

Python's ``json`` writes NaN and Infinity as bare ``NaN``/``Infinity``, which other JSON readers
reject; every ``--format json`` command, ``summary.json`` and ``manifest.json`` go through
:func:`dumps`, which converts first and then refuses (``allow_nan=False``) anything left over.
"""
from __future__ import annotations

import json
import math


def jsonable(o):
    """``o`` with dict keys as strings, tuples as lists, numpy scalars as Python numbers and every
    NaN/inf (float, numpy float, pandas NA) as None."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, str):
        return o
    if isinstance(o, int):
        return o
    if isinstance(o, float):
        return float(o) if math.isfinite(o) else None
    item = getattr(o, "item", None)                  # numpy scalars
    if callable(item) and getattr(o, "shape", None) == ():
        return jsonable(item())
    if type(o).__name__ in ("NAType", "NaTType"):    # pandas missing values
        return None
    tolist = getattr(o, "tolist", None)              # numpy arrays
    if callable(tolist):
        return jsonable(tolist())
    return str(o)


def dumps(o, indent: int | None = 2) -> str:
    """Strict JSON text of ``o`` (see :func:`jsonable`)."""
    return json.dumps(jsonable(o), indent=indent, allow_nan=False)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested figures → one level with dotted keys (scalars only)."""
    out: dict = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[name] = v
    return out
