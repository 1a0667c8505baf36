"""The fine-tune every compression step runs: a model, plain data and one :class:`FineTuneSettings`.

:func:`fine_tune` compiles a model with the settings' loss (inferred from the labels when
none is given), metrics and optimizer, puts the hold-then-cosine rate
(:class:`tfopt.training.lr.HoldThenCosine`) inside the optimizer and fits; with a teacher it
trains through :class:`tfopt.distill.Distiller`. :func:`recalibrate_batchnorm` re-estimates
BatchNorm statistics afterwards.

TensorFlow is imported inside the functions: the step modules import this one while the
command line builds its help.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.losses import LOSSES
from tfopt.config.optimizers import OPTIMIZERS
from tfopt.data.coerce import as_dataset, count_steps, label_spec
from tfopt.errors import TfoptError
from tfopt.models.outputs import emits_logits, output_activation
from tfopt.training import distribute
from tfopt.training.compile import SPE, uses_batch_hooks

#: Fine-tune defaults. Pruning in particular needs the network to recover after the last
#: pruning update at a rate close to the one it trained with; a tenth of it, decayed to zero
#: while pruning still ran, lost 3.9 points on TFMOT's own pruning-tutorial model.
DEFAULT_LR = 1e-3
DEFAULT_BATCH_SIZE = 32
#: Fraction of the fine-tune steps held at the full rate before a cosine decay.
DEFAULT_HOLD = 0.5
#: Where the cosine decay ends, as a fraction of the full rate.
DEFAULT_FLOOR = 0.1
#: Batches whose statistics replace BatchNorm's moving averages after a fine-tune.
RECALIBRATION_BATCHES = 50
#: The run-time inputs of a step that are options of :func:`fine_tune`.
OPTIONS = ("callbacks", "lr_schedule_fn", "hold", "floor", "verbose")


#: Where the fine-tunes running in this context write TensorBoard logs, and their ``fit`` verbosity
#: when a caller gives none (see :func:`logging_to`).
_LOGS: ContextVar = ContextVar("tfopt_fine_tune_logs", default=(None, None))


@contextmanager
def logging_to(log_dir=None, verbose=None):
    """Within the block, every :func:`fine_tune` writes TensorBoard logs (loss, metrics and rate per
    epoch) under ``log_dir`` and, when called without ``verbose``, fits with this verbosity.

    Example:
        >>> with logging_to("run/logs", verbose=0):  # doctest: +SKIP
        ...     fine_tune(model, (x, y), FineTuneSettings(epochs=1))
    """
    token = _LOGS.set((None if log_dir is None else Path(log_dir), verbose))
    try:
        yield
    finally:
        _LOGS.reset(token)


def logs_dir():
    """The folder :func:`logging_to` set for this context's fine-tunes, or None."""
    return _LOGS.get()[0]


def tensorboard(log_dir):
    """A tf_keras TensorBoard callback writing per-epoch scalars only (no graph, no profile):
    it does no work per batch, so the fine-tune keeps its steps per call."""
    import tf_keras as keras

    return keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                       update_freq="epoch", profile_batch=0)


def options(inputs: dict) -> dict:
    """The :func:`fine_tune` options among a step's run-time ``inputs`` (others are the step's own)."""
    return {k: v for k, v in inputs.items() if k in OPTIONS}


def sharded(ds):
    """``ds`` sharded by element across workers when a tf.distribute strategy runs, else itself."""
    return distribute.shard(ds) if distribute.active() is not None else ds


def _output_units(model) -> int:
    shape = model.output_shape
    return int(shape[-1]) if shape[-1] is not None else 1


def infer_loss(model, data):
    """The loss for ``model`` on ``data``'s labels: sparse or one-hot categorical cross-entropy,
    or binary cross-entropy for one sigmoid unit; ``from_logits`` when the output is not a
    softmax/sigmoid.

    Returns:
        ``(loss, one_hot)``.
    """
    import tf_keras as keras

    act = output_activation(model)
    units = _output_units(model)
    rank, integer, xrank = label_spec(data)
    # A batched dataset's labels carry a batch axis: compare with the input's rank to tell.
    if xrank is not None and xrank == len(model.input_shape):
        rank -= 1
    if units == 1 or act == "sigmoid":
        return keras.losses.BinaryCrossentropy(from_logits=act != "sigmoid"), False
    if rank >= 1 and not integer:
        return keras.losses.CategoricalCrossentropy(from_logits=act != "softmax"), True
    return keras.losses.SparseCategoricalCrossentropy(from_logits=act != "softmax"), False


