"""Fine-tuning on plain data, evaluation, and writing a command's new run directory.

:func:`fine_tune` is the one training loop every compression step uses. It takes a model
and plain data (``(x, y)`` arrays or a ``tf.data.Dataset``) with keyword arguments that all
have defaults; :func:`recipe_fit` turns a recipe and its splits into those arguments.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from tfopt.errors import TfoptError
from tfopt.rundir import RunDir, atomic_write_json, atomic_write_text

#: Fine-tune defaults. Pruning in particular needs the network to recover after the last
#: pruning update at a rate close to the one it trained with; a tenth of it, decayed to zero
#: while pruning still ran, lost 3.9 points on TFMOT's own pruning-tutorial model.
DEFAULT_LR = 1e-3
DEFAULT_BATCH_SIZE = 32
#: Fraction of the fine-tune steps held at the full rate before a cosine decay.
DEFAULT_HOLD = 0.5
#: Where the cosine decay ends, as a fraction of the full rate.
DEFAULT_FLOOR = 0.1


def lr_schedule(lr: float, total_steps: int, hold: float = DEFAULT_HOLD, floor: float = DEFAULT_FLOOR):
    """Step -> rate: ``lr`` for the first ``hold`` of the steps, then a cosine decay to ``floor · lr``."""
    start = int(round(total_steps * hold))

    def rate(step):
        if step < start or total_steps <= start:
            return lr
        p = min(1.0, (step - start) / max(total_steps - start, 1))
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))

    return rate


def _x_spec_rank(spec):
    first = spec[0] if isinstance(spec, (tuple, list)) else spec
    return len(first.shape) if first.shape.rank is not None else None


def as_dataset(data, batch_size: int, *, model=None, training: bool = False, seed: int = 0, what: str = "data"):
    """``(x, y)`` arrays or a ``tf.data.Dataset`` -> a batched dataset of ``(x, y)``.

    A dataset whose elements have the model's input rank without the batch axis is batched
    with ``batch_size``; an already batched one is used as it is.
    """
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) < 2:
            raise TfoptError(f"{what}: the tf.data.Dataset must yield (x, y) pairs; its elements are {spec}")
        rank = _x_spec_rank(spec)
        if model is not None and rank is not None and rank == len(model.input_shape) - 1:
            data = data.batch(batch_size)
        return _sharded(data.prefetch(tf.data.AUTOTUNE))
    x, y = _pair(data, what)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(min(len(x), 10000), seed=seed, reshuffle_each_iteration=True)
    return _sharded(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _sharded(ds):
    """Sharded by element across workers when a tf.distribute strategy runs (no auto-shard warning)."""
    from tfopt.training import distribute as D

    return D.shard(ds) if D.active() is not None else ds


def _pair(data, what="data"):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TfoptError(f"{what}: expected an (x, y) pair of arrays or a tf.data.Dataset of (x, y) pairs; "
                         f"got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y):
        raise TfoptError(f"{what}: x and y differ in length ({len(x)} images, {len(y)} labels)")
    if not len(x):
        raise TfoptError(f"{what}: no samples")
    if x.dtype != np.float32 and np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x, y


def count_steps(data, batch_size: int, model=None) -> int:
    """Batches per epoch of ``data``: from the array length, else the dataset's cardinality
    (counted once when unknown); a dataset :func:`as_dataset` would batch for ``model`` counts
    in batches of ``batch_size``."""
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        return int(math.ceil(len(data[0]) / batch_size))
    if model is not None:
        rank = _x_spec_rank(data.element_spec)
        if rank is not None and rank == len(model.input_shape) - 1:
            data = data.batch(batch_size)
    n = int(data.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise TfoptError("data: the tf.data.Dataset repeats forever; give a finite dataset (one epoch)")
    if n < 0:
        n = sum(1 for _ in data)
    return n


def _is_batched(ds) -> bool:
    spec = ds.element_spec[0] if isinstance(ds.element_spec, (tuple, list)) else ds.element_spec
    return spec.shape.rank is not None and spec.shape.rank > 0 and spec.shape[0] is None


def sample_xy(data, n: int | None = None):
    """Up to ``n`` ``(x, y)`` pairs, as arrays, from ``(x, y)`` or a dataset (``y`` is None for a
    dataset of bare images)."""
    import tensorflow as tf

    if not isinstance(data, tf.data.Dataset):
        x, y = _pair(data)
        return (x, y) if n is None else (x[:n], y[:n])
    batched, xs, ys, got = _is_batched(data), [], [], 0
    for element in data:
        x, y = (element[0], element[1]) if isinstance(element, (tuple, list)) else (element, None)
        x = np.asarray(x) if batched else np.asarray(x)[None]
        xs.append(x)
        if y is not None:
            ys.append(np.asarray(y) if batched else np.asarray(y)[None])
        got += len(x)
        if n is not None and got >= n:
            break
    x = np.concatenate(xs).astype(np.float32)
    y = np.concatenate(ys) if ys else None
    return (x, y) if n is None else (x[:n], None if y is None else y[:n])


def sample_x(data, n: int | None = None) -> np.ndarray:
    """Up to ``n`` input images from ``(x, y)``, bare ``x`` or a dataset."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        return sample_xy(data, n)[0]
    x = np.asarray(data[0]) if isinstance(data, (tuple, list)) and len(data) == 2 else np.asarray(data)
    return (x if n is None else x[:n]).astype(np.float32)


