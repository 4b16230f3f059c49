"""The root group's command table: the module that defines each command and the help it lists.

``agentsim --help`` lists the commands from :data:`COMMANDS` without importing any of them, and a
command's module (and with it numpy, pandas, scipy, ...) is imported only when that command runs,
so start-up costs what the command uses. A command module still registers itself on import with
``@cli.command``; a new command needs its row here (``tests/test_startup.py`` fails when the table
and the modules drift apart).
"""
from __future__ import annotations

import importlib

import click

# name -> (module in agentsim.cli that defines it, the first sentence of its help: what --help lists)
COMMANDS: dict[str, tuple[str, str]] = {
    "calibrate": ("calibrate_cmd", "The calibration report (op fit, whole steps, measured points); --refit refits the step model."),
    "capacity": ("capacity_cmd", "Find the smallest fleet (or largest load) at which every SLO holds."),
    "catalog": ("catalog_cmd", "List the GPU or model catalog (add your own with --catalog FILE), or each GPU x model x precision's step-model support label (measured, transferred or extrapolated)."),
    "estimate": ("estimate_cmd", "Simulate one deployment: TTFT, TPOT, E2E (mean and percentiles) and token "
                                 "throughput."),
    "experiment": ("experiment_cmd", "Scripted experiments: each answers one question and writes summary.md, "
                                     "results.json and figures."),
    "plot": ("report_cmd", "Write the standard figures of a saved run to RUN_DIR/figures/*.png (replications: to RUN_DIR/rep-NNN/figures)."),
    "replay": ("replay_cmd", "Replay TRACE (an Azure 2023, Mooncake or TraceLab file) and print the run summary."),
    "report": ("report_cmd", "Write RUN_DIR/report.md and RUN_DIR/report.html (summary tables and figures)."),
    "run": ("run_cmd", "Simulate SCENARIO (a TOML file or a preset name; default: the default preset)."),
    "scenario": ("run_cmd", "Scenario files: schema, presets."),
    "servicetime": ("servicetime_cmd", "Tabulate step times, token rates and energy per token from the "
                                       "service-time model."),
    "sweep": ("sweep_cmd", "Run SCENARIO at every grid point x replication; one table row per run."),
    "validate": ("validate_cmd", "Compare the engine with queueing theory (M/M/c, P-K, PS, M/G/inf, MVA, Erlang B, "
                                 "M/M/c/K, retries, token buckets) and check exact sample-path properties."),
}


def load(name: str) -> None:
    """Import the module of command ``name`` (which registers it on the root group)."""
    importlib.import_module(f"{__package__}.{COMMANDS[name][0]}")


class LazyGroup(click.Group):
    """A group that imports a command's module only when the command is looked up to run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            load(cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with the table's help standing in for each command not imported yet."""
        commands = [(name, self.commands.get(name) or click.Command(name, help=COMMANDS[name][1]))
                    for name in self.list_commands(ctx)]
        commands = [(name, cmd) for name, cmd in commands if not cmd.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in commands])
