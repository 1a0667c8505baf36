"""The public API's path for Keras 3 models: its keywords mapped onto this engine, its data read,
its TFLite files written and verified without a tf_keras copy.

:mod:`tfopt.api` validates the settings with the registered step's config (so a bad value is
refused in the same words for both kinds of model), then calls the functions here. Each takes the
validated config and :class:`~tfopt.config.fine_tune.FineTuneSettings` and gives back a Keras 3
model of the input's class (a Sequential stays a Sequential). Imported only when a Keras 3 model
comes in: it imports Keras.
"""

from __future__ import annotations

import keras
import numpy as np

from tfopt.engines.keras3 import clustering, litert, pruning, quantization, training
from tfopt.engines.keras3.copying import CopyError
from tfopt.engines.keras3.data import sample_inputs, training_data
from tfopt.engines.keras3.losses import compiled_loss, head_kinds
from tfopt.errors import TfoptError

#: The TFMOT path's cluster inits and the engine's: the others are refused.
CLUSTER_INITS = {"kmeans_plus_plus": "kmeans++", "linear": "linear"}


def _is_dataset(data) -> bool:
    module = type(data).__module__ or ""
    return module.startswith("tensorflow") and hasattr(data, "element_spec")


def _input_count(model) -> int | None:
    found = litert._declared_inputs(model)
    return len(keras.tree.flatten(found)) if found is not None else None


def _batched(dataset, batch_size):
    """A dataset of single samples batched (its first element's x has no batch axis)."""
    spec = dataset.element_spec
    first = keras.tree.flatten(spec[0] if isinstance(spec, (tuple, list)) else spec)[0]
    return dataset if first.shape.rank and first.shape[0] is None else dataset.batch(batch_size)


def training_pairs(data, batch_size):
    """``data`` as the engine reads it: ``(x, y)``, ``(x, y, w)`` or a batched dataset.

    Raises:
        TfoptError: no data, or a form that is not one of those.
    """
    if data is None:
        raise TfoptError("data: the fine-tune needs (x, y) (arrays, lists or dicts of arrays) or a tf.data.Dataset")
    if _is_dataset(data):
        return _batched(data, batch_size)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return tuple(data)
    raise TfoptError(f"data: expected (x, y) or (x, y, sample_weight), x and y arrays, lists or dicts of arrays, or "
                     f"a tf.data.Dataset; got {type(data).__name__}")


def inputs_of(model, data):
    """The inputs in ``data`` (``x``, ``(x, y)``, ``(x, y, w)`` or a dataset), in the model's
    input structure, as numpy; None for no data.

    A tuple or list is ``(x, y[, w])`` unless the model takes as many inputs as it has arrays
    (then it is the inputs themselves).
    """
    if data is None:
        return None
    if _is_dataset(data):
        parts = []
        for element in data:
            x = element[0] if isinstance(element, (tuple, list)) else element
            parts.append(keras.tree.map_structure(lambda t: np.asarray(t), x))
        if not parts:
            raise TfoptError("data: the dataset is empty")
        if np.ndim(keras.tree.flatten(parts[0])[0]) == np.ndim(keras.tree.flatten(_sample(model, parts[0]))[0]):
            return keras.tree.map_structure(lambda *a: np.concatenate(a), *parts)
        return keras.tree.map_structure(lambda *a: np.stack(a), *parts)
    if isinstance(data, dict) or hasattr(data, "shape"):
        return keras.tree.map_structure(np.asarray, data)
    if isinstance(data, (tuple, list)):
        count = _input_count(model)
        plain = all(hasattr(a, "shape") for a in data)
        if count is not None and count > 1 and len(data) == count and plain:
            return [np.asarray(a) for a in data]
        if len(data) in (2, 3):
            return keras.tree.map_structure(np.asarray, data[0])
    raise TfoptError(f"data: expected x, (x, y) or a tf.data.Dataset, x an array, a list or a dict of arrays; got "
                     f"{type(data).__name__}")