def _label_spec(data):
    """``(rank without batch axis, is integer)`` of the labels."""
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec[1]
        xrank = _x_spec_rank(data.element_spec)
        rank = len(spec.shape)
        return rank, spec.dtype.is_integer, xrank
    y = np.asarray(data[1])
    return y.ndim - 1, np.issubdtype(y.dtype, np.integer), None


def _output_units(model) -> int:
    shape = model.output_shape
    return int(shape[-1]) if shape[-1] is not None else 1


def infer_loss(model, data):
    """The loss for ``model`` on ``data``'s labels: sparse or one-hot categorical cross-entropy,
    or binary cross-entropy for one sigmoid unit; ``from_logits`` when the output is not a
    softmax/sigmoid. Returns ``(loss, one_hot)``."""
    import tf_keras as keras

    from tfopt.models.builder import output_activation

    act = output_activation(model)
    units = _output_units(model)
    rank, integer, xrank = _label_spec(data)
    # A batched dataset's labels carry a batch axis: compare with the input's rank to tell.
    if xrank is not None and xrank == len(model.input_shape):
        rank -= 1
    if units == 1 or act == "sigmoid":
        return keras.losses.BinaryCrossentropy(from_logits=act != "sigmoid"), False
    if rank >= 1 and not integer:
        return keras.losses.CategoricalCrossentropy(from_logits=act != "softmax"), True
    return keras.losses.SparseCategoricalCrossentropy(from_logits=act != "softmax"), False


def _build_loss(model, loss, data):
    """A loss object and whether labels are one-hot, from ``None`` (inferred), a name, a tfopt
    loss config or a tf_keras loss."""
    from tfopt.models.builder import output_activation

    if loss is None:
        return infer_loss(model, data)
    if isinstance(loss, (str, dict)):
        from tfopt.config.losses import LOSSES

        loss = LOSSES.get(loss)
    if hasattr(loss, "build") and hasattr(loss, "one_hot"):  # a tfopt loss config
        return loss.build(output_activation(model) not in ("softmax", "sigmoid")), loss.one_hot
    return loss, None


def _build_metrics(metrics, one_hot, loss):
    import tf_keras as keras

    if metrics is None:
        if isinstance(loss, (keras.losses.BinaryCrossentropy,)):
            return [keras.metrics.BinaryAccuracy(name="accuracy")]
        if isinstance(loss, (keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy)) \
                or one_hot is not None:
            cls = keras.metrics.CategoricalAccuracy if one_hot else keras.metrics.SparseCategoricalAccuracy
            return [cls(name="accuracy")]
        return []
    out = []
    for m in metrics:
        if hasattr(m, "build") and not isinstance(m, keras.metrics.Metric):  # a tfopt metric config
            m = m.build(bool(one_hot))
        out.append(m)
    return out


