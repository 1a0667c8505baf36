"""Weight quantization-aware fine-tuning of a Keras 3 model (fake quantization, straight-through).

The selected variables hold int-representable values (``scale * round(w / scale)``, one
symmetric scale per output channel or per variable), so the forward pass sees what an
integer model will compute, while the updates go to float latent weights kept in the
optimizer's state: after each update the constraint adds the update the optimizer made to
the quantized value onto the latent weight, and quantizes the latent weight again. The
gradient with respect to the quantized value is used for the latent one: the
straight-through estimator.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from tfopt.engines.keras3.training import FineTune, Session

SPARSE_ENOUGH = 0.1


def reduce_axes(entry, per_channel):
    """The axes a scale is shared over: all but the output-channel axes, or all."""
    rank = len(entry.shape)
    if not per_channel:
        return tuple(range(rank))
    return tuple(a for a in range(rank) if a not in entry.output_axes)


def fake_quantize(weight, axes, bits=8):
    """``scale * clip(round(w / scale), -q, q)`` with ``q = 2**(bits-1) - 1`` and
    ``scale = max|w| / q`` over ``axes`` (a zero channel keeps scale 1 and stays zero).

    Args:
        weight: A tensor.
        axes: Axes each scale covers (``()`` for one scale per weight).
        bits: Bit width of the symmetric, narrow-range integer grid.

    Returns:
        The quantized tensor, of the weight's dtype.
    """
    q = float(2 ** (bits - 1) - 1)
    peak = ops.max(ops.abs(weight), axis=axes, keepdims=True) if axes else ops.abs(weight)
    scale = ops.where(peak > 0, peak / q, ops.ones_like(peak))
    return ops.clip(ops.round(weight / scale), -q, q) * scale


def _latent_constraint(latent, axes, bits, zeros):
    def constraint(weight):
        before = fake_quantize(latent, axes, bits)
        moved = latent + (weight - before)
        if zeros is not None:
            moved = moved * ops.cast(zeros, moved.dtype)
        latent.assign(moved)
        return fake_quantize(moved, axes, bits)

    return constraint


def quantization_error(value, entry, bits=8, per_channel=True) -> float:
    """Largest ``|w - scale * round(w / scale)|`` relative to its scale (0 for a grid weight).

    Args:
        value: The weight as an array.
        entry: Its :class:`~tfopt.engines.keras3.selection.WeightEntry` (for the axes).
        bits: Bit width.
        per_channel: Whether scales are per output channel.

    Returns:
        The error in units of the scale.
    """
    w = np.asarray(value, dtype="float64")
    axes = reduce_axes(entry, per_channel)
    q = 2 ** (bits - 1) - 1
    peak = np.max(np.abs(w), axis=axes, keepdims=True) if axes else np.abs(w)
    scale = np.where(peak > 0, peak / q, 1.0)
    return float(np.max(np.abs(w / scale - np.round(w / scale)))) if w.size else 0.0


def quantize_aware(model, data, *, bits=8, per_channel=True, preserve_sparsity=None, skip=(),
                   include=None, **fine_tune):
    """Fine-tune a copy of a Keras 3 model with its weights fake-quantized.

    Afterwards each selected variable holds values of a symmetric ``bits``-bit grid (one
    scale per output channel with ``per_channel``), so that a post-training integer
    conversion finds the weights it will store and loses less.

    Example::

        ready = quantize_aware(model, (x, y), bits=8, epochs=1)

    Args:
        model: A built Keras 3 model (any kind). It is not changed.
        data: ``(x, y)``, ``(x, y, sample_weight)`` or a ``tf.data.Dataset``.
        bits: Bit width, 2 to 16.
        per_channel: One scale per output channel (else one per variable).
        preserve_sparsity: True: zeros stay zeros; False: never; None (default): in variables
            at least 10% zero.
        skip: Layer names or path globs left in float.
        include: Variable path globs to quantize instead of the default rules.
        **fine_tune: Settings of the fine-tune (see :func:`~tfopt.engines.keras3.prune`).

    Returns:
        A new model of the same class whose selected variables hold grid values.

    Raises:
        ValueError: For ``bits`` out of range or a pattern matching nothing.
        TypeError: For an unknown keyword argument, or a model that cannot be copied.
    """
    if not 2 <= int(bits) <= 16:
        raise ValueError(f"quantize_aware(): bits must be in [2, 16]; received {bits}.")
    session = Session(model, data, FineTune.from_kwargs("quantize_aware", fine_tune))
    entries = session.entries(include, skip, "quantize_aware")
    for entry in entries:
        value = ops.convert_to_tensor(entry.variable)
        zero_share = float(np.mean(np.asarray(ops.convert_to_numpy(value)) == 0))
        preserve = zero_share >= SPARSE_ENOUGH if preserve_sparsity is None else bool(preserve_sparsity)
        zeros = ops.convert_to_numpy(ops.cast(ops.not_equal(value, 0), "float32")) if preserve else None
        axes = reduce_axes(entry, per_channel)
        latent = session.slot(entry.variable, value, "latent")
        entry.variable.assign(fake_quantize(value, axes, int(bits)))
        session.constrain(entry.variable, _latent_constraint(latent, axes, int(bits), zeros))
    session.fit()
    return session.model
