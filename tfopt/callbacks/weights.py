"""WeightStatsMonitor: per-layer weight norms and sparsity, cheap enough to watch while pruning."""

from __future__ import annotations

import numpy as np
from tf_keras.callbacks import Callback

from tfopt.callbacks.base import CsvLog, all_layers

CSV_FIELDS = ["epoch", "layer", "weight_norm", "zero_fraction", "near_zero_fraction", "params"]


class WeightStatsMonitor(Callback):
    """At the end of every epoch (or every ``every_n_steps`` steps) record, per layer with
    kernels: the L2 norm of its weights, the fraction of exact zeros and the fraction with
    ``|w| < near_zero``. Writes ``sparsity`` (global exact-zero fraction) and
    ``sparsity/<layer>`` to the epoch logs, and optionally a CSV file.
    """

    def __init__(self, near_zero=1e-3, every_n_steps=None, csv_path=None, verbose=0):
        super().__init__()
        self.near_zero = near_zero
        self.every_n_steps = every_n_steps
        self.csv_path = csv_path
        self.verbose = verbose
        self.records: list[dict] = []
        self._step = 0

    def get_config(self):
        return {"near_zero": self.near_zero, "every_n_steps": self.every_n_steps, "csv_path": self.csv_path,
                "verbose": self.verbose}

    def on_train_begin(self, logs=None):
        self._csv = CsvLog(self.csv_path, CSV_FIELDS) if self.csv_path else None

    def measure(self, epoch=None) -> dict:
        layers, zeros, total = {}, 0, 0
        for layer in all_layers(self.model):
            weights = [w for w in layer.trainable_weights if len(w.shape) >= 2]
            if not weights:
                continue
            arrays = [np.asarray(w.numpy()) for w in weights]
            n = sum(a.size for a in arrays)
            z = sum(int(np.count_nonzero(a == 0)) for a in arrays)
            near = sum(int(np.count_nonzero(np.abs(a) < self.near_zero)) for a in arrays)
            layers[layer.name] = {"weight_norm": float(np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in arrays))),
                                  "zero_fraction": z / n, "near_zero_fraction": near / n, "params": n}
            zeros, total = zeros + z, total + n
        record = {"epoch": epoch, "step": self._step, "sparsity": zeros / max(total, 1), "layers": layers}
        self.records.append(record)
        if self._csv:
            self._csv.write([{"epoch": epoch, "layer": k, **v} for k, v in layers.items()])
        return record

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            self.measure()

    def on_epoch_end(self, epoch, logs=None):
        record = self.measure(epoch + 1)
        if logs is not None:
            logs["sparsity"] = record["sparsity"]
            for name, vals in record["layers"].items():
                logs[f"sparsity/{name}"] = vals["zero_fraction"]
        if self.verbose:
            print(f"\nweights: global sparsity {record['sparsity']:.1%}")

    def on_train_end(self, logs=None):
        if self._csv:
            self._csv.close()
