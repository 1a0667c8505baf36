"""Every command of ``tfopt`` in one group, the step commands generated from the registry included:
what the documentation's command reference reads (the CLI itself lists step commands on demand)."""

import copy
import html

import click

from tfopt.cli import cli
from tfopt.cli.steps import step_commands


def for_markdown(command: click.Command) -> click.Command:
    """A copy of ``command`` whose help texts show ``<output>`` as text, not as an HTML tag, and
    whose table shows every default in its default column, those named in words included."""
    shown = copy.deepcopy(command)
    shown.help = html.escape(shown.help, quote=False) if shown.help else shown.help
    for param in shown.params:
        if getattr(param, "help", None):
            param.help = html.escape(param.help, quote=False)
        if getattr(param, "shown", None):
            param.default = html.escape(param.shown, quote=False)
    return shown


#: The commands of ``tfopt``, as of import time, sorted by name.
reference = click.Group("tfopt", help=cli.help, commands={name: for_markdown(command) for name, command in
                                                           sorted({**cli.commands, **step_commands()}.items())})
