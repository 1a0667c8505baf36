"""Quantization: post-training (dynamic, float16, int8) and quantization-aware training.

QAT keeps what earlier steps achieved: a pruned input is trained with the
sparsity-preserving scheme (PQAT), a clustered one with the cluster-preserving scheme (CQAT).
"""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError
from tfopt.steps.cluster import unique_values
from tfopt.steps.prune import layer_sparsity, overall_sparsity
from tfopt.tflite import SHARED_VALUES


def representative(x, samples: int = 500, seed: int = 0):
    """Calibration images drawn (seeded) from ``x`` (training images)."""
    x = np.asarray(x)
    idx = np.random.default_rng(seed).permutation(len(x))[:samples]
    return x[idx]


def post_training(model, mode: str, x=None, int8_io: bool = False, samples: int = 500, seed: int = 0) -> bytes:
    """TFLite bytes of ``model`` in ``mode``; ``int8`` calibrates on ``samples`` images of ``x``."""
    from tfopt.tflite import convert

    if hasattr(x, "x_train"):  # a Splits object, from callers that predate this signature
        x = x.x_train
    if mode == "int8" and x is None:
        raise TfoptError("int8 conversion calibrates on training images: pass data")
    rep = representative(x, samples, seed) if mode == "int8" else None
    return convert(model, mode, representative=rep, int8_io=int8_io)


def is_qat(model) -> bool:
    """Whether ``model`` carries TFMOT quantization wrappers (a quantization-aware model)."""
    return any(type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
               for layer in model.layers)


def scheme_for(model) -> str:
    """``pcqat`` for a pruned and clustered model, ``pqat`` for a pruned one (≥ 30% zeros),
    ``cqat`` for a clustered one (≤ 256 values per kernel), else ``qat``."""
    per_layer = layer_sparsity(model)
    pruned = bool(per_layer) and overall_sparsity(per_layer) >= 0.3
    uniques = unique_values(model)
    clustered = bool(uniques) and max(uniques.values()) <= SHARED_VALUES
    return {(True, True): "pcqat", (True, False): "pqat", (False, True): "cqat"}.get((pruned, clustered), "qat")


def _annotate(model, log):
    """Annotate the layers QAT supports; name the ones left in float."""
    from tfopt.interop import import_tfmot
    tfmot = import_tfmot()
    import tf_keras as keras

    from tfopt.export import plain_copy

    q = tfmot.quantization.keras
    registry = q.default_8bit.Default8BitQuantizeRegistry()
    skipped = []

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if registry.supports(layer):
            return q.quantize_annotate_layer(layer)
        if layer.weights:
            skipped.append(f"{layer.name} ({type(layer).__name__})")
        return layer

    annotated = keras.models.clone_model(plain_copy(model), clone_function=annotate)
    if skipped:
        log(f"QAT does not support {', '.join(skipped)}: left in float, the rest is quantized")
    return annotated, skipped


def _per_layer_scheme(scheme):
    """``scheme`` with a weight quantizer of its own for every layer.

    TFMOT's cluster-preserving registry hands one quantizer to all layers of a kind, and that
    quantizer turns its sparsity preservation off for good at the first layer without zeros
    (an unpruned first conv or last dense): every other layer then trains its zeros away.
    """
    registry_of = scheme.get_quantize_registry

    def get_quantize_registry():
        registry = registry_of()
        shared = getattr(registry, "_config_quantizer_map", {})
        make_config = registry.get_quantize_config

        def get_quantize_config(layer):
            config = make_config(layer)
            quantizer = getattr(config, "weight_quantizer", None)
            if any(quantizer is q for q in shared.values()):
                config.weight_quantizer = type(quantizer)(quantizer.preserve_sparsity)
            return config

        registry.get_quantize_config = get_quantize_config
        return registry

    scheme.get_quantize_registry = get_quantize_registry
    return scheme


def wrap_for_qat(model, log=print):
    """For your own training loop: a quantization-aware copy of ``model`` (PQAT for a pruned
    model, CQAT for a clustered one). Returns ``(qat model, report)``."""
    from tfopt.interop import import_tfmot
    tfmot = import_tfmot()

    q = tfmot.quantization.keras
    scheme = scheme_for(model)
    annotated, skipped = _annotate(model, log)
    combine = tfmot.experimental.combine

    def cluster_preserving():
        # Zeros are kept in the layers that have them, whichever scheme name the model got.
        return _per_layer_scheme(combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True))

    schemes = {"pqat": combine.Default8BitPrunePreserveQuantizeScheme, "cqat": cluster_preserving,
               "pcqat": cluster_preserving}
    try:
        with q.quantize_scope():
            qat = q.quantize_apply(annotated, schemes[scheme]()) if scheme in schemes else q.quantize_apply(annotated)
    except (ValueError, RuntimeError) as exc:
        raise TfoptError(f"quantization-aware training cannot wrap this model: {str(exc).splitlines()[0]}") from None
    return qat, {"scheme": scheme, "float_layers": skipped}


def quantize_aware(model, data, *, epochs: int = 1, lr: float | None = None, batch_size: int | None = None,
                   log=print, **fit):
    """Quantization-aware training (QAT, or PQAT/CQAT) of a copy of ``model`` on ``data``.

    Returns ``(qat model, report)``; convert the model with ``tfopt.to_tflite(qat, "int8")`` (or
    :func:`qat_tflite`): its fake-quant ranges are learned, no calibration is needed.
    """
    from tfopt.config.steps import QuantizeConfig
    from tfopt.config.validation import validated
    from tfopt.steps.runner import fine_tune

    cfg = validated(QuantizeConfig, dict(mode="qat", epochs=epochs, lr=lr, batch_size=batch_size), "quantize")
    qat, report = wrap_for_qat(model, log)
    log(f"quantization-aware training with the {report['scheme'].upper()} scheme")
    history, seconds = fine_tune(qat, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, log=log, **fit)
    return qat, {**report, "history": history, "fine_tune_seconds": seconds}


def qat_tflite(qat, int8_io: bool = False) -> bytes:
    """Full-integer TFLite of a quantization-aware model; its learned ranges are kept."""
    from tfopt.tflite import convert

    # QAT learned its ranges: calibrating again would override them.
    return convert(qat, "int8", int8_io=int8_io, qat=True)
