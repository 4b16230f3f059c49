"""Where the package's shipped data lives (catalogs, presets, op model, calibration points)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(name: str) -> Path:
    """Path of a file shipped in ``agentsim/data``."""
    return Path(str(resources.files("agentsim") / "data" / name))