def build_loss(model, loss, data):
    """A loss object and whether labels are one-hot (None: unknown) from ``None`` (inferred from
    ``data``, see :func:`infer_loss`), a name, a tfopt loss config or a tf_keras loss.

    Returns:
        ``(loss, one_hot)``.
    """
    if loss is None:
        return infer_loss(model, data)
    if isinstance(loss, (str, dict)):
        loss = LOSSES.get(loss)
    if hasattr(loss, "build") and hasattr(loss, "one_hot"):  # a tfopt loss config
        return loss.build(emits_logits(model)), loss.one_hot
    return loss, None


def build_metrics(metrics, one_hot, loss) -> list:
    """Metric objects: ``metrics`` (tfopt metric configs are built for ``one_hot`` labels), or for
    None the accuracy that matches a classification ``loss`` (none for other losses)."""
    import tf_keras as keras

    if metrics is None:
        if isinstance(loss, keras.losses.BinaryCrossentropy):
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


def build_optimizer(optimizer, lr):
    """A tf_keras optimizer with rate ``lr`` (a float or a schedule) from a name,
    ``{"name": ..., **kwargs}``, a tfopt optimizer config or an optimizer (its class and settings
    are reused)."""
    import tf_keras as keras

    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config({**optimizer.get_config(), "learning_rate": lr})
    if isinstance(optimizer, (str, dict)):
        optimizer = OPTIMIZERS.get(optimizer)
    return optimizer.build(lr)


def _rate(lr, total, hold, floor, lr_schedule_fn):
    """``(the optimizer's rate, the callbacks that go with it, how it is described)``."""
    # training.lr defines tf_keras classes at its top: imported here, on the first fine-tune
    from tfopt.training.lr import HoldThenCosine, RateInLogs, RatePerStep

    if lr_schedule_fn is None:  # the rate lives in the optimizer: many steps per compiled call
        return (HoldThenCosine(lr, total, hold, floor), [RateInLogs()],
                f" held for {hold:.0%} of the steps, then cosine-decayed to {floor * lr:g}")
    return lr, [RatePerStep(lr_schedule_fn)], " on the given schedule"


def _distilling(model, train, data, settings: FineTuneSettings, batch_size, log):
    """``(the model to fit, its training data)``: with a teacher, a Distiller around ``model``, on
    the teacher's stored outputs when they were computed for ``data``."""
    if settings.teacher is None:
        return model, train
    # distill defines a tf_keras model class at its top: imported here, when a teacher is given
    from tfopt.distill import Distiller, TeacherTargets

    teacher = settings.teacher
    stored = teacher if isinstance(teacher, TeacherTargets) and teacher.covers(data) else None
    if stored is not None:
        train = sharded(stored.dataset(batch_size, seed=settings.seed))
    target = Distiller(model, getattr(teacher, "model", teacher), temperature=settings.temperature,
                       alpha=settings.alpha, targets_in_data=stored is not None)
    log(f"distilling from the teacher (temperature {settings.temperature:g}, alpha {settings.alpha:g}"
        + ("; its outputs computed once" if stored is not None else "") + ")")
    return target, train


