"""``agentsim run [FILE|PRESET]``: simulate a scenario, print a summary, write results atomically."""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import click

from ..run.api import ResultSet, load_scenario, preset_names, preset_path, replication_seeds
from ..run.build import build
from ..studies.sweep import run_sliced
from ..util.atomic import write_atomic
from ..util.errors import InputError
from ..util.jsonout import dumps
from ..util.outdir import OutDir
from ..run.scenario import MAX_SLICES, read_toml, schema, with_blame
from ..run.checks import check_runnable, check_work, estimate_work
from ..studies.utilisation import capacity_utilisation
from ..results.steady import warmup_advice
from .common import (MAX_WORKERS, cli, emit, force_option, format_option, out_options,
                     progress_option)

DEFAULT_PRESET = "default"
HEADLINE = ("requests", "completed", "ttft_s", "ttft_p99_s", "tpot_s", "tpot_p99_s", "e2e_s", "e2e_p99_s",
            "frontend_s", "queue_s", "prefill_s", "kv_transfer_s", "kv_transfer_p99_s", "output_tokens_per_s",
            "input_tokens_per_s", "goodput_rps", "slo_attainment",
            "prefix_hit_rate", "preemptions", "joules_per_token", "usd_per_m_tokens", "cost_usd",
            "facility_power_mean_w", "facility_power_peak_w", "facility_mw_mean", "output_tokens_per_s_per_mw",
            "users", "engaged_user_hours", "energy_per_engaged_hour_kwh", "engaged_users_per_mw", "usd_per_engaged_hour",
            "usd_per_user_month",
            "sim_wall_s", "events_per_request")

#: per-pool rows of the summary table: capacity utilisation (agentsim.studies.utilisation) first, then the
#: occupancies that say which limit binds, then busy share (time executing a step) and power
POOL_ROWS = ("parallelism", "kv_capacity_tokens", "kv_contexts", "support", "capacity_utilisation", "batch_occupancy",
             "kv_occupancy", "busy_share", "mean_power_w")

#: per-model rows when the fleet serves several models
MODEL_ROWS = ("requests", "completed", "slo_attainment", "output_tokens_per_s", "gpu_hours", "cost_usd", "usd_per_m_tokens")


def summary_rows(summary: dict) -> list[dict]:
    rows = []
    for key in HEADLINE:
        if key not in summary:
            continue
        row = {"metric": key, "value": summary[key]}
        if f"{key}_ci_low" in summary:
            row["ci_low"], row["ci_high"] = summary[f"{key}_ci_low"], summary[f"{key}_ci_high"]
        rows.append(row)
    for outcome, n in summary.get("outcomes", {}).items():
        rows.append({"metric": f"outcome:{outcome}", "value": n})
    for pool, d in summary.get("pools", {}).items():
        for key in POOL_ROWS:
            if key in d:
                rows.append({"metric": f"pool:{pool}:{key}", "value": d[key]})
    for model, d in summary.get("models", {}).items():     # a model mix (agentsim.results.models)
        for key in MODEL_ROWS:
            if key in d:
                rows.append({"metric": f"model:{model}:{key}", "value": d[key]})
    if not any("ci_low" in r for r in rows):
        return rows
    # replications: every row has the interval columns (a dash where there is none)
    return [{"metric": r["metric"], "value": r["value"], "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high")}
            for r in rows]


def _progress_bar(duration: float, label: str):
    from tqdm import tqdm  # local: tqdm costs ~50 ms and is only for a progress bar on a terminal
    bar = tqdm(total=round(duration), unit="sim-s", desc=label, file=sys.stderr, leave=False,
               disable=None, dynamic_ncols=True)

    def update(t: float) -> None:
        bar.update(round(t) - bar.n)
    return bar, update


