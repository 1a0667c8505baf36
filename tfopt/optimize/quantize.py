"""Quantization: post-training (dynamic, float16, int8) and quantization-aware training.

QAT keeps what earlier steps achieved: a pruned input is trained with the
sparsity-preserving scheme (PQAT), a clustered one with the cluster-preserving scheme (CQAT).
"""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError
from tfopt.optimize.cluster import unique_values
from tfopt.optimize.prune import layer_sparsity, overall_sparsity


def representative(splits, samples: int, seed: int = 0):
    """Calibration images drawn (seeded) from the training split."""
    idx = np.random.default_rng(seed).permutation(len(splits.x_train))[:samples]
    return splits.x_train[idx]


def post_training(model, mode, splits, int8_io=False, samples=500, seed=0) -> bytes:
    from tfopt.tflite import convert

    rep = representative(splits, samples, seed) if mode == "int8" else None
    return convert(model, mode, representative=rep, int8_io=int8_io)


def scheme_for(model) -> str:
    """``pqat`` for a pruned model (≥ 30% zeros), ``cqat`` for a clustered one (≤ 256 values per
    kernel), else ``qat``."""
    per_layer = layer_sparsity(model)
    if per_layer and overall_sparsity(per_layer) >= 0.3:
        return "pqat"
    uniques = unique_values(model)
    if uniques and max(uniques.values()) <= 256:
        return "cqat"
    return "qat"


def _annotate(model, log):
    """Annotate the layers QAT supports; name the ones left in float."""
    import tensorflow_model_optimization as tfmot
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


def quantization_aware(model, recipe, splits, cfg, log=print):
    """QAT (or PQAT/CQAT) on a copy of ``model``, fine-tuned, then converted to int8 TFLite.

    Returns ``(qat keras model, tflite bytes, report)``.
    """
    import tensorflow_model_optimization as tfmot

    from tfopt.optimize.runner import fine_tune
    from tfopt.tflite import convert

    q = tfmot.quantization.keras
    scheme = scheme_for(model)
    annotated, skipped = _annotate(model, log)
    combine = tfmot.experimental.combine
    schemes = {"pqat": combine.Default8BitPrunePreserveQuantizeScheme,
               "cqat": combine.Default8BitClusterPreserveQuantizeScheme}
    try:
        with q.quantize_scope():
            qat = q.quantize_apply(annotated, schemes[scheme]()) if scheme in schemes else q.quantize_apply(annotated)
    except (ValueError, RuntimeError) as exc:
        raise TfoptError(f"quantization-aware training cannot wrap this model: {str(exc).splitlines()[0]}") from None
    log(f"quantization-aware training with the {scheme.upper()} scheme")
    history, seconds = fine_tune(qat, recipe, splits, cfg, log=log)
    # QAT learned its ranges: calibrating again would override them.
    content = convert(qat, "int8", int8_io=cfg.int8_io, qat=True)
    return qat, content, {"scheme": scheme, "float_layers": skipped, "history": history, "fine_tune_seconds": seconds}
