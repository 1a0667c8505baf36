"""TFMOT's wrappers for your own training loop (tf_keras): wrap, compile and fit yourself, strip.

Example:
    >>> wrapped = tfopt.wrap_for_pruning(model, total_steps=1000, sparsity=0.8)
    >>> wrapped.compile(...); wrapped.fit(x, y, callbacks=tfopt.pruning_callbacks())
    >>> plain = tfopt.strip(wrapped)
"""

from __future__ import annotations

from tfopt.config.validation import validated
from tfopt.data.coerce import sample_x
from tfopt.errors import TfoptError
from tfopt.kinds import enter, leave
from tfopt.steps import STEPS
from tfopt.steps import cluster as cluster_step
from tfopt.steps import prune as prune_step
from tfopt.steps import quantize as quantize_step

#: Keyword arguments that were renamed: the old name is refused with the new one.
RENAMED = {"layers": "per_layer", "protect": "skip", "probe": "probe_samples"}


def _quiet(*_):
    return None


def wrap_for_pruning(model, *, total_steps: int, sparsity: float = 0.8, allocation: str = "erk",
                     schedule: str = "polynomial", initial_sparsity: float = 0.0, begin_step: int = 0,
                     end_step: int | None = None, frequency: int | None = None, per_layer: dict | None = None,
                     skip=(), m_by_n=None, block: int = 1, criterion: str = "magnitude", data=None,
                     probe_samples: int = 1024, **renamed):
    """A tf_keras copy of ``model`` wrapped for magnitude pruning over ``total_steps`` training
    steps. Compile and fit it yourself with ``callbacks=tfopt.pruning_callbacks()``, then
    :func:`strip` it. ``criterion="activation"`` (see :func:`prune`) ranks on the first
    ``probe_samples`` images of ``data``.

    Args:
        model: a tf_keras or Keras 3 model (converted to tf_keras); it is not changed.
        total_steps: the training steps you will run; the schedule is fitted into them.
        sparsity: as in :func:`prune`.
        allocation: as in :func:`prune`.
        schedule: as in :func:`prune`.
        initial_sparsity: as in :func:`prune`.
        begin_step: as in :func:`prune`.
        end_step: as in :func:`prune` (default: ``total_steps // 2``).
        frequency: as in :func:`prune`.
        per_layer: as in :func:`prune`.
        skip: as in :func:`prune`.
        m_by_n: as in :func:`prune`.
        block: as in :func:`prune`.
        criterion: as in :func:`prune`.
        data: images for ``criterion="activation"``.
        probe_samples: as in :func:`prune`.
        **renamed: old keyword names, refused with their new name.

    Returns:
        A tf_keras model with TFMOT pruning wrappers.

    Raises:
        TfoptError: a setting out of range, or a renamed keyword.
    """
    for key in renamed:
        raise TfoptError(f"wrap_for_pruning: keyword argument '{key}' "
                         + (f"renamed to {RENAMED[key]}" if key in RENAMED else "is not one it takes"))
    _, work = enter(model)
    config = validated(STEPS["prune"].config, dict(
        sparsity=sparsity, allocation=allocation, schedule=schedule, initial_sparsity=initial_sparsity,
        begin_step=begin_step, end_step=end_step, frequency=frequency, per_layer=per_layer or {}, skip=list(skip),
        m_by_n=m_by_n, block=block, criterion=criterion, probe_samples=probe_samples), "prune")
    probe = sample_x(data, probe_samples) if data is not None else None
    return prune_step.wrap_for_pruning(work, config, total_steps=total_steps, probe=probe)


def pruning_callbacks() -> list:
    """The callbacks ``fit`` needs for a model from :func:`wrap_for_pruning`.

    Returns:
        A list of tf_keras callbacks (the pruning step update).
    """
    return prune_step.pruning_callbacks()


def wrap_for_clustering(model, *, clusters: int = 16, init: str = "kmeans_plus_plus", skip=(),
                        preserve_sparsity: bool | None = None):
    """A tf_keras copy of ``model`` wrapped for weight clustering; fit it, then :func:`strip` it.

    Args:
        model: a tf_keras or Keras 3 model (converted to tf_keras); it is not changed.
        clusters: as in :func:`cluster`.
        init: as in :func:`cluster`.
        skip: as in :func:`cluster`.
        preserve_sparsity: as in :func:`cluster`.

    Returns:
        A tf_keras model with TFMOT clustering wrappers.

    Raises:
        TfoptError: a setting out of range.
    """
    _, work = enter(model)
    config = validated(STEPS["cluster"].config, dict(clusters=clusters, init=init, skip=list(skip),
                                                     preserve_sparsity=preserve_sparsity), "cluster")
    return cluster_step.wrap_for_clustering(work, config)


def wrap_for_qat(model):
    """A tf_keras quantization-aware copy of ``model``; fit it, then ``to_tflite(qat, mode="int8")``.

    A pruned model gets PQAT, a clustered one CQAT, one both pruned and clustered PCQAT.

    Args:
        model: a tf_keras or Keras 3 model (converted to tf_keras); it is not changed.

    Returns:
        A tf_keras model with TFMOT quantization wrappers.

    Raises:
        TfoptError: a layer TFMOT's QAT cannot take.
    """
    _, work = enter(model)
    return quantize_step.wrap_for_qat(work, log=_quiet)[0]


def strip(model, kind: str = "tf_keras"):
    """A plain model from a pruning- or clustering-wrapped one.

    Args:
        model: a model from :func:`wrap_for_pruning` or :func:`wrap_for_clustering`, trained.
        kind: ``"tf_keras"``, or ``"keras3"`` to convert the result back to Keras 3.

    Returns:
        A new model without wrappers.

    Raises:
        TfoptError: ``kind`` is neither ``"tf_keras"`` nor ``"keras3"``, or, for ``"keras3"``, the
            stripped model cannot be converted (a subclassed model, a layer that is not built in,
            or outputs that differ after conversion).
    """
    return leave(prune_step.strip(model), kind)