def _build_optimizer(optimizer, lr):
    import tf_keras as keras

    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config({**optimizer.get_config(), "learning_rate": lr})
    if isinstance(optimizer, (str, dict)):
        from tfopt.config.optimizers import OPTIMIZERS

        optimizer = OPTIMIZERS.get(optimizer)
    return optimizer.build(lr)


def fine_tune(model, data, *, epochs: int = 2, lr: float | None = None, batch_size: int | None = None,
              loss=None, optimizer="adam", metrics=None, validation_data=None, lr_schedule_fn=None,
              hold: float = DEFAULT_HOLD, floor: float = DEFAULT_FLOOR, teacher=None, temperature: float = 4.0,
              alpha: float = 0.9, callbacks=(), seed: int = 0, verbose=None, log=print):
    """Compile ``model`` (in place) and fit it on ``data``; returns ``(history rows, seconds)``.

    Args:
        model: the tf_keras model to train; the caller owns it (compression steps pass a copy).
        data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``, batched or not.
        epochs: passes over ``data``.
        lr: the peak rate; default 1e-3.
        batch_size: for arrays and unbatched datasets; default 32.
        loss: ``None`` (inferred from the labels and the output activation), a name such as
            ``"categorical_crossentropy"``, a tfopt loss config or a tf_keras loss.
        optimizer: a name (``"adam"``, ``"sgd"``, …), ``{"name": ..., **kwargs}``, a tfopt
            optimizer config or a tf_keras optimizer (its class and settings are reused).
        metrics: default: accuracy for classification losses.
        validation_data: like ``data``; evaluated after each epoch.
        lr_schedule_fn: step -> rate; default: ``lr`` for the first ``hold`` of the steps, then a
            cosine decay to ``floor · lr`` (see :func:`lr_schedule`).
        teacher: a tf_keras model to distil from (knowledge distillation, see
            :mod:`tfopt.distill`); ``temperature`` and ``alpha`` weight its soft targets. A
            :class:`tfopt.distill.TeacherTargets` computed for ``data`` trains on its stored
            outputs instead of running the teacher.
        callbacks: more tf_keras callbacks (e.g. TFMOT's ``UpdatePruningStep``).
        seed: seeds shuffling and initialisation.
    """
    import tf_keras as keras

    from tfopt.training.compile import SPE, uses_batch_hooks

    if epochs < 1:
        raise TfoptError(f"fine-tune epochs must be at least 1; got {epochs}")
    keras.utils.set_random_seed(seed)
    lr = DEFAULT_LR if lr is None else lr
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    train = as_dataset(data, batch_size, model=model, training=True, seed=seed)
    val = as_dataset(validation_data, batch_size, model=model, what="validation_data") \
        if validation_data is not None else None
    loss_obj, one_hot = _build_loss(model, loss, data)
    metric_objs = _build_metrics(metrics, one_hot, loss_obj)
    per_epoch = count_steps(data, batch_size, model)
    total = per_epoch * epochs
    if lr_schedule_fn is None:
        # the rate lives in the optimizer: no per-step callback, many steps per compiled call
        from tfopt.training.lr import HoldThenCosine, RateInLogs

        rate, rate_callbacks = HoldThenCosine(lr, total, hold, floor), [RateInLogs()]
    else:
        from tfopt.callbacks.lr import LearningRateDecay

        rate, rate_callbacks = lr, [LearningRateDecay(lr_schedule_fn, per="step")]
    # a callback that works per batch (TFMOT's pruning step) needs every batch's call
    spe = 1 if uses_batch_hooks([*rate_callbacks, *callbacks]) else max(1, min(SPE, per_epoch))
    target = model
    if teacher is not None:
        stored = _stored_targets(teacher, data)
        if stored is not None:
            train = _sharded(stored.dataset(batch_size, seed=seed))
        target = _distiller(model, getattr(teacher, "model", teacher), temperature, alpha, stored is not None)
        log(f"distilling from the teacher (temperature {temperature:g}, alpha {alpha:g}"
            + ("; its outputs computed once" if stored is not None else "") + ")")
    target.compile(optimizer=_build_optimizer(optimizer, rate), loss=loss_obj, metrics=metric_objs,
                   steps_per_execution=spe)
    log(f"fine-tuning {epochs} epoch(s) ({total} steps), learning rate {lr:g}"
        + (f" held for {hold:.0%} of the steps, then cosine-decayed to {floor * lr:g}" if lr_schedule_fn is None
           else " on the given schedule") + f", batch size {batch_size}, {spe} step(s) per call")
    started = time.perf_counter()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    hist = target.fit(train, validation_data=val, epochs=epochs, callbacks=[*rate_callbacks, *callbacks],
                      verbose=verbose)
    rows = [{"epoch": i + 1, **{k: float(v[i]) for k, v in hist.history.items()}} for i in range(len(hist.epoch))]
    return rows, time.perf_counter() - started


