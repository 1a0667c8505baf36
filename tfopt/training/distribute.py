"""``train.distribute``: training in one process, on all local devices, or on several workers.

This is TensorFlow's own engine, ``tf.distribute``:

* ``none``: the default strategy (one process, one device);
* ``mirrored``: ``MirroredStrategy`` over every local GPU, or the CPU when there is none;
* ``multi_worker``: ``MultiWorkerMirroredStrategy``, the cluster read from the standard
  ``TF_CONFIG`` environment variable, so the same recipe runs under any launcher
  (``tfopt fit --workers N`` on one host, a cluster scheduler, Kubernetes, a shell loop).

``train.batch_size`` is the **global** batch: each of the ``R`` replicas computes ``batch_size /
R`` samples per step and the gradients are summed, so a step sees the same samples as one
process would, and the recipe's learning rate applies unchanged (tfopt does not scale it).
Only the chief (the ``chief`` task, else worker 0) writes the run directory; the other
workers write the same files into a temporary folder that is removed at the end.

A strategy is created once per process, before the model (``MultiWorkerMirroredStrategy``
must exist before TensorFlow runs its first operation).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tfopt.errors import TfoptError

SETTINGS = ("none", "mirrored", "multi_worker")
_STRATEGIES: dict = {}


@dataclass(frozen=True)
class Task:
    """This process's place in a ``TF_CONFIG`` cluster."""

    workers: int  # chief and workers together
    kind: str
    index: int

    @property
    def chief(self) -> bool:
        return self.kind == "chief" or (self.kind == "worker" and self.index == 0 and not self._has_chief)

    _has_chief: bool = False


def task() -> Task:
    """This process's task from ``TF_CONFIG`` (a one-process "cluster" when it is unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return Task(1, "worker", 0)
    try:
        cfg = json.loads(raw)
        cluster, t = cfg["cluster"], cfg.get("task", {})
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        kind, index = t.get("type", "worker"), int(t.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TfoptError(f"TF_CONFIG is not a valid cluster description ({exc}); expected "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    if kind not in ("chief", "worker") or workers < 1 or index < 0:
        raise TfoptError(f"TF_CONFIG: task {t} is not a chief or worker of the cluster {cluster}")
    return Task(workers, kind, index, "chief" in cluster)


def is_chief() -> bool:
    """Whether this process writes the run (always, outside a multi-worker cluster)."""
    return task().chief if "multi_worker" in _STRATEGIES else True


def strategy(setting: str = "none"):
    """The ``tf.distribute`` strategy for ``setting`` (None for ``none``), created once per process."""
    if setting not in SETTINGS:
        raise TfoptError(f"train.distribute: unknown setting '{setting}'; available: {', '.join(SETTINGS)}")
    if setting == "none":
        return None
    if setting in _STRATEGIES:
        return _STRATEGIES[setting]
    if setting == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise TfoptError("train.distribute: multi_worker reads the cluster from TF_CONFIG, which is not set. On "
                             "one machine run `tfopt fit RECIPE --workers N`; on several hosts set TF_CONFIG on each "
                             "(see docs/distribute.md, 'Training on several workers').")
        task()  # refuse a malformed TF_CONFIG in our own words
    import tensorflow as tf

    if setting == "mirrored":
        made = tf.distribute.MirroredStrategy()
    else:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        made = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    _STRATEGIES[setting] = made
    return made


def active():
    """The strategy this process created (None when it runs alone)."""
    return next(iter(_STRATEGIES.values()), None)


def scope(setting: str = "none"):
    """A context: the strategy's scope, or nothing for ``none``."""
    import contextlib

    s = strategy(setting)
    return s.scope() if s is not None else contextlib.nullcontext()


def describe(setting: str, global_batch: int) -> dict:
    """What ``metrics.json`` records: the strategy, workers, replicas and batch sizes."""
    s = strategy(setting)
    replicas = s.num_replicas_in_sync if s is not None else 1
    return {"strategy": setting, "workers": task().workers if setting == "multi_worker" else 1,
            "replicas": replicas, "global_batch_size": global_batch,
            "per_replica_batch_size": global_batch // replicas if global_batch % replicas == 0
            else round(global_batch / replicas, 2),
            "learning_rate": "the recipe's, for the global batch (not scaled)"}


def shard(ds):
    """``ds`` sharded by element across workers (``AutoShardPolicy.DATA``): in-memory data has
    no files to shard, and saying so avoids tf.data's auto-shard warning."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def worker_scratch(target) -> Path:
    """An empty folder for a non-chief worker's copy of the run at ``target``, removed when the
    process ends (normally, on an error, or on Ctrl-C/SIGTERM).

    Its name follows from ``target`` and the worker's index, so a worker killed outright
    (SIGKILL) leaves a folder that the same worker of the restarted job finds and clears first.
    """
    key = hashlib.sha1(str(Path(target).resolve()).encode()).hexdigest()[:12]
    t = task()
    root = Path(tempfile.gettempdir()) / f"tfopt-worker-{key}-{t.kind}{t.index}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root
