"""GPU specifications and per-generation efficiency factors (data lives in ``data/*.toml``).

A GPU is pure data: datasheet peaks, memory, links, power and price. How close real engines get
to those peaks (MFU, MBU, overheads) is shared by a GPU *generation* and either comes from the
priors in ``data/efficiency.toml`` or from ``agentsim calibrate`` (``data/calibrated.toml``).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["bf16", "fp8", "fp4"]
PRECISIONS: tuple[str, ...] = ("bf16", "fp8", "fp4")
#: bytes per weight / activation element for each precision
BYTES_PER_ELEMENT = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}


class GPU(BaseModel):
    """One GPU model. Units: TFLOP/s dense, GB = 1e9 B, TB/s, GB/s, W, USD."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: str = ""
    vendor: str
    generation: str
    description: str = ""
    bf16_tflops: float = Field(gt=0)
    fp8_tflops: float = Field(ge=0, description="0 = not supported")
    fp4_tflops: float = Field(ge=0, description="0 = not supported")
    hbm_gb: float = Field(gt=0)
    hbm_tbps: float = Field(gt=0)
    scaleup_gbps: float = Field(ge=0, description="per GPU, bidirectional as vendors quote")
    scaleout_gbps: float = Field(gt=0, description="per GPU per direction")
    tdp_w: float = Field(gt=0)
    server_w_per_gpu: float = Field(gt=0, description="server wall power / GPUs per node")
    idle_power_fraction: float = Field(ge=0, le=1)
    gpus_per_node: int = Field(ge=1)
    host_mem_gb_per_gpu: float = Field(ge=0)
    host_link_gbps: float = Field(gt=0)
    usd_per_gpu_hour: float = Field(ge=0)
    ideal: bool = Field(False, description="an idealised GPU (validation): every kernel runs at its roofline "
                                           "on these peaks, no measured efficiency")
    sources: dict[str, str] = Field(default_factory=dict)

    def peak_flops(self, precision: str) -> float:
        """Dense peak FLOP/s at ``precision`` (0.0 when the GPU lacks it)."""
        return {"bf16": self.bf16_tflops, "fp8": self.fp8_tflops, "fp4": self.fp4_tflops}[precision] * 1e12

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gb * 1e9

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_tbps * 1e12

    @property
    def link_bytes_per_s_per_direction(self) -> float:
        """Scale-up bandwidth per direction: vendors quote the bidirectional figure."""
        return self.scaleup_gbps * 1e9 / 2


class Efficiency(BaseModel):
    """How close an engine gets to the peaks on one GPU generation."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    mfu_bf16: float = Field(gt=0, le=1)
    mfu_fp8: float = Field(gt=0, le=1)
    mfu_fp4: float = Field(gt=0, le=1)
    mbu: float = Field(gt=0, le=1)
    step_overhead_ms: float = Field(ge=0)
    request_overhead_ms: float = Field(ge=0)
    per_seq_us: float = Field(0.0, ge=0)   # scheduler time per running decode per step (engine presets set it)
    # every step's time (kernels and overheads) times this: a sensitivity knob for the step model's
    # held-out error (a catalog overlay's [generations.<gen>] sets it; 1 = the model as measured)
    step_time_scale: float = Field(1.0, gt=0, le=10)
    link_efficiency: float = Field(gt=0, le=1)
    allreduce_latency_us: float = Field(ge=0)
    calibrated: bool = False
    sources: dict[str, str] = Field(default_factory=dict)

    #: the factors `agentsim calibrate` may fit: the time outside the kernels. Kernel times come from
    #: the measured op tables (agentsim.model.opmodel); mfu_* and mbu no longer enter the step model.
    FITTABLE: ClassVar[tuple[str, ...]] = ("step_overhead_ms", "request_overhead_ms")

    def mfu(self, precision: str) -> float:
        return {"bf16": self.mfu_bf16, "fp8": self.mfu_fp8, "fp4": self.mfu_fp4}[precision]
