"""The Python API: any Keras model in, a new model of the same kind out.

Every function takes a model (tf_keras, or Keras 3 through :mod:`tfopt.interop`), leaves it
untouched and returns a new one of the same kind. Compression works on a tf_keras copy (TFMOT
needs tf_keras); a Keras 3 model is converted at the door, checked numerically, and the result
converted back. Fine-tune settings are keyword arguments with defaults; no recipe is needed::

    import tfopt
    model = tfopt.load_model("model.keras")
    pruned = tfopt.prune(model, data=(x, y), sparsity=0.8, epochs=2)
    blob = tfopt.to_tflite(pruned, mode="int8", data=x)

``data`` is an ``(x, y)`` pair of arrays or a ``tf.data.Dataset`` of ``(x, y)`` (batched or
not). The loss is inferred from the labels (integers: sparse categorical cross-entropy;
one-hot rows: categorical; one sigmoid unit: binary) and the output activation (softmax or
logits) unless ``loss`` names one.

Shared keyword arguments of the fine-tuning functions (:data:`FINE_TUNE_KEYWORDS`; each
function builds one :class:`~tfopt.config.fine_tune.FineTuneSettings` from them and calls the
registered step, :data:`tfopt.steps.STEPS`, with it):
    epochs, lr (peak rate, default 1e-3), batch_size (default 32), loss, optimizer (default
    ``"adam"``), validation_data, seed, verbose (Keras ``fit`` verbosity, default 0); and for
    knowledge distillation ``teacher`` (a model), or ``distill=True`` (the input model is the
    teacher), with ``temperature`` (default 4) and ``alpha`` (default 0.9). ``log`` (a function
    receiving progress lines) is silent by default.

For your own training loop, the low-level pieces are here too: :func:`wrap_for_pruning` with
:func:`pruning_callbacks`, :func:`wrap_for_clustering`, :func:`wrap_for_qat`, then :func:`strip`.
"""

from __future__ import annotations

import numpy as np

from tfopt import interop
from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.validation import did_you_mean, validated
from tfopt.data.coerce import sample_x
from tfopt.errors import TfoptError
from tfopt.kinds import enter, leave
from tfopt.steps import STEPS
from tfopt.steps import cluster as cluster_step
from tfopt.steps import prune as prune_step
from tfopt.steps import quantize as quantize_step
from tfopt.tflite import MODES, VerificationFailed, predict

#: The fine-tune keyword arguments every fine-tuning function takes besides ``epochs``.
FINE_TUNE_KEYWORDS = ("lr", "batch_size", "loss", "optimizer", "validation_data", "seed", "verbose", "teacher",
                      "distill", "temperature", "alpha")


#: Keyword arguments that have a new name: the old one is refused with the new one.
RENAMED = {"layers": "per_layer", "protect": "skip", "probe": "probe_samples"}


def _quiet(*_):
    pass


def _fine_tune(what: str, work, epochs: int, keywords: dict, also=()) -> tuple[FineTuneSettings, int]:
    """``(FineTuneSettings, Keras verbosity)`` from function ``what``'s ``epochs`` and shared
    fine-tune ``keywords``; the teacher made a private tf_keras copy (``distill=True``: ``work``
    itself, which the steps never change).

    Raises:
        TfoptError: an unknown keyword (named, with the closest of the fine-tune's and ``also``,
            the function's own) or validation data that is not a pair.
    """
    for key in keywords:
        if key in RENAMED:
            raise TfoptError(f"{what}: keyword argument '{key}' renamed to {RENAMED[key]}")
        if key not in FINE_TUNE_KEYWORDS:
            raise TfoptError(f"{what}: unknown keyword argument '{key}'"
                             f"{did_you_mean(key, ('epochs', *FINE_TUNE_KEYWORDS, *also))}; the fine-tune takes "
                             f"epochs, {', '.join(FINE_TUNE_KEYWORDS)}")
    given = {k: v for k, v in keywords.items() if k not in ("verbose", "distill")}
    teacher = given.get("teacher")
    if keywords.get("distill") and teacher is None:
        given["teacher"] = work
    elif teacher is not None:
        _, given["teacher"] = enter(teacher, "teacher")
    validation_data = given.get("validation_data")
    if isinstance(validation_data, (tuple, list)) and len(validation_data) != 2:
        raise TfoptError("validation_data: expected an (x, y) pair or a tf.data.Dataset")
    return FineTuneSettings(epochs=epochs, **given), keywords.get("verbose", 0)


