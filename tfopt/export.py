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


def file_kind(path) -> str:
    """``"keras3"`` for a ``.keras``/``.h5`` file written by Keras 3, else ``"tf_keras"``.

    Read from the file's own record of the Keras version (``metadata.json`` in a ``.keras``
    archive, the ``keras_version`` attribute of an HDF5 file); TensorFlow is not imported.
    """
    import json
    import zipfile

    path = Path(path)
    if not path.exists():
        raise TfoptError(f"model file {path} does not exist.")
    version = None
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                version = json.loads(archive.read("metadata.json")).get("keras_version")
        except (KeyError, ValueError, zipfile.BadZipFile):
            version = None
    elif path.is_file() and path.suffix in (".h5", ".hdf5"):
        try:
            import h5py

            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
        except (OSError, ImportError):
            version = None
    if isinstance(version, bytes):
        version = version.decode()
    return "keras3" if isinstance(version, str) and version.startswith("3.") else "tf_keras"


def load_keras(path):
    """Load a tf_keras ``.keras`` or ``.h5`` model or a SavedModel folder, with a clear error if it
    is not one. A Keras 3 file is refused here: ``tfopt.interop.load_model`` loads (and
    ``load_as_tf_keras`` converts) it."""
    import tf_keras as keras

    path = Path(path)
    if file_kind(path) == "keras3":
        raise TfoptError(f"{path} is a Keras 3 model file; load it with tfopt.interop.load_model, or "
                         f"load_as_tf_keras to work on it in tf_keras.")
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # loaders raise many types for a bad file
        raise TfoptError(f"{path}: not a loadable tf_keras model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}).") from None
