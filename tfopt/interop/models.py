"""A model's kind (tf_keras or Keras 3), and loading, copying and saving models of either kind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tfopt.errors import TfoptError

KINDS = ("tf_keras", "keras3")


def model_kind(model) -> str:
    """``"tf_keras"`` or ``"keras3"``; anything else is refused."""
    if "tf_keras" in sys.modules and isinstance(model, sys.modules["tf_keras"].Model):
        return "tf_keras"
    if "keras" in sys.modules:
        import keras

        if keras.__version__.startswith("3.") and isinstance(model, keras.Model):
            return "keras3"
    raise TfoptError(f"expected a Keras model (tf_keras or Keras 3) but received {type(model).__name__}.")


def library(kind):
    """The package of ``kind``: ``keras`` for ``"keras3"``, else ``tf_keras``."""
    if kind == "keras3":
        import keras

        return keras
    import tf_keras

    return tf_keras


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


def _load_error(path, kind, exc):
    detail = str(exc).splitlines()[0] if str(exc) else "no detail"
    what = "tf_keras model" if kind == "tf_keras" else "Keras 3 model"
    return TfoptError(f"{path}: not a loadable {what} ({type(exc).__name__}: {detail}).")


def load_model(path):
    """The model stored at ``path``, of the kind it was saved from.

    A tf_keras ``.keras``/``.h5`` file or SavedModel folder loads as tf_keras; a ``.keras`` or
    ``.h5`` file written by Keras 3 loads as a Keras 3 model (uncompiled).

    Example:
        >>> model = load_model("model.keras")
        >>> model_kind(model)
        'keras3'
    """
    path = Path(path)
    kind = file_kind(path)
    lib = library(kind)
    try:
        if kind == "keras3":
            return lib.saving.load_model(path, compile=False)
        from tf_keras.src.applications.convnext import LayerScale, StochasticDepth  # not registered by tf_keras

        return lib.models.load_model(path, custom_objects={"LayerScale": LayerScale,
                                                           "StochasticDepth": StochasticDepth})
    except Exception as exc:  # loaders raise many types for a bad file
        raise _load_error(path, kind, exc) from None


def own_layer_classes(model) -> dict:
    """``{class name: class}`` of every layer of ``model``, nested models' layers included."""
    out = {}
    for layer in getattr(model, "layers", []):
        out[type(layer).__name__] = type(layer)
        out.update(own_layer_classes(layer))
    return out


def plain_copy(model):
    """An uncompiled copy of a model with the same weights: saves without optimizer state."""
    lib = library(model_kind(model))
    cls = lib.Sequential if isinstance(model, lib.Sequential) else lib.Model
    # the model's own layer classes, so that unregistered ones (ConvNeXt's LayerScale) rebuild too
    with lib.utils.custom_object_scope(own_layer_classes(model)):
        copy = cls.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_atomic(model, path) -> Path:
    """``model.save(path)`` under a temporary name, then renamed: no half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix or '.keras'}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
