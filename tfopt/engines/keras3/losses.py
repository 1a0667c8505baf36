"""Heads, task losses and the distillation loss of the Keras 3 fine-tunes.

A head (one model output) is one of four kinds:

- ``"softmax"``: probabilities over the last axis (a softmax activation or layer, or, when
  the graph cannot be read, outputs that are non-negative and sum to one);
- ``"sigmoid"``: one probability per unit (a sigmoid activation, or values in [0, 1] with
  0/1 labels when the graph cannot be read);
- ``"logits"``: a linear head the compiled or given loss reads ``from_logits=True``;
- ``"regression"``: anything else. A linear head is a regression, never taken for logits,
  unless its labels are class indices (whole numbers with one axis fewer than a head of
  several units: they cannot be regression targets), which makes it ``"logits"``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_EPSILON = 1e-30


def _activation_name(layer):
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if callable(activation) else activation


def _structural_kind(tensor):
    """The kind read from the layer producing a symbolic output, or None when unknown."""
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None) if history is not None else None
    if layer is None:
        return None
    if isinstance(layer, keras.Model):
        outputs = _symbolic_outputs(layer)
        index = getattr(history, "tensor_index", 0)
        return _structural_kind(outputs[index]) if outputs and index < len(outputs) else None
    name = _activation_name(layer)
    if name in ("softmax", "sigmoid"):
        return name
    if name in ("linear", None) and hasattr(layer, "activation"):
        return "regression"
    return "regression" if name else None


def _symbolic_outputs(model):
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return list(outputs) if outputs else None


def _value_kind(prediction, target):
    p = np.asarray(keras.ops.convert_to_numpy(prediction), dtype="float64")
    if p.ndim >= 2 and p.shape[-1] >= 2 and np.all(p >= 0) and np.allclose(p.sum(-1), 1.0, atol=1e-3):
        return "softmax"
    if target is not None and p.shape[-1:] == (1,) and np.all((p >= 0) & (p <= 1)):
        t = np.asarray(target)
        if t.size and np.all(np.isin(t, (0, 1))):
            return "sigmoid"
    return "regression"


def _loss_reads_logits(loss) -> bool:
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        return bool(config.get("from_logits"))
    return False


def head_kinds(model, sample_x, sample_y, loss=None):
    """The kind of each of the model's heads, in the structure of its outputs.

    Args:
        model: The Keras 3 model.
        sample_x: A small batch of inputs.
        sample_y: Targets for that batch (used only when the graph cannot be read).
        loss: The compiled or given loss, to recognise ``from_logits=True`` heads.

    Returns:
        ``(kinds, prediction)``: a structure like the model's outputs with one kind per
        head, and the model's prediction on ``sample_x``.
    """
    prediction = model(sample_x, training=False)
    leaves = keras.tree.flatten(prediction)
    symbolic = _symbolic_outputs(model)
    names = getattr(model, "output_names", None)
    if isinstance(sample_y, dict) and names and set(names) == set(sample_y):
        targets = [sample_y[n] for n in names]  # a dict flattens in sorted key order, not the outputs'
    else:
        targets = keras.tree.flatten(sample_y) if sample_y is not None else []
    if isinstance(loss, dict) and names:
        losses = [loss.get(n) for n in names]
    elif isinstance(loss, (list, tuple, dict)):
        losses = keras.tree.flatten(loss)
    else:
        losses = [loss] * len(leaves)
    kinds = []
    for i, leaf in enumerate(leaves):
        kind = _structural_kind(symbolic[i]) if symbolic and len(symbolic) == len(leaves) else None
        if kind is None:
            kind = _value_kind(leaf, targets[i] if i < len(targets) else None)
        if kind == "regression" and i < len(losses) and _loss_reads_logits(losses[i]):
            kind = "logits"
        elif (kind == "regression" and (i >= len(losses) or losses[i] is None) and i < len(targets)
              and _class_indices(targets[i], leaf)):
            kind = "logits"
        kinds.append(kind)
    return keras.tree.pack_sequence_as(prediction, kinds), prediction


def _class_indices(target, prediction) -> bool:
    """Whether ``target`` holds class indices for a head of several units: whole numbers with one
    axis fewer than the prediction (or a last axis of 1). Such labels cannot be regression targets
    (they do not have the head's shape), so a linear head trained on them gives logits."""
    t = np.asarray(target)
    p_shape = tuple(prediction.shape)
    if not p_shape or p_shape[-1] < 2 or t.size == 0 or not np.issubdtype(t.dtype, np.number):
        return False
    shaped = t.ndim == len(p_shape) - 1 or (t.ndim == len(p_shape) and t.shape[-1] == 1)
    return bool(shaped and np.all(t == np.round(t)) and np.all(t >= 0))


def _integer_labels(target, prediction) -> bool:
    t = np.asarray(target)
    if np.issubdtype(t.dtype, np.integer):
        return True
    p_shape = tuple(prediction.shape)
    if t.ndim == len(p_shape) - 1 or (t.shape[-1:] == (1,) and p_shape[-1] != 1):
        return True
    return False


def infer_loss(kind, target, prediction):
    """The task loss for one head.

    softmax + integer labels: sparse categorical cross-entropy; softmax + one-hot: categorical
    cross-entropy; sigmoid: binary cross-entropy; logits: the sparse or categorical
    cross-entropy from logits; a regression head: mean squared error.
    """
    if kind == "softmax":
        if _integer_labels(target, prediction):
            return keras.losses.SparseCategoricalCrossentropy()
        return keras.losses.CategoricalCrossentropy()
    if kind == "logits":
        if _integer_labels(target, prediction):
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    if kind == "sigmoid":
        return keras.losses.BinaryCrossentropy()
    return keras.losses.MeanSquaredError()


def infer_losses(kinds, sample_y, prediction):
    """One inferred loss per head, in the structure of the outputs (or of ``sample_y``)."""
    kind_leaves = keras.tree.flatten(kinds)
    target_leaves = keras.tree.flatten(sample_y)
    pred_leaves = keras.tree.flatten(prediction)
    if len(target_leaves) != len(kind_leaves):
        raise ValueError(f"data: the model has {len(kind_leaves)} outputs but y holds "
                         f"{len(target_leaves)} arrays.")
    losses = [infer_loss(k, t, p) for k, t, p in zip(kind_leaves, target_leaves, pred_leaves)]
    if isinstance(sample_y, dict):
        # kinds were put in y's dict structure, whose leaves flatten in sorted key order.
        return dict(zip(sorted(sample_y), losses))
    return losses[0] if len(losses) == 1 else losses


def compiled_loss(model):
    """``(loss, loss_weights)`` the model was compiled with, or ``(None, None)``."""
    if not getattr(model, "compiled", False) or getattr(model, "loss", None) is None:
        return None, None
    config = model.get_compile_config() or {}
    weights = config.get("loss_weights")
    if weights is not None:
        weights = keras.saving.deserialize_keras_object(weights)
    return model.loss, weights


def _log_probabilities(kind, output):
    """Log-probabilities of a head: exact logits up to a per-row constant, which softmax ignores."""
    if kind in ("logits", "regression"):
        return ops.log_softmax(output, axis=-1)
    return ops.log(ops.maximum(output, _EPSILON))


def _binary_logits(kind, output):
    if kind in ("logits", "regression"):
        return output
    p = ops.clip(output, _EPSILON, 1.0 - 1e-7)
    return ops.log(p) - ops.log(1.0 - p)


def head_distillation(kind, teacher_kind, student, teacher, temperature):
    """The distillation term for one head (a scalar tensor).

    Classifier heads: ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged
    over rows, with logits read back from probabilities where a head applies softmax
    (log-probabilities differ from logits by a per-row constant that softmax removes);
    a sigmoid head is the two-class case. Regression heads: mean squared error to the teacher.
    """
    student = ops.cast(student, "float32")
    teacher = ops.cast(ops.stop_gradient(teacher), "float32")
    t2 = float(temperature) ** 2
    if kind in ("softmax", "logits"):
        s = ops.log_softmax(_log_probabilities(kind, student) / temperature, axis=-1)
        t = ops.log_softmax(_log_probabilities(teacher_kind, teacher) / temperature, axis=-1)
        return t2 * ops.mean(ops.sum(ops.exp(t) * (t - s), axis=-1))
    if kind == "sigmoid":
        zs = _binary_logits(kind, student) / temperature
        zt = _binary_logits(teacher_kind, teacher) / temperature
        s = ops.stack([ops.log_sigmoid(zs), ops.log_sigmoid(-zs)], axis=-1)
        t = ops.stack([ops.log_sigmoid(zt), ops.log_sigmoid(-zt)], axis=-1)
        return t2 * ops.mean(ops.sum(ops.exp(t) * (t - s), axis=-1))
    return ops.mean(ops.square(student - teacher))


class Distillation:
    """The teacher side of a distilling fine-tune, kept out of Keras's variable tracking.

    The teacher is held in a plain object so that the training model neither trains it nor
    saves it; it runs with ``training=False`` and its outputs carry no gradient.

    Args:
        teacher: A Keras model with the student's inputs and outputs.
        kinds: The student's head kinds.
        teacher_kinds: The teacher's head kinds.
        temperature: Softmax temperature ``T``.
        alpha: Weight of the distillation term; the task loss gets ``1 - alpha``.
        arrange: Puts the teacher's outputs in the structure the student's take in training.
    """

    def __init__(self, teacher, kinds, teacher_kinds, temperature, alpha, arrange=None):
        arrange = arrange or (lambda outputs: outputs)
        self._call = lambda x: arrange(teacher(x, training=False))
        self.kinds = keras.tree.flatten(kinds)
        self.teacher_kinds = keras.tree.flatten(teacher_kinds)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def term(self, x, y_pred):
        """The summed distillation term over heads for a batch."""
        teacher = keras.tree.flatten(self._call(x))
        student = keras.tree.flatten(y_pred)
        terms = [head_distillation(k, tk, s, t, self.temperature)
                 for k, tk, s, t in zip(self.kinds, self.teacher_kinds, student, teacher)]
        return terms[0] if len(terms) == 1 else ops.sum(ops.stack(terms))

    def mix(self, task, x, y_pred):
        """``alpha * distillation + (1 - alpha) * task``."""
        return self.alpha * self.term(x, y_pred) + (1.0 - self.alpha) * task
