"""Every option of the command line shows its default one way, as click writes it
(``[default: x]`` after the help), and one concept has one flag in every command."""

import click
import pytest

from tfopt.cli import cli


def _commands():
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        yield name, command, click.Context(command, info_name=name, parent=ctx)


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def test_no_help_text_types_its_own_default():
    typed = [f"{name} {p.opts[0]}: {p.help}" for name, command, _ in _commands() for p in _options(command)
             if "default" in (p.help or "").lower()]
    assert typed == []


def test_every_help_text_ends_with_a_full_stop():
    unfinished = [f"{name} {p.opts[0]}: {p.help}" for name, command, _ in _commands() for p in _options(command)
                  if p.help and not p.help.endswith(".")]
    assert unfinished == []
    assert sum(1 for _, command, _ in _commands() for p in _options(command) if p.help) > 150


def test_every_output_shows_its_default():
    for name, command, ctx in _commands():
        for p in _options(command):
            if p.name == "output":
                assert "[default: " in p.get_help_record(ctx)[1], name


def test_a_default_decided_later_is_named_in_words_like_any_default():
    ctx = dict((name, (command, sub)) for name, command, sub in _commands())
    prune, sub = ctx["prune"]
    records = {p.opts[0]: p.get_help_record(sub)[1] for p in _options(prune)}
    assert records["--lr"].endswith("  [default: the recipe's train.lr.initial]")
    assert records["--sparsity"].endswith("  [default: 0.8]")
    assert records["--criterion"].endswith("  [default: magnitude; with --structured: l1]")
    assert "e.g. 2:4" in records["--m-by-n"] and "[2, 4]" not in records["--m-by-n"]


@pytest.mark.parametrize("command", ["optimize", "sensitivity", "remove-layers"])
def test_the_points_that_may_be_lost_are_max_drop_everywhere(command):
    found = next(c for name, c, _ in _commands() if name == command)
    shown = {o for p in _options(found) for o in p.opts}
    assert "--max-drop" in shown and "--budget" not in shown
