"""``agentsim catalog gpus|models``: what the simulator knows, with derived figures."""
from __future__ import annotations

import click

from ..util.errors import InputError
from .common import catalog_option, cli, emit, format_option, get_catalog


def gpu_rows(cat) -> list[dict]:
    from ..model.opmodel import OpModel  # local: opmodel loads numpy (~110 ms); catalog models needs neither

    om = OpModel.load()
    rows = []
    for name, g in cat.gpus.items():
        eff = cat.efficiency(g)
        fitted, label = om.source(g)
        rows.append({
            "gpu": name, "vendor": g.vendor, "generation": g.generation,
            "bf16_tflops": g.bf16_tflops, "fp8_tflops": g.fp8_tflops, "fp4_tflops": g.fp4_tflops,
            "hbm_gb": g.hbm_gb, "hbm_tbps": g.hbm_tbps, "scaleup_gbps": g.scaleup_gbps,
            "scaleout_gbps": g.scaleout_gbps, "tdp_w": g.tdp_w, "server_w_per_gpu": g.server_w_per_gpu,
            "gpus_per_node": g.gpus_per_node, "usd_per_gpu_hour": g.usd_per_gpu_hour,
            "op_tables": label if label == "measured" else f"transferred from {fitted}",
            "step_overhead_ms": eff.step_overhead_ms, "request_overhead_ms": eff.request_overhead_ms,
            "calibrated": eff.calibrated, "sources": g.sources,
        })
    return rows


def model_rows(cat) -> list[dict]:
    rows = []
    for name, m in cat.models.items():
        rows.append({
            "model": name, "layers": m.layers, "d_model": m.d_model, "attention": m.attention,
            "params_b": m.params / 1e9, "active_params_b": m.active_params / 1e9,
            "embedding_params_b": m.embedding_params / 1e9,
            "nonembedding_params_b": m.nonembedding_params / 1e9,
            "experts": f"{m.top_k}/{m.n_experts}" if m.is_moe else "-",
            "weights_gb_bf16": m.weight_bytes("bf16") / 1e9, "weights_gb_fp8": m.weight_bytes("fp8") / 1e9,
            "weights_gb_fp4": m.weight_bytes("fp4") / 1e9,
            "kv_kib_per_token_bf16": m.kv_bytes_per_token("bf16") / 1024,
            "gflops_per_token": m.flops_per_token(0) / 1e9, "max_context": m.max_context,
            "sources": m.sources,
        })
    return rows


def support_rows(cat) -> list[dict]:
    """Every GPU x model x precision with the smallest tensor-parallel size that fits, and its label:
    measured (the GPU's own op tables), transferred (the closest fitted GPU's, rescaled by datasheet
    peaks) or extrapolated (the model's shapes outside the measured sizes)."""
    from ..model.deployment import Deployment  # local: numpy (~110 ms); catalog models needs none
    from ..model.servicetime import StepCoeffs  # local: numpy (~110 ms); catalog models needs none

    rows = []
    for gname, g in cat.gpus.items():
        for mname in cat.models:
            for precision in ("bf16", "fp8", "fp4"):
                if g.peak_flops(precision) <= 0:
                    continue
                for tp in (1, 2, 4, 8, 16, 32, 72):
                    if tp > g.gpus_per_node:
                        break
                    try:
                        dep = Deployment.from_catalog(cat, mname, gname, tp=tp, precision=precision)
                    except InputError:
                        continue
                    c = StepCoeffs.of(dep)
                    rows.append({"gpu": gname, "model": mname, "precision": precision, "tp": tp,
                                 "support": c.label, "outside": ",".join(c.outside) or "-"})
                    break
    return rows


@cli.command("catalog")
@click.argument("what", type=click.Choice(["gpus", "models", "support"]))
@catalog_option
@format_option
def catalog(what: str, catalog_files: tuple[str, ...], fmt: str) -> None:
    """List the GPU or model catalog (add your own with --catalog FILE), or each GPU x model x
    precision's step-model support label (measured, transferred or extrapolated)."""
    cat = get_catalog(catalog_files)
    rows = {"gpus": gpu_rows, "models": model_rows, "support": support_rows}[what](cat)
    if fmt == "table":
        for r in rows:
            r.pop("sources", None)
    emit(rows, fmt)
