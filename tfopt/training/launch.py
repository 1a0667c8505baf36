"""``--workers N``: run one tfopt command as N local workers of a ``MultiWorkerMirroredStrategy``.

Each worker is the same ``tfopt`` command in its own process, with a ``TF_CONFIG`` naming all
N on free 127.0.0.1 ports and ``train.distribute`` set to ``multi_worker``. Their output lines
come back prefixed with ``[worker i]``. When one worker fails or is killed, the others are
stopped (SIGTERM, then SIGKILL after a grace period) so that nothing waits forever on a
collective. This is for one multi-core host and for tests; on several hosts, set ``TF_CONFIG``
on each yourself (see docs/distribute.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

#: Seconds a worker gets to stop on SIGTERM before it is killed.
GRACE = 10.0


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(workers: int) -> list[str]:
    """One ``TF_CONFIG`` per local worker."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def _pump(stream, prefix: str, out):
    for line in iter(stream.readline, ""):
        out.write(f"{prefix}{line}")
        out.flush()
    stream.close()


def _stop(procs, log):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"worker pid {p.pid} did not stop within {GRACE:g} s; killing it")
            p.kill()
            p.wait()


def launch(args: list[str], workers: int, *, log=print, out=None) -> int:
    """Run ``tfopt <args>`` as ``workers`` local workers; returns the exit status.

    The status is 0 when every worker succeeded, else the first failure's status (130 when the
    launcher itself was interrupted). ``args`` must not hold ``--workers``.
    """
    out = out or sys.stdout
    procs, pumps = [], []
    base = [sys.executable, "-m", "tfopt.cli", *args, "--set", "train.distribute=multi_worker"]
    log(f"starting {workers} workers on 127.0.0.1 (MultiWorkerMirroredStrategy)")
    try:
        for i, cfg in enumerate(tf_configs(workers)):
            env = {**os.environ, "TF_CONFIG": cfg}
            p = subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 bufsize=1, start_new_session=True)
            procs.append(p)
            log(f"worker {i}: pid {p.pid}")
            t = threading.Thread(target=_pump, args=(p.stdout, f"[worker {i}] ", out), daemon=True)
            t.start()
            pumps.append(t)
        status = 0
        while any(p.poll() is None for p in procs):
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                i, status = failed[0]
                log(f"worker {i} exited with status {status}; stopping the others")
                _stop(procs, log)
                break
            time.sleep(0.2)
        if status == 0:
            status = next((p.returncode for p in procs if p.returncode), 0)
    except KeyboardInterrupt:
        log("interrupted; stopping the workers")
        _stop(procs, log)
        status = 130
    for t in pumps:
        t.join(timeout=2)
    return 128 - status if status < 0 else status  # killed by signal s: 128 + s, as shells say
