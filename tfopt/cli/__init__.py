"""The ``tfopt`` command line: one module per command or group; each parses its options, calls
one library function and prints.

The step commands (``prune``, ``cluster``, ``quantize``, ``export``, ``fold-bn``,
``remove-layers`` and any step registered later) are generated from the step registry by
:mod:`tfopt.cli.steps`.
"""

from __future__ import annotations

import sys

import click

from tfopt import __version__
from tfopt.cli import fit, gradcheck, lr_find, optimize, recipes, replay, report, sensitivity, tune
from tfopt.cli.app import VERBOSE, quiet_native_logs, with_verbose, without_hidden
from tfopt.cli.steps import step_commands
from tfopt.errors import TfoptError
from tfopt.config.step_registry import load_plugins


class Group(click.Group):
    """Prints a :class:`TfoptError` as one paragraph and exits 2 (130 when interrupted); an
    unknown option is answered with suggestions among the options its command shows.

    Besides its own commands it lists one command per registered step (see
    :mod:`tfopt.cli.steps`), read from the step registry each time, so a step registered
    after start-up is a command too.
    """

    def _step_commands(self) -> dict:
        return step_commands()

    def list_commands(self, ctx):
        return sorted({*self.commands, *self._step_commands()})

    def get_command(self, ctx, name):
        command = self.commands.get(name) or self._step_commands().get(name)
        return with_verbose(command) if command is not None else None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfoptError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))
        except click.NoSuchOption as exc:
            raise without_hidden(exc) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="tfopt")
@click.option("-v", "--verbose", is_flag=True, expose_value=False,
              help="Also show TensorFlow's own log lines and warnings (any command takes it).")
def cli():
    """Train CNNs from YAML recipes, then make them smaller and faster."""


for _command in (recipes.validate, recipes.summary, recipes.list_recipes, fit.fit, lr_find.lr_find,
                 gradcheck.gradcheck, report.report, sensitivity.sensitivity, tune.tune, optimize.optimize,
                 replay.replay):
    cli.add_command(with_verbose(_command))


def main():
    if not any(arg in VERBOSE for arg in sys.argv[1:]):
        quiet_native_logs()
    try:
        load_plugins()
    except TfoptError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    cli(prog_name="tfopt")


__all__ = ["cli", "main"]
