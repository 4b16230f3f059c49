"""estimate --range-ratio: lengths drawn like a benchmark client's --random-range-ratio."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agentsim.run.api import simulate
from agentsim.studies.estimate import estimate_scenario

from cli_helper import cli

KW = dict(model="Llama-3-8B", gpu="H100-SXM", input_tokens=1024, output_tokens=256, concurrency=16, requests=2000)


def test_lengths_are_uniform_integers_between_ratio_and_full_length():
    res = simulate(estimate_scenario(range_ratio=0.8, **KW), seed=3)
    for col, full in (("input_tokens", 1024), ("output_tokens", 256)):
        x = res.requests[col].to_numpy()
        low = math.floor(0.8 * full)
        assert x.min() == low and x.max() == full and np.all(x == np.round(x))
        # the mean of the integers low..full, within 4 standard errors of a uniform draw
        sd = (full - low + 1) / math.sqrt(12)
        assert abs(x.mean() - (low + full) / 2) < 4 * sd / math.sqrt(len(x))


def test_ratio_one_is_the_fixed_length_run():
    a = simulate(estimate_scenario(**KW), seed=1).requests
    b = simulate(estimate_scenario(range_ratio=1.0, **KW), seed=1).requests
    assert a.equals(b)


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_bad_ratio_is_one_line(value):
    code, out, err = cli("estimate", "--model", "Llama-3-8B", "--gpu", "H100-SXM", "--input-tokens", "100",
                         "--output-tokens", "10", "--concurrency", "1", "--range-ratio", value)
    assert code == 2 and "--range-ratio" in err and len(err.strip().splitlines()) == 1