def _sample(model, batch):
    declared = sample_inputs(model)
    return declared if declared is not None else batch


def rows(x) -> int:
    return int(len(keras.tree.flatten(x)[0]))


def take(x, index):
    return keras.tree.map_structure(lambda a: a[index], x)


# -- fine-tune settings ---------------------------------------------------------------------


def _optimizer(optimizer):
    if isinstance(optimizer, dict) and "name" in optimizer and "class_name" not in optimizer:
        rest = {k: v for k, v in optimizer.items() if k != "name"}
        return {"class_name": optimizer["name"], "config": rest}
    return optimizer


def _teacher(teacher):
    from tfopt import interop

    if teacher is None or interop.model_kind(teacher) == "keras3":
        return teacher
    return interop.from_tf_keras(teacher, "keras3")


def fine_tune_settings(fine, verbose: int) -> dict:
    """The engine's fine-tune keywords from the API's :class:`FineTuneSettings`."""
    settings = dict(epochs=int(fine.epochs), lr=fine.lr, batch_size=int(fine.batch_size or 32), loss=fine.loss,
                    optimizer=_optimizer(fine.optimizer), verbose=int(verbose),
                    validation_data=fine.validation_data)
    if fine.teacher is not None:
        settings.update(teacher=_teacher(fine.teacher), temperature=float(fine.temperature), alpha=float(fine.alpha))
    return settings


def _engine_call(what, function, model, data, fit_seed, **kwargs):
    """Run one engine step (``fit_seed``: given, the process's random seeds are set to it first);
    its argument errors become TfoptErrors in the API's words."""
    if fit_seed is not None:
        keras.utils.set_random_seed(int(fit_seed))
    try:
        return function(model, data, **kwargs)
    except CopyError as e:
        raise TfoptError(f"{what}: {e}") from None
    except (ValueError, TypeError) as e:
        raise TfoptError(f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _total_steps(data, settings) -> int:
    found = training_data(data, batch_size=settings["batch_size"])
    return found.steps_per_epoch * settings["epochs"]


def prune(model, data, config, fine, verbose, seed, log):
    """Magnitude pruning by the engine with the API's :class:`~tfopt.config.steps.PruneConfig`."""
    if config.criterion != "magnitude":
        raise TfoptError(f"prune: criterion='{config.criterion}' is not available for a Keras 3 model: the Keras 3 "
                         f"engine ranks weights by magnitude. Use criterion='magnitude' (the default), or give a "
                         f"tf_keras model for the activation criterion.")
    settings = fine_tune_settings(fine, verbose)
    pairs = training_pairs(data, settings["batch_size"])
    total = _total_steps(pairs, settings)
    if config.end_step is not None and config.end_step >= total and not config.force:
        from tfopt.steps.prune import PreflightError

        raise PreflightError(f"pruning preflight: end_step {config.end_step} is not before the fine-tune's last step "
                             f"({total - 1} of {settings['epochs']} epoch(s)): the final sparsity would be cut in "
                             f"after the fine-tune, with no step to recover. Lower end_step below {total}, give more "
                             f"epochs, or pass force=True to go on anyway.")
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="prune\\(\\): end_step")
        pruned = _engine_call(
            "prune", pruning.prune, model, pairs, seed, sparsity=config.sparsity, allocation=config.allocation,
            schedule=config.schedule, initial_sparsity=config.initial_sparsity, begin_step=config.begin_step,
            end_step=config.end_step, frequency=config.frequency, targets=dict(config.per_layer) or None,
            skip=tuple(config.skip), m_by_n=tuple(config.m_by_n) if config.m_by_n else None,
            block=config.block if config.block > 1 else None, **settings)
    from tfopt.engines.keras3.selection import select_weights

    entries = select_weights(pruned)
    log(f"prune (Keras 3 engine): {len(entries)} weight variables, {pruning.sparsity_of(entries):.1%} zeros "
        f"counted, {total} fine-tune steps")
    return pruned