@cli.command("run")
@click.argument("scenario", required=False)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed (default: the scenario's).")
@click.option("--replications", "-r", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent replications (seed, seed+1, ...); summaries get 95 % CIs.")
@out_options("Write requests/timeseries/pools Parquet, summary.json and manifest.json here.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a scenario field, e.g. --set pools.h100.replicas=8; repeatable.")
@click.option("--step-mode", is_flag=True, help="Use the step-by-step reference engine (slow; for checks).")
@click.option("--check-invariants", is_flag=True, help="Assert conservation after every engine event (slow).")
@progress_option
@click.option("--figures/--no-figures", default=True, show_default=True, help="With --out: write the standard "
              "figures (PNG) to DIR/figures.")
@click.option("--slices", type=click.IntRange(min=1, max=MAX_SLICES), default=1, show_default=True,
              help="Run the fleet as N slices in parallel (tenants hashed to slices, every pool at 1/N) and merge "
                   "them into one fleet summary (agentsim.studies.slicing).")
@click.option("--slice-sample", type=click.IntRange(min=1, max=MAX_SLICES), default=None, metavar="K",
              help="With --slices: run K of the N slices (drawn per replication) and scale sums by N/K.")
@click.option("--address", default=None, metavar="ADDR",
              help="With --slices: run the slices on the Dask cluster whose scheduler is at ADDR.")
@click.option("--workers", type=click.IntRange(min=0, max=MAX_WORKERS), default=None,
              help="With --slices: local pool processes (default: one per CPU; 0 = in this process).")
@force_option
@format_option
def run(scenario, seed, replications, out_dir, overwrite, overrides, step_mode, check_invariants, progress, figures,
        slices, slice_sample, address, workers, force, fmt) -> None:
    """Simulate SCENARIO (a TOML file or a preset name; default: the default preset).

    With --slices N the run is N slices merged (see agentsim sweep --slices); --out DIR then
    keeps each slice's result in DIR/tasks (a rerun resumes) and the merged summary.json.
    Everything is checked before the simulation starts: the scenario, the flags, --out, and
    an estimate of the work (refused above the limits unless --force).
    """
    sc = load_scenario(scenario or DEFAULT_PRESET, list(overrides))
    seed = sc.seed if seed is None else seed
    is_sliced = slices > 1 or slice_sample is not None or address
    _check_before_running(sc, overrides, replications, slices, slice_sample, is_sliced, step_mode,
                          check_invariants, force)
    kind = "sliced" if is_sliced else "replications" if replications > 1 else "run"
    out = OutDir(out_dir, kind, overwrite) if out_dir else None
    if is_sliced:
        _run_sliced(sc, seed, replications, slices, slice_sample, address, workers, out, progress, fmt)
        return
    summary = _run_replications(sc, seed, replications, out, step_mode, check_invariants, progress, figures)
    if fmt == "json":
        emit(summary, "json")
    else:
        emit(summary_rows(summary), "table")
        if out:
            click.echo(f"results written to {out.path}", err=True)


def _check_before_running(sc, overrides, replications: int, slices: int, slice_sample, is_sliced: bool,
                          step_mode: bool, check_invariants: bool, force: bool) -> None:
    """Refuse flags that do not go together, a scenario that cannot run and work above the limits;
    print the scenario's warnings. Nothing has been written yet."""
    if is_sliced:
        if step_mode or check_invariants:
            raise InputError("--slices / --address run on an executor: --step-mode and --check-invariants are not "
                             "available there")
        if slice_sample is not None and slice_sample > slices:
            raise InputError(f"--slice-sample {slice_sample} exceeds --slices {slices}")
    try:
        notes = check_runnable(sc)
    except InputError as e:     # a pool's deployment: name the --set that made it, if one did
        raise InputError(with_blame(str(e), "", overrides)) from None
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    one = sc.model_copy(update={"slice": sc.slice.model_copy(update={"count": slices})}) if slices > 1 else sc
    work = estimate_work(one)
    if not is_sliced:       # replications are kept in memory until the summary over them
        work = work.times(replications)
    check_work(work, force, what="one slice of this run" if slices > 1 else "this run")


def _run_replications(sc, seed: int, replications: int, out, step_mode: bool, check_invariants: bool,
                      progress: bool, figures: bool) -> dict:
    """Run the replications one after the other, writing each as it finishes; the summary (over
    them, with CIs, when more than one). Ctrl-C keeps the finished ones and exits 130."""
    results = []
    kept = 0
    try:
        for i, s in enumerate(replication_seeds(seed, replications)):
            sim = build(sc, s, step_mode=step_mode, check_invariants=check_invariants)
            bar, update = _progress_bar(sc.duration_s, f"{sc.name} rep {i + 1}/{replications}") if progress \
                else (None, None)
            try:
                res = sim.run(update)
            finally:
                if bar is not None:
                    bar.close()
            capacity_utilisation(res)       # into meta: summary, summary.json and the report carry it
            results.append(res)
            if out:
                _write_replication(res, out.write_path, i if replications > 1 else None, figures)
                kept += 1
        summary = results[0].summary() if replications == 1 else ResultSet(results).summary()
        advice = warmup_advice(summary)
        if advice:
            click.echo(f"warning: {advice}", err=True)
        if out and replications > 1:
            write_json(out.write_path / "summary.json", summary)
        if out:
            out.commit()
    except KeyboardInterrupt:
        staged = bool(out and out.staged)
        where = out.abandon(keep=kept > 0) if out else None
        note = f"; {kept} finished replication(s) kept in {where}" if where and kept else ""
        if staged:
            note += f"; {out.path} is as it was"
        click.echo(f"interrupted{note}", err=True)
        sys.exit(130)
    except BaseException:
        if out:
            out.abandon(keep=False)
        raise
    return summary


def _run_sliced(sc, seed, replications, slices, slice_sample, address, workers, out, progress, fmt) -> None:
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            summary = run_sliced(sc, slices, seed=seed, replications=replications, sample=slice_sample,
                                 address=address, workers=workers, out_dir=out.write_path if out else None,
                                 progress=progress)
        for note in notes:
            click.echo(f"note: {note.message}", err=True)
        if out:
            write_json(out.write_path / "summary.json", summary)
            out.commit()
    except KeyboardInterrupt:
        where = out.abandon(keep=True) if out else None
        click.echo(f"interrupted{'; finished slices kept in ' + str(where) if where else ''}", err=True)
        sys.exit(130)
    except BaseException:
        if out:
            out.abandon(keep=False)
        raise
    if fmt == "json":
        emit(summary, "json")
    else:
        emit(summary_rows(summary), "table")
        click.echo(f"{summary['slices_run']} of {summary['slices']} slice(s) merged; percentiles "
                   f"{summary['percentile_method']}", err=True)


def _write_replication(res, out: Path, index: int | None, figures: bool) -> None:
    """Write one result: into ``out`` itself (one run), or staged in ``out/.rep-NNN.partial`` and
    renamed to ``out/rep-NNN`` in one step, so a replication directory is complete or absent."""
    from ..results.plots import save_all  # local: matplotlib (~500 ms) only when figures are asked for
    if index is None:
        res.save(out)
        if figures:
            save_all(res, out / "figures")
        return
    target, staging = out / f"rep-{index:03d}", out / f".rep-{index:03d}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        res.save(staging)
        if figures:
            save_all(res, staging / "figures")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json(path: Path, data: dict) -> None:
    """``data`` as strict JSON (NaN -> null) in ``path``, atomically."""
    write_atomic(path, dumps(data))


@cli.group("scenario")
def scenario_group() -> None:
    """Scenario files: schema, presets."""


@scenario_group.command("schema")
def scenario_schema() -> None:
    """Print the JSON schema of scenario files (every field, its type, default and meaning)."""
    click.echo(json.dumps(schema(), indent=2))


@scenario_group.command("list")
def scenario_list() -> None:
    """List the shipped presets."""
    for name in preset_names():
        click.echo(f"{name}: {read_toml(preset_path(name)).get('description', '')}")


@scenario_group.command("show")
@click.argument("name")
def scenario_show(name: str) -> None:
    """Print a preset's TOML (copy it to start your own)."""
    click.echo(preset_path(name).read_text())
