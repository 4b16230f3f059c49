"""The parts of a scenario: engine settings, sites, pools, router, faults, outages, streams,
populations and slices, each a frozen, validated pydantic model (:mod:`.scenario` composes them).

Every field has a default where one makes sense and a description (``agentsim scenario schema``).
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..provider.limits import plan, tier
from ..workload.diurnal import profile_names
from ..workload.distributions import Dist
from ..workload.profiles import get_profile
from ..workload.retry import RETRY_POLICIES
from ..util.bounds import (MAX_DURATION_S, MAX_RATE, MAX_REQUESTS, MAX_REPLICAS, MAX_USERS, MAX_COUNT, MAX_TOKENS, MAX_TTL_S, MAX_HOST_KV_GB, MAX_SLICES)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, v: Any, info) -> Any:
        """TOML ``true`` is not a count: pydantic would take it as 1."""
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in (int, float, int | None,
                                                                                      float | None):
            raise ValueError(f"expected a number, got {v!r}")
        return v


# -- building blocks ------------------------------------------------------------------------------
class EngineSettings(Model):
    """Scheduler and cache settings of a replica (vLLM V1-like defaults, or an engine preset's)."""

    preset: Literal["vllm", "sglang", "trtllm"] | None = Field(
        None, description="engine preset (data/presets.toml): fills max_batch, token_budget, kv_dtype, kernels and "
                          "the time outside the GPU where not set here; none = vLLM V1 limits with the GPU "
                          "generation's overheads")
    max_batch: int | None = Field(None, ge=1, le=MAX_COUNT, description="max running requests; default 1024 on >=70 GB "
                                                          "non-A100 GPUs, else 256 (vLLM max_num_seqs)")
    token_budget: int | None = Field(None, ge=1, le=MAX_TOKENS, description="tokens per step (chunked prefill); default "
                                                             "8192 on >=70 GB non-A100 GPUs, else 2048")
    admission: str = Field("fcfs", description="admission order: fcfs | priority")
    chunked_prefill: bool = Field(True, description="split a prompt over steps to fill the token budget; false: a "
                                                    "prompt waits for a step with room for all of it (TensorRT-LLM)")
    retention: str = Field("lru", description="prefix-cache retention: lru | pin_session | none")
    prefix_cache: Literal["session", "blocks"] = Field(
        "session", description="session: one entry per prefix key (a session's context); blocks: 512-token "
                               "block hashes shared across requests (trace replay with hash ids)")
    prefix_ttl_s: float = Field(300.0, ge=0, le=MAX_TTL_S, description="prefix-cache TTL (s) after last use")
    host_kv_gb: float = Field(0.0, ge=0, le=MAX_HOST_KV_GB, description="host-memory KV tier per replica (GB); 0 = none")
    mem_util: float = Field(0.90, gt=0, le=1, description="share of HBM for weights + KV")
    reserve_gb_per_gpu: float = Field(2.0, ge=0, le=1e4, description="HBM kept for activations / CUDA graphs")
    kv_dtype: Literal["bf16", "fp8"] = Field("bf16", description="KV cache element type")
    kernels: Literal["vllm", "sglang", "trtllm"] = Field(
        "vllm", description="whose measured kernel tables price the steps (aiconfigurator-core op tables: "
                            "vLLM, SGLang or TensorRT-LLM kernels)")
    speculative_tokens: int = Field(0, ge=0, le=8, description="draft tokens verified per decode step (multi-token "
                                                               "prediction / speculative decoding); 0 = off")
    acceptance: float = Field(0.85, gt=0, lt=1, description="mean per-token acceptance of drafts (DeepSeek-V3 MTP: "
                                                            "0.85-0.90 for the second token)")
    acceptance_concentration: float = Field(20.0, gt=0, le=1e6, description="Beta concentration of a request's "
                                            "acceptance around the mean (higher = less spread between requests)")


class Site(Model):
    pue: float = Field(1.2, ge=1, le=10, description="facility power usage effectiveness")
    other_it_fraction: float = Field(0.0, ge=0, le=10, description="non-server IT load (network, storage) as a share "
                                                              "of server power")
    facility_mw: float = Field(0.0, ge=0, le=1e6, description="facility power limit (MW) to compare the draw with; 0 = none")


class Faults(Model):
    mtbf_h: float = Field(0.0, ge=0, le=1e7, description="mean time between replica failures (hours); 0 = none")
    mttr_h: float = Field(1.0, gt=0, le=1e7, description="mean time to repair (hours)")


class Autoscale(Model):
    """Provider autoscaling of one pool (serving/autoscale.py): between min and max replicas on a
    target, checked every period, with a cold start for each new replica and draining on scale-in."""

    min_replicas: int = Field(1, ge=1, le=MAX_REPLICAS, description="never fewer replicas provisioned")
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, description="never more replicas provisioned")
    target: Literal["queue_delay_s", "kv_occupancy", "batch_occupancy", "capacity_utilisation"] = Field(
        "queue_delay_s", description="what is held near target_value, over the routable replicas: queue_delay_s "
                                     "(how long each queue head has waited), kv_occupancy (KV in use by running "
                                     "requests / capacity), batch_occupancy (running / max_batch), "
                                     "capacity_utilisation (output tokens/s served over the last period / "
                                     "capacity_output_tokens_per_s per routable replica)")
    capacity_output_tokens_per_s: float | None = Field(
        None, gt=0, le=1e9, description="capacity_utilisation: output tokens/s one replica carries (e.g. "
                                        "`agentsim estimate --max-load` at the pool's request shape)")
    target_value: float = Field(gt=0, le=MAX_DURATION_S, description="the target's set point")
    period_s: float = Field(60.0, gt=0, le=MAX_DURATION_S, description="how often the target is checked")
    hysteresis: float = Field(0.2, ge=0, lt=1, description="no change while the target is within +-this share "
                                                            "of target_value")
    scale_in_stable_s: float = Field(300.0, ge=0, le=MAX_DURATION_S, description="drain a replica only after "
                                     "every check for this long was below the band (Kubernetes' default 300 s)")
    weights_from: Literal["page_cache", "local_nvme", "network"] = Field(
        "local_nvme", description="where a new replica loads its weights from (data/coldstart.toml bandwidths)")
    engine_start_s: float | None = Field(None, ge=0, le=MAX_DURATION_S, description="engine start after loading "
                                         "(default: data/coldstart.toml)")
    cold_start_s: float | None = Field(None, ge=0, le=MAX_DURATION_S, description="the whole cold start, overriding "
                                       "weights / bandwidth + engine start")

    @model_validator(mode="after")
    def _order(self) -> "Autoscale":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.target == "capacity_utilisation" and self.capacity_output_tokens_per_s is None:
            raise ValueError("target capacity_utilisation needs capacity_output_tokens_per_s (output tokens/s one "
                             "replica carries, e.g. from agentsim estimate --max-load)")
        return self


