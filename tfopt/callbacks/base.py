"""Helpers shared by the callbacks; they work on tf_keras and Keras 3 models alike."""

from __future__ import annotations

import csv
import os

import numpy as np


def keras_module(model):
    """The Keras package a model belongs to: ``tf_keras`` or ``keras`` (Keras 3)."""
    import importlib

    root = type(model).__module__.split(".")[0]
    return importlib.import_module("tf_keras" if root == "tf_keras" else "keras")


def all_layers(model):
    """Every leaf layer, nested models flattened, in order."""
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out += all_layers(layer)
        else:
            out.append(layer)
    return out


def variable_owners(model):
    """``(variables, owner layer names)`` for the model's trainable variables."""
    owner = {}
    for layer in all_layers(model):
        for v in layer.trainable_weights:
            owner.setdefault(id(v), layer.name)
    variables = list(model.trainable_weights)
    return variables, [owner.get(id(v), "model") for v in variables]


def resolve_loss(model, loss=None):
    """A callable ``loss(y_true, y_pred)``: the given one, or the one the model was compiled with."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError("no loss: compile the model first or pass loss=...")
    if isinstance(loss, str):
        import tf_keras

        return tf_keras.losses.get(loss)
    return loss


def unpack(data):
    if isinstance(data, (tuple, list)):
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None


def take_probe(probe_data, batches=1):
    """Turn ``(x, y)``, or a dataset yielding ``(x, y)`` batches, into numpy ``(x, y)``."""
    if isinstance(probe_data, (tuple, list)):
        return np.asarray(probe_data[0]), np.asarray(probe_data[1])
    xs, ys = [], []
    for i, batch in enumerate(probe_data):
        if i >= batches:
            break
        x, y = unpack(batch)
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    if not xs:
        raise ValueError("probe_data yielded no batch")
    return np.concatenate(xs), np.concatenate(ys)


class CsvLog:
    """Append rows to a CSV file, flushing each time so nothing is lost on a crash."""

    def __init__(self, path, fields):
        self.path = path
        self.fields = fields
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fh = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=fields, extrasaction="ignore")
        if new:
            self._writer.writeheader()

    def write(self, rows):
        self._writer.writerows(rows)
        self._fh.flush()

    def close(self):
        self._fh.close()
