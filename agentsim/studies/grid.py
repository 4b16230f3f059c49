"""Grid and ``--set`` paths: parsing ``PATH=V1,V2`` specs and checking dotted field paths.

Shared by sweeps (``--grid``) and capacity searches (``--vary``): a path is checked against the
validated scenario before anything runs, with a message naming the unknown field and the near
miss, so a typo never costs a sweep.
"""
from __future__ import annotations

import difflib
import json
from typing import Any

from ..run import scenario as scn
from ..run.scenario import EngineSettings
from ..util.errors import InputError

#: free-form tables below which paths are not checked here (the scenario's validation checks them)
FREE = (("pools", "*", "engine"), ("populations", "*", "params"), ("policies", "*"))


# -- grid parsing and path checks -----------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """``a,b,{x=1,y=2},[1,2],"c,d"`` → its top-level comma-separated items."""
    items, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur).strip())
    return items


def parse_grid(specs) -> list[tuple[str, list[str]]]:
    """``["PATH=v1,v2", ...]`` (or ``(path, [values])`` pairs) → ``[(path, [value texts])]``."""
    out: list[tuple[str, list[str]]] = []
    for spec in specs:
        if isinstance(spec, str):
            path, sep, text = spec.partition("=")
            path = path.strip()
            if not sep or not path or not text.strip():
                raise InputError(f"--grid {spec!r}: expected PATH=V1,V2,..., e.g. pools.h100.replicas=2,4,8")
            values = split_values(text)
            if any(v == "" for v in values):
                raise InputError(f"--grid {spec!r}: an empty value (two commas in a row?)")
        else:
            path, values = spec
            values = [v if isinstance(v, str) else json.dumps(v) for v in values]
            if not values:
                raise InputError(f"--grid {path!r}: no values")
        if any(p == path for p, _ in out):
            raise InputError(f"--grid {path!r} is given twice; give all its values in one --grid")
        out.append((path, values))
    return out


def value(text: str) -> Any:
    """A grid or ``--set`` value as the scenario will read it."""
    return scn._value(text)


def check_path(data: dict, path: str, where: str) -> Any:
    """The value at dotted ``path`` of a validated scenario's dump; an InputError if no such field.

    Below the free-form tables (``pools.X.engine``, ``populations.X.params``, ``policies.N``)
    only engine settings are checked here: the scenario's own validation checks the rest.
    Returns the current value (None when it is not set in a free-form table).
    """
    keys = path.split(".")
    if not path or any(k == "" for k in keys):
        raise InputError(f"{where} {path!r}: not a field path (expected e.g. pools.h100.replicas)")
    node: Any = data
    for i, k in enumerate(keys):
        done = keys[:i]
        if _free(done):
            if done[0] == "pools" and k not in EngineSettings.model_fields:
                near = difflib.get_close_matches(k, list(EngineSettings.model_fields), n=1)
                raise InputError(f"{where} {path!r}: {k!r} is not an engine setting"
                                 + (f"; did you mean {near[0]!r}?" if near else "")
                                 + f" (allowed: {', '.join(EngineSettings.model_fields)})")
            if isinstance(node, dict) and k in node:
                node = node[k]
                continue
            return None
        if isinstance(node, list):
            try:
                node = node[int(k)]
            except (ValueError, IndexError):
                raise InputError(f"{where} {path!r}: {'.'.join(done)} is a list of {len(node)}; "
                                 f"{k!r} is not an index of it") from None
            continue
        if not isinstance(node, dict):
            raise InputError(f"{where} {path!r}: {'.'.join(done)} is a value, not a table")
        if k not in node:
            names = list(node)
            near = difflib.get_close_matches(k, names, n=1, cutoff=0.5)
            at = f" in {'.'.join(done)}" if done else ""
            raise InputError(f"{where} {path!r}: unknown field {k!r}{at}"
                             + (f"; did you mean {near[0]!r}?" if near else "")
                             + f" (known: {', '.join(map(str, names)) or 'none'})")
        node = node[k]
    return node


def _free(keys: list[str]) -> bool:
    return any(len(keys) >= len(pat) and all(p == "*" or p == k for p, k in zip(pat, keys))
               for pat in FREE)