class Pool(Model):
    """Replicas of one deployment on one GPU type at one site."""

    gpu: str = Field(description="catalog GPU name or alias")
    model: str = Field(description="catalog model name or alias (or frontier-moe-<T>-a<A>)")
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS, description="number of replicas")
    tp: int = Field(1, ge=1, le=1024, description="tensor-parallel degree (within a node)")
    pp: int = Field(1, ge=1, le=1024, description="pipeline stages (across nodes)")
    ep: int = Field(1, ge=1, le=1024, description="expert-parallel ranks over each stage's tp x dp_attention GPUs "
                                                   "(MoE models; must divide the experts and those GPUs)")
    dp_attention: int = Field(1, ge=1, le=1024, description="data-parallel attention ranks, each tp GPUs with its own "
                                                             "KV (a degree, not a flag); GPUs = tp x dp_attention x pp")
    redundant_experts: int = Field(0, ge=0, le=4096, description="EPLB's redundant expert replicas (ep > 1): ep must "
                                                                  "divide the experts plus these, e.g. 32 for 288 slots")
    precision: Literal["bf16", "fp8", "fp4"] = Field("bf16", description="weights and activations")
    site: str = Field("default", description="site name (see [sites])")
    usd_per_gpu_hour: float | None = Field(None, ge=0, le=1e4, description="override the catalog price")
    engine: dict[str, Any] = Field(default_factory=dict, description="overrides of [engine] for this pool")
    faults: Faults = Field(default_factory=Faults)
    role: Literal["mixed", "prefill", "decode"] = Field(
        "mixed", description="mixed: prefill and decode on one replica; prefill / decode: disaggregated (a request "
                             "prefills here, its KV moves to a decode pool of the same model, it decodes there)")

    autoscale: Autoscale | None = Field(None, description="scale between min and max replicas (replicas = how "
                                                          "many are provisioned at the start); none = fixed")

    @property
    def gpus_per_replica(self) -> int:
        return self.tp * self.dp_attention * self.pp

    @model_validator(mode="after")
    def _start_within_bounds(self) -> "Pool":
        a = self.autoscale
        if a is not None and not a.min_replicas <= self.replicas <= a.max_replicas:
            raise ValueError(f"replicas ({self.replicas}) must be within autoscale.min_replicas "
                             f"({a.min_replicas}) and autoscale.max_replicas ({a.max_replicas})")
        return self

    @field_validator("dp_attention", "ep", mode="before")
    @classmethod
    def _degree(cls, v):
        """A bool would pass as 0/1: say that the field is a degree (SGLang's --dp, not a switch)."""
        if isinstance(v, bool):
            raise ValueError(f"is a degree (attention ranks / expert ranks), not a bool, got {v!r}; "
                             "e.g. dp_attention = 8 for 8 ranks of tp GPUs each")
        return v


