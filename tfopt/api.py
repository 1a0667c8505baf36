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

Shared keyword arguments of the fine-tuning functions:
    epochs, lr (peak rate, default 1e-3), batch_size (default 32), loss, optimizer (default
    ``"adam"``), validation_data, seed, verbose (Keras ``fit`` verbosity, default 0), log (a
    function receiving progress lines, default silent); and for knowledge distillation
    ``teacher`` (a model), or ``distill=True`` (the input model is the teacher), with
    ``temperature`` and ``alpha``.

For your own training loop, the low-level pieces are here too: :func:`wrap_for_pruning` with
:func:`pruning_callbacks`, :func:`wrap_for_clustering`, :func:`wrap_for_qat`, then :func:`strip`.
"""

from __future__ import annotations

from tfopt.errors import TfoptError
from tfopt.kinds import enter, leave

# -- model kinds --------------------------------------------------------------------------------


def _interop():
    from tfopt import interop

    return interop


def model_kind(model) -> str:
    """``"tf_keras"`` or ``"keras3"``; anything else is refused."""
    return _interop().model_kind(model)


def _fit(work, *, epochs, lr, batch_size, loss, optimizer, validation_data, teacher, distill, temperature, alpha,
         seed, verbose):
    """Keyword arguments for the library steps' fine-tunes; the teacher made tf_keras."""
    if distill and teacher is None:
        teacher = work  # steps never change their input: the private copy teaches as it is
    elif teacher is not None:
        _, teacher = enter(teacher, "teacher")
    if isinstance(validation_data, (tuple, list)) and len(validation_data) != 2:
        raise TfoptError("validation_data: expected an (x, y) pair or a tf.data.Dataset")
    return dict(epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, optimizer=optimizer,
                validation_data=validation_data, teacher=teacher, temperature=temperature, alpha=alpha, seed=seed,
                verbose=verbose)


def _quiet(*_):
    pass


def load_model(path):
    """Load a model file as the kind it was saved from: a tf_keras ``.keras``/``.h5``/SavedModel,
    or a Keras 3 ``.keras``."""
    return _interop().load_model(path)


# -- compression steps --------------------------------------------------------------------------


def prune(model, data, *, sparsity: float = 0.8, epochs: int = 2, lr: float | None = None,
          batch_size: int | None = None, loss=None, optimizer="adam", validation_data=None,
          allocation: str = "erk", schedule: str = "polynomial", initial_sparsity: float = 0.0, begin_step: int = 0,
          end_step: int | None = None, frequency: int | None = None, layers: dict | None = None, skip=(),
          m_by_n=None, block: int = 1, criterion: str = "magnitude", probe=None, force: bool = False, teacher=None,
          distill: bool = False, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, verbose=0, log=None):
    """Magnitude pruning, fine-tuned on ``data`` and stripped: a plain model of the input's kind
    whose prunable kernels hold ``sparsity`` zeros overall, spread over the layers by
    ``allocation`` (``"erk"``: small layers such as a first conv pruned less, large ones more;
    ``"er"``: the same by channels only, so convolutions keep more and a large dense head loses
    more; ``"uniform"``: every layer at ``sparsity``).

    The sparsity rises (polynomially) over the first half of the fine-tune steps at the full
    rate, then the rate decays while the network recovers. ``layers={"fc1": 0.9}`` sets
    per-layer targets, ``skip=["fc2"]`` leaves layers dense, ``m_by_n=(2, 4)`` asks for 2:4
    sparsity, ``block=4`` prunes dense kernels in runs of 4 consecutive inputs of one unit (the
    order TFLite stores them in, so a gzipped file pays for a run's position once).
    ``criterion="activation"`` ranks each weight by its magnitude times the root-mean-square of the
    input it reads over ``probe`` (images; default: the first 1,024 of ``data``), so weights on
    inputs that are rarely non-zero, such as border pixels, go first. A schedule
    that cannot reach the target within the fine-tune raises
    :class:`tfopt.steps.prune.PreflightError` unless ``force``.
    """
    from tfopt.steps import prune as p

    kind, work = enter(model)
    fit = _fit(work, epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, optimizer=optimizer,
               validation_data=validation_data, teacher=teacher, distill=distill, temperature=temperature,
               alpha=alpha, seed=seed, verbose=verbose)
    pruned, _ = p.prune(work, data, sparsity=sparsity, allocation=allocation, schedule=schedule,
                        initial_sparsity=initial_sparsity,
                        begin_step=begin_step, end_step=end_step, frequency=frequency, layers=layers, skip=skip,
                        m_by_n=m_by_n, block=block, criterion=criterion, probe=probe, force=force, log=log or _quiet,
                        **fit)
    return leave(pruned, kind)