def cluster(model, data, config, fine, verbose, seed, log):
    """Weight clustering by the engine with the API's :class:`~tfopt.config.steps.ClusterConfig`."""
    if config.init not in CLUSTER_INITS:
        raise TfoptError(f"cluster: init='{config.init}' is not available for a Keras 3 model; the Keras 3 engine "
                         f"starts k-means with {' or '.join(repr(k) for k in CLUSTER_INITS)}.")
    settings = fine_tune_settings(fine, verbose)
    pairs = training_pairs(data, settings["batch_size"])
    clustered = _engine_call("cluster", clustering.cluster, model, pairs, seed, clusters=config.clusters,
                             init=CLUSTER_INITS[config.init], preserve_sparsity=config.preserve_sparsity,
                             skip=tuple(config.skip), seed=int(seed or 0), **settings)
    from tfopt.engines.keras3.selection import select_weights

    most = max((len(np.unique(keras.ops.convert_to_numpy(e.variable))) for e in select_weights(clustered)), default=0)
    log(f"cluster (Keras 3 engine): at most {most} distinct values per weight variable")
    return clustered


def fine_tune(what, model, data, fine, verbose, seed, log):
    """The engine's plain fine-tune (the model's own compiled loss, else one inferred per head),
    for a model the graph path changed."""
    settings = fine_tune_settings(fine, verbose)
    pairs = training_pairs(data, settings["batch_size"])
    tuned = _engine_call(what, training.fine_tuned, model, pairs, seed, **settings)
    log(f"{what}: fine-tuned by the Keras 3 engine, {settings['epochs']} epoch(s)")
    return tuned


def quantize_aware(model, data, fine, verbose, seed, log):
    """Weight fake-quantized fine-tune by the engine: 8-bit per-channel grid weights."""
    settings = fine_tune_settings(fine, verbose)
    pairs = training_pairs(data, settings["batch_size"])
    ready = _engine_call("quantize_aware", quantization.quantize_aware, model, pairs, seed, bits=8, **settings)
    log("quantize_aware (Keras 3 engine): weights on the int8 grid; convert with to_tflite(model, mode='int8', "
        "data=x), which calibrates the activations on x")
    return ready


# -- TFLite ----------------------------------------------------------------------------------


def head_names(model, count) -> list:
    names = getattr(model, "output_names", None)
    return list(names) if names and len(names) == count else [str(i) for i in range(count)]


def verification_kinds(model, x) -> list:
    """The kind of each head (see :mod:`tfopt.engines.keras3.losses`), flattened."""
    loss, _ = compiled_loss(model)
    kinds, _ = head_kinds(model, take(x, slice(0, min(16, rows(x)))), None, loss)
    return keras.tree.flatten(kinds)


def to_tflite(model, mode, data, int8_io, min_agreement, min_snr, samples, seed, log, float_ops=()) -> bytes:
    """TFLite bytes of a Keras 3 model, verified head by head on the inputs in ``data``."""
    from tfopt import verify

    x = inputs_of(model, data)
    representative = None
    if mode == "int8":
        if x is None:
            raise TfoptError("to_tflite: int8 calibrates on training images: pass data=x (a few hundred images)")
        order = np.random.default_rng(seed).permutation(rows(x))[:samples]
        representative = take(x, np.sort(order))
    content = litert.convert(model, mode, x=x, representative=representative, int8_io=int8_io, float_ops=float_ops)
    if x is None:
        return content
    reference = [np.asarray(keras.ops.convert_to_numpy(t)) for t in
                 keras.tree.flatten(model.predict(x, batch_size=256, verbose=0))]
    got = litert.run(content, x)
    report = verify.compare(reference, got, verification_kinds(model, x), mode,
                            names=head_names(model, len(reference)), min_agreement=min_agreement, min_snr=min_snr)
    verify.enforce(report, log)
    return content

