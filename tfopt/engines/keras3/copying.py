"""A copy of a Keras 3 model with the same class and weights, checked on a sample."""

from __future__ import annotations

import copy
import os
import tempfile

import keras
import numpy as np

from tfopt.engines.keras3.data import sample_inputs
from tfopt.engines.keras3.selection import all_layers


class CopyError(TypeError):
    """The model cannot be copied (and so cannot be compressed without touching it)."""


def _is_graph_model(model) -> bool:
    """Functional or Sequential exactly (not a subclass): those ``clone_model`` rebuilds."""
    cls = type(model)
    if cls is keras.Sequential:
        return True
    return cls.__name__ == "Functional" and cls.__module__.startswith("keras.")


def _clone(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def _layer_classes(model):
    """Every layer class in the model, by the names ``load_model`` may look them up with."""
    found = {}
    for layer in all_layers(model):
        cls = type(layer)
        found[cls.__name__] = cls
        registered = keras.saving.get_registered_name(cls)
        found[registered] = cls
    return found


def _reload(model):
    """Round trip through a temporary ``.keras`` file (needs ``get_config`` on custom classes)."""
    with tempfile.TemporaryDirectory(prefix="tfopt-copy-") as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        return keras.models.load_model(path, custom_objects=_layer_classes(model), compile=True)


def _custom_classes(model):
    """``{class name: what it lacks}`` for the classes defined outside Keras in the model."""
    found = {}
    for cls in set(_layer_classes(model).values()):
        module = cls.__module__ or ""
        if module == "keras" or module.startswith(("keras.", "tf_keras.")):
            continue
        lacks = []
        if "get_config" not in vars(cls):
            lacks.append("its own get_config()")
        if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
            lacks.append("@keras.saving.register_keras_serializable()")
        found[cls.__name__] = lacks
    return found


def _refusal(model, errors):
    name = type(model).__name__
    tried = "; ".join(f"{how}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                      for how, e in errors)
    custom = _custom_classes(model)
    lacking = ", ".join(f"{cls} (lacks {' and '.join(lacks)})" if lacks else cls
                        for cls, lacks in sorted(custom.items()))
    return CopyError(
        f"Cannot copy the model {model.name!r} of class {name!r}, so it cannot be compressed "
        f"without changing it. Its classes defined outside Keras: {lacking or 'none'}. A "
        f"subclassed model or custom layer is copied by saving and loading it, which needs each "
        f"such class decorated with @keras.saving.register_keras_serializable() and a "
        f"get_config() returning the arguments of its __init__. Tried: {tried}."
    )


def _max_difference(a, b) -> float:
    worst = 0.0
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        x, y = np.asarray(keras.ops.convert_to_numpy(x)), np.asarray(keras.ops.convert_to_numpy(y))
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x.astype("float64") - y.astype("float64")))))
    return worst


def _same_outputs(model, candidate, sample) -> str | None:
    """None when the candidate computes what the model computes, else what differs."""
    if type(candidate) is not type(model):
        return f"the copy is a {type(candidate).__name__}, not a {type(model).__name__}"
    if len(candidate.weights) != len(model.weights):
        return f"the copy has {len(candidate.weights)} weights, the model {len(model.weights)}"
    for a, b in zip(model.weights, candidate.weights):
        if tuple(a.shape) != tuple(b.shape) or not np.array_equal(
                keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)):
            return f"the weight {a.path} differs"
    if sample is None:
        return None
    expected, got = model(sample, training=False), candidate(sample, training=False)
    scale = max(1.0, max(float(np.max(np.abs(keras.ops.convert_to_numpy(t)))) if np.size(t) else 0.0
                         for t in keras.tree.flatten(expected)))
    diff = _max_difference(expected, got)
    return None if diff <= 1e-5 * scale else f"its outputs differ by up to {diff:.3g}"


def copy_model(model, sample=None):
    """A new model of the same class with the same weights, computing the same outputs.

    Functional and Sequential models are cloned (``keras.models.clone_model`` and
    ``set_weights``; a Sequential stays a Sequential). Other models (subclassed, or with
    custom layers ``clone_model`` cannot rebuild) go through a temporary ``.keras`` file,
    then ``copy.deepcopy``. The first copy that has the same class, the same weights and
    the same outputs on ``sample`` is returned. A compiled model's copy is compiled the same
    way (with a fresh optimizer).

    Args:
        model: A built Keras 3 model. It is not changed.
        sample: Inputs to compare outputs on (a batch, in the structure the model takes).
            When None, a small random batch is made from ``model.inputs`` if the model has
            them; a subclassed model is then compared by its weights only.

    Returns:
        The copy.

    Raises:
        CopyError: When no way of copying gives the same class, weights and outputs; the
            message names the class and what it needs.
    """
    if not model.built or not model.weights:
        raise CopyError(f"The model {model.name!r} ({type(model).__name__}) has no weights yet: "
                        f"call it on a batch (or build it) before compressing it.")
    if sample is None:
        sample = sample_inputs(model)
    ways = [("clone_model", _clone)] if _is_graph_model(model) else []
    ways += [("save and load_model", _reload), ("copy.deepcopy", copy.deepcopy)]
    errors = []
    for how, make in ways:
        try:
            candidate = make(model)
            problem = _same_outputs(model, candidate, sample)
        except Exception as e:  # each way is tried in turn; all failures are reported together
            errors.append((how, e))
            continue
        if problem is None:
            _compile_like(model, candidate)
            return candidate
        errors.append((how, ValueError(problem)))
    raise _refusal(model, errors)


def _compile_like(model, candidate):
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if config and not getattr(candidate, "compiled", False):
        candidate.compile_from_config(config)
