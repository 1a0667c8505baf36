"""One command per registered step, its options generated from the step's config fields.

A field's type gives the option's kind (a flag for ``bool``, a choice for ``Literal``, a
repeatable ``NAME=VALUE`` for a per-layer mapping, ``M:N`` for a pair), its description the
help, and its default the ``[default: x]`` click writes after it. A step registered with ``cli_flag``
is a variant of another step's command (``tfopt prune --structured``): its options join that
command's, and an option that only one variant reads is refused with the other.
"""

from __future__ import annotations

import re
import typing
from typing import Literal, Union

import click

from tfopt.cli.app import Option, echo_err, echo_out, renamed_option, run_workers
from tfopt.errors import TfoptError
from tfopt.steps import STEPS
from tfopt.steps.runs import check_step_run, run_source
from tfopt.steps.source import check_search_limits

#: Options that have a new name: the old one is refused with the new one.
RENAMED_OPTIONS = {"--layer": "--per-layer", "--protect": "--skip", "--budget": "--max-drop"}


def _unwrap_optional(annotation):
    if typing.get_origin(annotation) is Union or str(typing.get_origin(annotation)) == "types.UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _base_type(annotation):
    """``(kind, detail)``: flag, choice, int, float, str, list (of choice or str), pairs, m_by_n."""
    a = _unwrap_optional(annotation)
    origin = typing.get_origin(a)
    if a is bool:
        return "flag", None
    if origin is Literal:
        return "choice", [str(v) for v in typing.get_args(a)]
    if origin is typing.Annotated:
        return _base_type(typing.get_args(a)[0])
    if a in (int, float, str):
        return a.__name__, None
    if isinstance(a, type) and issubclass(a, (int, float)):  # PositiveInt and the like
        return ("int" if issubclass(a, int) else "float"), None
    if origin is list:
        (item,) = typing.get_args(a) or (str,)
        kind, detail = _base_type(item)
        return "list", detail if kind == "choice" else None
    if origin is dict:
        return "pairs", None
    if origin is tuple:
        return "m_by_n", None
    return "str", None


def _default_text(field) -> str | None:
    """The default as ``[default: x]`` shows it; a default the recipe or the step computes is
    named in words (the field's ``shown_default``); None when there is none to show."""
    shown = (field.json_schema_extra or {}).get("shown_default")
    if shown is not None:
        return shown
    if field.default_factory is not None:
        value = field.default_factory()
        return ", ".join(map(str, value)) if value else None
    if field.default is None or field.default is False:
        return None
    return str(field.default)


def source_params() -> list[click.Parameter]:
    """SOURCE, --recipe, --set, --output and --overwrite: the input and output of a step command."""
    return [
        click.Argument(["source"], type=click.Path()),
        Option(["--recipe"], type=click.Path(dir_okay=False), shown="the run's recipe",
               help="Recipe naming the data (required for a model file)."),
        click.Option(["--set", "overrides"], multiple=True, metavar="KEY=VALUE",
                     help="Override a recipe value by dotted key (repeatable)."),
        Option(["--output"], type=click.Path(file_okay=False), shown="the folder holding SOURCE",
               help="Parent folder of the new run."),
        click.Option(["--overwrite"], is_flag=True, help="Replace a finished run of the same name."),
    ]


class FieldOption:
    """The command-line option of one config field, and the parser of its value."""

    def __init__(self, name: str, field, variant: str | None = None):
        self.name = name
        extra = field.json_schema_extra or {}
        self.opt = extra.get("cli") or "--" + name.replace("_", "-")
        self.kind, self.detail = _base_type(field.annotation)
        self.tristate = self.kind == "flag" and field.default is None  # on, off, or the library decides
        self.metavar = extra.get("metavar")
        help_text = (field.description or "").rstrip(".")
        if self.kind == "m_by_n":  # a pair is written M:N on the command line
            help_text = re.sub(r"\[(\d+), (\d+)\]", r"\1:\2", help_text)
        if not re.match(r"\w:\w", help_text):
            help_text = help_text[:1].upper() + help_text[1:]
        if variant:
            help_text = f"(--{variant}) {help_text}"
        self.help = help_text
        self.default = _default_text(field)
        self.variant = variant

    def join(self, other: "FieldOption") -> None:
        """Take in a variant's field of the same name: its choices are accepted too (each step's
        config checks its own), and its help and default are added where they differ."""
        if self.kind == "choice" and other.kind == "choice":
            self.detail = self.detail + [c for c in other.detail if c not in self.detail]
        variant_help = other.help.split(") ", 1)[1] if other.help.startswith("(--") else other.help
        if variant_help != self.help:
            self.help += f". {other.help}"
            self.variant_help = True
        if other.default != self.default:
            variant_default = f"with --{other.variant}: {other.default}" if other.default is not None else None
            self.default = "; ".join(d for d in (self.default, variant_default) if d is not None)

    def param(self) -> click.Option:
        """The click option; its help is one sentence or more, ending with a full stop as every
        other option's does."""
        option = self._param()
        option.help = option.help if option.help.endswith(".") else option.help + "."
        return option

    def _param(self) -> click.Option:
        kw = dict(help=self.help, shown=self.default)
        if self.kind == "flag" and self.tristate:
            return Option([f"{self.opt}/--no-{self.opt[2:]}", self.name], default=None, **kw)
        if self.kind == "flag":
            return Option([self.opt, self.name], is_flag=True, default=None, **kw)
        if self.kind == "choice":
            return Option([self.opt, self.name], type=click.Choice(self.detail), **kw)
        if self.kind in ("int", "float"):
            return Option([self.opt, self.name], type=int if self.kind == "int" else float, **kw)
        if self.kind == "list":
            return Option([self.opt, self.name], multiple=True, metavar=self.metavar or "NAME",
                          type=click.Choice(self.detail) if self.detail else None,
                          **{**kw, "help": self.help + " (repeatable; commas separate several)"})
        if self.kind == "pairs":
            return Option([self.opt, self.name], multiple=True, metavar=self.metavar or "NAME=VALUE",
                          **{**kw, "help": self.help + " (repeatable)"})
        if self.kind == "m_by_n":
            return Option([self.opt, self.name], metavar="M:N", **kw)
        return Option([self.opt, self.name], metavar=self.metavar, **kw)

    def convert(self, value):
        """The value for the config (None when the option was not given)."""
        if value is None or value == ():
            return None
        if self.kind == "list":
            return [part.strip() for v in value for part in str(v).split(",") if part.strip()]
        if self.kind == "pairs":
            out = {}
            for item in value:
                name, sep, number = item.partition("=")
                try:
                    out[name] = float(number)
                except ValueError:
                    sep = ""
                if not sep or not name:
                    raise TfoptError(f"{self.opt} '{item}': expected {self.metavar or 'NAME=VALUE'}, e.g. "
                                     f"{self.opt} conv1=0.5")
            return out
        if self.kind == "m_by_n":
            try:
                return [int(v) for v in value.split(":")]
            except ValueError:
                raise TfoptError(f"{self.opt} '{value}': expected M:N, e.g. 2:4") from None
        if self.opt == "--max-drop":

            check_search_limits(max_drop=value)  # the points that may be lost, refused as optimize refuses them
        return value


