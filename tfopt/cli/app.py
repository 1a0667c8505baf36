"""The ``tfopt`` group: one-paragraph errors, quiet native logs, the options commands share.

TensorFlow is imported inside the commands that need it, never at start-up, so ``--help``,
``validate`` and ``recipes`` answer at once.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
import signal
import sys
import threading

import click

from tfopt.errors import TfoptError
from tfopt.training.launch import launch

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


#: Where :func:`echo_out` writes while a command runs: the stdout the command was started with.
_RESULTS: list = []


def results_stream():
    """The stdout a running command was started with (its results go there)."""
    return _RESULTS[-1] if _RESULTS else sys.stdout


def echo_out(text: str = "") -> None:
    """Print a result on stdout; everything else a command prints (progress, Keras's epoch
    lines) goes to stderr while it runs (see :func:`results_on_stdout`)."""
    click.echo(text, file=results_stream())


def results_on_stdout(callback):
    """``callback`` with stdout sent to stderr while it runs, except what :func:`echo_out` prints,
    so that ``tfopt prune RUN > path.txt`` holds the result and the terminal shows the progress."""
    if getattr(callback, "_results_on_stdout", False):
        return callback

    @functools.wraps(callback)
    def run(*args, **kwargs):
        _RESULTS.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                return callback(*args, **kwargs)
        finally:
            _RESULTS.pop()

    run._results_on_stdout = True
    return run


def with_verbose(command: click.Command) -> click.Command:
    """``command`` taking ``-v``/``--verbose`` (read by :func:`main` before parsing), printing its
    results on stdout and its progress on stderr."""
    if not any(VERBOSE[1] in p.opts for p in command.params):
        command.params.append(_verbose_option())
    if command.callback is not None:
        command.callback = results_on_stdout(command.callback)
    return command


def sigterm_as_interrupt() -> None:
    """SIGTERM ends a long command like Ctrl-C does: checkpoints are kept for ``--resume``."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


class Option(click.Option):
    """A click option whose default is decided later (by the recipe, the run or the step), named
    in words by ``shown``: ``--help`` writes it as click writes every default, ``[default: x]``."""

    def __init__(self, *args, shown: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.shown = shown

    def get_help_record(self, ctx):
        record = super().get_help_record(ctx)
        if record is None or not self.shown:
            return record
        names, text = record
        return names, f"{text}  [default: {self.shown}]" if text else f"[default: {self.shown}]"


def renamed_option(old: str, new: str) -> click.Option:
    """The option ``old``, hidden, refused with one line naming ``new``; :func:`without_hidden`
    keeps it out of click's suggestions."""

    def refuse(ctx, param, value):
        if value:
            raise TfoptError(f"{old} was renamed {new}: write {new} {value[0]}")

    name = "renamed_" + old.lstrip("-").replace("-", "_")  # not the name of the option it became
    return click.Option([old, name], multiple=True, hidden=True, expose_value=False, callback=refuse)


def without_hidden(exc: click.NoSuchOption) -> click.NoSuchOption:
    """``exc`` suggesting only the options its command shows: an old, renamed name is never offered."""
    command = exc.ctx.command if exc.ctx is not None else None
    if command is None or not exc.possibilities:
        return exc
    shown = [o for p in command.params if isinstance(p, click.Option) and not p.hidden
             for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    close = difflib.get_close_matches(exc.option_name, shown)
    return click.NoSuchOption(exc.option_name, possibilities=close or None, ctx=exc.ctx)


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe value by dotted key, e.g. --set train.epochs=3 (repeatable).",
)


def recipe_run_options(what: str, resume_help: str):
    """RECIPE, --set, --output, --resume and --overwrite, for commands that write ``what``."""

    def wrap(f):
        for decorator in reversed([
            click.argument("recipe", type=click.Path(dir_okay=False)),
            set_option,
            click.option("--output", type=click.Path(file_okay=False), cls=Option,
                         shown="the recipe's output.dir", help=f"Parent folder of the {what}."),
            click.option("--resume", is_flag=True, help=resume_help),
            click.option("--overwrite", is_flag=True, help=f"Replace a finished {what.split()[0]} of the same name."),
        ]):
            f = decorator(f)
        return f

    return wrap


def workers_option(f):
    return click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
                        help="Run as N local worker processes of one MultiWorkerMirroredStrategy on 127.0.0.1 "
                             "(train.batch_size stays the global batch).")(f)


def rerun_args(ctx: click.Context, drop=("workers",)) -> list[str]:
    """The command line of ``ctx``'s command, from its parsed parameters, without ``drop``."""
    args = [ctx.info_name]
    for p in ctx.command.params:
        if p.name in drop or not p.expose_value:
            continue
        value = ctx.params.get(p.name)
        if isinstance(p, click.Argument):
            args += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]
            continue
        opt = max(p.opts, key=len)
        if p.is_flag:
            args += [opt] if value else []
        elif p.multiple:
            for v in value or ():
                args += [opt, str(v)]
        elif value is not None:
            args += [opt, str(value)]
    if any(a in VERBOSE for a in sys.argv[1:]):
        args.append("--verbose")
    return args


def run_workers(ctx: click.Context, workers: int) -> None:
    """Run this same command as ``workers`` local workers and exit with their status."""
    if os.environ.get("TF_CONFIG"):
        raise TfoptError("--workers: TF_CONFIG is already set, so this process is one worker of a cluster; "
                         "drop --workers (each host runs its own worker) or unset TF_CONFIG")
    # the workers' own output, results included, as it was: on stdout
    ctx.exit(launch(rerun_args(ctx), workers, log=echo_err, out=results_stream()))


def echo_err(line: str) -> None:
    click.echo(line, err=True)
