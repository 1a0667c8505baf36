"""What a search is given: the selection split, the fine-tunes' data and the teacher."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from tfopt.config.data import Augment
from tfopt.config.validation import validated
from tfopt.data.coerce import sample_xy
from tfopt.data.pipeline import make_dataset
from tfopt.errors import TfoptError
from tfopt.kinds import enter
from tfopt.search.measure import class_labels
from tfopt.steps.source import check_teacher, load_teacher
from tfopt.training.finetune import DEFAULT_BATCH_SIZE

#: A budget under this many selection images is below what the selection split can resolve: the
#: search says so at the start.
RESOLVABLE_IMAGES = 3


def weights_digest(model) -> str:
    """A short digest of a model's weights: a resumed search must learn from the same teacher."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def check_classifier(model, data, validation_data) -> None:
    """The search judges top-1 accuracy: a model of one input and one output of class scores per
    example, and data of class labels. Anything else is refused in one paragraph.

    Raises:
        TfoptError: ``optimize cannot take the model '<name>' (<class>): <why>. ...``
    """
    from tfopt.graph_path import GRAPH_REFUSAL, several

    reason = None
    if any(d is not None and not isinstance(d, np.ndarray) and several(d) for d in (data, validation_data)):
        reason = "its data has several inputs or outputs (x or y a list or a dict)"
    elif len(model.inputs) != 1 or len(model.outputs) != 1:
        reason = f"it has {len(model.inputs)} input(s) and {len(model.outputs)} output(s)"
    else:
        shape = tuple(model.outputs[0].shape)
        if len(shape) != 2 or (shape[-1] or 0) < 2:
            reason = (f"its output has shape {shape}, " + ("one value per example (a regression)"
                      if len(shape) == 2 else "not one row of class scores per example (per-position outputs)"))
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            y = np.asarray(data[1])
            if y.ndim > 1 and not (y.ndim == 2 and y.shape[-1] in (1, shape[-1])):
                reason = f"its labels have shape {y.shape[1:]} per example, not one class"
            elif np.issubdtype(y.dtype, np.floating) and y.ndim == 1 and np.any(y != np.round(y)):
                reason = "its labels are not class indices (fractional values)"
    if reason:
        raise TfoptError(f"optimize {GRAPH_REFUSAL} '{model.name}' ({type(model).__name__}): {reason}. optimize "
                         f"searches classifiers of one input and one output (class scores per example), judged by "
                         f"top-1 accuracy; prune, prune_channels, cluster, quantize_aware and to_tflite take such "
                         f"a model step by step.")


def split(data, validation_data, selection_fraction, seed, log):
    """``(selection split, fine-tune data)``: ``validation_data``, else ``selection_fraction`` of
    ``data`` held out at random (never the test split). Labels of the selection split as classes."""
    x, y = sample_xy(data)
    if validation_data is None:
        n_sel = max(1, int(round(len(x) * selection_fraction)))
        idx = np.random.default_rng(seed).permutation(len(x))
        sel, train = idx[:n_sel], idx[n_sel:]
        selection, data = (x[sel], y[sel]), (x[train], y[train])
        log(f"selection split: {n_sel} of the {len(x)} training images held out (never the test split); if the model "
            f"trained on them, drops measured there read higher than on new images: pass validation_data=(x, y) it "
            f"did not train on")
    else:
        selection, data = sample_xy(validation_data), (x, y)
    return (selection[0], class_labels(selection[1])), (data[0], data[1])


def augment_config(augment):
    """``augment`` (a dict or an ``Augment``) as an ``Augment`` that does something, else None."""
    if not augment:
        return None
    cfg = augment if isinstance(augment, Augment) else validated(Augment, dict(augment), "augment")
    return cfg if cfg.any() else None


def augmented(data, augment, batch_size, seed, log):
    """The fine-tunes' training pipeline with the ``Augment`` ``augment`` (None: the arrays themselves)."""
    if augment is None:
        return None
    log(f"fine-tunes augment their training images: {augment.model_dump(exclude_defaults=True)}")
    return make_dataset(data[0], data[1], batch_size or DEFAULT_BATCH_SIZE, training=True, seed=seed, augment=augment)


def teacher_model(teacher, student, distill):
    """``(tf_keras teacher or None, its path or None)`` from a model or a path.

    Raises:
        TfoptError: a teacher with ``distill`` off, or one that does not fit ``student``.
    """
    if teacher is None:
        return None, None
    if not distill:
        raise TfoptError("optimize: a teacher is for distillation, which distill=False (--no-distill) turns off")
    if isinstance(teacher, (str, os.PathLike)):
        return load_teacher(teacher, student), str(teacher)
    _, model = enter(teacher, "teacher")
    check_teacher(model, student, f"the model '{model.name}'")
    return model, None


def resolution_note(max_drop: float, images: int) -> str:
    """What a budget below :data:`RESOLVABLE_IMAGES` selection images means, or ``""``.

    Args:
        max_drop: the budget, in points.
        images: the size of the selection split.

    Returns:
        One paragraph: the budget in images, that the split cannot tell such a drop from the
        noise of a fine-tune, what the search does and how to resolve more.
    """
    worth = max_drop * images / 100
    if worth >= RESOLVABLE_IMAGES:
        return ""
    return (f"note: a drop of at most {max_drop:g} points is {worth:.1f} of the {images} selection images (one image "
            f"is {100 / images:.3f} points); the selection split cannot tell such a drop from noise. The search "
            f"still judges every candidate against it, so it keeps only files that lose at most that many images, "
            f"and returns the best of them within its time; a larger selection split (the recipe's "
            f"data.validation_split) or a larger max-drop resolves more.")