def _run(what: str, name: str, model, data, settings: dict, epochs, fine_tune: dict, log, checked=(), **inputs):
    """The registered step ``name`` for the public function ``what`` on a private tf_keras copy of
    ``model``: its config validated once from ``settings`` (and the fine-tune's ``checked`` fields,
    which its config bounds too), one FineTuneSettings. Returns ``(the step's model, the input's kind)``."""
    step = STEPS[name]
    kind, work = enter(model)
    fine, verbose = _fine_tune(what, work, epochs, fine_tune, also=(*settings, *inputs))
    config = validated(step.config, {**settings, **{k: getattr(fine, k) for k in checked}}, name)
    out, _ = step.run(work, data, config, fine, log=log or _quiet, verbose=verbose, **inputs)
    return out, kind


def load_model(path):
    """Load a model file as the kind it was saved from: a tf_keras ``.keras``/``.h5``/SavedModel,
    or a Keras 3 ``.keras``."""
    return interop.load_model(path)


def model_kind(model) -> str:
    """``"tf_keras"`` or ``"keras3"``; anything else is refused."""
    return interop.model_kind(model)


# -- compression steps --------------------------------------------------------------------------


def prune(model, data, *, sparsity: float = 0.8, epochs: int = 2, allocation: str = "erk",
          schedule: str = "polynomial", initial_sparsity: float = 0.0, begin_step: int = 0, end_step: int | None = None,
          frequency: int | None = None, per_layer: dict | None = None, skip=(), m_by_n=None, block: int = 1,
          criterion: str = "magnitude", probe_samples: int = 1024, force: bool = False, log=None, **fine_tune):
    """Magnitude pruning, fine-tuned on ``data`` and stripped: a plain model of the input's kind
    whose prunable kernels hold ``sparsity`` zeros overall, spread over the layers by
    ``allocation`` (``"erk"``: small layers such as a first conv pruned less, large ones more;
    ``"er"``: the same by channels only, so convolutions keep more and a large dense head loses
    more; ``"uniform"``: every layer at ``sparsity``).

    The sparsity rises (polynomially) over the first half of the fine-tune steps at the full
    rate, then the rate decays while the network recovers. ``per_layer={"fc1": 0.9}`` sets
    per-layer targets, ``skip=["fc2"]`` leaves layers dense, ``m_by_n=(2, 4)`` asks for 2:4
    sparsity, ``block=4`` prunes dense kernels in runs of 4 consecutive inputs of one unit (the
    order TFLite stores them in, so a gzipped file pays for a run's position once).
    ``criterion="activation"`` ranks each weight by its magnitude times the root-mean-square of the
    input it reads over the first ``probe_samples`` images of ``data``, so weights on
    inputs that are rarely non-zero, such as border pixels, go first. A schedule
    that cannot reach the target within the fine-tune raises
    :class:`tfopt.steps.prune.PreflightError` unless ``force``. ``fine_tune``: the shared
    fine-tune keywords (see the module's docstring).
    """
    settings = dict(sparsity=sparsity, allocation=allocation, schedule=schedule, initial_sparsity=initial_sparsity,
                    begin_step=begin_step, end_step=end_step, frequency=frequency, per_layer=per_layer or {},
                    skip=list(skip), m_by_n=m_by_n, block=block, criterion=criterion, probe_samples=probe_samples,
                    force=force)
    pruned, kind = _run("prune", "prune", model, data, settings, epochs, fine_tune, log, ("epochs", "lr", "batch_size"))
    return leave(pruned, kind)


def prune_channels(model, data=None, *, ratio: float = 0.5, epochs: int = 2, per_layer: dict | None = None,
                   criterion: str = "l1", rounds: int = 1, min_channels: int = 1, skip=(), probe_samples: int = 256,
                   log=None, **fine_tune):
    """Structured pruning: a physically smaller model without ``ratio`` of each layer's channels
    (filters, units), checked against the masked original, then fine-tuned on ``data``.

    ``criterion`` ranks channels: ``l1``, ``l2``, ``bn_gamma`` or, on ``probe_samples`` images of
    ``data``, ``activation`` and ``taylor``. ``skip``: layers whose channels stay. With ``epochs=0`` and a
    weight criterion no data is needed.
    ``fine_tune``: the shared fine-tune keywords (see the module's docstring).
    """
    settings = dict(ratio=ratio, per_layer=per_layer or {}, criterion=criterion, probe_samples=probe_samples,
                    rounds=rounds, min_channels=min_channels, skip=list(skip), epochs=max(epochs, 1))
    smaller, kind = _run("prune_channels", "structured", model, data, settings, epochs, fine_tune, log,
                         ("lr", "batch_size"))
    return leave(smaller, kind)


