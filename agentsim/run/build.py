"""``build(scenario, seed)``: the one place that wires a simulation together."""
from __future__ import annotations

from functools import partial

from ..model.catalog import Catalog, env_catalog_files, load_catalog
from ..serving.speculation import Speculation
from ..serving.cluster import Cluster, Pool, fault_process, kv_tier_bytes_per_token, make_router, outage_process
from ..serving.disagg import Handoff
from ..serving.kv_tier import KvTier
from ..model.deployment import Deployment
from ..serving.engine import EngineConfig, Replica
from ..serving.routing_guard import guarded
from ..serving.autoscale import PoolScaler, cold_start_s
from ..serving.request import TRIGGERS
from ..serving.checked import CheckedReplica
from ..serving.engine_reference import SteppingReplica
from ..util.errors import InputError
from ..util.events import Environment
from ..results.metrics import Recorder, Sampler
from ..serving.block_cache import BlockPrefixCache
from ..serving.prefix_cache import CacheConfig, PrefixCache
from .scenario import EngineSettings, Scenario
from ..model.servicetime import StepCoeffs
from .sim import RngStreams, Simulation
from ..provider.gateway import Gateway, PolicyView, parse_policies
from ..model import presets
from ..workload.populations import Population, SessionRecorder
from ..workload.sources import SOURCES


def default_limits(dep: Deployment) -> tuple[int, int]:
    """vLLM V1 defaults (hardware-roofline.md §3.1): (max_batch, token_budget), per data-parallel
    attention rank (vLLM runs one engine core per DP rank)."""
    big = dep.gpu.hbm_gb >= 70 and dep.gpu.generation != "ampere"
    return (1024 * dep.dp, 8192 * dep.dp) if big else (256 * dep.dp, 2048 * dep.dp)


def engine_config(dep: Deployment, s: EngineSettings, streams: list | None = None) -> EngineConfig:
    """Limits: explicit settings, else the preset's (which may depend on ``streams``; None: lengths
    vary, as with agent populations), else vLLM V1's."""
    if s.preset is not None:
        max_batch, budget, _ = presets.preset_limits(s.preset, dep, streams, s)
        return EngineConfig(kv_capacity=dep.kv_capacity_tokens, max_batch=max_batch, token_budget=budget,
                            admission=s.admission, chunked_prefill=s.chunked_prefill)
    max_batch, budget = default_limits(dep)
    return EngineConfig(kv_capacity=dep.kv_capacity_tokens, max_batch=s.max_batch or max_batch,
                        token_budget=s.token_budget or budget, admission=s.admission,
                        chunked_prefill=s.chunked_prefill)


def pool_deployment(catalog: Catalog, p, settings: EngineSettings) -> tuple[Deployment, EngineSettings]:
    """A pool's deployment and its engine settings, the preset (if any) applied to both."""
    settings = presets.settings(settings, p.precision)
    dep = Deployment.from_catalog(catalog, p.model, p.gpu, tp=p.tp, pp=p.pp, precision=p.precision,
                                  kv_dtype=settings.kv_dtype, mem_util=settings.mem_util,
                                  reserve_gb_per_gpu=settings.reserve_gb_per_gpu, engine=settings.kernels,
                                  ep=p.ep, dp=p.dp_attention, redundant_experts=p.redundant_experts,
                                  mtp=settings.speculative_tokens)
    if settings.preset is not None:
        dep = presets.with_overheads(dep, settings.preset, catalog)
    return dep, settings


def cache_config(dep: Deployment, s: EngineSettings) -> CacheConfig:
    host_tokens = int(s.host_kv_gb * 1e9 / dep.kv_bytes_per_token)
    return CacheConfig(retention=s.retention, ttl_s=s.prefix_ttl_s, host_tokens=host_tokens)


def make_cache(kind: str, cfg: CacheConfig):
    """A replica's prefix cache: per-key session entries, or shared 512-token blocks."""
    if kind == "blocks":
        return BlockPrefixCache(cfg)
    return PrefixCache(cfg)


