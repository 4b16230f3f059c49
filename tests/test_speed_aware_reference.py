"""``SpeedAware`` skips candidates it knows cannot win (a twin of an earlier one: same pool, batch and
queue, no cached prefix) and shares step times within a pool; its pick must be the plain rule's:
score every candidate with the expected-finish formula, the first of the lowest wins."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from agentsim.model.catalog import load_catalog
from agentsim.model.deployment import Deployment
from agentsim.model.servicetime import StepCoeffs
from agentsim.serving.cluster import SpeedAware
from agentsim.serving.prefix_cache import CacheConfig, PrefixCache
from agentsim.serving.replica_base import ReplicaBase
from agentsim.serving.request import Request

CAT = load_catalog()
COEFFS = [StepCoeffs.of(Deployment.from_catalog(CAT, "Llama-3-8B", gpu)) for gpu in ("H100-SXM", "B200", "A100-80GB")]
KEY = ("s", 1)


class Clock:
    now = 10.0


class Cand:
    """What the router reads of a replica (``route_view`` over the attributes set here)."""

    route_view = ReplicaBase.route_view

    def __init__(self, c, n: int, q: int, cached: int, clock) -> None:
        self.c, self.n_running, self.queued, self.env = c, n, q, clock
        self.cache = None
        if cached >= 0:
            self.cache = PrefixCache(CacheConfig(ttl_s=300.0))
            if cached > 0:
                self.cache.put(KEY, cached, 0.0)


def reference(cands, req) -> object:
    """Every candidate scored, nothing skipped or shared: the first of the lowest expected finish."""
    P, O = req.prompt, req.output
    ctx = P + O / 2
    key = req.prefix_key
    typ = max(1, P - req.prefix_len) if key is not None else P
    best, best_t = cands[0], float("inf")
    for r in cands:
        c, n, q = r.c, r.n_running, r.queued
        prefill, decode, extra = c.router_times(P, typ, P - typ, n, ctx)
        hit = r.cache.gpu_hit(key, r.env.now) if key is not None and r.cache is not None else 0
        own = prefill
        if hit:
            hit = min(hit, req.prefix_len, P - 1)
            new = P - hit
            own = c.step_time(new, new * hit + new * new / 2, P, n, n * ctx, n + 1)
        t = q * prefill + own + (O - 1) * (decode + (n + q + 1) * extra / O)
        if t < best_t:
            best, best_t = r, t
    return best


cand = st.tuples(st.integers(0, len(COEFFS) - 1), st.integers(0, 6), st.integers(0, 4),
                 st.sampled_from([-1, 0, 0, 2_000, 30_000]))


@settings(max_examples=300, deadline=None)
@given(specs=st.lists(cand, min_size=2, max_size=12), prompt=st.integers(2, 40_000), output=st.integers(1, 2_000),
       prefix=st.one_of(st.none(), st.integers(0, 40_000)))
def test_pick_is_the_plain_rules(specs, prompt, output, prefix):
    clock = Clock()
    cands = [Cand(COEFFS[i], n, q, cached, clock) for i, n, q, cached in specs]
    req = Request(0, 0.0, prompt, output, session=1, prefix_key=None if prefix is None else KEY,
                  prefix_len=0 if prefix is None else min(prefix, prompt))
    assert SpeedAware(None, None)(cands, req) is reference(cands, req)
