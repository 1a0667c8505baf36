"""Run directories, written atomically and under a lock.

A run is built in ``<dir>/<name>.partial/`` and renamed to ``<dir>/<name>/`` only once every
artifact is in place, so a folder without the ``.partial`` suffix is always complete. An
interrupted run keeps its ``.partial`` folder (with checkpoints) for ``--resume``. An
existing run is replaced only when asked, and then by rename, never in place; nothing but
that one run folder is ever replaced or deleted.

While a run is written, its ``.partial`` folder holds a lock (``.lock``, with the writer's
process id, host and command in ``.owner.json``): a second writer of the same run is
refused, and told which process holds it, instead of resuming or deleting a live run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from tfopt import __version__
from tfopt.errors import RunDirError

PARTIAL = ".partial"
LOCK = ".lock"
OWNER = ".owner.json"
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


def provenance() -> dict:
    """``created`` (ISO 8601, UTC), ``command`` (the command line; None from Python) and
    ``tfopt_version``: recorded in every run's metrics.json."""
    argv = sys.argv
    from_cli = bool(argv) and "tfopt" in (Path(argv[0]).name, Path(argv[0]).parent.name)
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["tfopt", *argv[1:]]) if from_cli else None,
            "tfopt_version": __version__}


def history_csv(rows: list[dict]) -> str:
    """A run's ``history.csv``: one row per epoch, a column for every key any row has (floats in full)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = [",".join(keys)]
    lines += [",".join("" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else str(row[k])
                       for k in keys) for row in rows]
    return "\n".join(lines) + "\n"


def check_name(name: str) -> str:
    """A run folder's name must be one plain path component, so that it stays inside its parent."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
            or name.endswith(PARTIAL)):
        raise RunDirError(f"'{name}' cannot name a run folder: give one plain folder name (no '/', not '.' or "
                          f"'..', not ending in {PARTIAL}).")
    return name


def _owner(partial: Path) -> str:
    try:
        info = json.loads((partial / OWNER).read_text())
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (f"process {info.get('pid')} on {info.get('host')} (`{info.get('command')}`, started {since})")


class RunDir:
    """One run's output folder.

    Args:
        final: where the finished run goes; its last component must be a plain name.
        overwrite: replace an existing finished run (by rename, once the new one is complete).
        resume: continue the interrupted run in ``<final>.partial``.
    """

    def __init__(self, final, overwrite: bool = False, resume: bool = False):
        final = Path(final)
        check_name(final.name)
        self.final = final
        self.partial = self.final.with_name(self.final.name + PARTIAL)
        self.overwrite = overwrite
        self.resume = resume
        self._lock = None

    def _probe_lock(self) -> None:
        """Refuse when another process is writing this run right now."""
        if not (self.partial / LOCK).exists():
            return
        lock = FileLock(self.partial / LOCK, timeout=0, is_singleton=True)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirError(
                f"{self.partial} is being written by {_owner(self.partial)}; wait for it to finish or stop it. "
                f"Neither --resume nor --overwrite touches a run that is still being written."
            ) from None
        except OSError:
            return
        lock.release()

    def check(self) -> "RunDir":
        """Refuse early, before any work, when the target cannot be used as asked."""
        self._probe_lock()
        if self.resume and self.final.exists() and not self.partial.exists():
            raise RunDirError(
                f"nothing to resume: {self.final} is complete (there is no interrupted run). Use it as it is, or "
                f"pass --overwrite instead of --resume to train it again."
            )
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
        """Check the target, create (or reopen) the working folder and lock it."""
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
        self._take_lock()
        return self

    def _take_lock(self) -> None:
        self._lock = FileLock(self.partial / LOCK, timeout=0, is_singleton=True)
        try:
            self._lock.acquire()
        except Timeout:
            self._lock = None
            raise RunDirError(f"{self.partial} is being written by {_owner(self.partial)}; wait for it to finish "
                              f"or stop it.") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
                "started": time.time()}
        atomic_write_json(self.partial / OWNER, info)

    def release(self) -> None:
        """Give the lock up (the working folder stays, e.g. for ``--resume``)."""
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    def path(self, *parts) -> Path:
        return self.partial.joinpath(*parts)

    def commit(self) -> Path:
        """Move the finished run into place; an older run there is swapped out, then deleted."""
        (self.partial / OWNER).unlink(missing_ok=True)
        (self.partial / LOCK).unlink(missing_ok=True)
        old = None
        try:
            if self.final.exists():
                old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
                os.replace(self.final, old)
            os.replace(self.partial, self.final)
        finally:
            self.release()
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the OS drops the lock anyway
            pass