def prune_channels(model, data=None, *, ratio: float = 0.5, epochs: int = 2, lr: float | None = None,
                   batch_size: int | None = None, loss=None, optimizer="adam", validation_data=None,
                   per_layer: dict | None = None, criterion: str = "l1", rounds: int = 1, min_channels: int = 1,
                   protect=(), probe_samples: int = 256, teacher=None, distill: bool = False,
                   temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, verbose=0, log=None):
    """Structured pruning: a physically smaller model without ``ratio`` of each layer's channels
    (filters, units), checked against the masked original, then fine-tuned on ``data``.

    ``criterion`` ranks channels: ``l1``, ``l2``, ``bn_gamma`` or, on ``probe_samples`` images of
    ``data``, ``activation`` and ``taylor``. With ``epochs=0`` and a weight criterion no data is needed.
    """
    from tfopt.steps.structured import channel_prune

    kind, work = enter(model)
    fit = _fit(work, epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, optimizer=optimizer,
               validation_data=validation_data, teacher=teacher, distill=distill, temperature=temperature,
               alpha=alpha, seed=seed, verbose=verbose)
    smaller, _ = channel_prune(work, data, ratio=ratio, per_layer=per_layer, criterion=criterion,
                               probe_samples=probe_samples, rounds=rounds, min_channels=min_channels, protect=protect,
                               log=log or _quiet, **fit)
    return leave(smaller, kind)


def fold_batchnorm(model, data=None, *, log=None):
    """Every BatchNorm that follows a linear conv/dense layer merged into it; the outputs are
    checked against the original's on ``data`` (else random inputs)."""
    from tfopt.steps.fold import fold

    kind, work = enter(model)
    folded, _ = fold(work, data, log=log or _quiet)
    return leave(folded, kind)


def fold_pool(model, data=None, *, layers=None, measure: bool = False, log=None):
    """Each 2×2 max-pool after a stride-1 conv folded into that conv: one stride-2 conv with four
    filter groups and a max over them, the same outputs (checked on ``data``, else random inputs).
    ``layers``: only the pools after these convs. With ``measure``, both float32 TFLite files are
    timed and the times logged: the fold pays where the conv reads few channels (a first conv on a
    grey image), so measure it on your model before you keep it."""
    from tfopt.steps.fold import fold_pool as fold

    kind, work = enter(model)
    folded, _ = fold(work, data, layers=layers, measure=measure, log=log or _quiet)
    return leave(folded, kind)


def remove_layers(model, layers, data=None, *, epochs: int = 1, lr: float | None = None,
                  batch_size: int | None = None, loss=None, optimizer="adam", validation_data=None, teacher=None,
                  distill: bool = False, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, verbose=0,
                  log=None):
    """The model without ``layers`` (names, or residual blocks such as ``"block2"``), rewired and
    fine-tuned for ``epochs`` on ``data`` (``epochs=0``: no fine-tune, no data needed)."""
    from tfopt.steps.remove import remove

    kind, work = enter(model)
    fit = _fit(work, epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, optimizer=optimizer,
               validation_data=validation_data, teacher=teacher, distill=distill, temperature=temperature,
               alpha=alpha, seed=seed, verbose=verbose)
    smaller, _ = remove(work, data, layers=layers, log=log or _quiet, **fit)
    return leave(smaller, kind)


def cluster(model, data, *, clusters: int = 16, epochs: int = 1, lr: float | None = None,
            batch_size: int | None = None, loss=None, optimizer="adam", validation_data=None,
            init: str = "kmeans_plus_plus", skip=(), preserve_sparsity: bool | None = None, teacher=None,
            distill: bool = False, temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, verbose=0, log=None):
    """Weight clustering: each conv/dense kernel keeps at most ``clusters`` distinct values,
    fine-tuned on ``data`` and stripped. A pruned kernel (at least 10% zeros) keeps its zeros,
    zero being one of its values, unless ``preserve_sparsity=False``."""
    from tfopt.steps import cluster as c

    kind, work = enter(model)
    fit = _fit(work, epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, optimizer=optimizer,
               validation_data=validation_data, teacher=teacher, distill=distill, temperature=temperature,
               alpha=alpha, seed=seed, verbose=verbose)
    clustered, _ = c.cluster(work, data, clusters=clusters, init=init, skip=skip, preserve_sparsity=preserve_sparsity,
                             log=log or _quiet, **fit)
    return leave(clustered, kind)


