"""Gradient checking: GradientTape gradients against central finite differences, in float64.

The model is copied to float64 and run in inference mode (dropout off, BatchNorm using its
moving statistics), so the loss is a deterministic, smooth-almost-everywhere function of
the weights. For every trainable variable, up to ``max_entries`` entries are checked (all
of a small variable; otherwise a seeded sample that always includes the entry with the
largest analytic gradient). Each entry's relative error is
``|g_tape − g_fd| / max(|g_tape|, |g_fd|, 1e-6)`` (gradients below 1e-6 are compared in absolute
terms: there, float64 rounding of the loss dominates) with
``g_fd = (L(w + eps) − L(w − eps)) / (2·eps)``.

Threshold: a layer passes when its maximum relative error is below ``1e-4`` (the default).
Correct float64 gradients with ``eps = 1e-5`` land around 1e-10 to 1e-5; the
perturbation that would cross a ReLU or max-pool kink is detected and skipped: where the
one-sided differences ``(L(w+eps) − L(w))/eps`` and ``(L(w) − L(w−eps))/eps`` disagree by
more than the threshold (relative), the loss is not differentiable at ``w`` within ``eps``
and the entry is counted under ``kinks``, not checked. A wrong gradient is not hidden this
way: both one-sided differences then agree with each other and disagree with the tape. Real images have many exact zeros, which put bias-free conv + ReLU outputs
exactly on their kink for every perturbation of a shared parameter; the input batch is
therefore jittered by ``N(0, jitter²)`` (default ``jitter=1e-3``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfopt.callbacks.base import keras_module, variable_owners
from tfopt.models.outputs import emits_logits
from tfopt.training.run import recipe_model_and_data

DEFAULT_THRESHOLD = 1e-4


@dataclass
class LayerCheck:
    layer: str
    max_rel_error: float
    entries: int
    threshold: float
    kinks: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_error < self.threshold)


@dataclass
class GradcheckResult:
    layers: list[LayerCheck] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    eps: float = 1e-5

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.layers)

    def failures(self) -> list[str]:
        return [c.layer for c in self.layers if not c.passed]

    def table(self) -> str:
        width = max([len(c.layer) for c in self.layers] + [5])
        lines = [f"{'layer':<{width}}  {'entries':>7}  {'kinks':>5}  {'max rel. error':>14}  result"]
        for c in self.layers:
            lines.append(f"{c.layer:<{width}}  {c.entries:>7}  {c.kinks:>5}  {c.max_rel_error:>14.3e}  "
                         f"{'ok' if c.passed else 'FAIL'}")
        verdict = "passed" if self.passed else f"FAILED in {', '.join(self.failures())}"
        lines.append(f"gradient check {verdict} (threshold {self.threshold:g}, eps {self.eps:g}, float64)")
        return "\n".join(lines)


def _float64_copy(model, custom_objects=None):
    km = keras_module(model)
    config = model.get_config()

    def to64(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "dtype" and isinstance(value, str):
                    node[key] = "float64"
                elif key == "dtype" and isinstance(value, dict) and "config" in value:
                    value["config"]["name"] = "float64"
                else:
                    to64(value)
        elif isinstance(node, list):
            for item in node:
                to64(item)

    to64(config)
    with km.utils.custom_object_scope(custom_objects or {}):
        copy = type(model).from_config(config)
    copy.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    return copy


def _default_loss(model):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=emits_logits(model))


def gradcheck(model, x, y, loss=None, eps=1e-5, max_entries=16, threshold=DEFAULT_THRESHOLD, seed=0,
              custom_objects=None, jitter=1e-3) -> GradcheckResult:
    """Check ``model``'s gradients on ``(x, y)``; the model itself is not changed.

    Args:
        model: a tf_keras model (Sequential or functional).
        x: a small batch of inputs (2–8 samples is plenty).
        y: their labels.
        loss: ``loss(y_true, y_pred)``; default: sparse cross-entropy, from logits unless
            the model ends in softmax/sigmoid.
        eps: finite-difference step.
        max_entries: entries checked per variable.
        threshold: a layer fails when its maximum relative error reaches this.
        jitter: standard deviation of the noise added to ``x`` to move activations off kinks.
        custom_objects: needed when the model has custom layers.
        seed: seed of the entries checked and of the jitter.

    Returns:
        A :class:`GradcheckResult`: per layer the largest relative error, ``passed`` and ``table()``.

    Raises:
        TypeError: the model holds a custom layer Keras cannot rebuild from its config (neither
            registered with ``register_keras_serializable`` nor given in ``custom_objects``).
        ValueError: the float64 copy rebuilt from the config does not take the model's weights
            (a subclassed model, whose config holds no layers).

    Example:
        >>> result = tfopt.gradcheck(model, x[:4], y[:4])
        >>> print(result.table()); assert result.passed
    """
    m = _float64_copy(model, custom_objects)
    loss_fn = loss or _default_loss(model)
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float64)
    x = tf.constant(x + jitter * rng.standard_normal(x.shape) if jitter else x)
    y = tf.constant(np.asarray(y))

    @tf.function
    def total_loss():
        pred = m(x, training=False)
        value = tf.reduce_mean(tf.cast(loss_fn(y, pred), tf.float64))
        if m.losses:
            value += tf.add_n([tf.cast(v, tf.float64) for v in m.losses])
        return value

    variables, owners = variable_owners(m)
    with tf.GradientTape() as tape:
        value = total_loss()
    grads = tape.gradient(value, variables)
    worst: dict[str, list] = {}
    for var, owner, grad in zip(variables, owners, grads):
        g = np.zeros(var.shape) if grad is None else tf.convert_to_tensor(grad).numpy()
        flat = g.ravel()
        if flat.size <= max_entries:
            picks = np.arange(flat.size)
        else:
            picks = np.unique(np.append(rng.choice(flat.size, max_entries - 1, replace=False), np.argmax(np.abs(flat))))
        errors, kinks = [], 0
        base = float(value)
        for p in picks:
            idx = list(np.unravel_index(p, var.shape))
            original = float(var.numpy()[tuple(idx)])
            var.scatter_nd_update([idx], [original + eps])
            plus = float(total_loss())
            var.scatter_nd_update([idx], [original - eps])
            minus = float(total_loss())
            var.scatter_nd_update([idx], [original])
            forward, backward = (plus - base) / eps, (base - minus) / eps
            if abs(forward - backward) > threshold * max(abs(forward), abs(backward), 1e-6):
                kinks += 1
                continue
            numeric = (plus - minus) / (2 * eps)
            analytic = float(flat[p])
            errors.append(abs(analytic - numeric) / max(abs(analytic), abs(numeric), 1e-6))
        entry = worst.setdefault(owner, [0.0, 0, 0])
        entry[0] = max(entry[0], max(errors, default=0.0))
        entry[1] += len(errors)
        entry[2] += kinks
    return GradcheckResult([LayerCheck(name, err, n, threshold, k) for name, (err, n, k) in worst.items()],
                           threshold, eps)


def gradcheck_recipe(recipe, *, samples: int = 4, entries: int = 16, threshold: float = DEFAULT_THRESHOLD):
    """:func:`gradcheck` of ``recipe``'s freshly built model on ``samples`` training images."""
    model, splits = recipe_model_and_data(recipe)
    return gradcheck(model, splits.x_train[:samples], splits.y_train[:samples], max_entries=entries,
                     threshold=threshold)
