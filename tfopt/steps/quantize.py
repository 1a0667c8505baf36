"""Quantization: post-training (dynamic, float16, int8) and quantization-aware training.

QAT keeps what earlier steps achieved: a pruned input is trained with the
sparsity-preserving scheme (PQAT), a clustered one with the cluster-preserving scheme (CQAT).
"""

from __future__ import annotations

import numpy as np

from tfopt.config import steps as C
from tfopt.config.fine_tune import FineTuneSettings
from tfopt.data.coerce import sample_x
from tfopt.errors import TfoptError
from tfopt.interop import import_tfmot, plain_copy
from tfopt.interop.models import own_layer_classes
from tfopt.steps.cluster import unique_values
from tfopt.steps.prune import layer_sparsity, overall_sparsity
from tfopt.steps.runs import base_metrics, evaluate, splits_of, with_step, write_run
from tfopt.steps.settings import fine_tune_from_recipe, step_settings
from tfopt.surgery.fold_bn import batchnorm_plan
from tfopt.surgery.graph import as_functional
from tfopt.tflite import SHARED_VALUES, VerificationFailed, convert, interpreter, predict, verify
from tfopt.training import finetune


def representative(x, samples: int = 500, seed: int = 0):
    """Calibration images drawn (seeded) from ``x`` (training images)."""
    x = np.asarray(x)
    idx = np.random.default_rng(seed).permutation(len(x))[:samples]
    return x[idx]


def post_training(model, mode: str, x=None, int8_io: bool = False, samples: int = 500, seed: int = 0,
                  float_ops=()) -> bytes:
    """TFLite bytes of ``model`` in ``mode``; ``int8`` calibrates on ``samples`` images of ``x``
    and keeps the op types ``float_ops`` in float."""
    if mode == "int8" and x is None:
        raise TfoptError("int8 conversion calibrates on training images: pass data")
    rep = representative(x, samples, seed) if mode == "int8" else None
    return convert(model, mode, representative=rep, int8_io=int8_io, float_ops=float_ops)


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


#: Layers whose BatchNormalization TFMOT's QAT folds into them (its Conv/Dense + BatchNorm transforms).
_FOLDS_BATCHNORM = ("Conv2D", "DepthwiseConv2D", "Dense")


def foldable_batchnorms(model) -> set:
    """Names of the BatchNormalization layers QAT folds into the layer before them: those
    :func:`tfopt.surgery.fold_bn.batchnorm_plan` folds into a Conv2D, DepthwiseConv2D or Dense
    layer; none in a model with a shared layer.

    Annotated with their layer, they are trained folded and the int8 file holds one convolution;
    left out, each stays a float multiply and add between a dequantize and a quantize."""
    model = as_functional(model)
    try:
        plan, _ = batchnorm_plan(model)
    except TfoptError:  # a shared layer: its calls cannot be told apart
        return set()
    return {bn.name for name, bn in plan.items() if type(model.get_layer(name)).__name__ in _FOLDS_BATCHNORM}


#: Layers without weights that TFMOT's registry leaves out, whose output QAT quantizes: the parts of
#: a hard swish (x · relu6(x + 3) / 6, :func:`tfopt.models.builder.activation`) and of a
#: squeeze-excite gate. Left out, each is a float op between a dequantize and a quantize, and so is
#: every convolution reading it.
OUTPUT_QUANTIZED = ("Multiply", "Rescaling", "Subtract", "Maximum", "Minimum")


