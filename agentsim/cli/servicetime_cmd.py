"""``agentsim servicetime``: the step-time model as a table, no simulation needed.

For each deployment and batch size: a decode step's time, the share of it spent in attention, the
per-user token rate, the replica's token throughput, a whole prompt's prefill (TTFT at an idle
replica) and the step model's support label.
"""
from __future__ import annotations

import click
import numpy as np

from ..model.deployment import Deployment
from ..model.servicetime import StepCoeffs, prefill_attention_pairs, step_cost
from ..util.errors import InputError
from .common import catalog_option, cli, emit, format_option, get_catalog

DEFAULT_DEPLOYMENTS = (
    "Llama-3-8B:H100-SXM:1:bf16", "Llama-3-70B:H100-SXM:4:fp8", "Llama-3-70B:H200:2:fp8",
    "DeepSeek-V3:H200:8:fp8", "DeepSeek-V3:GB200:8:fp4",
)


def table_rows(deps: list[Deployment], batches, input_tokens: int, output_tokens: int) -> list[dict]:
    singles = [StepCoeffs.of(d) for d in deps]
    coeffs = StepCoeffs.stack(singles)
    batches = np.asarray(batches, dtype=float)
    ctx = input_tokens + output_tokens / 2  # mean context over the decode phase
    dec = step_cost(coeffs, decodes=batches, decode_context=batches * ctx)
    pre = step_cost(coeffs, prefill_tokens=input_tokens, prefill_attn=prefill_attention_pairs(input_tokens, 0),
                    prefill_kv=input_tokens, sampled=1)
    rows = []
    for i, d in enumerate(deps):
        for j, b in enumerate(batches):
            t = float(dec.time_s[i, j])
            rows.append({
                "deployment": d.label, "batch": int(b), "decode_step_ms": t * 1e3,
                "tokens_per_s_per_user": 1 / t, "tokens_per_s": b / t,
                "attention_share": float(dec.attention_s[i, j] / dec.time_s[i, j]),
                "ttft_idle_ms": (float(pre.time_s[i]) + singles[i].request_overhead) * 1e3,
                "joules_per_token": float(dec.energy_j[i, j]) / b,
                "kv_capacity_tokens": d.kv_capacity_tokens, "support": singles[i].label,
            })
    return rows


@cli.command("servicetime")
@click.option("--deployment", "-d", "deployments", multiple=True, metavar="MODEL:GPU:TP[:PRECISION]",
              help="Deployment to tabulate; repeatable. Default: a small mixed set.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=(1, 8, 32, 128),
              show_default=True, help="Decode batch sizes; repeatable.")
@click.option("--input-tokens", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--output-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@catalog_option
@format_option
def servicetime(deployments, batches, input_tokens, output_tokens, catalog_files, fmt) -> None:
    """Tabulate step times, token rates and energy per token from the service-time model."""
    cat = get_catalog(catalog_files)
    deps = [parse_deployment(cat, s) for s in (deployments or DEFAULT_DEPLOYMENTS)]
    emit(table_rows(deps, batches, input_tokens, output_tokens), fmt)


def parse_deployment(cat, spec: str) -> Deployment:
    parts = spec.split(":")
    if not 3 <= len(parts) <= 4:
        raise InputError(f"--deployment {spec!r}: expected MODEL:GPU:TP[:PRECISION], e.g. Llama-3-70B:H100-SXM:4:fp8")
    try:
        tp = int(parts[2])
    except ValueError:
        raise InputError(f"--deployment {spec!r}: TP must be an integer, got {parts[2]!r}") from None
    return Deployment.from_catalog(cat, parts[0], parts[1], tp=tp, precision=parts[3] if len(parts) == 4 else "bf16")
