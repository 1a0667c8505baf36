"""Saving models: ``.keras`` files and SavedModels with a serving signature."""

from __future__ import annotations

import os
from pathlib import Path

from tfopt.errors import TfoptError


def plain_copy(model):
    """An uncompiled copy of a model with the same weights: saves without optimizer state."""
    import tf_keras as keras

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_keras(model, path, include_optimizer: bool = True) -> Path:
    """Save a ``.keras`` file atomically (temporary name, then rename).

    With ``include_optimizer=False`` an uncompiled copy is saved: no optimizer state.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.keras")
    try:
        (model if include_optimizer else plain_copy(model)).save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_savedmodel(model, path) -> Path:
    """A SavedModel whose ``serving_default`` signature maps ``input`` to ``output``."""
    import tensorflow as tf

    shape = [None, *model.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def serve(x):
        return {"output": model(x, training=False)}

    tf.saved_model.save(model, str(path), signatures={"serving_default": serve})
    return Path(path)


def load_keras(path):
    """Load a ``.keras`` or ``.h5`` model or a SavedModel folder, with a clear error if it is not one."""
    import tf_keras as keras

    path = Path(path)
    if not path.exists():
        raise TfoptError(f"model file {path} does not exist.")
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # loaders raise many types for a bad file
        raise TfoptError(f"{path}: not a loadable tf_keras model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}).") from None
