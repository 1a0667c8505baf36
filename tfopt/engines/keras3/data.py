"""Training data for the fine-tunes: ``(x, y)`` or ``(x, y, sample_weight)`` or a ``tf.data.Dataset``.

``x`` and ``y`` may be arrays, lists or dicts of arrays (multi-input, multi-output models).
TensorFlow is imported only when a dataset is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np


def _is_dataset(data) -> bool:
    module = type(data).__module__ or ""
    return module.startswith("tensorflow") and hasattr(data, "element_spec")


def _first_length(structure) -> int:
    leaves = keras.tree.flatten(structure)
    if not leaves:
        raise ValueError("data: x holds no arrays.")
    return int(np.shape(leaves[0])[0])


def _head(structure, n):
    return keras.tree.map_structure(lambda a: np.asarray(a)[:n], structure)


def _to_numpy(structure):
    return keras.tree.map_structure(lambda a: np.asarray(keras.ops.convert_to_numpy(a)), structure)


@dataclass
class TrainingData:
    """Fine-tune data in one shape, whatever form it was given in.

    Attributes:
        x, y, sample_weight: In-memory inputs, targets and weights (None for a dataset).
        dataset: A ``tf.data.Dataset`` yielding ``(x, y)`` or ``(x, y, sample_weight)``
            batches, or None.
        batch_size: Batch size for in-memory data.
        steps_per_epoch: Optimizer steps in one epoch.
        sample_x, sample_y: One small batch, as numpy, for checks and head detection.
    """

    x: object
    y: object
    sample_weight: object
    dataset: object
    batch_size: int
    steps_per_epoch: int
    sample_x: object
    sample_y: object

    def fit_arguments(self) -> dict:
        """Keyword arguments for ``model.fit`` (besides epochs and callbacks)."""
        if self.dataset is not None:
            # A dataset shuffles itself (or not): fit's shuffle would only warn.
            return {"x": self.dataset, "steps_per_epoch": self.steps_per_epoch, "shuffle": False}
        return {"x": self.x, "y": self.y, "sample_weight": self.sample_weight,
                "batch_size": self.batch_size, "shuffle": True}


def training_data(data, *, batch_size=32, steps_per_epoch=None, sample_size=16) -> TrainingData:
    """Read ``data`` into a :class:`TrainingData`.

    Args:
        data: ``(x, y)``, ``(x, y, sample_weight)`` or a batched ``tf.data.Dataset``.
        batch_size: Batch size for in-memory data.
        steps_per_epoch: Steps per epoch; needed for a dataset of unknown length. For
            in-memory data it defaults to ``ceil(len(x) / batch_size)``.
        sample_size: Rows of the sample batch kept for checks.

    Returns:
        The :class:`TrainingData`.

    Raises:
        ValueError: When data is neither form, or a dataset's length is unknown and
            ``steps_per_epoch`` is not given.
    """
    if _is_dataset(data):
        return _from_dataset(data, steps_per_epoch)
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise ValueError(
            f"data: expected (x, y), (x, y, sample_weight) or a tf.data.Dataset; received "
            f"{type(data).__name__}{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}.")
    x, y = data[0], data[1]
    if y is None:
        raise ValueError("data: y is None; the fine-tunes need targets (x, y).")
    weights = data[2] if len(data) == 3 else None
    n = _first_length(x)
    for name, part in (("y", y), ("sample_weight", weights)):
        if part is not None and _first_length(part) != n:
            raise ValueError(f"data: x has {n} rows but {name} has {_first_length(part)}.")
    steps = steps_per_epoch or max(1, math.ceil(n / batch_size))
    k = min(sample_size, n)
    return TrainingData(x, y, weights, None, batch_size, int(steps), _head(x, k), _head(y, k))


def _from_dataset(dataset, steps_per_epoch):
    steps = steps_per_epoch
    if steps is None:
        cardinality = int(dataset.cardinality())
        if cardinality < 0:
            raise ValueError("data: the dataset's length is unknown (infinite or filtered); "
                             "give steps_per_epoch.")
        steps = cardinality
    if steps < 1:
        raise ValueError("data: the dataset is empty.")
    first = next(iter(dataset.take(1)))
    if not isinstance(first, (tuple, list)) or len(first) < 2:
        raise ValueError("data: the dataset must yield batches of (x, y) or (x, y, sample_weight).")
    return TrainingData(None, None, None, dataset, 0, int(steps), _to_numpy(first[0]), _to_numpy(first[1]))


def sample_inputs(model, batch=2):
    """A small random batch for a model with declared inputs, else None.

    Integer inputs get zeros and ones (valid token ids for any vocabulary); float inputs
    get uniform noise.
    """
    inputs = getattr(model, "_inputs_struct", None)
    if inputs is None:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            return None
    if inputs is None or not keras.tree.flatten(inputs):
        return None
    rng = np.random.default_rng(0)

    def one(tensor):
        shape = [batch] + [d if d is not None else 4 for d in tuple(tensor.shape)[1:]]
        dtype = str(tensor.dtype)
        if "int" in dtype:
            return rng.integers(0, 2, size=shape).astype(dtype)
        return rng.random(shape).astype(dtype if "float" in dtype else "float32")

    try:
        return keras.tree.map_structure(one, inputs)
    except (TypeError, ValueError):
        return None
