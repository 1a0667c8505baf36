"""The command line's own checks of its arguments, shared by the commands, made before any work
or any import of TensorFlow: each refusal is one paragraph naming the flag."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tfopt.errors import TfoptError
from tfopt.rundir import RunDir
from tfopt.steps.source import check_writable


def check_number(flag: str, value, ok, allowed: str) -> None:
    """Refuse ``value`` (when given) unless it is finite and ``ok(value)``.

    Args:
        flag: the option that gave it, first in the message.
        value: the number, or None when the option was not given.
        ok: what a finite value must satisfy.
        allowed: what is allowed, in words: ``"a whole number of at least 1"``.

    Raises:
        TfoptError: ``"<flag>: must be <allowed>; got <value>"``.
    """
    if value is not None and not (math.isfinite(value) and ok(value)):
        raise TfoptError(f"{flag}: must be {allowed}; got {value!r}")


def check_output_file(flag: str, path, *, new: bool = False) -> None:
    """Refuse a file ``flag`` names that cannot be written: its folder cannot be written or does
    not exist (the file is written in it, not the folder made), or (with ``new``) the file
    exists already."""
    p = Path(path)
    if new and p.exists():
        raise TfoptError(f"{flag}: {p} already exists; give a new file name")
    check_writable(p.parent, named=p, what=flag, flag=flag)
    if not p.parent.is_dir():
        raise TfoptError(f"{flag}: the folder {p.parent} does not exist; create it, or give {flag} a path in an "
                         f"existing folder")


def check_new_folder(parent, name: str, *, resume: bool = False, overwrite: bool = False, cluster: str = "") -> None:
    """Refuse the folder ``<parent>/<name>`` a command is about to write: ``parent`` cannot be
    written, or the folder is finished or interrupted and the flags do not say what to do with
    it (:meth:`tfopt.rundir.RunDir.check`). In a process of a cluster (the environment variable
    ``cluster`` is set) only ``parent`` is checked: the chief decides about the folder."""

    target = Path(parent) / name
    check_writable(parent, named=target, what="the run directory")
    if not (cluster and os.environ.get(cluster)):
        RunDir(target, overwrite=overwrite, resume=resume).check()
