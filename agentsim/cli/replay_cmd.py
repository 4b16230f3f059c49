"""``agentsim replay TRACE --trace-format F``: replay a public trace through the simulated cluster."""
from __future__ import annotations

import math
from pathlib import Path

import click

from ..run.checks import Work, check_work, max_kv_capacity
from ..util.outdir import OutDir
from ..util.errors import InputError
from ..run.scenario import MAX_DURATION_S, with_blame
from ..run.traces import TRACE_FORMATS, prepare_scenario, read_trace, replay
from .common import Finite, cli, emit, force_option, format_option, out_options, progress_option
from .run_cmd import _progress_bar, summary_rows, write_json

TRACE_KEYS = ("trace_requests", "ideal_hit_rate", "hit_rate")


@cli.command("replay")
@click.argument("trace")
@click.option("--trace-format", "trace_format", type=click.Choice(TRACE_FORMATS), required=True,
              help="azure: CSV TIMESTAMP,ContextTokens,GeneratedTokens; mooncake: JSONL timestamp (ms), "
                   "input_length, output_length, hash_ids; tracelab: session CSV session_id,round_idx,"
                   "prefix_len,input_len,output_len,tool_wait_after_ms[,arrival_time].")
@click.option("--scenario", default=None, metavar="FILE|PRESET",
              help="Cluster to replay on (its streams and populations are replaced by the trace). Default: "
                   "one pool of Llama-3.1-8B on H100-SXM sized for the trace's load (mooncake: one replica "
                   "with the block prefix cache).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a scenario field, e.g. --set pools.replay.replicas=4; repeatable.")
@click.option("--unbounded-cache", is_flag=True,
              help="A host KV tier no trace fills and no TTL: the setting of the ideal hit rate.")
@click.option("--duration", "duration_s", type=Finite(0, MAX_DURATION_S, low_open=True), default=None,
              help="Stop after this many simulated seconds (default: when the trace's last request ends).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed (default: the scenario's).")
@out_options("Write requests/timeseries/pools Parquet, summary.json and manifest.json here.")
@click.option("--check-invariants", is_flag=True, help="Assert conservation after every engine event (slow).")
@progress_option
@force_option
@format_option
def replay_cmd(trace, trace_format, scenario, overrides, unbounded_cache, duration_s, seed, out_dir, overwrite,
               check_invariants, progress, force, fmt) -> None:
    """Replay TRACE (an Azure 2023, Mooncake or TraceLab file) and print the run summary.

    Besides the keys of `agentsim run`: trace_requests, ideal_hit_rate (mooncake: an infinite
    cache of 512-token blocks, from the hash ids; tracelab: the planned prefix share; azure:
    none) and hit_rate (cached share of the input tokens of completed requests).
    """
    tr = read_trace(trace, trace_format)
    sc = prepare_scenario(tr, scenario, list(overrides), unbounded_cache=unbounded_cache, duration_s=duration_s)
    try:
        max_kv_capacity(sc)         # every pool deploys (the trace is the workload: no streams to check)
    except InputError as e:
        raise InputError(with_blame(str(e), "", overrides)) from None
    check_work(Work(requests=tr.n_requests, clients=0, replicas=sum(p.replicas for p in sc.pools.values())), force,
               what="this replay", advice="replay a part of the trace")
    out = OutDir(out_dir, "replay", overwrite) if out_dir else None
    bar = None
    if progress:
        bar, update = _progress_bar(tr.last_arrival_s, f"replay {Path(trace).name}")
    try:
        res = replay(tr, scenario, seed=seed, overrides=list(overrides), unbounded_cache=unbounded_cache,
                     duration_s=duration_s, check_invariants=check_invariants,
                     progress=(lambda t: update(min(t, tr.last_arrival_s))) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    summary = res.summary()
    figures = res.meta["trace"]
    summary.update({k: figures[k] for k in TRACE_KEYS})
    summary["trace_format"] = figures["trace_format"]
    summary["trace_file"] = figures["trace_file"]
    if out:
        try:
            res.save(out.write_path)
            write_json(out.write_path / "summary.json", summary)
            out.commit()
        except BaseException:
            out.abandon(keep=False)
            raise
    if fmt == "json":
        emit(summary, "json")
        return
    rows = [{"metric": k, "value": _value(summary[k])} for k in TRACE_KEYS] + summary_rows(summary)
    emit(rows, "table")
    if out:
        click.echo(f"results written to {out.path}", err=True)


def _value(v):
    return math.nan if v is None else v
