"""Keras 3 <-> tf_keras conversion of whole models, checked numerically."""

from __future__ import annotations

from pathlib import Path

from tfopt.errors import TfoptError
from tfopt.interop.builder import Builder
from tfopt.interop.check import verify
from tfopt.interop.graph import Graph, is_graph
from tfopt.interop.models import KINDS, load_model, model_kind, plain_copy, save_atomic
from tfopt.interop.translate import problems


def to_tf_keras(model, *, check: bool = True, sample=None):
    """The tf_keras equivalent of a Keras 3 model; a tf_keras model is returned as is.

    Args:
        model: a Sequential or functional model built from built-in Keras layers.
        check: compare both models on ``sample`` and raise if they differ by more than 1e-5
            (relative to the largest output).
        sample: inputs for the check; default: 4 seeded random normal samples.

    Raises:
        TfoptError: a layer cannot be converted (named, with its class and what to do), or the
            converted model disagrees with the original.

    Example:
        >>> tfk = to_tf_keras(keras.applications.MobileNetV2(weights=None))
    """
    kind = model_kind(model)
    if kind == "tf_keras":
        return model
    return _convert(model, "keras3", "tf_keras", check, sample)


def from_tf_keras(model, kind, *, check: bool = True, sample=None):
    """``model`` (tf_keras) as ``kind``: returned as is for ``"tf_keras"``, converted (and
    checked like :func:`to_tf_keras`) for ``"keras3"``."""
    if kind not in KINDS:
        raise TfoptError(f"unknown model kind '{kind}'; expected one of {', '.join(KINDS)}.")
    have = model_kind(model)
    if have == kind:
        return model
    if have != "tf_keras":
        raise TfoptError(f"from_tf_keras expects a tf_keras model but received a {have} model.")
    return _convert(model, "tf_keras", "keras3", check, sample)


def _convert(model, src, dst, check, sample):
    if not is_graph(model, src):
        raise TfoptError(f"model '{model.name}' ({type(model).__name__}) is subclassed; tfopt converts Sequential "
                         f"and functional models only. Rebuild it with the functional API (keras.Input, then call "
                         f"the layers).")
    graph = Graph(model, src)
    found = problems(graph, src, dst)
    if found:
        shown = found[:6] + ([f"and {len(found) - 6} more"] if len(found) > 6 else [])
        raise TfoptError(f"model '{model.name}' cannot be converted from {src} to {dst}: " + "; ".join(shown)
                         + ". tfopt converts built-in layers only: rebuild these parts from built-in layers "
                           "(keras.layers), or convert the model yourself.")
    built = Builder(src, dst).build(graph)
    if check:
        verify(model, built, sample)
    return built


def load_as_tf_keras(path):
    """``(tf_keras model, kind of the file)``: a Keras 3 file is converted (and checked)."""
    model = load_model(path)
    kind = model_kind(model)
    return to_tf_keras(model), kind


def save_like(model, kind, path) -> Path:
    """Save a tf_keras ``model`` (no optimizer state) as a ``.keras`` file of ``kind``, converted
    for ``"keras3"``, so a Keras 3 user's output loads with ``keras.saving.load_model``."""
    if kind not in KINDS:
        raise TfoptError(f"unknown model kind '{kind}'; expected one of {', '.join(KINDS)}.")
    out = from_tf_keras(model, kind) if model_kind(model) == "tf_keras" else model
    return save_atomic(plain_copy(out) if out is model else out, path)
