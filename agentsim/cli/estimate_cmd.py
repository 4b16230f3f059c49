"""``agentsim estimate``: latency and throughput of one deployment under one load shape."""
from __future__ import annotations

import click

from ..estimate import estimate
from .common import catalog_option, cli, emit, format_option


@cli.command("estimate")
@click.option("--model", required=True, help="Catalog model name or alias.")
@click.option("--gpu", required=True, help="Catalog GPU name or alias.")
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--precision", type=click.Choice(["bf16", "fp8", "fp4"]), default="bf16", show_default=True)
@click.option("--input-tokens", type=click.IntRange(min=1), required=True)
@click.option("--output-tokens", type=click.IntRange(min=1), required=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Closed loop of C clients.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Poisson requests/s.")
@click.option("--max-load", is_flag=True, help="All requests at once (saturation).")
@click.option("--requests", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=None, help="Override the engine's max batch.")
@click.option("--token-budget", type=click.IntRange(min=1), default=None, help="Override the per-step token budget.")
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
@catalog_option
@format_option
def estimate_cmd(model, gpu, tp, pp, precision, input_tokens, output_tokens, concurrency, rate, max_load, requests,
                 replicas, max_batch, token_budget, seed, catalog_files, fmt) -> None:
    """Simulate one deployment: TTFT, TPOT, E2E (mean and percentiles) and token throughput."""
    engine = {k: v for k, v in (("max_batch", max_batch), ("token_budget", token_budget)) if v is not None}
    out = estimate(seed=seed, model=model, gpu=gpu, tp=tp, pp=pp, precision=precision, input_tokens=input_tokens,
                   output_tokens=output_tokens, concurrency=concurrency, rate=rate, max_load=max_load,
                   requests=requests, replicas=replicas, engine=engine, catalog=list(catalog_files))
    emit(out, fmt)
