"""The one place where ``tfopt optimize`` calls tfopt's compression steps.

Everything the search does to a model goes through these functions, which call the registered
steps (:data:`tfopt.steps.STEPS`, the same functions the commands run) and the TFLite helpers. When a step's signature
changes, only this file follows. Models here are tf_keras; data are ``(x, y)`` arrays.
"""

from __future__ import annotations

import numpy as np


def _api():
    from tfopt import api

    return api


def _step(name: str, model, data, fit: dict, log=None, **settings):
    """The registered step ``name`` (:data:`tfopt.steps.STEPS`) on a tf_keras ``model``; its model."""
    from tfopt.steps import STEPS

    model, _ = STEPS[name].function(model, data, log=log or _quiet, **settings, **_fit_kwargs(fit))
    return model


def _quiet(*_):
    pass


def _fit_kwargs(fit: dict) -> dict:
    """Fine-tune settings shared by the steps: epochs, lr, batch_size, teacher, temperature, alpha, seed."""
    keys = ("epochs", "lr", "batch_size", "teacher", "temperature", "alpha", "seed", "validation_data", "loss")
    return {k: v for k, v in fit.items() if k in keys and v is not None}


def channels(model, data, per_layer: dict, fit: dict, log=None):
    """Structured pruning: ``per_layer`` ``{layer: fraction of channels removed}``, then a fine-tune."""
    return _step("structured", model, data, fit, log, ratio=0.0, per_layer=per_layer)


def remove(model, data, layers, fit: dict, log=None):
    """The model without ``layers``, rewired and fine-tuned."""
    return _step("remove", model, data, fit, log, layers=list(layers))


def prune(model, data, fit: dict, sparsity: float = 0.8, layers: dict | None = None, skip=(), m_by_n=None,
          allocation: str = "erk", criterion: str = "magnitude", probe=None, log=None):
    """Magnitude pruning (per-layer targets in ``layers``, ``skip`` left dense, the rest spread by
    ``allocation``, or m:n; weights ranked by ``criterion``, the activation criterion measuring
    inputs on the images ``probe``), fine-tuned and stripped."""
    kw = dict(sparsity=sparsity, layers=layers or None, skip=list(skip), allocation=allocation, criterion=criterion,
              probe=probe)
    if m_by_n:
        kw["m_by_n"] = tuple(m_by_n)
    return _step("prune", model, data, fit, log, **kw)


def fold_pool(model, x, layers, log=None):
    """The model with the 2×2 max-pools after ``layers`` folded into them (an exact rewrite,
    checked on ``x``; nothing to fine-tune)."""
    return _step("fold_pool", model, (x, None), {}, log, layers=list(layers), measure=False)


def foldable_pools(model) -> list[str]:
    """The convs whose 2×2 max-pool can be folded into them, in graph order."""
    from tfopt.surgery.fold_pool import plan, without_blocking_batchnorm

    model = without_blocking_batchnorm(model)[0]  # as the step does
    todo, _ = plan(model)
    return [layer.name for layer in model.layers if layer.name in todo]


def fine_tuned(model, data, fit: dict, log=None):
    """A copy of ``model`` fine-tuned with the steps' settings and nothing else (BatchNorm statistics
    re-estimated afterwards, as the steps do)."""
    from tfopt.interop import plain_copy
    from tfopt.steps.runner import fine_tune, recalibrate_batchnorm

    log = log or _quiet
    copy = plain_copy(model)
    kw = _fit_kwargs(fit)
    fine_tune(copy, data, log=log, **kw)
    recalibrate_batchnorm(copy, data, batch_size=kw.get("batch_size"), log=log)
    return copy


def cluster(model, data, fit: dict, clusters: int = 16, log=None):
    """Weight clustering to ``clusters`` values per kernel, fine-tuned and stripped."""
    return _step("cluster", model, data, fit, log, clusters=clusters)


def qat(model, data, fit: dict, log=None):
    """A quantization-aware copy, trained (PQAT/CQAT keep sparsity and clusters)."""
    return _step("quantize", model, data, fit, log)


def to_tflite(model, mode: str, x_calib, *, verify_x=None, min_agreement=None) -> bytes:
    """TFLite bytes (``float32``, ``dynamic`` or ``int8``; a QAT model converts to int8 with its
    own ranges), verified against the model on ``verify_x`` when given."""
    return _api().to_tflite(model, mode, data=verify_x if verify_x is not None else x_calib,
                            min_agreement=min_agreement if verify_x is not None else 0.0)


def is_qat(model) -> bool:
    from tfopt.steps.quantize import is_qat as check

    return check(model)


