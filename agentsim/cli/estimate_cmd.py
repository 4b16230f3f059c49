"""``agentsim estimate``: latency and throughput of one deployment under one load shape."""
from __future__ import annotations

import click

from ..run.checks import check_runnable, check_work, estimate_work
from ..util.errors import InputError
from ..studies.estimate import estimate, estimate_scenario
from ..run.scenario import MAX_COUNT, MAX_RATE, MAX_REPLICAS, MAX_REQUESTS, MAX_SEED, MAX_TOKENS, parse
from .common import Finite, catalog_option, cli, emit, force_option, format_option

#: the generated scenario's paths, in the words of the flags that set them (errors must not name
#: the internal pool "main" or stream "load", which the user never wrote)
FLAG_OF = {"streams.load.rate": "--rate", "streams.load.concurrency": "--concurrency",
           "streams.load.count": "--requests", "streams.load.input_tokens": "--input-tokens", "streams.load.cached_tokens": "--cached-tokens",
           "streams.load.output_tokens": "--output-tokens", "pools.main.replicas": "--replicas",
           "pools.main.tp": "--tp", "pools.main.pp": "--pp", "pools.main.ep": "--ep",
           "pools.main.dp_attention": "--dp-attention", "pools.main.gpu": "--gpu", "pools.main.model": "--model",
           "pools.main.precision": "--precision", "engine.max_batch": "--max-batch",
           "engine.token_budget": "--token-budget", "engine.preset": "--engine",
           "engine.speculative_tokens": "--speculative-tokens", "engine.acceptance": "--acceptance"}


def in_flag_words(message: str) -> str:
    """An error about the generated scenario, told in the flags' words."""
    for prefix in ("scenario: ", "pools.main: ", "streams.load: "):
        message = message.replace(prefix, "")
    for path, flag in FLAG_OF.items():
        message = message.replace(path, flag)
    return message.replace("streams.load", "the load").replace("pools.main", "the deployment")


@cli.command("estimate")
@click.option("--model", required=True, help="Catalog model name or alias.")
@click.option("--gpu", required=True, help="Catalog GPU name or alias.")
@click.option("--tp", type=click.IntRange(min=1, max=1024), default=1, show_default=True)
@click.option("--pp", type=click.IntRange(min=1, max=1024), default=1, show_default=True)
@click.option("--ep", type=click.IntRange(min=1, max=1024), default=1, show_default=True,
              help="Expert-parallel ranks over the tp x dp-attention GPUs of a stage (MoE models).")
@click.option("--dp-attention", type=click.IntRange(min=1, max=1024), default=1, show_default=True,
              help="Data-parallel attention ranks of tp GPUs each, each with its own KV; GPUs = tp x dp x pp.")
@click.option("--precision", type=click.Choice(["bf16", "fp8", "fp4"]), default="bf16", show_default=True)
@click.option("--input-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), required=True)
@click.option("--output-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), required=True)
@click.option("--cached-tokens", type=click.IntRange(min=0, max=MAX_TOKENS), default=0, show_default=True,
              help="Prompt tokens already in the replica's KV cache (attended, not recomputed).")
@click.option("--range-ratio", type=Finite(0, 1, low_open=True), default=1.0, show_default=True,
              help="Draw each request's input and output lengths uniformly from [R x L, L] (benchmark clients' "
                   "--random-range-ratio); 1 = fixed lengths.")
@click.option("--concurrency", type=click.IntRange(min=1, max=MAX_COUNT), default=None, help="Closed loop of C clients.")
@click.option("--rate", type=Finite(0, MAX_RATE, low_open=True), default=None, help="Poisson requests/s.")
@click.option("--max-load", is_flag=True, help="All requests at once (saturation); the same as --mode offline.")
@click.option("--mode", type=click.Choice(["offline", "server"]), default=None,
              help="MLPerf-style: offline = all requests at once (max throughput); server = the highest Poisson "
                   "rate meeting --ttft-p99 and --tpot-p99.")
@click.option("--ttft-p99", type=Finite(0, 1e6, low_open=True), default=None, help="--mode server: p99 TTFT bound (s).")
@click.option("--tpot-p99", type=Finite(0, 1e6, low_open=True), default=None, help="--mode server: p99 TPOT bound (s).")
@click.option("--min-duration", type=Finite(0, 1e6), default=None,
              help="--mode server: simulate at least this many seconds of arrivals per rate (default 600, MLPerf's).")
@click.option("--engine", "preset", default=None,
              help="Engine preset: vllm | sglang | trtllm (batching defaults and time outside the GPU, "
                   "data/presets.toml); default: vLLM V1 limits with the GPU generation's overheads.")
@click.option("--requests", type=click.IntRange(min=1, max=MAX_REQUESTS), default=1000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1, max=MAX_REPLICAS), default=1, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1, max=MAX_COUNT), default=None,
              help="Override the engine's max batch.")