def sliced(scenario: Scenario) -> Scenario:
    """The scenario as one 1/count slice sees it: every pool, stream and fleet at its share.

    Open populations keep their size: their users are filtered by tenant hash at run time
    (:meth:`agentsim.workload.populations.Population.slice_users`).
    """
    n = scenario.slice.count
    if n == 1:
        return scenario
    share = lambda x: max(1, round(x / n)) if x else 0  # noqa: E731
    pools = {k: p.model_copy(update={"replicas": share(p.replicas), "autoscale": p.autoscale and p.autoscale.model_copy(
        update={"min_replicas": share(p.autoscale.min_replicas), "max_replicas": share(p.autoscale.max_replicas)})})
        for k, p in scenario.pools.items()}
    streams = {k: s.model_copy(update={"rate": s.rate / n, "concurrency": share(s.concurrency),
                                       "count": share(s.count)}) for k, s in scenario.streams.items()}
    pops = {k: p if p.kind == "open" else p.model_copy(update={
        "size": share(p.size), "workers": min(share(p.size), share(p.workers)),
        "workers_min": min(share(p.size), share(p.workers_min)), "task_rate": p.task_rate / n})
        for k, p in scenario.populations.items()}
    return scenario.model_copy(update={"pools": pools, "streams": streams, "populations": pops})


def build(scenario: Scenario, seed: int | None = None, *, catalog: Catalog | None = None, step_mode: bool = False,
          check_invariants: bool = False, sources: dict | None = None) -> Simulation:
    """Wire ``scenario`` for one run with ``seed`` (default: the scenario's).

    ``sources`` adds request sources the scenario cannot describe (a trace replay): stream name ->
    ``factory(sim, stream_index)``. The Simulation is complete when this returns: nothing patches it.
    The parts are wired in a fixed order (pools, router, streams, populations, gateway, failures,
    extra sources): SimPy orders same-time events by when they were scheduled.
    """
    seed = scenario.seed if seed is None else seed
    scenario = sliced(apportioned(scenario))
    catalog = catalog or load_catalog(env_catalog_files() + tuple(scenario.catalog))
    env = Environment()
    rng = RngStreams(seed, salt=scenario.slice.index)
    sim = Simulation(scenario, seed, env, rng)
    replica_cls = SteppingReplica if step_mode else CheckedReplica if check_invariants else Replica
    handoff = _handoff(scenario, sim)
    t = scenario.kv_tier
    kv_tier = KvTier(env, t.capacity_gb * 1e9, t.bandwidth_gbps * 1e9, t.latency_s) if t.capacity_gb > 0 else None
    pools, pool_of_replica = _pools(scenario, catalog, sim, replica_cls, handoff, kv_tier)
    router = guarded(make_router(scenario.router.policy, rng("routing"), scenario.router), scenario.router,
                     scenario.slo_ttft_s, env)
    sim.cluster = cluster = Cluster(env, pools, router, sim.done, handoff, kv_tier)
    if handoff is not None:
        _check_roles(pools)
    sim.recorder = Recorder(pool_of_replica, len(pools))
    sim.sampler = Sampler(env, cluster, scenario.sample_s, sim.recorder, sim.quiescent)
    served = {p.deployment.model.name for p in pools}
    _streams(scenario, catalog, sim, served)
    sim.session_recorder = SessionRecorder()
    _populations(scenario, catalog, sim, served)
    if scenario.policies:
        view = PolicyView(start=scenario.start, rng=rng, fleet=cluster)
        sim.gateway = Gateway(parse_policies(scenario.policies), view, clock=lambda: env.now, end=sim.end)
    _failures(scenario, env, cluster, pools, rng)
    sim.scalers = _scalers(scenario, env, cluster, pools)
    for name, factory in (sources or {}).items():     # last: their events follow everything above
        sim.stream_names.append(name)
        sim.sources.append(factory(sim, len(sim.stream_names) - 1))
    return sim