def tflite_accuracy(content: bytes, x, y) -> float:
    from tfopt import tflite

    return tflite.accuracy(content, x, y)


def tflite_sizes(content: bytes) -> dict:
    from tfopt import tflite

    return tflite.sizes(content)


def sparse_raw_bytes(model, mode: str, x_calib) -> int | None:
    """Raw bytes of the TFLite file with sparse weight storage (``EXPERIMENTAL_SPARSITY``), for
    models with zeros to pack; None when it fails to convert."""
    from tfopt import tflite

    try:
        if is_qat(model):
            return len(tflite.convert(model, "int8", qat=True, sparse=True))
        return len(tflite.convert(model, mode, representative=x_calib if mode == "int8" else None, sparse=True))
    except Exception:  # the sparse encoder is experimental: a failure only loses this figure
        return None


def latency_us(content: bytes, sample, runs: int = 200, repeats: int = 5) -> float:
    """Median 1-thread LiteRT latency of one image (the fastest of ``repeats`` blocks of ``runs``)."""
    from tfopt import tflite

    return tflite.latency_us(content, sample, num_threads=1, runs=runs, repeats=repeats)["median_us"]


def stats(model) -> dict:
    """Parameters, non-zero parameters, MACs."""
    from tfopt.models.stats import model_stats

    return model_stats(model)


def accuracy(model, x, y) -> float:
    return float(np.mean(model.predict(x, batch_size=512, verbose=0).argmax(-1) == y))


def channel_groups(model) -> list[str]:
    """Layers whose channels can be removed (one name per coupled group)."""
    from tfopt.surgery.channels import trace

    return [name for name, g in trace(model).items() if not g.blocked]


def prunable_layers(model) -> dict:
    """``{layer name: kernel weight count}`` for layers magnitude pruning can work on."""
    from tfopt.steps.prune import kernels, prunable

    return {layer.name: int(sum(int(np.prod(w.shape)) for w in kernels(layer)))
            for layer in model.layers if prunable(layer)}


def channel_sensitivity(model, x, y, ratios=(0.25, 0.5, 0.75, 0.8, 0.9)) -> list[dict]:
    """Selection accuracy with ``ratio`` of one layer's channels removed, without fine-tuning."""
    api = _api()
    rows = []
    for name in channel_groups(model):
        for r in ratios:
            smaller = api.prune_channels(model, ratio=0.0, per_layer={name: r}, epochs=0)
            rows.append({"layer": name, "ratio": r, "accuracy": accuracy(smaller, x, y)})
    return rows


def magnitude_sensitivity(model, x, y, levels=(0.5, 0.75, 0.9, 0.95, 0.98), scales=None) -> list[dict]:
    """Selection accuracy with the smallest ``level`` of one layer's kernel zeroed, without
    fine-tuning (ranked by ``|w| · scale`` with the activation criterion's ``scales``)."""
    from tfopt.steps.sensitivity import magnitude_pruned

    rows = []
    for name in prunable_layers(model):
        for s in levels:
            rows.append({"layer": name, "ratio": s,
                         "accuracy": accuracy(magnitude_pruned(model, {name: s}, scales), x, y)})
    return rows


def input_scales(model, x) -> dict:
    """The activation criterion's per-input scales of every prunable layer, measured on ``x``."""
    from tfopt.steps.prune import input_scales as scales

    return scales(model, x)


def allocation_accuracy(model, x, y, sparsity: float, allocation: str, scales=None) -> float:
    """Selection accuracy with ``sparsity`` of all prunable kernels zeroed at once, spread by
    ``allocation`` (``erk`` or ``er``), without fine-tuning (ranked by ``|w| · scale`` with the
    activation criterion's ``scales``)."""
    from tfopt.config.steps import PruneConfig
    from tfopt.config.validation import validated
    from tfopt.steps.prune import layer_targets
    from tfopt.steps.sensitivity import magnitude_pruned

    targets = layer_targets(model, validated(PruneConfig, {"sparsity": sparsity, "allocation": allocation}, "prune"))
    return accuracy(magnitude_pruned(model, targets, scales), x, y)


def removable_layers(model) -> list[str]:
    """Layers whose removal keeps the graph valid (same input and output shape), e.g. a conv
    with ``same`` padding between equal widths, or a residual block."""
    out = []
    for layer in model.layers[1:-1]:
        try:
            if layer.get_weights() and tuple(layer.input_shape) == tuple(layer.output_shape):
                out.append(layer.name)
        except (AttributeError, ValueError):
            continue
    return out


def save(model, path):
    from tfopt.export import save_keras

    save_keras(model, path, include_optimizer=False)


def load(path):
    from tfopt.interop import load_as_tf_keras

    return load_as_tf_keras(path)[0]
