"""Running totals and ordered routing (issue 20): the O(1) / O(log R) answers equal the sums and
scans they replace.

The cluster counts requests per replica from submit to end and keeps, per candidate set, their
total and (for ``least_outstanding``) a heap. Checked two ways: a property test drives a cluster of
counting stand-ins through random submits, ends, failures, repairs and drains; and real runs (agents
with retries and timeouts, faults, the gateway's shedding, a KV tier, disaggregated pools) check every
total at every routing decision and compare every ordered pick with the scan.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from agentsim.run.api import load_scenario
from agentsim.run.build import build
from agentsim.serving.cluster import Candidates, Cluster, LeastOutstanding, least_outstanding_scan
from agentsim.serving.request import Request


class Counting:
    """A stand-in replica that holds what it is given until told to end one (FIFO)."""

    def __init__(self, index: int) -> None:
        self.index, self.up, self.on_done, self.held = index, True, None, []

    @property
    def outstanding(self) -> int:
        return len(self.held)

    def submit(self, req: Request) -> None:
        if not self.up:                   # as a real replica: a down one ends it at once
            req.outcome = "replica_failed"
            return self.on_done(req)
        self.held.append(req)

    def end_one(self) -> None:
        req = self.held.pop(0)
        req.outcome = "completed"
        self.on_done(req)

    def fail(self) -> None:
        self.up = False
        victims, self.held = self.held, []
        for req in victims:
            self.on_done(req)

    def repair(self) -> None:
        self.up = True


def stub_cluster(n: int) -> tuple[Cluster, list]:
    reps = [Counting(i) for i in range(n)]
    ended = []
    for r in reps:
        r.on_done = ended.append
    pool = SimpleNamespace(deployment=SimpleNamespace(model=SimpleNamespace(name="m")), role="mixed", replicas=reps)
    env = SimpleNamespace(now=0.0)
    return Cluster(env, [pool], LeastOutstanding(None, None), ended.append), ended


OPS = st.lists(st.tuples(st.sampled_from(["submit", "submit", "end", "end", "down", "up", "drain", "route"]),
                         st.integers(0, 11)), max_size=300)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_running_totals_and_the_ordered_pick_equal_the_sum_and_the_scan(ops):
    cl, ended = stub_cluster(12)
    rid = 0
    for op, i in ops:
        r = cl.replicas[i]
        if op == "submit":
            cl.enter(Request(rid, 0.0, 10, 10), r)
            rid += 1
        elif op == "end" and r.held:
            r.end_one()
        elif op == "down":
            cl.take_down(i)
        elif op == "up":
            cl.bring_up(i)
        elif op == "drain":
            cl.set_routable(i, not cl.routable[i])
        cands = cl.candidates("m")
        assert type(cands) is Candidates
        assert cands == [x for x in cl.replicas if x.up and cl.routable[x.index]]
        cl.check_totals()
        if cands:
            assert cands.least() is least_outstanding_scan(list(cands))
    assert len(ended) == rid - sum(r.outstanding for r in cl.replicas)    # every request ends once


def test_ties_go_to_the_first_candidate_like_the_scan():
    cl, _ = stub_cluster(5)
    for i in (0, 0, 1, 3, 3, 4):
        cl.enter(Request(i, 0.0, 10, 10), cl.replicas[i])
    cands = cl.candidates("m")
    assert cands.least() is cl.replicas[2] is least_outstanding_scan(list(cands))
    cl.enter(Request(9, 0.0, 10, 10), cl.replicas[2])
    assert cands.least() is cl.replicas[1] is least_outstanding_scan(list(cands))   # 1 and 2 tie at one: the first
    cl.replicas[0].end_one()
    cl.replicas[0].end_one()
    assert cands.least() is cl.replicas[0]


def checked(sim, compare_scan: bool) -> list:
    """Spy on ``sim``'s router: every running total checked at every decision, and with
    ``compare_scan`` every pick compared with the least-outstanding scan."""
    real, cl, picks = sim.cluster.router, sim.cluster, []

    def spy(cands, req):
        cl.check_totals()
        pick = real(cands, req)
        if compare_scan:
            assert pick is least_outstanding_scan(list(cands))
        picks.append(pick.index)
        return pick

    cl.router = spy
    return picks


def agents(policy: str, **extra) -> dict:
    return {"name": "totals", "duration_s": 1800.0, "seed": 3, "sample_s": 300.0,
            "engine": {"retention": "pin_session", "prefix_ttl_s": 600.0, "host_kv_gb": 50.0},
            "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3.1-8B", "replicas": 2,
                            "faults": {"mtbf_h": 0.1, "mttr_h": 0.02}},
                      "b": {"gpu": "A100-SXM-80GB", "model": "Llama-3.1-8B", "replicas": 1}},
            "router": {"policy": policy},
            "policies": [{"name": "overload_shedding", "max_outstanding_per_replica": 3}],
            "populations": {"coders": {"profile": "interactive_coding_agent", "size": 4000, "arrival": "custom",
                                        "weekday": [1.0] * 24, "weekend": [1.0] * 24}}, **extra}


@pytest.mark.parametrize("policy", ["least_outstanding", "session_affinity"])
def test_totals_hold_at_every_decision_of_an_agent_run_with_faults_and_shedding(policy):
    sim = build(load_scenario(agents(policy)))
    picks = checked(sim, policy == "least_outstanding")
    res = sim.run()
    sim.cluster.check_totals()
    rq = res.requests
    assert len(picks) > 500
    assert (rq["outcome"] == "replica_failed").sum() > 0 and (rq["outcome"] == "529_overload").sum() > 0
    assert set(picks) == {0, 1, 2}


def test_totals_hold_with_a_kv_tier_and_disaggregated_pools():
    spec = agents("least_outstanding", kv_tier={"capacity_gb": 20.0})
    spec["engine"]["prefix_cache"] = "session"
    spec["pools"] = {"pre": {"gpu": "H100-SXM", "model": "Llama-3.1-8B", "replicas": 2, "role": "prefill"},
                     "dec": {"gpu": "H100-SXM", "model": "Llama-3.1-8B", "replicas": 2, "role": "decode",
                             "faults": {"mtbf_h": 0.1, "mttr_h": 0.02}},
                     "mix": {"gpu": "H100-SXM", "model": "Llama-3.1-8B", "replicas": 2}}
    sim = build(load_scenario(spec))
    picks = checked(sim, True)
    decode = sim.cluster.handoff.router
    sim.cluster.handoff.router = lambda cands, req: (sim.cluster.check_totals(), decode(cands, req))[1]
    sim.run()
    sim.cluster.check_totals()
    assert len(picks) > 500 and sim.cluster.kv_tier.loads > 0


# -- the spend cap's month, worked out once a month ------------------------------------------------------
def _month_per_call(start, now):
    """What the spend cap did before issue 20, on every call."""
    from datetime import timedelta
    d = start + timedelta(seconds=now)
    return d.year, d.month


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=__import__("datetime").datetime(2020, 1, 1),
                    max_value=__import__("datetime").datetime(2030, 1, 1)),
       st.sampled_from(["UTC", "America/Los_Angeles", "Asia/Kolkata"]),
       st.lists(st.floats(0, 4e7, allow_nan=False), min_size=1, max_size=40), st.booleans())
def test_the_spend_caps_month_equals_the_date_worked_out_on_every_call(start, tz, times, edges):
    from zoneinfo import ZoneInfo
    from agentsim.provider.policies.spend_cap import SpendCap
    start = start.replace(tzinfo=ZoneInfo(tz))
    if edges:       # times on, and a hair either side of, the month edges the times fall in (found here by dates)
        from datetime import timedelta
        more = []
        for t in times:
            first = (start + timedelta(seconds=t)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            after = (first + timedelta(days=32)).replace(day=1)
            for edge in ((first - start).total_seconds(), (after - start).total_seconds()):
                more += [edge + d for d in (-2e-3, -1e-3, -1e-6, -4e-7, 0.0, 4e-7, 1e-6, 1e-3, 2e-3) if edge + d >= 0]
        times = sorted(times + more)
    cap = SpendCap.__new__(SpendCap)
    cap.view = SimpleNamespace(start=start)
    cap._span = (0.0, -1.0, (0, 0))
    for t in times:
        assert cap._month(t) == _month_per_call(start, t), (start, t)