class Router(Model):
    policy: str = Field("least_outstanding", description="round_robin | least_outstanding | power_of_two | "
                                                          "speed_aware | session_affinity | prefix_aware")
    affinity_load_bound: float = Field(1.25, ge=1, le=1e3, description="session_affinity: leave the home replica when "
                                                                "its load exceeds this x the mean (+1)")
    release_moved_pins: bool = Field(True, description="when a session's call goes to another replica than its "
                                     "last one, the last one drops the session's cache entry (a pin_session "
                                     "entry would hold KV there for its whole TTL)")
    queue_guard: bool = Field(False, description="when the policy's pick has kept the head of its queue waiting "
                                                 "over queue_limit_s, send the request to the replica (any pool) "
                                                 "with the lowest expected finish counting each queue's observed "
                                                 "wait (serving/routing_guard.py); false = the policy alone")
    queue_limit_s: float | None = Field(None, ge=0, le=MAX_DURATION_S, description="queue_guard: the longest a "
                                        "queue head may have waited at the pick (s); the trade-off between the "
                                        "policy's objective (cache hits, fastest pool) and latency; "
                                        "default: half of slo_ttft_s")


class Disaggregation(Model):
    """Prefill/decode disaggregation: the KV hand-off between prefill and decode pools (pools' ``role``)."""

    transfer_latency_s: float = Field(0.0005, ge=0, le=60, description="fixed cost of one KV transfer (s): RDMA "
                                      "setup and completion, on top of bytes / link bandwidth (data/SOURCES.md)")
    decode_router: str | None = Field(None, description="policy that picks the decode replica (default: "
                                      "router.policy); the prefill replica is picked by router.policy")
    prefill_gpu_share: float | None = Field(None, gt=0, lt=1, description="re-split the GPUs of the one prefill "
                                            "and the one decode pool (their total as written) so prefill gets "
                                            "this share (rounded to whole replicas, at least one each): the "
                                            "P:D ratio as one sweepable field at equal GPU count; none = as written")


class KvTierSettings(Model):
    """A cluster-wide KV tier (CXL, SSD or pooled remote memory) that replicas load session prefixes from."""

    capacity_gb: float = Field(0.0, ge=0, le=1e9, description="capacity (GB); 0 = no shared tier")
    bandwidth_gbps: float = Field(50.0, gt=0, le=1e5, description="GB/s of one load into a replica (default: "
                                  "one 400 Gb/s NIC; data/SOURCES.md)")
    latency_s: float = Field(0.001, ge=0, le=60, description="fixed cost of one load (s)")