@click.option("--token-budget", type=click.IntRange(min=1, max=MAX_TOKENS), default=None,
              help="Override the per-step token budget.")
@click.option("--speculative-tokens", type=click.IntRange(min=0, max=8), default=None,
              help="Draft tokens verified per decode step (multi-token prediction / speculative decoding); 0 = off.")
@click.option("--acceptance", type=Finite(0, 1, low_open=True, high_open=True), default=None,
              help="Mean per-token acceptance of drafts (default 0.85: DeepSeek-V3's MTP).")
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=1, show_default=True)
@catalog_option
@force_option
@format_option
def estimate_cmd(model, gpu, tp, pp, ep, dp_attention, precision, input_tokens, output_tokens, cached_tokens, range_ratio, concurrency, rate, max_load,
                 mode, ttft_p99, tpot_p99, min_duration, preset, requests, replicas, max_batch, token_budget, speculative_tokens,
                 acceptance, seed, catalog_files, force, fmt) -> None:
    """Simulate one deployment: TTFT, TPOT, E2E (mean and percentiles) and token throughput.

    The run is checked first: a request no replica can hold is refused, and so is a run whose
    estimated work is above the limits (unless --force).
    """
    engine = {k: v for k, v in (("preset", preset), ("max_batch", max_batch), ("token_budget", token_budget),
                                ("speculative_tokens", speculative_tokens), ("acceptance", acceptance))
              if v is not None}
    kw = dict(model=model, gpu=gpu, tp=tp, pp=pp, precision=precision, input_tokens=input_tokens,
              output_tokens=output_tokens, cached_tokens=cached_tokens, concurrency=concurrency, rate=rate, max_load=max_load,
              requests=requests, replicas=replicas, engine=engine, catalog=list(catalog_files))
    if range_ratio != 1.0:
        kw["range_ratio"] = range_ratio
    if ep != 1 or dp_attention != 1:
        kw.update(ep=ep, dp_attention=dp_attention)
    if mode is not None or ttft_p99 is not None or tpot_p99 is not None:
        kw.update(mode=mode, ttft_p99=ttft_p99, tpot_p99=tpot_p99)
    if min_duration is not None:
        if mode != "server":
            raise InputError("estimate: --min-duration only applies with --mode server")
        kw["min_duration_s"] = min_duration
    try:
        _check(kw, force)
        out = estimate(seed=seed, **kw)
    except InputError as e:
        raise InputError(in_flag_words(str(e))) from None
    emit(out, fmt)


def _check(kw: dict, force: bool) -> None:
    """Refuse before simulating: requests no replica holds, or more work than the limits allow."""
    sc = parse(estimate_scenario(**{k: v for k, v in kw.items() if k != "min_duration_s"}))
    for note in check_runnable(sc):
        click.echo(f"warning: {in_flag_words(note)}", err=True)
    check_work(estimate_work(sc), force, what="this estimate", advice="lower --requests or --concurrency")