def apportioned(scenario: Scenario) -> Scenario:
    """The scenario with ``disaggregation.prefill_gpu_share`` applied: the GPUs of its prefill and
    decode pool (their total as written) re-split so prefill gets that share, in whole replicas
    (at least one each); unchanged without it."""
    share = scenario.disaggregation.prefill_gpu_share
    if share is None:
        return scenario
    pre = next(k for k, p in scenario.pools.items() if p.role == "prefill")
    dec = next(k for k, p in scenario.pools.items() if p.role == "decode")
    gp, gd = scenario.pools[pre].gpus_per_replica, scenario.pools[dec].gpus_per_replica
    total = scenario.pools[pre].replicas * gp + scenario.pools[dec].replicas * gd
    if total < gp + gd:
        raise InputError(f"disaggregation.prefill_gpu_share {share:g}: pools {pre} and {dec} have {total} GPUs, "
                         f"fewer than one replica of each ({gp} + {gd})")
    n_pre = min(max(1, int(total * share / gp + 0.5)), (total - gd) // gp)     # half up: 2.5 replicas -> 3
    n_dec = max(1, (total - n_pre * gp) // gd)
    pools = dict(scenario.pools)
    pools[pre] = pools[pre].model_copy(update={"replicas": n_pre})
    pools[dec] = pools[dec].model_copy(update={"replicas": n_dec})
    return scenario.model_copy(update={"pools": pools})


def _handoff(scenario: Scenario, sim: Simulation) -> Handoff | None:
    """The prefill -> decode hand-off when some pool is not mixed (None otherwise: nothing changes)."""
    if all(p.role == "mixed" for p in scenario.pools.values()):
        return None
    d = scenario.disaggregation
    policy = d.decode_router or scenario.router.policy
    try:
        router = make_router(policy, sim.rng("routing/decode"), scenario.router)
    except InputError as e:
        raise InputError(str(e).replace("router.policy", "disaggregation.decode_router")) from None
    return Handoff(sim.env, router, d.transfer_latency_s, sim.done)


def _check_roles(pools: list[Pool]) -> None:
    """Every model with a prefill pool has a decode pool, and the other way round."""
    for p in pools:
        if p.role == "mixed":
            continue
        other = "decode" if p.role == "prefill" else "prefill"
        model = p.deployment.model.name
        if not any(q.role == other and q.deployment.model.name == model for q in pools):
            have = [q.name for q in pools if q.role == other]
            raise InputError(f"pools.{p.name}.role {p.role!r}: no pool with role {other!r} serves {model} "
                             f"(pools with role {other}: {', '.join(have) or 'none'}); add one or set role = 'mixed'")


def _pools(scenario: Scenario, catalog: Catalog, sim: Simulation, replica_cls, handoff: Handoff | None = None,
           kv_tier: KvTier | None = None):
    """Each pool's deployment, engine limits, step tables and replicas; and the pool of every replica."""
    pools: list[Pool] = []
    pool_of_replica: list[int] = []
    for i, (name, p) in enumerate(scenario.pools.items()):
        try:
            dep, settings = pool_deployment(catalog, p, scenario.pool_engine(name))
            cfg = engine_config(dep, settings, None if scenario.populations else list(scenario.streams.values()))
            ccfg = cache_config(dep, settings)
        except InputError as e:
            raise InputError(f"pools.{name}: {e}") from None
        coeffs = StepCoeffs.of(dep)
        site = scenario.sites[p.site]
        pool = Pool(name=name, index=i, site=p.site, facility_multiplier=(1 + site.other_it_fraction) * site.pue,
                    deployment=dep, coeffs=coeffs, config=cfg,
                    usd_per_gpu_hour=p.usd_per_gpu_hour if p.usd_per_gpu_hour is not None else dep.gpu.usd_per_gpu_hour,
                    role=p.role)
        on_done = _on_done(p, name, dep, settings, sim, handoff, kv_tier)
        for _ in range(p.autoscale.max_replicas if p.autoscale else p.replicas):   # scaling: parked at the start
            rid = len(pool_of_replica)
            cache = make_cache(settings.prefix_cache, ccfg)
            spec = (Speculation(settings.speculative_tokens, settings.acceptance, settings.acceptance_concentration,
                                sim.rng(f"speculation/{rid}")) if settings.speculative_tokens else None)
            pool.replicas.append(replica_cls(sim.env, coeffs, cfg, index=rid, on_done=on_done, cache=cache,
                                             speculation=spec))
            pool_of_replica.append(i)
        pools.append(pool)
    return pools, pool_of_replica


def _on_done(p, name: str, dep: Deployment, settings: EngineSettings, sim: Simulation, handoff, kv_tier):
    """Where a pool's replicas report ending requests: the hand-off for legs of disaggregated
    requests, the KV tier (which keeps their contexts, then ends them), or the simulation."""
    if kv_tier is None or p.role == "decode":
        return sim.done if p.role == "mixed" else handoff.leg_done
    if settings.prefix_cache != "session" or settings.host_kv_gb <= 0 or settings.retention == "none":
        raise InputError(f"pools.{name}: kv_tier.capacity_gb > 0 needs session prefix caching with a host tier "
                         f"(engine.prefix_cache = 'session', engine.host_kv_gb > 0, retention not 'none'); got "
                         f"prefix_cache {settings.prefix_cache!r}, host_kv_gb {settings.host_kv_gb:g}, "
                         f"retention {settings.retention!r}")
    if p.role == "prefill":
        return handoff.leg_done          # the hand-off keeps the legs' KV in the tier
    return partial(kv_tier.ended, model=dep.model.name, bytes_per_token=kv_tier_bytes_per_token(dep), then=sim.done)


def _served_model(catalog: Catalog, wanted: str | None, served: set[str], where: str) -> str | None:
    """The catalog name of the model a stream or population asks for, which some pool must serve."""
    if wanted is None:
        return None
    try:
        model = catalog.model(wanted).name
    except InputError as e:
        raise InputError(f"{where}.model: {e}") from None
    if model not in served:
        raise InputError(f"{where}.model {wanted!r}: no pool serves it (pools serve {', '.join(sorted(served))})")
    return model


def _streams(scenario: Scenario, catalog: Catalog, sim: Simulation, served: set[str]) -> None:
    for j, (name, st) in enumerate(scenario.streams.items()):
        st = st.model_copy(update={"model": _served_model(catalog, st.model, served, f"streams.{name}")})
        sim.sources.append(SOURCES[st.kind](sim, name, j, st, sim.rng(f"arrivals/{name}"), sim.rng(f"sizes/{name}")))
        sim.stream_names.append(name)


def _populations(scenario: Scenario, catalog: Catalog, sim: Simulation, served: set[str]) -> None:
    """Populations with their users and tenants numbered globally, one block after another."""
    user_base = tenant_base = 0
    for j, (name, pc) in enumerate(scenario.populations.items()):
        model = _served_model(catalog, pc.model, served, f"populations.{name}")
        calls = {TRIGGERS.index(k): _served_model(catalog, m, served, f"populations.{name}.call_models.{k}")
                 for k, m in pc.call_models.items()}
        sim.populations.append(Population(sim, j, name, pc, model, rng=sim.rng, start=scenario.start,
                                          slice_=scenario.slice, recorder=sim.session_recorder,
                                          user_base=user_base, tenant_base=tenant_base, call_models=calls))
        user_base += max(pc.size, 1)
        tenant_base += pc.tenants


def _scalers(scenario: Scenario, env, cluster: Cluster, pools: list[Pool]) -> list[PoolScaler]:
    """An autoscaler for each pool that asks for one (its replicas beyond the start parked now)."""
    scalers = []
    for pool, p in zip(pools, scenario.pools.values()):
        a = p.autoscale
        if a is not None:
            cold = a.cold_start_s if a.cold_start_s is not None else cold_start_s(pool.deployment, a.weights_from,
                                                                                  a.engine_start_s)
            scalers.append(PoolScaler(env, cluster, pool.name, [r.index for r in pool.replicas], p.replicas, a, cold))
            scalers[-1].start()
    return scalers


def _failures(scenario: Scenario, env, cluster: Cluster, pools: list[Pool], rng) -> None:
    """Random replica faults (per pool MTBF/MTTR) and the scenario's scheduled outages."""
    rid = 0
    for pool, p in zip(pools, scenario.pools.values()):
        for _ in pool.replicas:
            if p.faults.mtbf_h > 0:
                env.process(fault_process(env, cluster, rid, p.faults.mtbf_h * 3600, p.faults.mttr_h * 3600,
                                          rng(f"faults/{rid}")))
            rid += 1
    for o in scenario.outages:
        kind, _, target = o.target.partition(":")
        rids = [r.index for pool in pools if (pool.name if kind == "pool" else pool.site) == target
                for r in pool.replicas]
        env.process(outage_process(env, cluster, rids, o.start_s, min(o.end_s, scenario.duration_s * 2)))