def _options(steps) -> dict[str, FieldOption]:
    """The options of a command's steps by field name; the base step's come first."""
    out: dict[str, FieldOption] = {}
    base = steps[0]
    for step in steps:
        if step.config is None:
            continue
        for name, field in step.config.model_fields.items():
            if name not in out:
                out[name] = FieldOption(name, field, step.cli_flag if step is not base else None)
            elif step is not base:
                out[name].join(FieldOption(name, field, step.cli_flag))
    # an option both variants read is not marked as one variant's
    for name, option in out.items():
        readers = [s for s in steps if s.config is not None and name in s.config.model_fields]
        if len(readers) > 1 and option.help.startswith("(--") and not getattr(option, "variant_help", False):
            option.help = option.help.split(") ", 1)[1]
    return out


def _command(command_name: str, steps) -> click.Command:
    steps = sorted(steps, key=lambda s: s.cli_flag is not None)
    base, variants = steps[0], steps[1:]
    options = _options(steps)

    def callback(source, recipe, overrides, output, overwrite, workers=1, **values):
        ctx = click.get_current_context()
        chosen = next((v for v in variants if ctx.params.get(v.cli_flag) and values.pop(v.cli_flag, False)), base)
        for v in variants:
            values.pop(v.cli_flag, None)
        readers = set(chosen.config.model_fields) if chosen.config is not None else set()
        given = {}
        for name, option in options.items():
            value = option.convert(values.get(name))
            if value is None:
                continue
            if name not in readers:
                other = next(s for s in steps if s.config is not None and name in s.config.model_fields)
                need = f"--{other.cli_flag}" if other.cli_flag else f"no --{chosen.cli_flag}"
                raise TfoptError(f"{option.opt} applies only with {need}")
            given[name] = value
        # the library, loaded by the command that runs it: --help stays light

        flags = {name: options[name].opt for name in given}
        if workers > 1:
            # checked here before the workers start; run_source checks the same before any work
            check_step_run(chosen, source, recipe, overrides, given, output=output, overwrite=overwrite, flags=flags)
            if chosen.distributed:
                run_workers(ctx, workers)
            click.echo(f"{chosen.name} does not run under tf.distribute; running in one process", err=True)
        path, _ = run_source(chosen, source, recipe, overrides, given, output=output, overwrite=overwrite,
                             log=echo_err, flags=flags)
        if path is not None:
            echo_out(path)  # the result on stdout, the progress above on stderr

    params = source_params()
    for v in variants:
        params.append(click.Option([f"--{v.cli_flag}"], is_flag=True, help=v.help))
    params += [o.param() for o in options.values()]
    opts = {o.opt for o in options.values()}
    params += [renamed_option(old, new) for old, new in RENAMED_OPTIONS.items() if new in opts]
    if any(s.distributed for s in steps):
        params.append(click.Option(["--workers"], type=click.IntRange(1, 64), default=1, show_default=True,
                                   help="Fine-tune as N local worker processes of one MultiWorkerMirroredStrategy "
                                        "(steps that support tf.distribute)."))
    help_text = base.help + "".join(f"\n\nWith --{v.cli_flag}: {v.help}" for v in variants)
    help_text += ("\n\nSOURCE is a run directory, or a model file (tf_keras or Keras 3) with --recipe naming its "
                  "data. SOURCE is never changed; a new run is written beside it")
    help_text += f" (<source>-{base.suffix})." if isinstance(base.suffix, str) else "."
    return click.Command(command_name, callback=callback, params=params, help=help_text,
                         short_help=base.help.rstrip("."))


def step_commands() -> dict[str, click.Command]:
    """A command for every registered step with a command name, variants folded in."""
    grouped: dict[str, list] = {}
    for step in STEPS:
        if step.command_name:
            grouped.setdefault(step.command_name, []).append(step)
    return {name: _command(name, steps) for name, steps in grouped.items()}


__all__ = ["step_commands"]
