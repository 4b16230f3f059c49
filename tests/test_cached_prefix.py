"""A stream's cached prefix (``streams.X.cached_tokens``, ``estimate --cached-tokens``): the prefix is
not recomputed, but the chunk's attention runs over it — so a request with a cached prefix costs
more than the same new tokens alone and less than the whole prompt computed."""
from __future__ import annotations

import pytest

from agentsim.util.errors import InputError
from agentsim.studies.estimate import estimate

BASE = dict(model="Llama-3.1-8B", gpu="H100-SXM", output_tokens=2, concurrency=1, requests=20)


def ttft(**kw) -> float:
    return estimate(**{**BASE, **kw})["ttft_s"]


def test_cached_prefix_costs_its_attention_but_not_its_tokens():
    new_only = ttft(input_tokens=2000)
    with_prefix = ttft(input_tokens=32000, cached_tokens=30000)
    whole = ttft(input_tokens=32000)
    assert new_only < with_prefix < whole
    # the prefix adds attention pairs (2 k x 30 k), not 30 k tokens through the weights
    assert with_prefix < 0.5 * whole


def test_cached_tokens_must_leave_a_token_to_compute():
    with pytest.raises(InputError, match="--cached-tokens must be in"):
        estimate(**{**BASE, "input_tokens": 100, "cached_tokens": 100})


def test_a_streams_cached_prefix_is_not_prefilled():
    """Every request prefills its prompt minus the drawn prefix (capped at the prompt minus one)."""
    from agentsim.run.api import simulate
    sc = {"name": "cached", "duration_s": 30, "sample_s": 30,
          "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3.1-8B", "replicas": 1}},
          "streams": {"s": {"kind": "poisson", "rate": 2, "input_tokens": {"kind": "uniform", "low": 500, "high": 900},
                            "output_tokens": 4, "cached_tokens": {"kind": "uniform", "low": 0, "high": 1200}}}}
    df = simulate(sc, seed=3).requests
    done = df[df["outcome"] == "completed"]
    assert len(done) > 20
    cached = done["cached_gpu_tokens"]
    assert (cached <= done["input_tokens"] - 1).all() and (cached > 0).mean() > 0.9
    assert (done["prefill_tokens"] == done["input_tokens"] - cached).all()
    assert (cached == done["input_tokens"] - 1).any()        # a prefix longer than the prompt is capped