#: Batches whose statistics replace BatchNorm's moving averages after a fine-tune.
RECALIBRATION_BATCHES = 50


def recalibrate_batchnorm(model, data, *, batches: int = RECALIBRATION_BATCHES, batch_size: int | None = None,
                          log=print) -> int:
    """Re-estimate every BatchNorm's moving mean and variance of ``model`` (in place) from
    ``batches`` batches of ``data``, as the average of their batch statistics; no weight changes.

    A fine-tune that changes the layers before a BatchNorm a lot (pruning 70% of a conv's
    weights, removing channels) leaves its moving averages behind: the model does well in
    training mode and poorly in inference. On the bundled quickstart CNN, a 70%-sparsity prune
    went from 81% to 98.6% test accuracy with this and nothing else. Returns the batches used
    (0 when the model has no BatchNorm, or under tf.distribute, where it is skipped).
    """
    import tf_keras as keras

    from tfopt.training import distribute as D

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or data is None or batches < 1:
        return 0
    if D.active() is not None:
        log("BatchNorm statistics not re-estimated under tf.distribute")
        return 0
    ds = as_dataset(data, batch_size or DEFAULT_BATCH_SIZE, model=model, training=True)
    saved = [bn.momentum for bn in bns]
    used = 0
    try:
        for x, *_ in ds.take(batches):
            used += 1
            for bn in bns:
                bn.momentum = 1.0 - 1.0 / used  # moving value = the mean of the batch values so far
            model(x, training=True)
    finally:
        for bn, momentum in zip(bns, saved):
            bn.momentum = momentum
    log(f"re-estimated the statistics of {len(bns)} BatchNorm layer(s) on {used} batches")
    return used


def _distiller(student, teacher, temperature, alpha, targets_in_data=False):
    try:
        from tfopt.distill import Distiller
    except ImportError:
        raise TfoptError("knowledge distillation needs tfopt.distill, which this installation lacks") from None
    return Distiller(student, teacher, temperature=temperature, alpha=alpha, targets_in_data=targets_in_data)


def _stored_targets(teacher, data):
    """``teacher`` when it is a :class:`tfopt.distill.TeacherTargets` computed for ``data``, else None."""
    from tfopt.distill import TeacherTargets

    return teacher if isinstance(teacher, TeacherTargets) and teacher.covers(data) else None


def fine_tune_settings(recipe, cfg):
    """``(learning rate, batch size)`` for a fine-tune: the step's own, else the recipe's
    training rate and batch size."""
    return (cfg.lr or recipe_lr(recipe), cfg.batch_size or recipe.train.batch_size)


def recipe_lr(recipe) -> float:
    """The default fine-tune rate for a recipe's model: the rate it started training with,
    capped for adaptive optimizers whose recipes may use larger peaks."""
    return recipe.lr_policy().initial * RECIPE_LR_FACTOR


#: The recipe's initial rate is multiplied by this for fine-tunes.
RECIPE_LR_FACTOR = 1.0