def _annotate(model, log):
    """Annotate the layers QAT supports, the BatchNormalizations it folds into them, and the
    :data:`OUTPUT_QUANTIZED` layers (their output only); name the ones left in float."""
    import tf_keras as keras

    q = import_tfmot().quantization.keras
    registry = q.default_8bit.Default8BitQuantizeRegistry()
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs \
        import Default8BitOutputQuantizeConfig as output_only  # what TFMOT's own registry gives an output-only layer
    folded = foldable_batchnorms(model)
    skipped = []

    def annotate(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if registry.supports(layer) or layer.name in folded:
            return q.quantize_annotate_layer(layer)
        if type(layer).__name__ in OUTPUT_QUANTIZED and not layer.weights:
            return q.quantize_annotate_layer(layer, quantize_config=output_only())
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
    import tf_keras

    try:  # TFMOT rebuilds the model from its config: its own layer classes (ConvNeXt's LayerScale) must resolve
        with q.quantize_scope(), tf_keras.utils.custom_object_scope(own_layer_classes(model)):
            qat = q.quantize_apply(annotated, schemes[scheme]()) if scheme in schemes else q.quantize_apply(annotated)
    except (ValueError, RuntimeError) as exc:
        raise TfoptError(f"quantization-aware training cannot wrap this model: {str(exc).splitlines()[0]}") from None
    return qat, {"scheme": scheme, "float_layers": skipped}


def quantize_aware(model, data, fine_tune, *, log=print, **inputs):
    """Quantization-aware training (QAT, or PQAT/CQAT) of a copy of ``model`` on ``data`` with the
    :class:`~tfopt.config.fine_tune.FineTuneSettings` ``fine_tune`` (``inputs``: options of
    :func:`tfopt.training.finetune.fine_tune`).

    Returns ``(qat model, report)``; convert the model with ``tfopt.to_tflite(qat, "int8")`` (or
    :func:`qat_tflite`): its fake-quant ranges are learned, no calibration is needed.
    """
    qat, report = wrap_for_qat(model, log)
    log(f"quantization-aware training with the {report['scheme'].upper()} scheme")
    history, seconds = finetune.fine_tune(qat, data, fine_tune, log=log, **finetune.options(inputs))
    return qat, {**report, "history": history, "fine_tune_seconds": seconds}


def qat_tflite(qat, int8_io: bool = False) -> bytes:
    """Full-integer TFLite of a quantization-aware model; its learned ranges are kept.

    Raises:
        TfoptError: a file LiteRT cannot prepare (TensorFlow's converter has written per-channel
            conv weights with a nonzero zero point for tf_keras EfficientNetB0), named with what
            works instead.
    """
    # QAT learned its ranges: calibrating again would override them.
    content = convert(qat, "int8", int8_io=int8_io, qat=True)
    shape = qat.input_shape
    try:  # a batch of two, as verification and evaluation run it
        predict(content, np.zeros((2, *shape[1:]), np.float32)) if isinstance(shape, tuple) else interpreter(content)
    except (RuntimeError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        raise TfoptError(f"quantize_aware: LiteRT cannot run the int8 file TensorFlow's converter made of the "
                         f"quantization-aware tf_keras model '{qat.name}' ({first}); quantize the model's Keras 3 "
                         f"copy instead (tfopt.interop.from_tf_keras(model, 'keras3'), then quantize_aware and "
                         f"to_tflite), or convert the float model with post-training int8") from None
    return content


def quantize(model, data, config, fine_tune, *, log=print, **inputs):
    """Quantize ``model`` as ``config`` (a :class:`~tfopt.config.steps.QuantizeConfig`) says.

    ``qat``: :func:`quantize_aware` on ``data`` with ``fine_tune``; returns ``(qat model, report)``.
    Any other mode: post-training conversion, calibrated for ``int8`` on
    ``config.representative_samples`` images of ``data`` drawn with ``fine_tune.seed``; returns
    ``(model, {"tflite": bytes})``, the model unchanged.
    """
    if config.mode == "qat":
        return quantize_aware(model, data, fine_tune, log=log, **inputs)
    log(f"converting to TFLite ({config.mode})")
    x = sample_x(data) if data is not None else None
    return model, {"tflite": post_training(model, config.mode, x, config.int8_io, config.representative_samples,
                                           fine_tune.seed)}


def export(model, data, config, fine_tune, *, log=print, **inputs):
    """TFLite files of ``model`` in each of ``config.tflite`` (an :class:`~tfopt.config.steps.Export`),
    ``int8`` calibrated on images of ``data``; not verified here (the export command verifies them).

    Returns:
        ``(model, {"tflite": {mode: bytes}})``.
    """
    x = sample_x(data) if data is not None else None
    return model, {"tflite": {m: post_training(model, m, x, config.int8_io, config.representative_samples,
                                               fine_tune.seed) for m in config.tflite}}


# ---- the commands and the chain step -------------------------------------------------------------

def _verified(keras_model, content, mode, splits, threshold, log):
    log(f"verifying the {mode} TFLite file on {len(splits.x_test)} held-out images")
    v = verify(keras_model, content, splits.x_test, splits.y_test, mode, threshold, log=log)
    log("  " + v.line())
    return v


def _threshold(export_cfg, mode):
    return export_cfg.min_agreement_float if mode in ("float32", "float16") else export_cfg.min_agreement_int8


def apply_quantize(model, recipe, splits, cfg, log=print):
    """``(keras model, report with "tflite" bytes)``: the QAT model for ``qat`` (trained with the
    recipe's fine-tune settings), else the input converted, calibrated on the training images."""
    if cfg.mode == "qat":
        data, fine_tune = fine_tune_from_recipe(recipe, splits, cfg, model, log)
        qat, report = quantize(model, data, cfg, fine_tune, log=log)
        return qat, {**report, "tflite": qat_tflite(qat, cfg.int8_io)}
    return quantize(model, splits.x_train, cfg, FineTuneSettings(seed=recipe.seed), log=log)


def run_quantize(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt quantize``: the recipe's ``optimize.quantize`` with ``given`` on top, the TFLite file
    verified against the Keras model on the test images, a new ``<source>-<mode>`` run.

    Raises:
        VerificationFailed: the TFLite file disagrees with the model; nothing is written.
    """
    cfg = step_settings(source.recipe, "quantize", given)
    splits = splits_of(source)
    metrics = base_metrics(source, source.model, splits, log)
    reference, report = apply_quantize(source.model, source.recipe, splits, cfg, log=log)
    content, history = report["tflite"], report.get("history")
    mode = "int8" if cfg.mode == "qat" else cfg.mode
    if cfg.mode == "qat":
        metrics.update({f"qat_{k}": v for k, v in evaluate(reference, source.recipe, splits).items()},
                       scheme=report["scheme"], float_layers=report["float_layers"],
                       fine_tune_seconds=round(report["fine_tune_seconds"], 2))
    v = _verified(reference, content, mode, splits, _threshold(source.recipe.export, mode), log)
    metrics["tflite"] = {f"model_{mode}.tflite": {**v.__dict__, "bytes": len(content)}}
    if not v.passed:
        raise VerificationFailed(f"TFLite verification failed: {v.line()}. Nothing was written.")
    path = write_run(source, C.quantize_suffix(cfg), step="quantize", recipe=with_step(source.recipe, "quantize", cfg),
                     metrics=metrics, model=source.model if cfg.mode != "qat" else None,
                     files={f"model_{mode}.tflite": content}, history=history, output=output, overwrite=overwrite,
                     log=log)
    return path, metrics


def run_export(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt export``: the recipe's ``export`` with ``given`` on top; every TFLite file verified on
    the test images, then a ``<source>-export`` run with them, the model and its SavedModel.

    Raises:
        VerificationFailed: a TFLite file disagrees with the model; nothing is written.
    """
    cfg = step_settings(source.recipe, "export", given)
    splits = splits_of(source)
    metrics = base_metrics(source, source.model, splits, log)
    files, results, failed = {}, {}, []
    for mode in cfg.tflite:
        log(f"converting to TFLite ({mode})")
        content = post_training(source.model, mode, splits.x_train, cfg.int8_io, cfg.representative_samples,
                                source.recipe.seed)
        v = _verified(source.model, content, mode, splits, _threshold(cfg, mode), log)
        files[f"model_{mode}.tflite"] = content
        results[f"model_{mode}.tflite"] = {**v.__dict__, "bytes": len(content)}
        if not v.passed:
            failed.append(v.line())
    if failed:
        raise VerificationFailed("TFLite verification failed: " + "; ".join(failed) + ". Nothing was written.")
    metrics["tflite"] = results
    recipe = source.recipe.model_copy(deep=True)
    recipe.export = cfg
    path = write_run(source, "export", step="export", recipe=recipe, metrics=metrics, model=source.model, files=files,
                     output=output, overwrite=overwrite, saved_model=True, log=log)
    return path, metrics
