"""The fitted per-operator model: measured-table grids shipped in ``data/opmodel.npz``.

Each op answers a latency in seconds for arrays of sizes on one GPU: its roofline time (this
GPU's datasheet peaks, :mod:`agentsim.model.opfit`) divided by the efficiency the grid of the closest
fitted GPU gives at those sizes. A GPU with its own tables is ``measured``; one without borrows the
closest fitted GPU's grids (``transferred``: same generation first, then nearest peaks); sizes
outside the measured range make it ``extrapolated``. No package beyond numpy is needed here.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import opfit
from .hardware import GPU
from .opgrid import Curve, Grid

DATA = Path(__file__).resolve().parents[1] / "data" / "opmodel.npz"
LABELS = ("measured", "transferred", "extrapolated")


class OpModel:
    """All fitted GPUs' grids and curves, with the source they were fitted from."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.meta = json.loads(str(arrays["meta"]))
        self.ops: dict[tuple[str, str, str, str], Grid | Curve] = {}
        for key in self.meta["entries"]:
            engine, gpu, op, cat = key.split("|")
            if opfit.OP_CLASSES[op].curve_x is not None:
                self.ops[(engine, gpu, op, cat)] = Curve(*arrays[f"{key}/curve"])
            else:
                self.ops[(engine, gpu, op, cat)] = Grid.from_arrays(arrays, key, opfit.OP_CLASSES[op].axes)
        self.engines = tuple(self.meta["engines"])
        self.gpus = tuple(self.meta["gpus"])
        self.generation = dict(self.meta["generation"])
        self.peaks = {g: tuple(v) for g, v in self.meta["peaks"].items()}

    @classmethod
    def load(cls, path: Path = DATA) -> "OpModel":
        return _load(str(path))

    # -- which fitted GPU answers for a GPU --------------------------------------------------------------
    def source(self, gpu: GPU) -> tuple[str, str]:
        """``(fitted GPU, label)``: the GPU's own tables, else the closest fitted GPU (transferred)."""
        if gpu.name in self.gpus:
            return gpu.name, "measured"
        same = [g for g in self.gpus if self.generation[g] == gpu.generation] or list(self.gpus)

        def distance(g: str) -> float:
            flops, bw = self.peaks[g]
            return abs(math.log(gpu.bf16_tflops / flops)) + abs(math.log(gpu.hbm_tbps / bw))

        return min(same, key=distance), "transferred"

    def op(self, engine: str, fitted: str, op: str, cat: str) -> Grid | Curve:
        """The grid for an op, from the engine's own tables on this GPU, else the first engine (and
        then GPU) that has it — :meth:`has` tells the caller whether it borrowed."""
        for e in (engine, *self.engines):
            if (e, fitted, op, cat) in self.ops:
                return self.ops[(e, fitted, op, cat)]
        for (e, g, o, c), v in self.ops.items():
            if o == op and c == cat:
                return v
        raise KeyError(f"no fitted {op} data for {cat!r}")

    def has(self, engine: str, fitted: str, op: str, cat: str) -> bool:
        return (engine, fitted, op, cat) in self.ops

    def categories(self, engine: str, fitted: str, op: str) -> list[str]:
        return [c for (e, g, o, c) in self.ops if e == engine and g == fitted and o == op]


@lru_cache(maxsize=4)
def _load(path: str) -> OpModel:
    with np.load(path, allow_pickle=False) as z:
        return OpModel({k: z[k] for k in z.files})


def data_info() -> dict:
    """Package version and data hash of the shipped fit (written into run manifests)."""
    if not DATA.exists():
        return {"package": opfit.optables.PACKAGE, "version": "none", "data_hash": "none"}
    m = OpModel.load().meta
    return {"package": m["package"], "version": m["version"], "data_hash": m["data_hash"]}
