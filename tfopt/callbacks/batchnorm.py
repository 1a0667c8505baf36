"""BatchNormRefresh: BatchNormalization statistics that match the weights they normalize.

A BatchNormalization layer infers with moving averages of the batch statistics it saw while
training. When the weights before it move fast (a high learning rate, Adam on depthwise kernels,
a fine-tune after pruning), those averages trail the weights, and a model that trains well can
infer badly. Re-estimating the statistics from a few batches with the final weights removes the
lag; the weights themselves are not touched.
"""

from __future__ import annotations

import numpy as np
from tf_keras.callbacks import Callback

from tfopt.callbacks.base import all_layers

#: layers that are switched off while the statistics are measured, as they are at inference
_TRAINING_NOISE = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
                   "AlphaDropout")


def batch_norm_layers(model) -> list:
    """The model's BatchNormalization layers (nested models included) that keep moving statistics."""
    return [layer for layer in all_layers(model)
            if type(layer).__name__ == "BatchNormalization" and hasattr(layer, "moving_mean")]


def _input_batches(x, batch_size: int, batches: int):
    """Input batches from arrays (a list of arrays for several inputs) or from an iterable of batches."""
    if isinstance(x, np.ndarray) or (isinstance(x, (list, tuple)) and x and isinstance(x[0], np.ndarray)):
        inputs = list(x) if isinstance(x, (list, tuple)) else [x]
        n = min(len(inputs[0]), batch_size * batches)
        for start in range(0, max(1, n - batch_size + 1), batch_size):
            part = [a[start:min(start + batch_size, n)] for a in inputs]
            if len(part[0]):
                yield part if len(part) > 1 else part[0]
        return
    for i, batch in enumerate(x):
        if i >= batches:
            return
        yield batch


def refresh_batch_norm(model, x, batch_size: int = 128, batches: int = 25) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the statistics of its
    inputs over ``batches`` batches of ``x``, computed with the model's current weights.

    Each batch runs the model in training mode with dropout switched off, so every layer
    normalizes with batch statistics as in training; the layer's moving mean becomes the mean of
    the batch means, its moving variance the mean of the batch variances plus the variance of the
    batch means. Works on tf_keras and Keras 3 models, nested models included.

    Args:
        model: the model, changed in place (its BatchNormalization statistics only).
        x: input images (an array, or a list of arrays for a multi-input model), or an iterable
            of input batches (a dataset of inputs, without labels).
        batch_size: images per batch when ``x`` is arrays.
        batches: at most this many batches are used.

    Returns:
        The number of batches measured (0 when the model has no BatchNormalization layer).

    Example:
        >>> refresh_batch_norm(model, x_train[:3200], batch_size=128)
        25
    """
    layers = batch_norm_layers(model)
    if not layers or batches < 1:
        return 0
    saved = [layer.momentum for layer in layers]
    noise = [(layer, layer.rate) for layer in all_layers(model)
             if type(layer).__name__ in _TRAINING_NOISE and hasattr(layer, "rate")]
    means = [[] for _ in layers]
    variances = [[] for _ in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # the moving statistics become this batch's
        for layer, _ in noise:
            layer.rate = 0.0
        for batch in _input_batches(x, batch_size, batches):
            model(batch, training=True)
            for i, layer in enumerate(layers):
                means[i].append(np.asarray(layer.moving_mean.numpy(), np.float64))
                variances[i].append(np.asarray(layer.moving_variance.numpy(), np.float64))
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
        for layer, rate in noise:
            layer.rate = rate
    if not means[0]:
        return 0
    for layer, m, v in zip(layers, means, variances):
        m, v = np.stack(m), np.stack(v)
        layer.moving_mean.assign(m.mean(0).astype(np.float32))
        layer.moving_variance.assign((v.mean(0) + m.var(0)).astype(np.float32))
    return len(means[0])


class BatchNormRefresh(Callback):
    """Before each validation of ``fit`` (or at the end of each epoch when there is none),
    re-estimate the model's BatchNormalization statistics from ``batches`` batches of ``x``
    (see :func:`refresh_batch_norm`), so validation, checkpoints and the final model infer with
    statistics that match their weights. Nothing happens for a model without BatchNormalization.

    Example:
        >>> model.fit(train_ds, validation_data=val_ds, epochs=20,
        ...           callbacks=[BatchNormRefresh(x_train[:3200], batch_size=128)])
    """

    def __init__(self, x, batch_size: int = 128, batches: int = 25):
        super().__init__()
        self.x, self.batch_size, self.batches = x, int(batch_size), int(batches)
        self._training = False
        self._done_this_epoch = False

    def get_config(self):
        return {"batch_size": self.batch_size, "batches": self.batches}

    def _refresh(self):
        refresh_batch_norm(self.model, self.x, self.batch_size, self.batches)
        self._done_this_epoch = True

    def on_train_begin(self, logs=None):
        self._training = True

    def on_train_end(self, logs=None):
        self._training = False

    def on_epoch_begin(self, epoch, logs=None):
        self._done_this_epoch = False

    def on_test_begin(self, logs=None):
        if self._training and not self._done_this_epoch:
            self._refresh()

    def on_epoch_end(self, epoch, logs=None):
        if not self._done_this_epoch:
            self._refresh()
