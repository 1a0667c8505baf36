"""The numerical check of a conversion: both models on the same seeded inputs."""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError

TOLERANCE = 1e-5
#: A deep network amplifies float32 rounding: where the outputs differ by more than TOLERANCE,
#: the conversion is still exact if they differ by at most this many times what a one-ulp change
#: of the input, or of every weight, does to the original's own outputs (its float32 noise floor).
ROUNDING_FACTOR = 4.0


def sample_inputs(model, n: int = 4, seed: int = 0):
    """Seeded random normal inputs for ``model``; unknown spatial sizes become 32."""
    rng = np.random.default_rng(seed)
    named = model.input if isinstance(getattr(model, "input", None), dict) else None  # inputs given as a dict
    vocab = min([int(layer.input_dim) for layer in getattr(model, "layers", []) if hasattr(layer, "input_dim")
                 and type(layer).__name__ == "Embedding"] or [2])

    def sample(t):  # integers within the embeddings' vocabulary for an integer input
        shape = (n, *[32 if d is None else d for d in tuple(t.shape)[1:]])
        dtype = str(getattr(t.dtype, "name", t.dtype))
        return rng.integers(0, vocab, size=shape).astype(dtype) if "int" in dtype else \
            rng.normal(size=shape).astype("float32")

    xs = [sample(t) for t in (named.values() if named else model.inputs)]
    if named:
        return dict(zip(named, xs))
    return xs if len(xs) > 1 else xs[0]


def max_relative_difference(a, b) -> float:
    """``max|a - b|`` relative to the largest ``|b|`` (outputs near zero do not inflate it)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12)) if b.size else 0.0


def verify(original, converted, sample=None, tolerance: float = TOLERANCE) -> float:
    """Compare two models' outputs on ``sample``; raise TfoptError above ``tolerance``.

    Returns the largest relative difference over all outputs.
    """
    x = sample_inputs(original) if sample is None else sample

    def outputs(model, inputs):
        out = model(inputs, training=False)
        if isinstance(out, dict):  # outputs by name: compared name by name
            out = [out[k] for k in sorted(out)]
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    def difference(a, b):
        return max(max_relative_difference(p, q) for p, q in zip(a, b))

    ref = outputs(original, x)
    worst = difference(outputs(converted, x), ref)
    if np.isfinite(worst) and worst > tolerance:
        # within what float32 rounding of the input alone does to the original: still exact
        floor = difference(outputs(original, _one_ulp(x)), ref)
        if worst > ROUNDING_FACTOR * floor:
            floor = max(floor, difference(outputs(_weights_one_ulp(original), x), ref))
        if worst <= ROUNDING_FACTOR * floor:
            return worst
        raise TfoptError(f"model '{original.name}': the converted model's outputs differ from the original's by "
                         f"{worst:.3g} (relative to the largest output), more than the allowed {tolerance:g} and "
                         f"more than {ROUNDING_FACTOR:g}× the {floor:.3g} that a one-ulp change of the input or of the "
                         f"weights makes; "
                         f"the conversion is not exact for this model, so tfopt stops here.")
    if not np.isfinite(worst):
        raise TfoptError(f"model '{original.name}': the converted model's outputs are not finite where the "
                         f"original's are; the conversion is not exact for this model, so tfopt stops here.")
    return worst


def _one_ulp(x):
    """``x`` with every value moved by one float32 ulp, up or down (seeded)."""
    rng = np.random.default_rng(1)
    if isinstance(x, dict):
        return dict(zip(x, _one_ulp(list(x.values()))))
    xs = x if isinstance(x, (list, tuple)) else [x]
    moved = [np.asarray(v, np.float32) for v in xs]
    moved = [np.where(rng.random(v.shape) < 0.5, np.nextafter(v, np.float32(np.inf)),
                      np.nextafter(v, np.float32(-np.inf))).astype(np.float32) for v in moved]
    return moved if isinstance(x, (list, tuple)) else moved[0]


def _weights_one_ulp(model):
    """A copy of ``model`` whose every weight is moved by one float32 ulp, up or down (seeded)."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as k
    else:
        import keras as k
    copy = k.models.clone_model(model)
    moved = _one_ulp([np.asarray(w) for w in model.get_weights()])
    copy.set_weights([m if np.asarray(w).dtype == np.float32 else w for m, w in zip(moved, model.get_weights())])
    return copy
