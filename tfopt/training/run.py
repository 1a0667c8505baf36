"""``tfopt fit``: one training run from a recipe to a finished run directory.

Run directory layout (shared by every tfopt command that writes a model)::

    <output.dir>/<run-name>/
        model.keras      the trained model (no optimizer state)
        saved_model/     SavedModel, signature serving_default: input -> output
        recipe.yaml      the resolved recipe, every default filled in
        metrics.json     test loss/accuracy, params, MACs, wall time, versions
        history.csv      one row per epoch
        training.png     training curves
        checkpoints/     best.keras, last.keras (with optimizer state), state.json
        logs/            TensorBoard

:func:`fit` runs in phases: the run directory opened (or taken up again with ``--resume``),
the model built, the point training starts from (a fresh optimizer, or the last checkpoint's),
the callbacks, the compile settings, the training itself, the checks and evaluation of the
trained model, and the run written.
"""

from __future__ import annotations

import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
import yaml

import tfopt
from tfopt.callbacks import BatchNormRefresh, LRFinder
from tfopt.callbacks.batchnorm import batch_norm_layers
from tfopt.callbacks.recipe import recipe_callbacks
from tfopt.config.callbacks import LRFinderConfig
from tfopt.data.pipeline import load_splits, make_dataset
from tfopt.errors import RunDirError, ShapeError, TfoptError
from tfopt.export import load_keras, save_keras, save_savedmodel
from tfopt.models.builder import build_model
from tfopt.models.stats import model_stats, summary_table
from tfopt.plots import training_curves
from tfopt.rundir import PARTIAL, RunDir, atomic_write_json, atomic_write_text, provenance
from tfopt.training import compile as compile_probe
from tfopt.training import distribute
from tfopt.training.checkpoint import Checkpointer, StopAfter, read_state, write_state_key
from tfopt.training.compile import compile_model
from tfopt.training.lr import PlateauFactor, PolicySchedule


class Interrupted(TfoptError):
    """Training was stopped by Ctrl-C or SIGTERM; the run can be resumed."""

    exit_code = 130


class Diverged(TfoptError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    """A finished run: its folder, its metrics (those of ``metrics.json``), the model and the history."""

    run_dir: Path
    metrics: dict
    model: object
    history: list


@dataclass
class _Start:
    """Where training starts: epoch 0 with a fresh optimizer, or a resumed run's last checkpoint."""

    schedule: PolicySchedule
    state: dict | None = None  # the resumed run's state.json
    epoch: int = 0
    model: object = None  # the checkpointed model, compiled with its optimizer's state
    seconds: float = 0.0  # training time of the stretches before this one

    @property
    def optimizer(self):
        return None if self.model is None else self.model.optimizer


class _Clock:
    """Training seconds: those of the earlier stretches plus this one's."""

    def __init__(self, before: float):
        self.before, self.since = before, time.perf_counter()

    def restart(self) -> None:
        self.since = time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.since


def datasets(recipe, splits):
    """Train, validation (or None) and test pipelines for a recipe, sharded under tf.distribute."""
    t = recipe.train
    common = dict(one_hot=t.loss.one_hot, num_classes=splits.num_classes)
    train = make_dataset(splits.x_train, splits.y_train, t.batch_size, training=True, seed=recipe.seed,
                         augment=recipe.data.augment, shuffle_buffer=recipe.data.shuffle_buffer, **common)
    val = (make_dataset(splits.x_val, splits.y_val, t.batch_size, **common) if len(splits.x_val) else None)
    test = make_dataset(splits.x_test, splits.y_test, max(t.batch_size, 256), **common)
    if distribute.active() is not None:
        train, val, test = (distribute.shard(ds) if ds is not None else None for ds in (train, val, test))
    return train, val, test


def versions() -> dict:
    """The versions of Python and the libraries a run used."""
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "tf_keras": keras.__version__,
            "numpy": np.__version__, "tfopt": tfopt.__version__}


def _check_resume_recipe(run: RunDir, resolved: str):
    saved_path = run.path("recipe.yaml")
    if not saved_path.is_file():
        raise RunDirError(f"{run.partial} has no recipe.yaml; it is not a tfopt run and cannot be resumed.")
    saved, now = yaml.safe_load(saved_path.read_text()), yaml.safe_load(resolved)
    saved["train"].pop("epochs", None)
    now["train"].pop("epochs", None)
    if saved != now:
        diff = sorted(_diff_keys(saved, now))
        raise RunDirError(
            f"--resume: the recipe differs from the interrupted run's ({', '.join(diff[:6])}); only "
            f"train.epochs may change. Use the same recipe and --set options, or start afresh with --overwrite."
        )


