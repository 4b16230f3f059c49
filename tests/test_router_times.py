"""``StepCoeffs.router_times`` stands for four ``step_time`` calls in the load-aware routers' hot loop:
it must give the same bits for every pool, batch size (inside and beyond the tables) and prompt."""
from __future__ import annotations

import pytest
from engine_harness import coeffs
from hypothesis import given, settings
from hypothesis import strategies as st

from agentsim.model.servicetime import N_MAX, T_MAX


def four_calls(c, P, typ, done, n, ctx):
    prefill = c.step_time(P, P * P / 2, P, n, n * ctx, n + 1)
    decode = c.step_time(decodes=n + 1, decode_context=(n + 1) * ctx)
    base = c.step_time(decodes=n, decode_context=n * ctx)
    return prefill, decode, c.step_time(typ, typ * done + typ * typ / 2, P, n, n * ctx, n + 1) - base


@pytest.mark.parametrize("dep", ["llama8b-h100", "deepseekv3-8xh200-fp8", "deepseekv3-16xh100-dp16ep16"])
@settings(max_examples=300, deadline=None)
@given(P=st.integers(1, 2 * T_MAX), cut=st.floats(0.0, 1.0), n=st.integers(0, N_MAX + 40),
       ctx=st.floats(1.0, 3e5))
def test_same_bits_as_step_time(dep, P, cut, n, ctx):
    c = coeffs(dep)
    typ = max(1, int(P * cut))
    done = P - typ
    assert c.router_times(P, typ, done, n, ctx) == four_calls(c, P, typ, done, n, ctx)
