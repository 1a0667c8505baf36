"""The Python API: any Keras model in, a new model of the same kind out.

Every function takes a model (tf_keras, or Keras 3 with any backend), leaves it untouched and
returns a new one of the same kind. Fine-tune settings are keyword arguments with defaults; no
recipe is needed::

    import tfopt
    model = tfopt.load_model("model.keras")
    pruned = tfopt.prune(model, data=(x, y), sparsity=0.8, epochs=2)
    blob = tfopt.to_tflite(pruned, mode="int8", data=x)

Which engine runs when:
    - ``prune``, ``cluster``, ``quantize_aware`` on a **Keras 3** model: the Keras 3-native
      engine (:mod:`tfopt.engines.keras3`), per variable with ``keras.ops``, on any backend. Any
      model works: Sequential, functional, subclassed, nested, custom layers with their own
      weights, RNNs (LSTM, GRU, Bidirectional), Embedding, MultiHeadAttention, several inputs or
      outputs; the result is of the input's class (a Sequential stays a Sequential). The
      keywords map onto the engine's (``per_layer`` → per-variable targets; ``init`` →
      ``"kmeans++"``/``"linear"``); what it cannot honour (``criterion="activation"``,
      ``init="density_based"``/``"random"``) is refused by name with what works instead.
      ``quantize_aware`` gives a Keras 3 model whose weights sit on the int8 grid; its
      activations are calibrated by ``to_tflite(model, mode="int8", data=x)``.
    - ``prune``, ``cluster``, ``quantize_aware`` on a **tf_keras** model: TFMOT, as always.
    - ``prune_channels``, ``fold_batchnorm``, ``remove_layers``, ``fold_pool``: the graph
      path, which rebuilds a Sequential or functional model layer by layer on a tf_keras copy (a
      Keras 3 model is converted at the door, checked numerically, and the result converted
      back). A Keras 3 model that cannot be converted (subclassed, a custom
      layer...) is refused in one paragraph starting ``"<function> cannot take the model"``,
      naming why and what works on it instead.
    - ``to_tflite`` on a **Keras 3** model: Keras 3's own export path (``ExportArchive``, a
      SavedModel, TensorFlow's converter; :mod:`tfopt.engines.keras3.litert`), no tf_keras
      copy, several inputs and outputs matched by name; TensorFlow backend. On a tf_keras model:
      the converter as before; a model it cannot take (the tensor-list ops of an LSTM or GRU)
      goes through its Keras 3 copy and Keras 3's export path. Either way the file is run by LiteRT and verified head by head
      (:mod:`tfopt.verify`).

``data`` is ``(x, y)``, ``(x, y, sample_weight)`` or a ``tf.data.Dataset`` of them (batched or
not); for a Keras 3 model ``x`` and ``y`` may be arrays, lists or dicts of arrays (several inputs
or outputs). The loss is the model's own compiled loss when it has one, else ``loss=``, else
inferred per head: for a Keras 3 model from the head's activation and labels (softmax: sparse or
categorical cross-entropy; sigmoid: binary; a linear head is a regression, mean squared error,
never taken for logits, unless its labels are class indices for its several units); for a tf_keras model from the labels and the output activation.

Shared keyword arguments of the fine-tuning functions (:data:`FINE_TUNE_KEYWORDS`; each
function builds one :class:`~tfopt.config.fine_tune.FineTuneSettings` from them and calls the
registered step, :data:`tfopt.steps.STEPS`, or the Keras 3 engine with it):
    epochs, lr (peak rate, default 1e-3; the Keras 3 engine holds it constant), batch_size
    (default 32), loss, optimizer (default ``"adam"``), validation_data, seed (for a Keras 3 model,
    given: ``keras.utils.set_random_seed(seed)`` before the fine-tune, and the k-means start of
    ``cluster``), verbose (Keras ``fit`` verbosity, default 0); and for knowledge distillation
    ``teacher`` (a model), or ``distill=True`` (the input model is the teacher), with
    ``temperature`` (default 4) and ``alpha`` (default 0.9). ``log`` (a function receiving
    progress lines) is silent by default.

For your own training loop, the low-level pieces are here too (tf_keras/TFMOT):
:func:`wrap_for_pruning` with :func:`pruning_callbacks`, :func:`wrap_for_clustering`,
:func:`wrap_for_qat`, then :func:`strip`.
"""

