"""``agentsim calibrate``: the calibration report in three tiers, and the refit of the step model.

* tier (a): the per-operator fit per engine, GPU and op class, on rows held out of every fit (and
  in-sample beside it), and leave-one-GPU-out (from the shipped fit's report);
* tier (b): whole decode, prefill and mixed steps rebuilt from held-out measured rows;
* tier (c): the shipped measured points through the engine (below).
``--refit`` regenerates ``agentsim/data/opmodel.npz`` from the installed op tables
(``pip install 'agentsim[optables]'``) and prints tiers (a) and (b) afresh.

Tier (c): fit each engine preset's per-step and per-request overheads (and, for scenarios without a
preset, each GPU generation's) to measured single-stream points.

Prints every point (conditions, measured, predicted, relative and leave-one-out error, or why it
is not scored), then per preset and per generation the fitted factors against their priors and an
error summary of the single-stream points they were fitted to, then the load points: each the
one ``agentsim estimate`` command printed with it (its preset, nothing hidden) and its
assumptions, scored but never fitted; error over all of them and over the held-out rows.
``--write FILE`` saves the fitted factors as a catalog file (the shipped one is
``agentsim/data/calibrated.toml``).
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from ..model import opfit
from ..model.opmodel import DATA, OpModel
from ..studies import calibrate as cal
from ..model.catalog import data_path, env_catalog_files, load_catalog
from ..util.errors import InputError
from .common import _fmt, catalog_option, cli, emit, format_option, render_table


def generation_block(fit: cal.GenerationFit, rows: list[dict], by: str = "generation") -> str:
    """Fitted factors vs priors and the error summary of one generation (or engine preset), as text.
    A generation's error is shown on its points as the preset fits predict them."""
    s = cal.summary([r for r in rows if r[by] == fit.generation], in_fit=True)
    factors = [{"factor": n, "prior": getattr(fit.prior, n), "fitted": v} for n, v in fit.fitted.items()]
    head = (f"{fit.generation}: {s['points']} scored points (rows {', '.join(map(str, fit.rows))}), "
            f"{len(fit.fitted)} factors fitted")
    table = render_table(factors) if factors else "(no factor identified; priors kept)"
    tail = (f"|rel error| median {_fmt(s['median_abs_error'])}, max {_fmt(s['max_abs_error'])}; "
            f"leave-one-out median {_fmt(s['loo_median_abs_error'])}")
    return "\n".join([head, table, tail])


def load_block(rows: list[dict]) -> str:
    """The load points: each one's assumptions and the estimate command that reproduces it, then
    their error over all scored load points and over the held-out ones."""
    load = [r for r in rows if r.get("load")]
    lines = ["load points: each simulated by the one `agentsim estimate` command shown (its engine's preset, "
             "the row's model, GPU, lengths and load, nothing else), with the preset's fitted overheads; "
             "scored, never fitted, so their loo_error is their rel_error; the commands read the shipped "
             "calibrated.toml (after --write FILE from other data, add --catalog FILE to them)"]
    for r in load:
        if r["scored"]:
            err = f"measured {_fmt(r['measured'])}, predicted {_fmt(r['predicted'])} {r['unit']} ({r['rel_error']:+.1%})"
            lines += [f"  row {r['row']}{' (held out)' if r.get('holdout') else ''}: {r['metric']}: {err}",
                      f"    {r['load_assumption'] or '-'}", f"    {r['command'] or '-'}"]
        else:
            lines.append(f"  row {r['row']}: not scored: {r['reason']}")
    for label, holdout in (("all", None), ("held out", True)):
        s = cal.summary(rows, in_fit=False, holdout=holdout)
        lines.append(f"load ({label}): {s['points']} scored points; |rel error| median {_fmt(s['median_abs_error'])}, "
                     f"max {_fmt(s['max_abs_error'])}")
    return "\n".join(lines)


def tier_blocks(meta: dict) -> str:
    """Tiers (a) and (b) of a fit's report as text: per engine and GPU, medians and the worst case."""

    out = [f"step model: {meta['package']} {meta['version']} tables, data hash {meta['data_hash']}; "
           f"held out before fitting: a random {meta['holdout']['share']:.0%} of each table's rows (seed "
           f"{meta['holdout']['seed']}) and every shape of {meta['holdout']['family']}",
           "", "tier (a): op fit, median |relative error| on held-out rows (in-sample; leave-one-GPU-out)"]
    rows = []
    for r in meta["tier_a"]:
        rows.append({"engine": r["engine"], "gpu": r["gpu"], "op": r["op"], "held_out_rows": r["held_out_rows"],
                     "held_out": r["held_out_median"], "p90": r["held_out_p90"], "in_sample": r["in_sample_median"],
                     "logo": r["logo_median"], "logo_from": r["logo_from"], "target": r["tolerance"],
                     "ok": "yes" if r["within"] else "NO"})
    out.append(render_table(rows))
    out += ["", "tier (b): whole steps from held-out rows (Llama-3.1-8B TP1, 70B TP4/TP8, DeepSeek-V3 TP8; "
                "decode 32 x 4k, prefill 2k, mixed 512 + 32 x 4k)"]
    groups: dict = {}
    for r in meta["tier_b"]:
        groups.setdefault((r["engine"], r["gpu"]), []).append(r)
    rows = []
    for (engine, gpu), rs in groups.items():
        e = np.abs([r["rel_error"] for r in rs])
        worst = rs[int(np.argmax(e))]
        rows.append({"engine": engine, "gpu": gpu, "steps": len(rs), "median": float(np.median(e)),
                     "max": float(e.max()), "worst": f"{worst['shape']} {worst['step']}",
                     "ok": "yes" if np.median(e) <= 0.08 and e.max() <= 0.25 else "NO"})
    out.append(render_table(rows))
    return "\n".join(out)