def _diff_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def fit(recipe, *, output=None, resume=False, overwrite=False, callbacks=(), stop_after=None, splits=None,
        log=print) -> RunResult:
    """Train the model a recipe describes and write its run directory.

    Args:
        recipe: a validated :class:`tfopt.config.recipe.Recipe`.
        output: parent folder of the run directory; default ``recipe.output.dir``.
        resume: continue the interrupted run in ``<run>.partial`` from its last checkpoint.
        overwrite: replace a finished run of the same name (by rename, at the end).
        callbacks: extra Keras callbacks.
        stop_after: end training after this epoch; the learning-rate schedule still spans
            ``train.epochs`` (used by Hyperband, whose trials train part of the budget).
        splits: the recipe's data, already loaded with ``load_splits(recipe.data, recipe.seed)``.
        log: where progress lines go.

    Returns:
        A :class:`RunResult`: the finished run's folder (``run_dir``), its metrics (those of
        ``metrics.json``), the trained model and the history.

    Raises:
        RunDirError: the run directory cannot be used: a finished run of the same name without
            ``overwrite``, an interrupted one without ``resume`` or ``overwrite``, nothing to
            resume or a recipe that differs from the interrupted run's, a run being written by
            another process, or a folder that cannot be written.
        ShapeError: the model does not fit the data (its input shape or its number of classes).
        Interrupted: training was stopped; the run can be resumed.
        Diverged: the loss became NaN or infinite.
    """
    started = time.perf_counter()
    # before TensorFlow runs anything: MultiWorkerMirroredStrategy needs it so
    strategy = distribute.strategy(recipe.train.distribute)
    run, worker_root = _open_run(recipe, output, resume, overwrite)
    keras.utils.set_random_seed(recipe.seed)
    if splits is None:
        splits = load_splits(recipe.data, recipe.seed)
    model = _build(recipe, splits)
    start = _start(run, recipe, resume, splits, log)
    if start.model is not None:
        model = start.model
    plateau = PlateauFactor(start.schedule, verbose=1)
    if start.state:
        plateau.set_state(start.state.get("lr_state", {}))
    stock = _stock_callbacks(recipe, run)
    from_recipe = recipe_callbacks(recipe.callbacks, run.partial, _probe(recipe, splits))
    choice = _compile_choice(recipe, splits, model, start, strategy, [*from_recipe, *callbacks], stop_after)
    log(choice.describe())
    model = _compile(model, recipe, start, choice)
    # the same random state whether or not a probe ran, so the choice alone decides nothing else
    keras.utils.set_random_seed(recipe.seed + start.epoch)
    train_ds, val_ds, test_ds = datasets(recipe, splits)
    clock = _Clock(start.seconds)
    ckpt = _checkpointer(recipe, run, start, choice, plateau, clock, validated=val_ds is not None)
    cbs = [plateau, *stock, *from_recipe, *_refresh(recipe, splits, model), ckpt, *callbacks]
    if stop_after is not None:
        cbs.append(StopAfter(stop_after))
    _train(model, recipe, run, start.epoch, (train_ds, val_ds), cbs, stop_after, clock, quiet=worker_root is not None)
    fit_seconds = clock()
    model = _trained(model, recipe, run, ckpt, choice)
    metrics = _evaluate(model, test_ds, recipe, splits, ckpt, fit_seconds, choice, log)
    final = _write_run(run, model, recipe, metrics, ckpt.history, started)
    if worker_root is not None:
        shutil.rmtree(worker_root, ignore_errors=True)
        final = Path(output or recipe.output.dir) / recipe.run_name()
        log(f"worker {distribute.task().index} done; the chief writes the run")
    return RunResult(final, metrics, model, ckpt.history)


def _open_run(recipe, output, resume: bool, overwrite: bool) -> tuple[RunDir, Path | None]:
    """The checked run directory, and a non-chief worker's scratch folder (None on the chief)."""
    target = Path(output or recipe.output.dir) / recipe.run_name()
    worker_root = None
    if not distribute.is_chief():
        # the same work, written where nobody reads it; the chief writes the run
        worker_root = _worker_folder(target, resume)
        target, overwrite = worker_root / recipe.run_name(), True
    return RunDir(target, overwrite=overwrite, resume=resume).check(), worker_root