def quantize_aware(model, data, *, epochs: int = 1, lr: float | None = None, batch_size: int | None = None,
                   loss=None, optimizer="adam", validation_data=None, teacher=None, distill: bool = False,
                   temperature: float = 4.0, alpha: float = 0.9, seed: int = 0, verbose=0, log=None):
    """Quantization-aware training (PQAT for a pruned model, CQAT for a clustered one).

    Returns the trained tf_keras QAT model, whatever the input's kind: its fake-quant layers
    exist only in tf_keras/TFMOT. Its purpose is ``to_tflite(qat, mode="int8")``, which keeps
    the learned ranges (no calibration data needed).
    """
    from tfopt.steps.quantize import quantize_aware as qa

    _, work = enter(model)
    fit = _fit(work, epochs=epochs, lr=lr, batch_size=batch_size, loss=loss, optimizer=optimizer,
               validation_data=validation_data, teacher=teacher, distill=distill, temperature=temperature,
               alpha=alpha, seed=seed, verbose=verbose)
    qat, _ = qa(work, data, log=log or _quiet, **fit)
    return qat


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
    import numpy as np

    from tfopt.steps import quantize as q
    from tfopt.steps.runner import sample_x
    from tfopt.tflite import MODES, VerificationFailed, predict

    if mode not in MODES:
        from tfopt.config.validation import did_you_mean

        raise TfoptError(f"to_tflite: unknown mode '{mode}'{did_you_mean(mode, MODES)}; available: {', '.join(MODES)}")
    x = sample_x(data) if data is not None else None
    if model_kind(model) == "tf_keras" and q.is_qat(model):
        if mode != "int8":
            raise TfoptError(f"to_tflite: a quantization-aware model converts to int8, not {mode}")
        work = model
        content = q.qat_tflite(model, int8_io)
    else:
        _, work = enter(model)
        if mode == "int8" and x is None:
            raise TfoptError("to_tflite: int8 calibrates on training images: pass data=x (a few hundred images)")
        content = q.post_training(work, mode, x, int8_io, samples, seed)
    if x is not None:
        threshold = min_agreement if min_agreement is not None else (0.999 if mode in ("float32", "float16") else 0.99)
        ref = work.predict(x, batch_size=256, verbose=0)
        got = predict(content, x)
        agreement = float(np.mean(ref.argmax(-1) == got.argmax(-1))) if ref.shape[-1] > 1 else \
            float(np.mean((ref > 0.5) == (got > 0.5)))
        line = (f"{mode}: top-1 agreement with the model {agreement:.2%} on {len(x)} images (threshold "
                f"{threshold:.2%}), max |Δoutput| {float(np.max(np.abs(ref - got))):.3g}")
        (log or _quiet)(line)
        if agreement < threshold:
            raise VerificationFailed(f"TFLite verification failed: {line}")
    return content


# -- low-level pieces for your own training loop --------------------------------------------------


def wrap_for_pruning(model, *, total_steps: int, sparsity: float = 0.8, allocation: str = "erk",
                     schedule: str = "polynomial", initial_sparsity: float = 0.0, begin_step: int = 0,
                     end_step: int | None = None, frequency: int | None = None, layers: dict | None = None, skip=(),
                     m_by_n=None, block: int = 1, criterion: str = "magnitude", probe=None):
    """A tf_keras copy of ``model`` wrapped for magnitude pruning over ``total_steps`` training
    steps. Compile and fit it yourself with ``callbacks=tfopt.pruning_callbacks()``, then
    :func:`strip` it. ``criterion="activation"`` (see :func:`prune`) needs ``probe`` images."""
    from tfopt.steps.prune import wrap_for_pruning as wrap

    _, work = enter(model)
    return wrap(work, total_steps=total_steps, sparsity=sparsity, allocation=allocation, schedule=schedule,
                initial_sparsity=initial_sparsity,
                begin_step=begin_step, end_step=end_step, frequency=frequency, layers=layers, skip=skip,
                m_by_n=m_by_n, block=block, criterion=criterion, probe=probe)


def pruning_callbacks() -> list:
    """The callbacks ``fit`` needs for a model from :func:`wrap_for_pruning`."""
    from tfopt.steps.prune import pruning_callbacks as callbacks

    return callbacks()


def wrap_for_clustering(model, *, clusters: int = 16, init: str = "kmeans_plus_plus", skip=(),
                        preserve_sparsity: bool | None = None):
    """A tf_keras copy of ``model`` wrapped for weight clustering; fit it, then :func:`strip` it."""
    from tfopt.steps.cluster import wrap_for_clustering as wrap

    _, work = enter(model)
    return wrap(work, clusters=clusters, init=init, skip=skip, preserve_sparsity=preserve_sparsity)


def wrap_for_qat(model):
    """A tf_keras quantization-aware copy of ``model`` (PQAT, CQAT or PCQAT when pruned, clustered or both); fit it,
    then ``to_tflite(qat, mode="int8")``."""
    from tfopt.steps.quantize import wrap_for_qat as wrap

    _, work = enter(model)
    return wrap(work, log=_quiet)[0]


def strip(model, kind: str = "tf_keras"):
    """A plain model from a pruning- or clustering-wrapped one (``kind="keras3"`` converts it back
    to Keras 3)."""
    from tfopt.steps.prune import strip as strip_wrappers

    return leave(strip_wrappers(model), kind)


__all__ = ["load_model", "model_kind", "prune", "prune_channels", "fold_batchnorm", "fold_pool", "remove_layers", "cluster",
           "quantize_aware", "to_tflite", "wrap_for_pruning", "pruning_callbacks", "wrap_for_clustering",
           "wrap_for_qat", "strip"]
