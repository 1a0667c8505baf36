"""Run directories, written atomically.

A run is built in ``<dir>/<name>.partial/`` and renamed to ``<dir>/<name>/`` only once every
artifact is in place, so a folder without the ``.partial`` suffix is always complete. An
interrupted run keeps its ``.partial`` folder (with checkpoints) for ``--resume``. An
existing run is replaced only when asked, and then by rename, never in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tfopt.errors import RunDirError

PARTIAL = ".partial"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and a rename: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a file via a temporary sibling and a rename."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


class RunDir:
    """One run's output folder.

    Args:
        final: where the finished run goes.
        overwrite: replace an existing finished run (by rename, once the new one is complete).
        resume: continue the interrupted run in ``<final>.partial``.
    """

    def __init__(self, final, overwrite: bool = False, resume: bool = False):
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + PARTIAL)
        self.overwrite = overwrite
        self.resume = resume

    def check(self) -> "RunDir":
        """Refuse early, before any work, when the target cannot be used as asked."""
        if self.final.exists() and not self.overwrite:
            raise RunDirError(
                f"{self.final} already exists and holds an earlier run; pass --overwrite to replace "
                f"it, or --output to write elsewhere."
            )
        if self.resume:
            if not self.partial.is_dir():
                raise RunDirError(f"nothing to resume: {self.partial} does not exist (no interrupted run).")
        elif self.partial.exists():
            if not self.overwrite:
                raise RunDirError(
                    f"{self.partial} holds an interrupted run; pass --resume to continue it, or "
                    f"--overwrite to discard it and start again."
                )
        return self

    def open(self) -> "RunDir":
        """Check the target and create (or reopen) the working folder."""
        self.check()
        if self.partial.exists() and not self.resume:
            shutil.rmtree(self.partial)
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
            probe = self.partial / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot write the run directory {self.partial}: {exc.strerror or exc}.") from None
        return self

    def path(self, *parts) -> Path:
        return self.partial.joinpath(*parts)

    def commit(self) -> Path:
        """Move the finished run into place; an older run there is swapped out, then deleted."""
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.partial, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final
