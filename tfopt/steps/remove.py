"""Layer removal as a step: take layers or residual blocks out, then fine-tune."""

from __future__ import annotations


def remove(model, data=None, *, layers=(), epochs: int = 1, lr: float | None = None, batch_size: int | None = None,
           log=print, **fit):
    """A new model without ``layers`` (layer names or residual blocks such as ``block2``),
    fine-tuned for ``epochs`` on ``data`` (``epochs=0``: no fine-tune, ``data`` may be None).

    Returns:
        ``(smaller model, report)`` with ``removed`` (every layer taken out) and ``history``.
    """
    from tfopt.errors import TfoptError
    from tfopt.export import plain_copy
    from tfopt.steps.runner import (
        RECALIBRATION_BATCHES,
        fine_tune,
        recalibrate_batchnorm,
    )
    from tfopt.surgery.remove import remove_layers

    bn_batches = fit.pop("bn_batches", RECALIBRATION_BATCHES)
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise TfoptError("remove_layers: name the layers or blocks to remove, e.g. ['conv3', 'block2']")
    smaller, removed = remove_layers(model, list(layers))
    history, seconds = [], 0.0
    if epochs:
        if data is None:
            raise TfoptError(f"remove_layers: {epochs} fine-tune epoch(s) need data; pass data=(x, y) or epochs=0")
        history, seconds = fine_tune(smaller, data, epochs=epochs, lr=lr, batch_size=batch_size, log=log, **fit)
        recalibrate_batchnorm(smaller, data, batches=bn_batches, batch_size=batch_size, log=log)
    return plain_copy(smaller), {"removed": removed, "history": history, "fine_tune_seconds": seconds}