def _input_shape(recipe, splits) -> tuple:
    return tuple(recipe.model.input_shape or splits.input_shape)


def _steps_per_epoch(recipe, splits) -> int:
    return max(1, math.ceil(len(splits.x_train) / recipe.train.batch_size))


def _build(recipe, splits):
    """The recipe's model, built for its data (under the run's tf.distribute scope)."""
    input_shape = _input_shape(recipe, splits)
    if input_shape != splits.input_shape:
        raise ShapeError(f"model.input_shape {input_shape} does not match the data's images "
                         f"{splits.input_shape}.")
    with distribute.scope(recipe.train.distribute):
        model = build_model(recipe.model, input_shape, name=recipe.name)
    if model.output_shape[1:] != (splits.num_classes,):
        raise ShapeError(f"the model outputs {model.output_shape[1:]} but {recipe.data.name} has "
                         f"{splits.num_classes} classes; end the model with dense units: {splits.num_classes}.")
    return model


def _start(run: RunDir, recipe, resume: bool, splits, log) -> _Start:
    """Open the run's folder, write its resolved recipe, and find where training starts."""
    resolved = recipe.to_yaml()
    run.open()
    state = None
    if resume:
        _check_resume_recipe(run, resolved)
        state = read_state(run.partial)
    atomic_write_text(run.path("recipe.yaml"), resolved)
    schedule = PolicySchedule(recipe.lr_policy(), _steps_per_epoch(recipe, splits), recipe.train.epochs)
    last = run.path("checkpoints", "last.keras")
    if not (state and last.is_file()):
        return _Start(schedule)
    with distribute.scope(recipe.train.distribute):
        loaded = load_keras(last)
    saved_lr = getattr(loaded.optimizer, "_learning_rate", None)
    start = _Start(saved_lr if isinstance(saved_lr, PolicySchedule) else schedule, state, state["epochs_done"],
                   loaded, float(state.get("fit_seconds", 0.0)))
    log(f"resuming {run.partial} after epoch {start.epoch}")
    return start


def _probe(recipe, splits) -> tuple:
    """``(x, y)`` of the first 256 training images, labels as the loss reads them."""
    y = splits.y_train[:256]
    return splits.x_train[:256], np.eye(splits.num_classes, dtype="float32")[y] if recipe.train.loss.one_hot else y


def _stock_callbacks(recipe, run: RunDir) -> list:
    """Keras's own callbacks that the recipe asks for: stop on NaN, early stopping, TensorBoard."""
    t, out = recipe.train, []
    if t.stop_on_nan:
        out.append(keras.callbacks.TerminateOnNaN())
    if t.early_stopping:
        es = t.early_stopping
        out.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                                                 mode=es.direction(), restore_best_weights=es.restore_best_weights))
    if recipe.output.tensorboard:
        out.append(keras.callbacks.TensorBoard(str(run.path("logs")), write_graph=False, profile_batch=0))
    return out


def _refresh(recipe, splits, model) -> list:
    """The BatchNormalization refresh the recipe asks for: before each validation and checkpoint."""
    batches = recipe.train.batch_norm_refresh
    if not batches or not batch_norm_layers(model) or distribute.active() is not None:
        return []
    bs = recipe.train.batch_size
    return [BatchNormRefresh(splits.x_train[: bs * batches], batch_size=bs, batches=batches)]


def _compile_choice(recipe, splits, model, start: _Start, strategy, watched, stop_after):
    """XLA, steps per execution and precision: the resumed run's, the recipe's, or the probe's
    (one step per execution when a callback of ``watched`` works per batch)."""
    t = recipe.train
    if start.state and start.state.get("compile"):
        saved = start.state["compile"]
        return compile_probe.CompileChoice(saved["jit"], saved["steps_per_execution"], "resumed: " + saved["source"],
                                           precision=saved.get("precision", "float32"))
    if strategy is not None:
        return compile_probe.unprobed(t.compile, f"not probed under tf.distribute ({t.distribute})")
    input_shape, steps_per_epoch = _input_shape(recipe, splits), _steps_per_epoch(recipe, splits)

    def make_model(jit, spe, precision):
        copy = compile_probe.with_precision(build_model(recipe.model, input_shape, name=recipe.name), precision)
        return compile_model(copy, t, PolicySchedule(recipe.lr_policy(), steps_per_epoch, t.epochs), jit=jit,
                             steps_per_execution=spe)

    return compile_probe.resolve(
        t.compile, make_model=make_model, dataset=datasets(recipe, splits)[0], steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * max(0, min(t.epochs, stop_after or t.epochs) - start.epoch),
        batch_hooks=compile_probe.uses_batch_hooks(watched),
        cache_key=compile_probe.probe_key(model.get_config(), batch_size=t.batch_size, input_shape=input_shape,
                                          cfg=t.compile))