def fold_batchnorm(model, data=None, *, log=None):
    """Every BatchNorm that follows a linear conv/dense layer merged into it; the outputs are
    checked against the original's on ``data`` (else random inputs)."""
    kind, work = enter(model)
    folded, _ = STEPS["fold_bn"].run(work, data, log=log or _quiet)
    return leave(folded, kind)


def fold_pool(model, data=None, *, layers=None, measure: bool = False, log=None):
    """Each 2×2 max-pool after a stride-1 conv folded into that conv: one stride-2 conv with four
    filter groups and a max over them, the same outputs (checked on ``data``, else random inputs).
    ``layers``: only the pools after these convs. With ``measure``, both float32 TFLite files are
    timed and the times logged: the fold pays where the conv reads few channels (a first conv on a
    grey image), so measure it on your model before you keep it."""
    kind, work = enter(model)
    config = validated(STEPS["fold_pool"].config, {"layers": [layers] if isinstance(layers, str) else layers,
                                                   "measure": measure}, "fold_pool")
    folded, _ = STEPS["fold_pool"].run(work, data, config, log=log or _quiet)
    return leave(folded, kind)


def remove_layers(model, layers, data=None, *, epochs: int = 1, log=None, **fine_tune):
    """The model without ``layers`` (names, or residual blocks such as ``"block2"``), rewired and
    fine-tuned for ``epochs`` on ``data`` (``epochs=0``: no fine-tune, no data needed).
    ``fine_tune``: the shared fine-tune keywords (see the module's docstring)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    smaller, kind = _run("remove_layers", "remove", model, data, {"layers": layers}, epochs, fine_tune, log)
    return leave(smaller, kind)


def cluster(model, data, *, clusters: int = 16, epochs: int = 1, init: str = "kmeans_plus_plus", skip=(),
            preserve_sparsity: bool | None = None, log=None, **fine_tune):
    """Weight clustering: each conv/dense kernel keeps at most ``clusters`` distinct values,
    fine-tuned on ``data`` and stripped. A pruned kernel (at least 10% zeros) keeps its zeros,
    zero being one of its values, unless ``preserve_sparsity=False``. ``fine_tune``: the shared
    fine-tune keywords (see the module's docstring)."""
    settings = dict(clusters=clusters, init=init, skip=list(skip), preserve_sparsity=preserve_sparsity)
    clustered, kind = _run("cluster", "cluster", model, data, settings, epochs, fine_tune, log,
                           ("epochs", "lr", "batch_size"))
    return leave(clustered, kind)


def quantize_aware(model, data, *, epochs: int = 1, log=None, **fine_tune):
    """Quantization-aware training (PQAT for a pruned model, CQAT for a clustered one).

    Returns the trained tf_keras QAT model, whatever the input's kind: its fake-quant layers
    exist only in tf_keras/TFMOT. Its purpose is ``to_tflite(qat, mode="int8")``, which keeps
    the learned ranges (no calibration data needed). ``fine_tune``: the shared fine-tune
    keywords (see the module's docstring).
    """
    qat, _ = _run("quantize_aware", "quantize", model, data, {"mode": "qat"}, epochs, fine_tune, log,
                  ("epochs", "lr", "batch_size"))
    return qat


def _agreement(work, content, x, mode, min_agreement, log) -> None:
    """Compare the TFLite outputs with the model's on ``x``; raise below the threshold."""
    threshold = min_agreement if min_agreement is not None else (0.999 if mode in ("float32", "float16") else 0.99)
    ref = work.predict(x, batch_size=256, verbose=0)
    got = predict(content, x)
    agreement = float(np.mean(ref.argmax(-1) == got.argmax(-1))) if ref.shape[-1] > 1 else \
        float(np.mean((ref > 0.5) == (got > 0.5)))
    line = (f"{mode}: top-1 agreement with the model {agreement:.2%} on {len(x)} images (threshold "
            f"{threshold:.2%}), max |Δoutput| {float(np.max(np.abs(ref - got))):.3g}")
    log(line)
    if agreement < threshold:
        raise VerificationFailed(f"TFLite verification failed: {line}")


def to_tflite(model, mode: str = "float32", data=None, *, int8_io: bool = False, min_agreement: float | None = None,
              samples: int = 500, seed: int = 0, log=None) -> bytes:
    """The model as TFLite bytes, verified against the model on ``data``.

    Args:
        mode: ``float32``, ``float16``, ``dynamic`` (int8 weights) or ``int8`` (full integer;
            calibrated on ``samples`` images of ``data``). A model from :func:`quantize_aware`
            converts to ``int8`` with its learned ranges.
        data: images (``x``, ``(x, y)`` or a dataset); needed for ``int8`` calibration. When
            given, the TFLite outputs are compared with the model's on all of them.
        min_agreement: least top-1 agreement TFLite vs model; default 0.999 for float32/float16,
            0.99 for dynamic and int8.

    Raises:
        tfopt.tflite.VerificationFailed: the agreement is below ``min_agreement``.
    """
    if mode not in MODES:
        raise TfoptError(f"to_tflite: unknown mode '{mode}'{did_you_mean(mode, MODES)}; available: {', '.join(MODES)}")
    x = sample_x(data) if data is not None else None
    if model_kind(model) == "tf_keras" and quantize_step.is_qat(model):
        if mode != "int8":
            raise TfoptError(f"to_tflite: a quantization-aware model converts to int8, not {mode}")
        work = model
        content = quantize_step.qat_tflite(model, int8_io)
    else:
        _, work = enter(model)
        if mode == "int8" and x is None:
            raise TfoptError("to_tflite: int8 calibrates on training images: pass data=x (a few hundred images)")
        content = quantize_step.post_training(work, mode, x, int8_io, samples, seed)
    if x is not None:
        _agreement(work, content, x, mode, min_agreement, log or _quiet)
    return content


# -- low-level pieces for your own training loop --------------------------------------------------


def wrap_for_pruning(model, *, total_steps: int, sparsity: float = 0.8, allocation: str = "erk",
                     schedule: str = "polynomial", initial_sparsity: float = 0.0, begin_step: int = 0,
                     end_step: int | None = None, frequency: int | None = None, per_layer: dict | None = None,
                     skip=(), m_by_n=None, block: int = 1, criterion: str = "magnitude", data=None,
                     probe_samples: int = 1024, **renamed):
    """A tf_keras copy of ``model`` wrapped for magnitude pruning over ``total_steps`` training
    steps. Compile and fit it yourself with ``callbacks=tfopt.pruning_callbacks()``, then
    :func:`strip` it. ``criterion="activation"`` (see :func:`prune`) ranks on the first
    ``probe_samples`` images of ``data``."""
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
    """The callbacks ``fit`` needs for a model from :func:`wrap_for_pruning`."""
    return prune_step.pruning_callbacks()


def wrap_for_clustering(model, *, clusters: int = 16, init: str = "kmeans_plus_plus", skip=(),
                        preserve_sparsity: bool | None = None):
    """A tf_keras copy of ``model`` wrapped for weight clustering; fit it, then :func:`strip` it."""
    _, work = enter(model)
    config = validated(STEPS["cluster"].config, dict(clusters=clusters, init=init, skip=list(skip),
                                                     preserve_sparsity=preserve_sparsity), "cluster")
    return cluster_step.wrap_for_clustering(work, config)


def wrap_for_qat(model):
    """A tf_keras quantization-aware copy of ``model`` (PQAT, CQAT or PCQAT when pruned, clustered or both); fit it,
    then ``to_tflite(qat, mode="int8")``."""
    _, work = enter(model)
    return quantize_step.wrap_for_qat(work, log=_quiet)[0]


def strip(model, kind: str = "tf_keras"):
    """A plain model from a pruning- or clustering-wrapped one (``kind="keras3"`` converts it back
    to Keras 3)."""
    return leave(prune_step.strip(model), kind)


__all__ = ["load_model", "model_kind", "prune", "prune_channels", "fold_batchnorm", "fold_pool", "remove_layers",
           "cluster", "quantize_aware", "to_tflite", "wrap_for_pruning", "pruning_callbacks", "wrap_for_clustering",
           "wrap_for_qat", "strip", "FINE_TUNE_KEYWORDS"]
