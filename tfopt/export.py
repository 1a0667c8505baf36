"""Saving models: ``.keras`` files and SavedModels with a serving signature."""

from __future__ import annotations

from pathlib import Path

from tfopt.interop import file_kind, load_as_tf_keras, plain_copy, save_atomic  # noqa: F401  (re-exported)


def save_keras(model, path, include_optimizer: bool = True) -> Path:
    """Save a tf_keras ``.keras`` file atomically (temporary name, then rename).

    With ``include_optimizer=False`` an uncompiled copy is saved: no optimizer state.
    """
    return save_atomic(model if include_optimizer else plain_copy(model), path)


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
    """A tf_keras model from a ``.keras``/``.h5`` file or a SavedModel folder, with a clear error
    if it is not one. A Keras 3 file is converted to tf_keras (and the conversion checked)."""
    return load_as_tf_keras(path)[0]
