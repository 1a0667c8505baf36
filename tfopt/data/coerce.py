"""Plain data as the library functions take it: ``(x, y)`` arrays or a ``tf.data.Dataset``.

Every function here accepts either form, checks it and says what is wrong by name
(``data``, ``validation_data``). TensorFlow is imported inside the functions: the step
modules import this one while the command line builds its help.
"""

from __future__ import annotations

import math

import numpy as np

from tfopt.errors import TfoptError


def x_rank(spec) -> int | None:
    """The rank of the inputs of a dataset's element spec (``(x, y)`` or bare ``x``), None when unknown."""
    first = spec[0] if isinstance(spec, (tuple, list)) else spec
    return len(first.shape) if first.shape.rank is not None else None


def is_batched(ds) -> bool:
    """Whether a dataset's elements carry a batch axis of unknown length (``ds.batch`` made them)."""
    spec = ds.element_spec[0] if isinstance(ds.element_spec, (tuple, list)) else ds.element_spec
    return spec.shape.rank is not None and spec.shape.rank > 0 and spec.shape[0] is None


def check_pair(data, what: str = "data"):
    """``(x, y)`` as arrays, ``x`` as float32 when it is floating point.

    Raises:
        TfoptError: ``data`` is not a pair, the lengths differ, or it holds no samples.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TfoptError(f"{what}: expected an (x, y) pair of arrays or a tf.data.Dataset of (x, y) pairs; "
                         f"got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y):
        raise TfoptError(f"{what}: x and y differ in length ({len(x)} images, {len(y)} labels)")
    if not len(x):
        raise TfoptError(f"{what}: no samples")
    if x.dtype != np.float32 and np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x, y


def _needs_batching(ds, model) -> bool:
    """Whether ``ds`` yields single samples for ``model`` (its inputs lack the batch axis)."""
    rank = x_rank(ds.element_spec)
    return model is not None and rank is not None and rank == len(model.input_shape) - 1


def as_dataset(data, batch_size: int, *, model=None, training: bool = False, seed: int = 0, what: str = "data"):
    """``(x, y)`` arrays or a ``tf.data.Dataset`` -> a batched dataset of ``(x, y)``.

    A dataset whose elements have the model's input rank without the batch axis is batched
    with ``batch_size``; an already batched one is used as it is. Arrays are shuffled (seeded,
    anew each pass) when ``training``.
    """
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) < 2:
            raise TfoptError(f"{what}: the tf.data.Dataset must yield (x, y) pairs; its elements are {spec}")
        if _needs_batching(data, model):
            data = data.batch(batch_size)
        return data.prefetch(tf.data.AUTOTUNE)
    x, y = check_pair(data, what)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(min(len(x), 10000), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def count_steps(data, batch_size: int, model=None) -> int:
    """Batches per epoch of ``data``: from the array length, else the dataset's cardinality
    (counted once when unknown); a dataset :func:`as_dataset` would batch for ``model`` counts
    in batches of ``batch_size``."""
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        return int(math.ceil(len(data[0]) / batch_size))
    if _needs_batching(data, model):
        data = data.batch(batch_size)
    n = int(data.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise TfoptError("data: the tf.data.Dataset repeats forever; give a finite dataset (one epoch)")
    if n < 0:
        n = sum(1 for _ in data)
    return n


def sample_xy(data, n: int | None = None):
    """Up to ``n`` ``(x, y)`` pairs, as arrays, from ``(x, y)`` or a dataset (``y`` is None for a
    dataset of bare images)."""
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        x, y = check_pair(data)
        return (x, y) if n is None else (x[:n], y[:n])
    batched, xs, ys, got = is_batched(data), [], [], 0
    for element in data:
        x, y = (element[0], element[1]) if isinstance(element, (tuple, list)) else (element, None)
        x = np.asarray(x) if batched else np.asarray(x)[None]
        xs.append(x)
        if y is not None:
            ys.append(np.asarray(y) if batched else np.asarray(y)[None])
        got += len(x)
        if n is not None and got >= n:
            break
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys) if ys else None
    return (x, y) if n is None else (x[:n], None if y is None else y[:n])


def sample_x(data, n: int | None = None) -> np.ndarray:
    """Up to ``n`` input images from ``(x, y)``, bare ``x`` or a dataset."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return sample_xy(data, n)[0]
    x = np.asarray(data[0]) if isinstance(data, (tuple, list)) and len(data) == 2 else np.asarray(data)
    return (x if n is None else x[:n]).astype(np.float32)


def label_spec(data):
    """``(label rank without the batch axis, labels are integers, input rank or None)`` of ``data``;
    for a dataset the ranks are its elements' (with a batch axis when it is batched)."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec[1]
        return len(spec.shape), spec.dtype.is_integer, x_rank(data.element_spec)
    y = np.asarray(data[1])
    return y.ndim - 1, np.issubdtype(y.dtype, np.integer), None


def random_inputs(model, n: int = 8) -> np.ndarray:
    """``n`` seeded standard-normal inputs of ``model``'s input shape (when no images are at hand);
    for an integer input (token ids) ids below the first Embedding's vocabulary, else 0 and 1."""
    shape = [n, *model.input_shape[1:]]
    rng = np.random.default_rng(0)
    dtype = np.dtype(getattr(model.inputs[0].dtype, "name", model.inputs[0].dtype))
    if np.issubdtype(dtype, np.integer):
        vocab = min((layer.input_dim for layer in model.layers if hasattr(layer, "input_dim")), default=2)
        return rng.integers(0, vocab, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(np.float32)
