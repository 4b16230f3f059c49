"""The idealised systems ``agentsim validate`` holds against queueing theory (see agentsim.studies.validate).

A tiny model on two idealised GPUs (``data/validation/catalog.toml``): one whose every step takes
δ whatever the batch (c parallel servers, or infinitely many), one whose step costs β per running
request (processor sharing); scenarios of one replica fed by a stream; output-length laws.
"""
from __future__ import annotations

from functools import lru_cache

from ..model.catalog import data_path, load_catalog
from ..model.deployment import Deployment
from ..model.servicetime import StepCoeffs
from ..run.api import simulate as _simulate

MODEL = "validation-tiny"
CONST_GPU = "ValidationConst"
PS_GPU = "ValidationPS"
UNLIMITED = 1 << 20


def catalog_file() -> str:
    return str(data_path("validation/catalog.toml"))


@lru_cache(maxsize=4)
def coeffs(gpu: str) -> StepCoeffs:
    cat = load_catalog((catalog_file(),))
    return StepCoeffs.of(Deployment.from_catalog(cat, MODEL, gpu))


def step_s() -> float:
    """δ: one step of the constant-step GPU (one decode at a short context)."""
    return coeffs(CONST_GPU).step_time(decodes=1, decode_context=1)


def beta_s() -> float:
    """β: seconds one request adds to a step of the processor-sharing GPU."""
    c = coeffs(PS_GPU)
    return (c.F(2) - c.F(1)) + (c.H(2) - c.H(1))      # one more request in a step: its token and its logits


# -- scenarios ------------------------------------------------------------------------------------------
def geometric(mean: float) -> dict:
    """Output lengths O ~ Geometric on 1, 2, ... with E[O] = mean."""
    return {"kind": "geometric", "mean": mean - 1, "offset": 1}


def uniform_int(low: int, high: int) -> dict:
    """Output lengths uniform on the integers low..high."""
    return {"kind": "uniform", "low": low - 0.5, "high": high + 0.5, "round": "round"}


def scenario(stream: dict, *, gpu: str = CONST_GPU, max_batch: int = 1, duration_s: float = 1e8,
             policies: list | None = None, sample_s: float | None = None, populations: dict | None = None) -> dict:
    """One replica of the tiny model on an idealised GPU, fed by ``stream`` (a dict)."""
    sc = {"name": "validation", "duration_s": duration_s, "sample_s": sample_s or duration_s,
          "catalog": [catalog_file()],
          "engine": {"max_batch": max_batch, "token_budget": UNLIMITED, "retention": "none"},
          "pools": {"v": {"gpu": gpu, "model": MODEL}},
          "streams": {"s": stream} if stream else {},
          "slo_ttft_s": 1e9, "slo_tpot_s": 1e9}
    if policies:
        sc["policies"] = policies
    if populations:
        sc["populations"] = populations
    return sc


def poisson(rate: float, count: int, output) -> dict:
    return {"kind": "poisson", "rate": rate, "count": count, "input_tokens": 1, "output_tokens": output}


def simulate(sc: dict, seed: int):
    return _simulate(sc, seed=seed)