def _compile(model, recipe, start: _Start, choice):
    """``model`` compiled for training with ``choice``, in the precision it chose."""
    with distribute.scope(recipe.train.distribute):
        if start.optimizer is None:  # a resumed model keeps the precision it was saved with
            model = compile_probe.with_precision(model, choice.precision)
        compile_model(model, recipe.train, start.schedule, optimizer=start.optimizer, jit=choice.jit,
                      steps_per_execution=choice.steps_per_execution)
    return model


def _checkpointer(recipe, run: RunDir, start: _Start, choice, plateau, clock: _Clock, validated: bool):
    """The per-epoch checkpointer, continuing ``start``; it also stores the plateau state, the
    training time and the compile choice, for ``--resume``."""
    cfg = recipe.train.checkpoint
    monitor = cfg.monitor if validated else cfg.monitor.removeprefix("val_")
    return Checkpointer(run.partial, monitor, cfg.direction(), start.state,
                        extra_state={"lr_state": plateau.get_state, "fit_seconds": clock, "compile": choice.as_dict})


def _train(model, recipe, run: RunDir, initial_epoch: int, data, callbacks, stop_after, clock: _Clock, quiet: bool):
    """``model.fit`` from ``initial_epoch`` on ``data`` (training and validation pipelines).

    Raises:
        Interrupted: Ctrl-C or SIGTERM; the time trained is kept for the next ``--resume``.
    """
    t = recipe.train
    train_ds, val_ds = data
    verbose = (1 if sys.stdout.isatty() else 2) if t.verbose == "auto" else t.verbose
    if quiet:
        verbose = 0  # the chief reports progress; the others would repeat it line for line
    clock.restart()
    try:
        if initial_epoch < min(t.epochs, stop_after or t.epochs):
            model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, initial_epoch=initial_epoch,
                      callbacks=callbacks, verbose=verbose)
    except KeyboardInterrupt:
        # the interrupted stretch was training time too; the next --resume adds it up
        write_state_key(run.partial, "fit_seconds", clock())
        raise Interrupted(
            f"interrupted; the last completed epoch is checkpointed in {run.partial}. Continue with "
            f"the same command plus --resume."
        ) from None


def _trained(model, recipe, run: RunDir, ckpt: Checkpointer, choice):
    """The model training ends with: refused if the loss diverged, its best epoch's weights with
    ``train.restore_best``, computing in float32.

    Raises:
        Diverged: an epoch logged a NaN or infinite value.
    """
    t = recipe.train
    bad = [r for r in ckpt.history if not all(math.isfinite(v) for v in r.values())]
    if bad:
        raise Diverged(
            f"training diverged: the loss became NaN or infinite in epoch {bad[0]['epoch']}. The last finite "
            f"checkpoint is kept in {run.partial}/checkpoints. Lower train.lr.initial "
            f"({recipe.lr_policy().initial:g}) or set train.optimizer.global_clipnorm."
        )
    if t.restore_best and run.path("checkpoints", "best.keras").is_file():
        model.set_weights(load_keras(run.path("checkpoints", "best.keras")).get_weights())
    if choice.precision != "float32":
        # the run's model computes in float32, as it will be exported and deployed
        with distribute.scope(t.distribute):
            model = compile_probe.with_precision(model, "float32")
            compile_model(model, t, recipe.lr_policy().initial, jit=choice.jit,
                          steps_per_execution=choice.steps_per_execution)
    return model