def fine_tune(model, data, settings: FineTuneSettings, *, callbacks=(), lr_schedule_fn=None,
              hold: float = DEFAULT_HOLD, floor: float = DEFAULT_FLOOR, verbose=None, log=print):
    """Compile ``model`` (in place) and fit it on ``data`` as ``settings`` say.

    Args:
        model: the tf_keras model to train; the caller owns it (compression steps pass a copy).
        data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)``, batched or not.
        settings: epochs, peak rate (default 1e-3), batch size (default 32), loss (None: inferred
            from the labels and the output activation), metrics, optimizer, validation data,
            teacher (distillation, see :mod:`tfopt.distill`; a :class:`tfopt.distill.TeacherTargets`
            computed for ``data`` trains on its stored outputs) and seed.
        callbacks: more tf_keras callbacks (e.g. TFMOT's ``UpdatePruningStep``).
        lr_schedule_fn: step -> rate, set before every step; default: the peak rate for the first
            ``hold`` of the steps, then a cosine decay to ``floor`` times it, inside the optimizer
            (:class:`tfopt.training.lr.HoldThenCosine`, which also serves as ``lr_schedule_fn``).
        verbose: Keras ``fit`` verbosity; default: a progress bar on a terminal, else a line per epoch.
        log: receives progress lines.

    Returns:
        ``(history rows, seconds)``.

    Raises:
        TfoptError: fewer than one epoch, or data that is not ``(x, y)``.
    """
    import tf_keras as keras

    if settings.epochs < 1:
        raise TfoptError(f"fine-tune epochs must be at least 1; got {settings.epochs}")
    keras.utils.set_random_seed(settings.seed)
    lr = DEFAULT_LR if settings.lr is None else settings.lr
    batch_size = settings.batch_size or DEFAULT_BATCH_SIZE
    train = sharded(as_dataset(data, batch_size, model=model, training=True, seed=settings.seed))
    val = sharded(as_dataset(settings.validation_data, batch_size, model=model, what="validation_data")) \
        if settings.validation_data is not None else None
    loss, one_hot = build_loss(model, settings.loss, data)
    per_epoch = count_steps(data, batch_size, model)
    total = per_epoch * settings.epochs
    rate, rate_callbacks, described = _rate(lr, total, hold, floor, lr_schedule_fn)
    # a callback that works per batch (TFMOT's pruning step) needs every batch's call
    spe = 1 if uses_batch_hooks([*rate_callbacks, *callbacks]) else max(1, min(SPE, per_epoch))
    target, train = _distilling(model, train, data, settings, batch_size, log)
    target.compile(optimizer=build_optimizer(settings.optimizer, rate), loss=loss,
                   metrics=build_metrics(settings.metrics, one_hot, loss), steps_per_execution=spe)
    log(f"fine-tuning {settings.epochs} epoch(s) ({total} steps), learning rate {lr:g}{described}, "
        f"batch size {batch_size}, {spe} step(s) per call")
    started = time.perf_counter()
    log_dir, context_verbose = _LOGS.get()
    verbose = context_verbose if verbose is None else verbose
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    board = [tensorboard(log_dir)] if log_dir is not None else []
    hist = target.fit(train, validation_data=val, epochs=settings.epochs,
                      callbacks=[*rate_callbacks, *callbacks, *board], verbose=verbose)
    rows = [{"epoch": i + 1, **{k: float(v[i]) for k, v in hist.history.items()}} for i in range(len(hist.epoch))]
    return rows, time.perf_counter() - started


def recalibrate_batchnorm(model, data, *, batches: int = RECALIBRATION_BATCHES, batch_size: int | None = None,
                          log=print) -> int:
    """Re-estimate every BatchNorm's moving mean and variance of ``model`` (in place) from
    ``batches`` batches of ``data`` (see :func:`tfopt.callbacks.refresh_batch_norm`); no weight changes.

    A fine-tune that changes the layers before a BatchNorm a lot (pruning 70% of a conv's
    weights, removing channels) leaves its moving averages behind: the model does well in
    training mode and poorly in inference. On the bundled quickstart CNN, a 70%-sparsity prune
    went from 81% to 98.6% test accuracy with this and nothing else.

    Returns:
        The batches used (0 when the model has no BatchNorm, or under tf.distribute, where it is
        skipped).
    """
    from tfopt.callbacks.batchnorm import batch_norm_layers, refresh_batch_norm

    bns = batch_norm_layers(model)
    if not bns or data is None or batches < 1:
        return 0
    if distribute.active() is not None:
        log("BatchNorm statistics not re-estimated under tf.distribute")
        return 0
    ds = as_dataset(data, batch_size or DEFAULT_BATCH_SIZE, model=model, training=True)
    used = refresh_batch_norm(model, (x for x, *_ in ds), batches=batches)
    log(f"re-estimated the statistics of {len(bns)} BatchNorm layer(s) on {used} batches")
    return used


def after_surgery(what: str, model, data, settings: FineTuneSettings, inputs: dict, *,
                  bn_batches: int = RECALIBRATION_BATCHES, log=print) -> tuple[list, float]:
    """Fine-tune ``model`` (in place) after a change to its graph for ``settings.epochs`` (none for 0),
    then re-estimate its BatchNorm statistics (:func:`recalibrate_batchnorm`). ``inputs``: a step's
    run-time inputs, of which the fine-tune options are used (:func:`options`).

    Returns:
        ``(history rows, seconds)``.

    Raises:
        TfoptError: epochs without ``data`` (``what`` names the step).
    """
    if not settings.epochs:
        return [], 0.0
    if data is None:
        raise TfoptError(f"{what}: {settings.epochs} fine-tune epoch(s) need data; pass data=(x, y) or epochs=0")
    rows, seconds = fine_tune(model, data, settings, log=log, **options(inputs))
    recalibrate_batchnorm(model, data, batches=bn_batches, batch_size=settings.batch_size, log=log)
    return rows, seconds