class Outage(Model):
    target: str = Field(description="'pool:<name>' or 'site:<name>'")
    start_s: float = Field(ge=0, le=MAX_DURATION_S, description="when the outage begins (s from the start)")
    end_s: float = Field(gt=0, le=MAX_DURATION_S, description="when the target is back (s from the start)")

    @model_validator(mode="after")
    def _order(self) -> "Outage":
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if not (self.target.startswith("pool:") or self.target.startswith("site:")):
            raise ValueError(f"target must be 'pool:<name>' or 'site:<name>', got {self.target!r}")
        return self


class Stream(Model):
    """An engine-level request stream (agent sessions come with populations)."""

    kind: Literal["poisson", "concurrency", "all_at_once", "replay"] = Field(
        "poisson", description="poisson: `rate`; concurrency: `concurrency` closed-loop clients; all_at_once: "
                               "`count` requests at t=0; replay: timestamps and sizes from `file`")
    rate: float = Field(0.0, ge=0, le=MAX_RATE, description="poisson: requests per second")
    concurrency: int = Field(0, ge=0, le=MAX_COUNT, description="concurrency: clients, each sends its next request when "
                                                  "the last one ends")
    think_s: Dist | None = Field(None, description="concurrency: pause between a client's requests")
    count: int = Field(0, ge=0, le=MAX_REQUESTS, description="requests to send (0 = until the end of the run); all_at_once: required")
    input_tokens: Dist = Field(default_factory=lambda: Dist(kind="constant", value=1024))
    output_tokens: Dist = Field(default_factory=lambda: Dist(kind="constant", value=128))
    cached_tokens: Dist | None = Field(
        None, description="prefix tokens of each prompt already in the replica's KV cache when it arrives (attended, "
                          "not recomputed: an agent's cached context); capped at the prompt minus one")
    model: str | None = Field(None, description="only pools serving this model receive the stream (default: all)")
    file: str | None = Field(None, description="replay: CSV with columns arrival_s,input_tokens,output_tokens")
    priority: int = Field(0, ge=-MAX_COUNT, le=MAX_COUNT, description="admission priority (lower goes first with admission=priority)")

    @model_validator(mode="after")
    def _needs(self) -> "Stream":
        need = {"poisson": ("rate", self.rate > 0), "concurrency": ("concurrency", self.concurrency > 0),
                "all_at_once": ("count", self.count > 0), "replay": ("file", bool(self.file))}
        field, ok = need[self.kind]
        if not ok:
            raise ValueError(f"a {self.kind} stream needs {field}")
        return self


