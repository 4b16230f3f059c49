"""``agentsim experiment NAME|list``: run one of the shipped experiments (agentsim/experiments)."""
from __future__ import annotations

from pathlib import Path

import click

from ..studies.experiments import EXPERIMENTS, PROGRESS, load, names, own_keywords
from ..util.outdir import OutDir
from .common import Finite, cli

#: the largest --scale (the full-size runs are 4-5)
MAX_SCALE = 100.0


class _ExperimentGroup(click.Group):
    """``agentsim experiment list`` and one subcommand per experiment, listed from the registry."""

    def list_commands(self, ctx):
        return ["list"] + names()

    def get_command(self, ctx, name):
        if name == "list":
            return _list
        if name not in EXPERIMENTS:
            return None
        return _command(name)

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and name != "list" and name not in EXPERIMENTS and not name.startswith("-"):
            load(name)      # raises an InputError naming the known experiments
        return super().resolve_command(ctx, args)


def _command(name: str) -> click.Command:
    mod = load(name)
    doc = (mod.__doc__ or "").strip().splitlines()[0]
    short = doc.partition(": ")[2] or doc

    @click.command(name, help=f"{doc}\n\nQuestion: {mod.QUESTION}", short_help=short)
    @click.option("--out", default=None, type=click.Path(file_okay=False), metavar="DIR",
                  help=f"Output folder (default: results/{name}). A non-empty DIR must hold a previous output "
                       "of this experiment's kind (or give --overwrite).")
    @click.option("--overwrite", is_flag=True, help="Replace a non-empty --out DIR that is not an experiment's "
                  "output (atomically: written beside it, then swapped in).")
    @click.option("--scale", type=Finite(0, MAX_SCALE, low_open=True), default=1.0, show_default=True,
                  help="Size of the run: 1 = default (minutes on two cores), <1 smaller, >1 bigger.")
    @click.option("--full", is_flag=True, help=f"The full-size run (--scale {mod.FULL_SCALE:g}).")
    @click.option("--replications", "-r", type=click.IntRange(min=2), default=None,
                  help="Replications (seeds seed, seed+1, ...); default: the experiment's.")
    @click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True, help="Base seed.")
    @click.option("--workers", type=click.IntRange(min=0), default=None,
                  help="Worker processes (default: all cores; 0 = run in this process).")
    @click.option("--address", default=None, metavar="ADDR",
                  help="Run on the Dask distributed cluster whose scheduler is at ADDR (e.g. tcp://host:8786); "
                       "default: a local process pool. Same seeds, same results, on any executor.")
    def cmd(out, overwrite, scale, full, replications, seed, workers, address, **own) -> None:
        kw = own_keywords(mod, own)          # before the output folder is touched: bad options fail first
        PROGRESS[0] = True
        target = OutDir(out or str(Path("results") / name), "experiment", overwrite)
        try:
            res = mod.run(str(target.write_path), scale=mod.FULL_SCALE if full else scale, seed=seed,
                          replications=replications, workers=workers, address=address, **kw)
            target.commit()
        except BaseException:
            target.abandon(keep=True)
            raise
        click.echo(res["answer"])
        click.echo(f"summary: {target.path / 'summary.md'}  ({res['runtime_s']:.0f} s)", err=True)
    for flag, o in getattr(mod, "OPTIONS", ()):     # the experiment's own options
        cmd.params.append(click.Option([flag], is_flag=True, help=o["help"]) if o.get("flag") else
                          click.Option([flag], type=o["type"], default=o["default"], help=o["help"],
                                       show_default=o["default"] is not None))
    return cmd


@click.command("list")
def _list() -> None:
    """List the experiments and the question each answers."""
    for name in names():
        click.echo(f"{name}: {load(name).QUESTION}")


@cli.group("experiment", cls=_ExperimentGroup)
def experiment() -> None:
    """Scripted experiments: each answers one question and writes summary.md, results.json and figures.

    `agentsim experiment list` shows them; `agentsim experiment NAME [--scale K] [--out DIR]` runs one.
    """
