"""Per-epoch checkpoints that make ``--resume`` possible and lose nothing on a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tf_keras.callbacks import Callback

from tfopt.export import save_keras
from tfopt.rundir import atomic_copy, atomic_write_json, atomic_write_text, history_csv


class StopAfter(Callback):
    """Ends ``model.fit`` after ``epoch`` epochs without changing ``params['epochs']``, so a
    schedule that spans the whole run keeps its shape."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epoch:
            self.model.stop_training = True


class Checkpointer(Callback):
    """After every epoch: ``last.keras`` (with optimizer state), ``best.keras`` when the
    monitored value improves, ``state.json`` and ``history.csv``, each written atomically.

    Args:
        folder: the run's working folder.
        monitor, mode: what "best" means (``mode`` is ``"min"`` or ``"max"``).
        state: a previous ``state.json`` to continue from (resume).
        extra_state: callables whose returned dicts are stored too (e.g. LR plateau state).
    """

    def __init__(self, folder, monitor="val_loss", mode="min", state=None, extra_state=None):
        super().__init__()
        self.folder = Path(folder)
        (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.monitor = monitor
        self.mode = mode
        self.extra_state = extra_state or {}
        state = state or {}
        self.history = state.get("history", [])
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")

    def _better(self, value):
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        self.history = [r for r in self.history if r["epoch"] < epoch + 1] + [row]
        ckpt = self.folder / "checkpoints"
        if not all(math.isfinite(v) for v in row.values()):
            # Keep the last finite checkpoint and its state; record the bad epoch in history only.
            atomic_write_text(self.folder / "history.csv", history_csv(self.history))
            return
        value = logs.get(self.monitor, logs.get(self.monitor.removeprefix("val_")))
        save_keras(self.model, ckpt / "last.keras")
        if self._better(value):
            self.best, self.best_epoch = float(value), epoch + 1
            atomic_copy(ckpt / "last.keras", ckpt / "best.keras")  # a copy, not a second serialization
        atomic_write_text(self.folder / "history.csv", history_csv(self.history))
        atomic_write_json(ckpt / "state.json", self.state(epoch + 1))

    def state(self, epochs_done):
        return {
            "epochs_done": epochs_done,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "history": self.history,
            **{k: fn() for k, fn in self.extra_state.items()},
        }


def read_state(folder) -> dict | None:
    path = Path(folder) / "checkpoints" / "state.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_state_key(folder, key, value) -> None:
    """Update one key of an existing ``state.json`` (atomically); nothing when there is none yet."""
    state = read_state(folder)
    if state is not None:
        state[key] = value
        atomic_write_json(Path(folder) / "checkpoints" / "state.json", state)