class Population(Model):
    """Users or workers of one session profile, with their plan or tier and their client."""

    profile: str = Field(description="interactive_coding_agent | autonomous_api_agent | chat_user")
    size: int = Field(ge=0, le=MAX_USERS, description="open: users whose sessions arrive over the day; fleet: max workers")
    kind: Literal["open", "fleet"] = Field("open", description="open: sessions arrive as a non-homogeneous "
                                                              "Poisson process; fleet: workers run tasks back "
                                                              "to back and scale with the backlog")
    arrival: str = Field("flat", description="diurnal profile: azure2024_coding | azure2024_conv | servegen_api | "
                                             "flat | custom (then give weekday and weekend)")
    weekday: list[float] | None = Field(None, description="custom profile: 24 hourly multipliers (UTC)")
    weekend: list[float] | None = Field(None, description="custom profile: 24 hourly multipliers (UTC)")
    start_weekday: int | None = Field(None, ge=0, le=6, description="weekday at t = 0 (0 = Monday); default: "
                                                                     "from the scenario's start")
    start_hour: float | None = Field(None, ge=0, lt=24, description="UTC hour at t = 0; default: from the "
                                                                     "scenario's start")
    tenants: int = Field(1, ge=1, le=MAX_USERS, description="users are spread over this many tenants (orgs) round robin")
    plan: str | None = Field(None, description="subscription plan preset of its users (policies enforce it)")
    plan_mix: dict[str, float] = Field(default_factory=dict, description="users split over subscription plans, "
                                       "plan -> share of users (shares sum to 1); a user's plan is fixed by a hash of "
                                       "its id. Used when plan is unset")
    tier: str | None = Field(None, description="API tier preset of its tenants (policies enforce it)")
    retry_policy: str | None = Field(None, description="override the profile's client retry policy")
    retry_max_wait_s: float | None = Field(None, gt=0, le=MAX_DURATION_S, description="give up on a call after this long retrying")
    timeout_s: float | None = Field(None, gt=0, le=MAX_DURATION_S, description="override the profile's request timeout")
    params: dict[str, Any] = Field(default_factory=dict, description="overrides of the profile's parameters")
    model: str | None = Field(None, description="only pools serving this model get its calls (default: all)")
    call_models: dict[Literal["user", "tool", "subagent", "compaction"], str] = Field(
        default_factory=dict, description="the model each kind of call goes to, overriding model: e.g. "
                                          "{ subagent = \"Llama-3-8B\" } puts sub-agents on a small model")
    priority: int | None = Field(None, ge=0, le=MAX_COUNT, description="admission priority of its requests (lower first; "
                                                         "default: its tier's priority class, else 0)")
    workers: int = Field(1, ge=0, le=MAX_USERS, description="fleet: workers at the start")
    workers_min: int = Field(0, ge=0, le=MAX_USERS, description="fleet: never scale below this")
    task_rate: float = Field(0.0, ge=0, le=MAX_RATE, description="fleet: tasks per second into the backlog (times the "
                                                    "diurnal profile); 0 = closed loop, a task always waits")
    scale_interval_s: float = Field(60.0, gt=0, le=MAX_DURATION_S, description="fleet: autoscaler period")
    scale_up_backlog: float = Field(2.0, gt=0, le=1e6, description="fleet: add workers while backlog > this x workers")

    @model_validator(mode="after")
    def _check(self) -> "Population":
        get_profile(self.profile, self.params, where="profile")
        names = profile_names()
        if self.arrival == "custom":
            for f in ("weekday", "weekend"):
                v = getattr(self, f)
                if v is None or len(v) != 24 or any(x < 0 for x in v):
                    raise ValueError(f"a custom arrival profile needs {f} = 24 non-negative numbers")
        elif self.arrival not in names:
            raise ValueError(f"arrival {self.arrival!r} unknown; allowed: {', '.join(names)}, custom")
        if self.retry_policy is not None and self.retry_policy not in RETRY_POLICIES:
            near = difflib.get_close_matches(self.retry_policy, list(RETRY_POLICIES), n=1)
            raise ValueError(f"retry_policy {self.retry_policy!r} unknown"
                             + (f" (did you mean {near[0]!r}?)" if near else "")
                             + f"; allowed: {', '.join(RETRY_POLICIES)}")
        if self.tier is not None:
            tier(self.tier, where="tier")
        if self.plan is not None:
            plan(self.plan, where="plan")
        for name, share in self.plan_mix.items():
            plan(name, where="plan_mix")
            if not (math.isfinite(share) and share >= 0):
                raise ValueError(f"plan_mix share of {name!r} must be a number >= 0 (got {share})")
        if self.plan_mix and abs(sum(self.plan_mix.values()) - 1) > 1e-6:
            raise ValueError(f"plan_mix shares must sum to 1 (got {sum(self.plan_mix.values()):g})")
        if self.kind == "fleet" and self.workers > self.size:
            raise ValueError(f"fleet workers ({self.workers}) exceed size ({self.size}, the maximum)")
        if self.workers_min > self.size:
            raise ValueError(f"workers_min ({self.workers_min}) exceeds size ({self.size})")
        return self


class Slice(Model):
    """Run one 1/count slice of the fleet and its users (DESIGN §9)."""

    count: int = Field(1, ge=1, le=MAX_SLICES, description="number of slices the fleet is cut into")
    index: int = Field(0, ge=0, description="which slice this run is (0 .. count-1)")

    @model_validator(mode="after")
    def _check(self) -> "Slice":
        if self.index >= self.count:
            raise ValueError(f"index ({self.index}) must be below count ({self.count})")
        return self