from __future__ import annotations

import numpy as np

from tfopt import interop
from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.validation import did_you_mean, validated
from tfopt.data.coerce import sample_x
from tfopt.errors import TfoptError
from tfopt.graph_path import GRAPH_REFUSAL  # noqa: F401  (the refusals' documented phrase)
from tfopt.graph_path import channels_of_several, enter_graph, graph_data, graph_step, several
from tfopt.kinds import enter, leave
from tfopt.steps import STEPS
from tfopt.steps import quantize as quantize_step
from tfopt.tflite import MODES, check_float_ops, predict, run_signature
from tfopt.wrappers import RENAMED, pruning_callbacks, strip, wrap_for_clustering, wrap_for_pruning, wrap_for_qat

#: The fine-tune keyword arguments every fine-tuning function takes besides ``epochs``.
FINE_TUNE_KEYWORDS = ("lr", "batch_size", "loss", "optimizer", "validation_data", "seed", "verbose", "teacher",
                      "distill", "temperature", "alpha")


#: Keyword arguments that have a new name: the old one is refused with the new one.


def _quiet(*_):
    pass


def _fine_tune(what: str, work, epochs: int, keywords: dict, also=(), kind: str = "tf_keras"
               ) -> tuple[FineTuneSettings, int]:
    """``(FineTuneSettings, Keras verbosity)`` from function ``what``'s ``epochs`` and shared
    fine-tune ``keywords``; the teacher made a private tf_keras copy (``distill=True``: ``work``
    itself, which the steps never change).

    Raises:
        TfoptError: an unknown keyword (named, with the closest of the fine-tune's and ``also``,
            the function's own) or validation data that is not a pair.

    For ``kind="keras3"`` (the Keras 3 engine) ``work`` is the user's model and a teacher stays as
    given (a tf_keras teacher is converted to Keras 3 by the engine's path).
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
    elif teacher is not None and kind != "keras3":
        _, given["teacher"] = enter(teacher, "teacher")
    validation_data = given.get("validation_data")
    if isinstance(validation_data, (tuple, list)) and len(validation_data) != 2:
        raise TfoptError("validation_data: expected an (x, y) pair or a tf.data.Dataset")
    return FineTuneSettings(epochs=epochs, **given), keywords.get("verbose", 0)


#: The registered steps the Keras 3 engine runs for a Keras 3 model, by step name.
KERAS3_STEPS = ("prune", "cluster", "quantize")

def _run(what: str, name: str, model, data, settings: dict, epochs, fine_tune: dict, log, checked=(), **inputs):
    """The registered step ``name`` for the public function ``what``: on a private tf_keras copy of
    ``model``, or, for a Keras 3 model and a step of :data:`KERAS3_STEPS`, by the Keras 3 engine. Its
    config is validated once from ``settings`` (and the fine-tune's ``checked`` fields, which its
    config bounds too), one FineTuneSettings. Returns ``(the step's model, the input's kind)``."""
    step = STEPS[name]
    if name in KERAS3_STEPS and (model_kind(model) == "keras3" or _several_of_tf_keras(model, data)):
        work = model if model_kind(model) == "keras3" else _keras3_copy(what, model, log or _quiet)
        fine, verbose = _fine_tune(what, work, epochs, fine_tune, also=(*settings, *inputs), kind="keras3")
        config = validated(step.config, {**settings, **{k: getattr(fine, k) for k in checked}}, name)
        from tfopt.engines.keras3 import public

        seed, log = fine_tune.get("seed"), log or _quiet
        if name == "prune":
            out = public.prune(work, data, config, fine, verbose, seed, log)
        elif name == "cluster":
            out = public.cluster(work, data, config, fine, verbose, seed, log)
        else:
            out = public.quantize_aware(work, data, fine, verbose, seed, log)
        return (out, "keras3") if work is model else (interop.to_tf_keras(out), "tf_keras")
    kind, work = enter_graph(what, model)
    graph_data(what, model, kind, data)
    fine, verbose = _fine_tune(what, work, epochs, fine_tune, also=(*settings, *inputs))
    config = validated(step.config, {**settings, **{k: getattr(fine, k) for k in checked}}, name)
    with graph_step(what, model, kind):
        out, _ = step.run(work, data, config, fine, log=log or _quiet, verbose=verbose, **inputs)
    return out, kind


def _several_of_tf_keras(model, data) -> bool:
    """Whether ``model`` is tf_keras and ``data`` has several inputs or outputs (x or y a list or a dict)."""
    return data is not None and not isinstance(data, np.ndarray) and several(data) and model_kind(model) == "tf_keras"


def _keras3_copy(what: str, model, log, reason: str = "its data has several inputs or outputs"):
    """The Keras 3 copy of a tf_keras model (the same layers and weights, checked), for a step
    the Keras 3 engine runs because of ``reason``; a model that cannot be copied is refused."""
    try:
        copy = interop.from_tf_keras(model, "keras3")
    except TfoptError as e:
        raise TfoptError(f"{what}: the tf_keras model '{model.name}' goes through its Keras 3 copy because {reason}, "
                         f"and that copy could not be made ({e})") from None
    log(f"{what}: {reason}: the step runs on the model's Keras 3 copy (the same layers and weights, checked) "
        f"and the result comes back as tf_keras")
    return copy


def load_model(path):
    """Load a model file as the kind it was saved from.

    Args:
        path: a tf_keras ``.keras``, ``.h5`` or SavedModel folder, or a Keras 3 ``.keras``.

    Returns:
        The model, tf_keras or Keras 3 as saved.

    Raises:
        TfoptError: the path is missing or is not a model file (a recipe, a TFLite file, ...),
            named for what it is.
    """
    return interop.load_model(path)


def model_kind(model) -> str:
    """Which Keras a model belongs to.

    Args:
        model: any object.

    Returns:
        ``"tf_keras"`` or ``"keras3"``.

    Raises:
        TfoptError: ``model`` is not a Keras model.
    """
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
    :class:`tfopt.steps.prune.PreflightError` unless ``force``.

    Args:
        model: a tf_keras or Keras 3 model; it is not changed.
        data: ``(x, y)`` or a ``tf.data.Dataset`` to fine-tune on.
        sparsity: overall fraction of zero weights in the prunable kernels.
        epochs: fine-tune epochs while the sparsity rises.
        allocation: ``"erk"``, ``"er"`` or ``"uniform"``.
        schedule: ``"polynomial"`` or ``"constant"`` sparsity over the steps.
        initial_sparsity: sparsity at ``begin_step``.
        begin_step: first fine-tune step that prunes.
        end_step: last step the sparsity rises (default: half of the fine-tune steps).
        frequency: steps between two pruning updates (default: from the step count).
        per_layer: ``{layer name: sparsity}`` targets of their own.
        skip: layers left dense.
        m_by_n: ``(m, n)``: only m of every n consecutive weights kept, e.g. ``(2, 4)``.
        block: prune dense kernels in runs of this many consecutive inputs.
        criterion: ``"magnitude"`` or ``"activation"``.
        probe_samples: images of ``data`` the activation criterion ranks on.
        force: run a schedule the preflight refuses.
        log: receives progress lines (silent by default).
        **fine_tune: the shared fine-tune keywords (see the module's docstring).

    Returns:
        A new model of the input's kind, pruning wrappers stripped.

    Raises:
        TfoptError: a setting out of range or an unknown layer name (one paragraph naming it).
        tfopt.steps.prune.PreflightError: the schedule cannot reach the target.
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

    Args:
        model: a Sequential or functional model (tf_keras or Keras 3); it is not changed.
        data: ``(x, y)`` or a ``tf.data.Dataset``: fine-tune data, and the images the data
            criteria rank on.
        ratio: fraction of each layer's channels removed.
        epochs: fine-tune epochs after each round (0: none).
        per_layer: ``{layer name: ratio}`` of their own.
        criterion: ``"l1"``, ``"l2"``, ``"bn_gamma"``, ``"activation"`` or ``"taylor"``.
        rounds: rounds of removal and fine-tune reaching ``ratio``.
        min_channels: channels every layer keeps at least.
        skip: layers whose channels stay.
        probe_samples: images of ``data`` the data criteria rank on.
        log: receives progress lines (silent by default).
        **fine_tune: the shared fine-tune keywords (see the module's docstring).

    Returns:
        A new, physically smaller model of the input's kind.

    Raises:
        TfoptError: a setting out of range, an unknown layer, a failed masked-original check, or a
            model the step cannot take (one paragraph naming why and what works instead).
    """
    settings = dict(ratio=ratio, per_layer=per_layer or {}, criterion=criterion, probe_samples=probe_samples,
                    rounds=rounds, min_channels=min_channels, skip=list(skip), epochs=max(epochs, 1))
    if data is not None and several(data) and (model_kind(model) == "keras3" or _several_of_tf_keras(model, data)):
        work = model if model_kind(model) == "keras3" else _keras3_copy("prune_channels", model, log or _quiet)
        fine, verbose = _fine_tune("prune_channels", work, epochs, fine_tune, also=settings, kind="keras3")
        out = channels_of_several(work, data, settings, fine, verbose, fine_tune.get("seed"), log or _quiet)
        return out if work is model else interop.to_tf_keras(out)
    smaller, kind = _run("prune_channels", "structured", model, data, settings, epochs, fine_tune, log,
                         ("lr", "batch_size"))
    return leave(smaller, kind)