@cli.command("calibrate")
@click.option("--data", "data_file", type=click.Path(dir_okay=False), default=None,
              help="Measured points (CSV with the columns of calibration.csv; the holdout column "
                   "may be left out, meaning false). Default: the shipped agentsim/data/calibration.csv.")
@click.option("--write", "write_file", type=click.Path(dir_okay=False), default=None,
              help="Write the fitted factors to this catalog TOML file (atomically).")
@click.option("--refit", is_flag=True,
              help="Refit the per-operator step model from the installed op tables (needs the optables extra) "
                   "and write it to --write-ops (default: the shipped agentsim/data/opmodel.npz).")
@click.option("--write-ops", "ops_file", type=click.Path(dir_okay=False), default=None,
              help="With --refit: where to write the fitted op model (.npz).")
@click.option("--tier", "tiers", type=click.Choice(["a", "b", "c"]), multiple=True,
              help="Report only these tiers (repeatable; default all three).")
@catalog_option
@format_option
def calibrate(data_file, write_file, refit, ops_file, tiers, catalog_files, fmt) -> None:
    """The calibration report (op fit, whole steps, measured points); --refit refits the step model."""

    tiers = set(tiers or ("a", "b", "c"))
    if ops_file and not refit:
        raise InputError("--write-ops: only meaningful with --refit")
    path = Path(data_file) if data_file else data_path("calibration.csv")
    points = cal.load_points(path) if "c" in tiers else []     # a bad --data fails before anything prints
    if refit:
        target = Path(ops_file) if ops_file else DATA
        if target.suffix != ".npz":
            raise InputError(f"--write-ops {target}: the op model is written as .npz")
        arrays, _ = opfit.fit_all(load_catalog(env_catalog_files() + tuple(catalog_files), calibrated=False))
        try:
            opfit.write(arrays, target)
        except OSError as e:
            raise InputError(f"--write-ops {target}: cannot write ({e.strerror or e})") from None
        click.echo(f"wrote {target}", err=True)
        meta = json.loads(str(arrays["meta"]))
    else:
        meta = OpModel.load().meta
    rows: list[dict] = []
    if "a" in tiers:
        rows += meta["tier_a"]
    if "b" in tiers:
        rows += meta["tier_b"]
    if fmt == "table" and tiers & {"a", "b"}:
        click.echo(tier_blocks({**meta, "tier_a": meta["tier_a"] if "a" in tiers else [],
                                "tier_b": meta["tier_b"] if "b" in tiers else []}))
    if "c" not in tiers:
        if fmt == "json":
            emit(rows, fmt)
        return
    result = cal.calibrate(points, load_catalog(env_catalog_files() + tuple(catalog_files), calibrated=False))
    if fmt == "json":
        emit(rows + result.rows, fmt)
    else:
        click.echo("\ntier (c): the shipped measured points through the engine")
        emit([{k: v for k, v in r.items() if k not in ("source", "load_assumption", "command")} for r in result.rows], fmt)
        click.echo("\nper engine preset (the time outside the GPU of `engine.preset` runs):")
        for fit in result.preset_fits.values():
            click.echo("\n" + generation_block(fit, result.rows, "preset"))
        click.echo("\nper GPU generation (scenarios without a preset):")
        for fit in result.fits.values():
            click.echo("\n" + generation_block(fit, result.rows))
        s = cal.summary(result.rows, in_fit=True)
        click.echo(f"\nfitted: {s['points']} single-stream points; |rel error| median "
                   f"{_fmt(s['median_abs_error'])}, max {_fmt(s['max_abs_error'])}; "
                   f"leave-one-out median {_fmt(s['loo_median_abs_error'])}")
        click.echo("\n" + load_block(result.rows))
    if write_file:
        try:
            cal.write_calibrated(result.fits, write_file, path.name, result.preset_fits)
        except OSError as e:
            raise InputError(f"--write {write_file}: cannot write ({e.strerror or e})") from None
        load_catalog.cache_clear()  # a later load in this process must see the new file
        click.echo(f"wrote {write_file}", err=True)
