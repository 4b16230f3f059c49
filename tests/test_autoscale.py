"""Provider autoscaling (serving/autoscale.py): when replicas come, what they cost, and that
scale-in drains instead of dropping.

One H100 pool of Llama-3-70B FP8 at TP4, one replica at the start, up to three; Poisson traffic
at 20 req/s (1024 in, 256 out) from t = 0 — a step from no load to more than one replica carries
(it is ~2.5 x what one carries, see test_routing_acceptance's saturation measurement).
"""
from __future__ import annotations

import math

import pytest

from agentsim.run.build import build
from agentsim.run.scenario import Scenario
from agentsim.serving.autoscale import cold_start_s, desired_replicas
from agentsim.serving.cluster import replica_energy_j
from agentsim.util.errors import InputError

PRICE = 3.0          # USD per GPU-hour, set explicitly so the hand computation does not read the catalog
TP = 4
LLAMA_70B_PARAMS = 70.55e9   # models.toml: Llama-3-70B; FP8 = one byte per parameter


def scenario(duration_s=1200.0, rate=20.0, count=0, **autoscale) -> Scenario:
    a = {"min_replicas": 1, "max_replicas": 3, "target": "queue_delay_s", "target_value": 1.0, "period_s": 60.0}
    a.update(autoscale)
    return Scenario.model_validate({
        "name": "autoscale", "duration_s": duration_s, "warmup_s": 0, "sample_s": 60, "slo_ttft_s": 5,
        "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-70B", "precision": "fp8", "tp": TP, "replicas": 1,
                        "usd_per_gpu_hour": PRICE, "autoscale": a}},
        "streams": {"s": {"kind": "poisson", "rate": rate, "count": count, "input_tokens": 1024,
                          "output_tokens": 256}}})


def run(sc: Scenario, seed: int = 1):
    sim = build(sc, seed)
    res = sim.run()
    return sim, res


def test_cold_start_is_weights_over_bandwidth_plus_engine_start():
    sim = build(scenario(), 1)
    dep = sim.cluster.pools[0].deployment
    # 70.55 GB of FP8 weights over 4 GPUs of one node, all loaded by that node at 4.7 GB/s, + 60 s
    assert cold_start_s(dep, "local_nvme") == pytest.approx(LLAMA_70B_PARAMS / 4.7e9 + 60.0, rel=1e-3)
    assert cold_start_s(dep, "page_cache", engine_start_s=0) == pytest.approx(LLAMA_70B_PARAMS / 6.8e9, rel=1e-3)
    assert sim.scalers[0].cold_s == cold_start_s(dep, "local_nvme")


def test_a_step_up_in_load_scales_out_after_the_period_plus_the_cold_start():
    sim, res = run(scenario(duration_s=400.0))
    cold = sim.scalers[0].cold_s
    log = sim.scalers[0].log
    provisioned = [t for t, what, _ in log if what == "provision"]
    ready = {rid: t for t, what, rid in log if what == "ready"}
    # the first check (one period in) sees the queue and provisions; the replicas serve one cold start later
    assert provisioned and provisioned[0] == 60.0
    assert sorted(ready.values())[0] == pytest.approx(60.0 + cold)
    # nothing reaches a replica before it is ready
    df = res.requests
    for rid, t in ready.items():
        assert (df.loc[df["replica"] == rid, "arrival_s"] >= t).all()
        assert (df["replica"] == rid).any()


def test_gpu_hours_energy_and_cost_count_the_cold_start():
    """A target no load can meet (any running request is over it): the second replica is asked
    for at the first check, t = 60 s, and never released; its cold start (100 s) outlasts the run."""
    sc = scenario(duration_s=150.0, max_replicas=2, target="batch_occupancy", target_value=1e-9, cold_start_s=100.0)
    sim, res = run(sc)
    pool = sim.cluster.pools[0]
    second = pool.replicas[1]
    assert [(t, what) for t, what, _ in sim.scalers[0].log] == [(60.0, "provision")]
    # GPU-hours: replica 1 for 150 s, replica 2 from its provisioning (cold start) on: 90 s
    gpu_hours = TP * (150.0 + 90.0) / 3600
    assert float(res.pools["cost_usd"].iloc[0]) == pytest.approx(gpu_hours * PRICE, rel=1e-12)
    # energy: the cold-starting replica draws idle power for those 90 s and served nothing
    assert second.accounted(150.0) == (0.0, 0.0)
    assert replica_energy_j(second, pool, sim.cluster.replica_downtime(1), 150.0) == pytest.approx(
        pool.idle_power_w * 90.0, rel=1e-12)
    # a parked replica draws nothing: replica 3 does not exist here, the down share is replica 2's 60 s
    assert float(res.pools["down_frac"].iloc[0]) == pytest.approx(60.0 / (2 * 150.0), rel=1e-12)