def fold_batchnorm(model, data=None, *, log=None):
    """Every BatchNorm that follows a linear conv/dense layer merged into it; the outputs are
    checked against the original's on ``data`` (else random inputs).

    Args:
        model: a Sequential or functional model (tf_keras or Keras 3); it is not changed.
        data: inputs the outputs are checked on (default: random inputs).
        log: receives progress lines (silent by default).

    Returns:
        A new model of the input's kind without those BatchNorm layers.

    Raises:
        TfoptError: outputs that differ after folding, or a model the step cannot take.
    """
    kind, work = enter_graph("fold_batchnorm", model)
    graph_data("fold_batchnorm", model, kind, data)
    with graph_step("fold_batchnorm", model, kind):
        folded, _ = STEPS["fold_bn"].run(work, data, log=log or _quiet)
    return leave(folded, kind)


def fold_pool(model, data=None, *, layers=None, measure: bool = False, log=None):
    """Each 2×2 max-pool after a stride-1 conv folded into that conv: one stride-2 conv with four
    filter groups and a max over them, the same outputs (checked on ``data``, else random inputs).
    ``layers``: only the pools after these convs. With ``measure``, both float32 TFLite files are
    timed and the times logged: the fold pays where the conv reads few channels (a first conv on a
    grey image), so measure it on your model before you keep it.

    Args:
        model: a Sequential or functional model (tf_keras or Keras 3); it is not changed.
        data: inputs the outputs are checked on (default: random inputs).
        layers: only the pools after these convs (names; default: every foldable pool).
        measure: time both float32 TFLite files and log the times.
        log: receives progress lines (silent by default).

    Returns:
        A new model of the input's kind.

    Raises:
        TfoptError: an unknown layer, or a model the graph path cannot take.
    """
    kind, work = enter_graph("fold_pool", model)
    graph_data("fold_pool", model, kind, data)
    config = validated(STEPS["fold_pool"].config, {"layers": [layers] if isinstance(layers, str) else layers,
                                                   "measure": measure}, "fold_pool")
    with graph_step("fold_pool", model, kind):
        folded, _ = STEPS["fold_pool"].run(work, data, config, log=log or _quiet)
    return leave(folded, kind)