def _evaluate(model, test_ds, recipe, splits, ckpt: Checkpointer, fit_seconds: float, choice, log) -> dict:
    """The run's metrics: the test split's loss and metrics, the model's size, how it trained."""
    log("evaluating on the test set")
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    return {
        **{f"test_{k}": float(v) for k, v in test.items()},
        **model_stats(model),
        "epochs": len(ckpt.history),
        "best_epoch": ckpt.best_epoch,
        f"best_{ckpt.monitor}": ckpt.best,
        "train_samples": int(len(splits.x_train)),
        "val_samples": int(len(splits.x_val)),
        "test_samples": int(len(splits.x_test)),
        "fit_seconds": round(fit_seconds, 3),
        "compile": choice.as_dict(),
        "distribute": distribute.describe(recipe.train.distribute, recipe.train.batch_size),
        "steps_per_epoch": _steps_per_epoch(recipe, splits),
        "wall_seconds": None,
        "normalization": splits.normalization,
        "versions": versions(),
    }


def _write_run(run: RunDir, model, recipe, metrics: dict, history: list, started: float) -> Path:
    """Write the model, its SavedModel and curves, then ``metrics.json``, and commit the run."""
    save_keras(model, run.path("model.keras"), include_optimizer=False)
    if recipe.output.saved_model:
        save_savedmodel(model, run.path("saved_model"))
    if recipe.output.plot:
        training_curves(history, run.path("training.png"), title=recipe.name)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
    metrics.update(provenance())
    atomic_write_json(run.path("metrics.json"), metrics)
    return run.commit()


def _worker_folder(target: Path, resume: bool) -> Path:
    """A temporary folder for a non-chief worker's copy of the run; on ``resume`` it starts from
    the chief's checkpoints (on one host, or a shared filesystem, as ``BackupAndRestore`` needs)."""
    root = distribute.worker_scratch(target)
    chief = target.with_name(target.name + PARTIAL)
    if resume and chief.is_dir():
        mine = root / chief.name
        mine.mkdir()
        for name in ("recipe.yaml", "checkpoints"):
            src = chief / name
            if src.is_dir():
                shutil.copytree(src, mine / name)
            elif src.is_file():
                shutil.copy2(src, mine / name)
    return root


def recipe_model_and_data(recipe):
    """``(freshly built model, data splits)`` of a validated recipe, seeded by its seed."""
    keras.utils.set_random_seed(recipe.seed)
    splits = load_splits(recipe.data, recipe.seed)
    return build_model(recipe.model, recipe.model.input_shape or splits.input_shape, name=recipe.name), splits


def summary(recipe) -> str:
    """The table of the model ``recipe`` builds: layers, output shapes, parameters and MACs
    (the data are read only when the recipe does not give the input shape)."""
    shape = recipe.input_shape()
    if shape is None:
        shape = load_splits(recipe.data, recipe.seed).input_shape
    return summary_table(build_model(recipe.model, shape, name=recipe.name))


def lr_find(recipe, *, min_lr=None, max_lr=None, steps=None, rule=None, plot=None, log=print) -> dict:
    """The learning-rate range test on ``recipe``'s freshly built model and training data.

    Settings not given come from the recipe's ``lr_finder`` callback entry, else its defaults.

    Returns:
        the suggestion (``lr``, ``rule``, ``reason``, ``min_lr``, ``max_lr``, ``steps``) plus
        ``curve``, a dozen ``(lr, smoothed loss)`` points.

    Raises:
        TfoptError: the settings are not a valid sweep.
    """
    cfg = recipe.callback("lr_finder") or LRFinderConfig()
    given = {"min_lr": min_lr, "max_lr": max_lr, "num_steps": steps, "rule": rule}
    args = {**cfg.model_dump(exclude={"name"}), **{k: v for k, v in given.items() if v is not None}}
    try:
        finder = LRFinder(**args, plot_path=plot)
    except ValueError as exc:
        raise TfoptError(f"lr-find: {exc}") from None
    model, splits = recipe_model_and_data(recipe)
    compile_model(model, recipe.train, args["min_lr"])
    train, _, _ = datasets(recipe, splits)
    log(f"sweeping the learning rate from {args['min_lr']:g} to {args['max_lr']:g} over {args['num_steps']} steps")
    model.fit(train, epochs=finder.epochs_needed(int(train.cardinality())), callbacks=[finder], verbose=0)
    points = list(zip(finder.lrs, finder.smoothed))
    return {**finder.suggestion(), "curve": points[:: max(1, len(points) // 12)]}
