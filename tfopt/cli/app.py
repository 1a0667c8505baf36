"""The ``tfopt`` group: one-paragraph errors, quiet native logs, the options commands share.

TensorFlow is imported inside the commands that need it, never at start-up, so ``--help``,
``validate`` and ``recipes`` answer at once.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

import click

from tfopt.errors import TfoptError

# Lines TensorFlow's C++ runtime, absl and the TFLite converter write to stderr on their own:
# hidden unless --verbose, so users see tfopt's output.
_NATIVE_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} [\d:. ]+\s*\d+ \S+:\d+\]|"
    r"(WARNING|INFO):(tensorflow|absl):|fully_quantize: |Estimated count of arithmetic ops|"
    r"To enable the following instructions:|Summary on the non-converted ops:|"
    r"\s*\* Accepted dialects:|\s*\* Non-Converted Ops:|\s*- arith\.constant|\s*- tfl\.|"
    r"INFO: Created TensorFlow Lite XNNPACK delegate)"
)
VERBOSE = ("-v", "--verbose")


def quiet_native_logs() -> None:
    """Route this process's stderr through a filter that drops native log lines.

    Python warnings and TensorFlow's Python loggers are silenced too. This is the command
    line's own process; the library never does this to a user's process.
    """
    import logging
    import warnings

    warnings.simplefilter("ignore")
    for name in ("tensorflow", "absl", "tf_keras", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:
        return
    out = os.fdopen(saved, "wb", buffering=0)

    def pump():
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not _NATIVE_LOG.match(line.decode("utf-8", "replace")):
                    out.write(line)

    thread = threading.Thread(target=pump, name="tfopt-stderr", daemon=True)
    thread.start()

    def restore():
        try:
            sys.stderr.flush()
            os.dup2(saved, 2)  # closes the pipe's last writer: the pump sees end of file
        except (OSError, ValueError):
            return
        thread.join(timeout=2)

    import atexit

    atexit.register(restore)


def _verbose_option() -> click.Option:
    return click.Option(list(VERBOSE), is_flag=True, expose_value=False,
                        help="Also show TensorFlow's own log lines and warnings.")


def with_verbose(command: click.Command) -> click.Command:
    """``command`` taking ``-v``/``--verbose`` (read by :func:`main` before parsing)."""
    if not any(VERBOSE[1] in p.opts for p in command.params):
        command.params.append(_verbose_option())
    return command


class Group(click.Group):
    """Prints a :class:`TfoptError` as one paragraph and exits 2 (130 when interrupted).

    Besides its own commands it lists one command per registered step (see
    :mod:`tfopt.cli.steps`), read from the step registry each time, so a step registered
    after start-up is a command too.
    """

    def _step_commands(self) -> dict:
        from tfopt.cli.steps import step_commands

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


def sigterm_as_interrupt() -> None:
    """SIGTERM ends a long command like Ctrl-C does: checkpoints are kept for ``--resume``."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe value by dotted key, e.g. --set train.epochs=3 (repeatable).",
)


def recipe_run_options(what: str, resume_help: str):
    """RECIPE, --set, --output, --resume and --overwrite, for commands that write ``what``."""

    def wrap(f):
        for option in reversed([
            click.argument("recipe", type=click.Path(dir_okay=False)),
            set_option,
            click.option("--output", type=click.Path(file_okay=False), help=f"Parent folder of the {what}."),
            click.option("--resume", is_flag=True, help=resume_help),
            click.option("--overwrite", is_flag=True, help=f"Replace a finished {what.split()[0]} of the same name."),
        ]):
            f = option(f)
        return f

    return wrap


def echo_err(line: str) -> None:
    click.echo(line, err=True)