def remove_layers(model, layers, data=None, *, epochs: int = 1, log=None, **fine_tune):
    """The model without ``layers`` (names, or identity-shortcut residual blocks by their layers'
    prefix: ``"block2"``, ``"block_5"``), rewired and fine-tuned ``epochs`` on ``data`` (0: none).

    Args:
        model: a Sequential or functional model (tf_keras or Keras 3); it is not changed.
        layers: a layer name, a block name such as ``"block2"``, or a list of them.
        data: ``(x, y)`` or a ``tf.data.Dataset`` to fine-tune on.
        epochs: fine-tune epochs (0: none).
        log: receives progress lines (silent by default).
        **fine_tune: the shared fine-tune keywords (see the module's docstring).

    Returns:
        A new, rewired model of the input's kind.

    Raises:
        TfoptError: an unknown layer, a layer whose removal would change a shape, or a model the
            graph path cannot take (one paragraph naming why and what works instead).
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    smaller, kind = _run("remove_layers", "remove", model, data, {"layers": layers}, epochs, fine_tune, log)
    return leave(smaller, kind)


def cluster(model, data, *, clusters: int = 16, epochs: int = 1, init: str = "kmeans_plus_plus", skip=(),
            preserve_sparsity: bool | None = None, log=None, **fine_tune):
    """Weight clustering: each conv/dense kernel keeps at most ``clusters`` distinct values,
    fine-tuned on ``data`` and stripped. A pruned kernel (at least 10% zeros) keeps its zeros,
    zero being one of its values, unless ``preserve_sparsity=False``.

    Args:
        model: a tf_keras or Keras 3 model; it is not changed.
        data: ``(x, y)`` or a ``tf.data.Dataset`` to fine-tune on.
        clusters: distinct values per kernel.
        epochs: fine-tune epochs.
        init: centroid initialisation (``"kmeans_plus_plus"``, ``"linear"``, ...).
        skip: layers left unclustered.
        preserve_sparsity: keep a pruned kernel's zeros (None: when it holds at least 10% zeros).
        log: receives progress lines (silent by default).
        **fine_tune: the shared fine-tune keywords (see the module's docstring).

    Returns:
        A new model of the input's kind, clustering wrappers stripped.

    Raises:
        TfoptError: a setting out of range, or an initialisation the model's engine cannot run.
    """
    settings = dict(clusters=clusters, init=init, skip=list(skip), preserve_sparsity=preserve_sparsity)
    clustered, kind = _run("cluster", "cluster", model, data, settings, epochs, fine_tune, log,
                           ("epochs", "lr", "batch_size"))
    return leave(clustered, kind)


def quantize_aware(model, data, *, epochs: int = 1, log=None, **fine_tune):
    """Quantization-aware training (PQAT for a pruned model, CQAT for a clustered one).

    A tf_keras model gives the trained tf_keras QAT model (TFMOT fake-quant layers, each BatchNormalization
    after a linear conv or dense layer folded into it); its purpose is ``to_tflite(qat, mode="int8")``, which
    keeps the learned ranges (no calibration data needed). A Keras 3 model gives a Keras 3 model of its class,
    fine-tuned with its weights fake-quantized (8 bits, one scale per output channel; zeros of a pruned kernel
    kept), so its weights sit on the int8 grid; ``to_tflite(model, mode="int8", data=x)`` then calibrates the
    activations on ``x``.

    Args:
        model: a tf_keras or Keras 3 model; it is not changed.
        data: ``(x, y)`` or a ``tf.data.Dataset`` to fine-tune on.
        epochs: fine-tune epochs.
        log: receives progress lines (silent by default).
        **fine_tune: the shared fine-tune keywords (see the module's docstring).

    Returns:
        The quantization-aware model (tf_keras with fake-quant layers, or Keras 3 of the input's
        class with its weights on the int8 grid).

    Raises:
        TfoptError: a layer TFMOT's QAT cannot take (tf_keras), named with what works instead.
    """
    qat, _ = _run("quantize_aware", "quantize", model, data, {"mode": "qat"}, epochs, fine_tune, log,
                  ("epochs", "lr", "batch_size"))
    return qat


def _tf_keras_kinds(work, references) -> list:
    """The head kinds :mod:`tfopt.verify` reads, for a tf_keras model: softmax or sigmoid by the
    output layer's activation; another head with several units in a row is read as logits (top-1),
    a single linear unit or a map as a regression (SNR)."""
    kinds = []
    for i, ref in enumerate(references):
        layer = None
        try:
            layer = work.outputs[i]._keras_history.layer
        except (AttributeError, IndexError):
            pass
        activation = getattr(layer, "activation", None)
        name = "softmax" if type(layer).__name__ == "Softmax" else getattr(activation, "__name__", None)
        if name in ("softmax", "sigmoid"):
            kinds.append(name)
        else:
            kinds.append("logits" if np.ndim(ref) == 2 and np.shape(ref)[-1] > 1 else "regression")
    return kinds


def _verify_tf_keras(work, content, x, mode, min_agreement, min_snr, log) -> None:
    """Compare the file's outputs with the model's on ``x``, head by head (:mod:`tfopt.verify`)."""
    from tfopt import verify

    ref = work.predict(x, batch_size=256, verbose=0)
    references = [np.asarray(r) for r in ref] if isinstance(ref, (list, tuple)) else [np.asarray(ref)]
    names = list(getattr(work, "output_names", None) or [str(i) for i in range(len(references))])
    if len(references) == 1:
        got = [predict(content, x)]
    else:
        from tfopt.tflite import interpreter

        it, _ = interpreter(content)
        (feed,) = it.get_signature_runner().get_input_details()
        outputs = run_signature(content, {feed: x})
        keys = names if set(names) == set(outputs) else sorted(outputs)
        got = [outputs[k] for k in keys]
    report = verify.compare(references, got, _tf_keras_kinds(work, references), mode, names=names,
                            min_agreement=min_agreement, min_snr=min_snr)
    verify.enforce(report, log)


def to_tflite(model, mode: str = "float32", data=None, *, int8_io: bool = False, min_agreement: float | None = None,
              min_snr: float | None = None, representative_samples: int = 500, seed: int = 0, float_ops=(),
              log=None, **renamed) -> bytes:
    """The model as TFLite bytes, verified against the model on ``data``.

    A tf_keras model goes through TensorFlow's converter as a tf_keras model (one the converter
    cannot take, such as the tensor-list ops of an LSTM, through its Keras 3 copy); a Keras 3 model (any
    kind: subclassed, recurrent, attention, several inputs or outputs) through Keras 3's export path
    (:mod:`tfopt.engines.keras3.litert`), without a tf_keras copy. The file is run by LiteRT on all
    of ``data``'s inputs and compared with the model head by head (:mod:`tfopt.verify`): every head
    by its SNR, a classifier head by its top-1 agreement too, near ties excused.

    Args:
        model: a tf_keras or Keras 3 model, or the tf_keras model :func:`quantize_aware` returns.
        mode: ``float32``, ``float16``, ``dynamic`` (int8 weights) or ``int8`` (full integer;
            calibrated on ``representative_samples`` inputs of ``data`` drawn with ``seed``). A tf_keras model
            from :func:`quantize_aware` converts to ``int8`` with its learned ranges.
        data: inputs (``x``, ``(x, y)`` or a dataset; for a Keras 3 model ``x`` may be a list or a
            dict of arrays); needed for ``int8`` calibration. When given, the file's outputs are
            compared with the model's on all of them.
        int8_io: with ``int8``, int8 inputs and outputs instead of float.
        min_agreement: least top-1 agreement of a classifier head; default 0.999 for
            float32/float16, 0.99 for dynamic and int8.
        min_snr: least SNR (dB) of every head; default :data:`tfopt.verify.MIN_SNR_DB` (60 dB
            float32, 40 dB float16 and dynamic, 20 dB int8).
        representative_samples: inputs of ``data`` that calibrate ``int8``.
        seed: which inputs are drawn for calibration.
        float_ops: with ``int8``, TFLite op types kept in float inside the file (the rest stays
            int8), e.g. :data:`tfopt.tflite.TRANSFORMER_FLOAT_OPS` (LayerNormalization, attention,
            residual sums) or :data:`tfopt.tflite.RECURRENT_FLOAT_OPS` (a recurrent layer's gates and state).
        log: receives progress lines (silent by default).
        **renamed: old keyword names, refused with their new name.

    Returns:
        The ``.tflite`` file's bytes.

    Raises:
        TfoptError: an unknown mode, ``int8`` without data, a renamed keyword, or ``float_ops``
            that are not TFLite op types or come with another mode than ``int8``.
        tfopt.tflite.VerificationFailed: a head below its thresholds (the message names what
            it measured).
    """
    if "samples" in renamed:
        raise TfoptError("to_tflite: keyword argument 'samples' renamed to representative_samples")
    if renamed:
        raise TypeError(f"to_tflite() got an unexpected keyword argument '{next(iter(renamed))}'")
    if mode not in MODES:
        raise TfoptError(f"to_tflite: unknown mode '{mode}'{did_you_mean(mode, MODES)}; available: {', '.join(MODES)}")
    float_ops = check_float_ops(float_ops, mode)
    if model_kind(model) == "keras3":
        from tfopt.engines.keras3 import public

        return public.to_tflite(model, mode, data, int8_io, min_agreement, min_snr, representative_samples, seed,
                                 log or _quiet, float_ops)
    if _several_of_tf_keras(model, data) and not quantize_step.is_qat(model):
        from tfopt.engines.keras3 import public

        copy = _keras3_copy("to_tflite", model, log or _quiet)
        return public.to_tflite(copy, mode, data, int8_io, min_agreement, min_snr, representative_samples, seed,
                                 log or _quiet, float_ops)
    x = sample_x(data) if data is not None else None
    if quantize_step.is_qat(model):
        if mode != "int8":
            raise TfoptError(f"to_tflite: a quantization-aware model converts to int8, not {mode}")
        if float_ops:
            raise TfoptError("to_tflite: a quantization-aware model converts with the ranges it trained with; "
                             "float_ops applies to post-training int8 of the float model")
        work = model
        try:
            content = quantize_step.qat_tflite(model, int8_io)
        except Exception as e:  # noqa: BLE001  (the converter's own error class is not public)
            if type(e).__name__ != "ConverterError":
                raise
            raise TfoptError(f"to_tflite: TensorFlow's converter could not make an int8 file of the quantization-aware "
                             f"tf_keras model '{model.name}' ({_first_error(e)}); run quantize_aware on its Keras 3 "
                             f"copy (tfopt.interop.from_tf_keras(model, 'keras3')), whose file goes through Keras 3's "
                             f"export path, or convert the float model with to_tflite(model, 'int8', data=x)") from None
    else:
        _, work = enter(model)
        if mode == "int8" and x is None:
            raise TfoptError("to_tflite: int8 calibrates on training images: pass data=x (a few hundred images)")
        try:
            content = quantize_step.post_training(work, mode, x, int8_io, representative_samples, seed, float_ops)
        except Exception as e:  # noqa: BLE001  (the converter's own error class is not public)
            if type(e).__name__ != "ConverterError":
                raise
            return _through_keras3(work, mode, data, int8_io, min_agreement, min_snr, representative_samples,
                                   seed, log or _quiet, e, float_ops)
    if x is not None:
        _verify_tf_keras(work, content, x, mode, min_agreement, min_snr, log or _quiet)
    return content


def _first_error(error) -> str:
    """The first ``error:`` line of TensorFlow's converter error, without its source locations."""
    first = next((line.strip() for line in str(error).splitlines() if "error:" in line), str(error)[:200])
    return first[first.index("error:"):] if "error:" in first else first


def _through_keras3(work, mode, data, int8_io, min_agreement, min_snr, samples, seed, log, error, float_ops=()) -> bytes:
    """A tf_keras model TensorFlow's converter cannot take (the tensor-list ops of a recurrent
    layer): its Keras 3 copy through Keras 3's export path, verified the same way."""
    from tfopt.engines.keras3 import public

    first = _first_error(error)
    try:
        copy = interop.from_tf_keras(work, "keras3")
    except TfoptError as e:
        raise TfoptError(f"to_tflite: TensorFlow's converter could not take the tf_keras model '{work.name}' "
                         f"({first}), and its Keras 3 copy, which would go through Keras 3's export path, could not "
                         f"be made ({e})") from None
    log(f"to_tflite: TensorFlow's converter could not take the tf_keras model ({first}); converting its Keras 3 "
        f"copy (the same layers and weights, checked) through Keras 3's export path")
    return public.to_tflite(copy, mode, data, int8_io, min_agreement, min_snr, samples, seed, log, float_ops)


__all__ = ["load_model", "model_kind", "prune", "prune_channels", "fold_batchnorm", "fold_pool", "remove_layers",
           "cluster", "quantize_aware", "to_tflite", "wrap_for_pruning", "pruning_callbacks", "wrap_for_clustering",
           "wrap_for_qat", "strip", "FINE_TUNE_KEYWORDS"]