def recipe_fit(recipe, splits, cfg) -> dict:
    """Keyword arguments for :func:`fine_tune` (and every step built on it) from a recipe, its
    data splits and a step config: the recipe's loss, metrics, optimizer, augmentation and seed."""
    from tfopt.data.pipeline import make_dataset

    lr, batch_size = fine_tune_settings(recipe, cfg)
    t = recipe.train
    common = dict(one_hot=t.loss.one_hot, num_classes=splits.num_classes)
    train = make_dataset(splits.x_train, splits.y_train, batch_size, training=True, seed=recipe.seed,
                         augment=recipe.data.augment, shuffle_buffer=recipe.data.shuffle_buffer, **common)
    val = make_dataset(splits.x_val, splits.y_val, batch_size, **common) if len(splits.x_val) else None
    train, val = _sharded(train), _sharded(val) if val is not None else None
    return dict(data=train, validation_data=val, epochs=cfg.epochs, lr=lr, batch_size=batch_size, loss=t.loss,
                optimizer=t.optimizer, metrics=list(t.metrics), seed=recipe.seed)


def evaluate(model, recipe, splits) -> dict:
    """Test loss and metrics of a Keras model, compiled with the recipe's loss if it is not."""
    from tfopt.data.pipeline import make_dataset
    from tfopt.training.run import compile_model

    if getattr(model, "compiled_loss", None) is None:
        compile_model(model, recipe.train, 1e-3)
    ds = make_dataset(splits.x_test, splits.y_test, 256, one_hot=recipe.train.loss.one_hot,
                      num_classes=splits.num_classes)
    return {f"test_{k}": float(v) for k, v in model.evaluate(ds, verbose=0, return_dict=True).items()}


def write_run(source, suffix, *, recipe, metrics, model=None, files=None, history=None, output=None,
              overwrite=False, saved_model=None, step=None, log=print) -> Path:
    """Write a new run directory ``<output>/<source>-<suffix>`` atomically; the source is untouched.

    ``saved_model`` forces (or skips) the SavedModel; by default ``output.saved_model`` decides.
    ``step`` (the registered step's name) is appended to the source's ``steps`` in metrics.json,
    so every run records the chain of steps that made it.
    """
    from tfopt.export import save_savedmodel
    from tfopt.interop import save_like
    from tfopt.training import distribute as D
    from tfopt.training.checkpoint import history_csv

    intended = Path(output or recipe.output.dir) / f"{source.name}-{suffix}"
    worker_root = None
    if not D.is_chief():  # the same files, where nobody reads them: the chief writes the run
        worker_root = D.worker_scratch(intended)
    run = RunDir(worker_root / intended.name if worker_root else intended,
                 overwrite=overwrite or worker_root is not None).open()
    if model is not None:
        save_like(model, getattr(source, "kind", "tf_keras"), run.path("model.keras"))
        if recipe.output.saved_model if saved_model is None else saved_model:
            save_savedmodel(model, run.path("saved_model"))
    for name, content in (files or {}).items():
        run.path(name).write_bytes(content)
    if history:
        atomic_write_text(run.path("history.csv"), history_csv(history))
    atomic_write_text(run.path("recipe.yaml"), recipe.to_yaml())
    steps = [*((getattr(source, "metrics", None) or {}).get("steps") or []), *([step] if step else [])]
    atomic_write_json(run.path("metrics.json"), {**metrics, "source": str(source.path), "steps": steps})
    final = run.commit()
    if worker_root is not None:
        import shutil

        shutil.rmtree(worker_root, ignore_errors=True)
        log(f"worker {D.task().index} done; the chief writes {intended}")
        return intended
    log(f"run written to {final}")
    return final


def with_step(recipe, step: str, cfg):
    """A copy of the recipe whose ``optimize.<step>`` holds the settings actually used."""
    r = recipe.model_copy(deep=True)
    setattr(r.optimize, step, cfg)
    return r


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a model's predictions."""
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(1) == y))


def selection_split(splits):
    """The data used to choose among variants: the validation split, else the test split."""
    return (splits.x_val, splits.y_val) if len(splits.x_val) else (splits.x_test, splits.y_test)