def test_scale_in_drains_and_never_drops_a_request():
    """Traffic stops after 15000 requests (~750 s); the pool scales in while traffic still runs
    (queues short) and after it stops, back to one replica, each replica drained first."""
    sc = scenario(duration_s=1800.0, count=15000, scale_in_stable_s=120.0)
    sim, res = run(sc)
    log = sim.scalers[0].log
    spans = []                                  # (drain, park, rid): each drain with the park that ends it
    for i, (t, what, rid) in enumerate(log):
        if what == "drain":
            spans.append((t, next(u for u, w, r in log[i:] if w == "park" and r == rid), rid))
    assert len(spans) >= 2
    assert any(park > drain for drain, park, _ in spans)      # at least one drain had work to finish
    df = res.requests
    assert len(df) == 15000
    assert set(df["outcome"]) == {"completed"}
    for drain, park, rid in spans:                            # nothing arrives at a draining replica
        assert not ((df["replica"] == rid) & (df["arrival_s"] > drain) & (df["arrival_s"] < park)).any()
    assert sim.cluster.candidates(None) == [sim.cluster.replicas[0]]


def test_desired_replicas_rule():
    assert desired_replicas(3.0, 1.0, 0.2, 2, 1, 10) == 6         # ceil(2 x 3)
    assert desired_replicas(1.1, 1.0, 0.2, 2, 1, 10) == 2         # within the band
    assert desired_replicas(1.3, 1.0, 0.2, 2, 1, 10) == 3         # ceil(2.6)
    assert desired_replicas(0.0, 1.0, 0.2, 2, 1, 10) == 1         # one at a time
    assert desired_replicas(0.0, 1.0, 0.2, 1, 1, 10) == 1         # never below min
    assert desired_replicas(math.inf, 1.0, 0.2, 2, 1, 4) == 4     # never above max


def test_bad_bounds_name_the_fields():
    with pytest.raises((InputError, ValueError), match=r"replicas \(5\) must be within autoscale.min_replicas"):
        scenario(max_replicas=4).model_copy()   # valid
        Scenario.model_validate({"name": "x", "pools": {"a": {"gpu": "H100-SXM", "model": "Llama-3-70B", "replicas": 5,
                                                              "autoscale": {"max_replicas": 4, "target_value": 1}}},
                                 "streams": {"s": {"rate": 1}}})
    with pytest.raises((InputError, ValueError), match=r"min_replicas \(3\) exceeds max_replicas \(2\)"):
        scenario(min_replicas=3, max_replicas=2)


def test_every_cold_start_figure_has_a_source():
    import tomllib
    from agentsim.model.catalog import data_path
    with open(data_path("coldstart.toml"), "rb") as f:
        data = tomllib.load(f)
    for table in data.values():
        numbers = {k for k, v in table.items() if isinstance(v, (int, float))}
        assert numbers and numbers == set(table["sources"]), table
        assert all(len(table["sources"][k]) > 40 for k in numbers)


def test_capacity_utilisation_target_is_served_tokens_over_the_given_capacity():
    from types import SimpleNamespace
    from agentsim.serving.autoscale import PoolScaler
    reps = [SimpleNamespace(tokens_out=0) for _ in range(3)]
    cluster = SimpleNamespace(replicas=reps, park=lambda rid: None)
    cfg = SimpleNamespace(target="capacity_utilisation", capacity_output_tokens_per_s=100.0, period_s=60.0)
    s = PoolScaler(None, cluster, "p", [0, 1, 2], 3, cfg, 0.0)
    reps[0].tokens_out, reps[1].tokens_out = 6000, 6000           # 12000 tokens in one period = 200 tok/s
    assert s.metric(reps[:2], 60.0) == pytest.approx(200 / (100 * 2))
    reps[2].tokens_out = 3000                                     # only what was served since the last check
    assert s.metric(reps, 120.0) == pytest.approx(50 / (100 * 3))


@pytest.mark.parametrize("capacity, scales", [(1e6, False), (1.0, True)])
def test_capacity_utilisation_target_scales_on_served_load(capacity, scales):
    sim, _ = run(scenario(duration_s=200.0, target="capacity_utilisation", target_value=0.7,
                          capacity_output_tokens_per_s=capacity))
    provisioned = [t for t, what, _ in sim.scalers[0].log if what == "provision"]
    assert (provisioned[:2] == [60.0, 60.0]) if scales else not provisioned


def test_capacity_target_needs_the_capacity():
    with pytest.raises((InputError, ValueError), match="capacity_output_tokens_per_s"):
        scenario(target="capacity_utilisation", target_value=0.7)
