"""Downsampling as a step: a convolution's stride multiplied (see :mod:`tfopt.surgery.stride`), then a
fine-tune."""

from __future__ import annotations

from tfopt.errors import TfoptError
from tfopt.interop import plain_copy
from tfopt.models.stats import model_stats
from tfopt.surgery.stride import downsampled, full_resolution_convs
from tfopt.training import finetune
from tfopt.training.finetune import RECALIBRATION_BATCHES


def downsample(model, data, config, fine_tune, *, log=print, bn_batches: int = RECALIBRATION_BATCHES, **inputs):
    """A new model whose convolution ``config.layer`` (default: the first stride-1 convolution at the
    input's height and width) has its stride multiplied by ``config.factor``, fine-tuned on ``data``
    for ``fine_tune.epochs`` (0: none, ``data`` may be None). A
    :class:`~tfopt.config.steps.DownsampleConfig`.

    Args:
        bn_batches: batches that re-estimate BatchNorm statistics after the fine-tune (0: none).
        **inputs: options of :func:`tfopt.training.finetune.fine_tune`; others are ignored.

    Returns:
        ``(model, report)`` with ``layer``, ``strides``, ``macs_before``, ``macs_after``, ``history``
        and ``fine_tune_seconds``.

    Raises:
        TfoptError: no such convolution, a graph that cannot take the smaller maps (the layer named),
            or epochs without data.
    """
    layer = config.layer
    if layer is None:
        convs = full_resolution_convs(model)
        if not convs:
            raise TfoptError("downsample: the model has no stride-1 convolution at its input's height and width; "
                             "name one with layer=")
        layer = convs[0]
    smaller = downsampled(model, layer, config.factor)
    before, after = model_stats(model)["macs"], model_stats(smaller)["macs"]
    strides = smaller.get_layer(layer).strides
    log(f"{layer} at stride {strides[0]}: {before:,} -> {after:,} MACs ({after / max(before, 1):.2f}×)")
    history, seconds = finetune.after_surgery("downsample", smaller, data, fine_tune, inputs, bn_batches=bn_batches,
                                              log=log)
    return plain_copy(smaller), {"layer": layer, "strides": list(strides), "macs_before": before,
                                 "macs_after": after, "history": history, "fine_tune_seconds": seconds}
