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
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from tfopt.errors import RunDirError, ShapeError, TfoptError
from tfopt.rundir import RunDir, atomic_write_json, atomic_write_text


class Interrupted(TfoptError):
    """Training was stopped by Ctrl-C or SIGTERM; the run can be resumed."""

    exit_code = 130


class Diverged(TfoptError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    model: object
    history: list


def compile_model(model, train_cfg, learning_rate=None, *, optimizer=None, jit=False, steps_per_execution=1):
    """Compile ``model`` in place with the recipe's loss, metrics and optimizer.

    Args:
        learning_rate: a float or a ``LearningRateSchedule`` for a new optimizer.
        optimizer: an existing optimizer instead (a resumed run's, with its state).
        jit, steps_per_execution: XLA and steps per compiled call (see ``train.compile``).
    """
    from tfopt.models.builder import output_activation

    from_logits = output_activation(model) not in ("softmax", "sigmoid")
    model.compile(
        optimizer=optimizer if optimizer is not None else train_cfg.optimizer.build(learning_rate),
        loss=train_cfg.loss.build(from_logits),
        metrics=[m.build(train_cfg.loss.one_hot) for m in train_cfg.metrics],
        jit_compile=bool(jit),
        steps_per_execution=int(steps_per_execution),
    )
    return model


def datasets(recipe, splits):
    """Train, validation (or None) and test pipelines for a recipe."""
    from tfopt.data.pipeline import make_dataset

    t = recipe.train
    common = dict(one_hot=t.loss.one_hot, num_classes=splits.num_classes)
    train = make_dataset(splits.x_train, splits.y_train, t.batch_size, training=True, seed=recipe.seed,
                         augment=recipe.data.augment, shuffle_buffer=recipe.data.shuffle_buffer, **common)
    val = (make_dataset(splits.x_val, splits.y_val, t.batch_size, **common) if len(splits.x_val) else None)
    test = make_dataset(splits.x_test, splits.y_test, max(t.batch_size, 256), **common)
    from tfopt.training import distribute as D

    if D.active() is not None:
        train, val, test = (D.shard(ds) if ds is not None else None for ds in (train, val, test))
    return train, val, test


def versions() -> dict:
    import numpy
    import tensorflow as tf
    import tf_keras

    import tfopt

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
            "numpy": numpy.__version__, "tfopt": tfopt.__version__}


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
        the finished run's folder, its metrics and the trained model.
    """
    from tfopt.training import distribute as D

    started = time.perf_counter()
    setting = recipe.train.distribute
    strategy = D.strategy(setting)  # before TensorFlow runs anything: MultiWorkerMirroredStrategy needs it so

    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.export import load_keras, save_keras, save_savedmodel
    from tfopt.models.builder import build_model
    from tfopt.models.stats import model_stats
    from tfopt.training import compile as compile_probe
    from tfopt.training.checkpoint import Checkpointer, StopAfter, read_state, write_state_key
    from tfopt.training.lr import PlateauFactor, PolicySchedule
    target = Path(output or recipe.output.dir) / recipe.run_name()
    worker_root = None
    if not D.is_chief():
        # the same work, written where nobody reads it; the chief writes the run
        worker_root = _worker_folder(target, resume)
        target, overwrite = worker_root / recipe.run_name(), True
    run = RunDir(target, overwrite=overwrite, resume=resume).check()
    keras.utils.set_random_seed(recipe.seed)
    if splits is None:
        splits = load_splits(recipe.data, recipe.seed)
    input_shape = recipe.model.input_shape or splits.input_shape
    if tuple(input_shape) != splits.input_shape:
        raise ShapeError(f"model.input_shape {tuple(input_shape)} does not match the data's images "
                         f"{splits.input_shape}.")
    with D.scope(setting):
        model = build_model(recipe.model, input_shape, name=recipe.name)
    if model.output_shape[1:] != (splits.num_classes,):
        raise ShapeError(f"the model outputs {model.output_shape[1:]} but {recipe.data.name} has "
                         f"{splits.num_classes} classes; end the model with dense units: {splits.num_classes}.")
    resolved = recipe.to_yaml()
    run.open()
    state = None
    if resume:
        _check_resume_recipe(run, resolved)
        state = read_state(run.partial)
    atomic_write_text(run.path("recipe.yaml"), resolved)

    t = recipe.train
    policy = recipe.lr_policy()
    steps_per_epoch = max(1, math.ceil(len(splits.x_train) / t.batch_size))
    schedule = PolicySchedule(policy, steps_per_epoch, t.epochs)
    initial_epoch = 0
    optimizer = None
    previous_seconds = 0.0
    if state and run.path("checkpoints", "last.keras").is_file():
        with D.scope(setting):
            loaded = load_keras(run.path("checkpoints", "last.keras"))
        model, optimizer = loaded, loaded.optimizer
        saved_lr = getattr(optimizer, "_learning_rate", None)
        if isinstance(saved_lr, PolicySchedule):
            schedule = saved_lr
        initial_epoch = state["epochs_done"]
        previous_seconds = float(state.get("fit_seconds", 0.0))
        log(f"resuming {run.partial} after epoch {initial_epoch}")
    else:
        state = None
    plateau = PlateauFactor(schedule, verbose=1)
    if state:
        plateau.set_state(state.get("lr_state", {}))

    extra = []
    if t.stop_on_nan:
        extra.append(keras.callbacks.TerminateOnNaN())
    if t.early_stopping:
        es = t.early_stopping
        extra.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta,
                                                   mode=es.direction(), restore_best_weights=es.restore_best_weights))
    if recipe.output.tensorboard:
        extra.append(keras.callbacks.TensorBoard(str(run.path("logs")), write_graph=False, profile_batch=0))
    probe_y = splits.y_train[:256]
    probe = (splits.x_train[:256], np.eye(splits.num_classes, dtype="float32")[probe_y] if t.loss.one_hot else probe_y)
    recipe_cbs = [cb for cb in (c.build(run.partial, probe) for c in recipe.callbacks) if cb is not None]
    extra += recipe_cbs

    if state and state.get("compile"):
        saved = state["compile"]
        choice = compile_probe.CompileChoice(saved["jit"], saved["steps_per_execution"], "resumed: " + saved["source"],
                                             precision=saved.get("precision", "float32"))
    elif strategy is not None:
        choice = compile_probe.unprobed(t.compile, f"not probed under tf.distribute ({setting})")
    else:
        def make_model(jit, spe, precision):
            copy = compile_probe.with_precision(build_model(recipe.model, input_shape, name=recipe.name), precision)
            return compile_model(copy, t, PolicySchedule(policy, steps_per_epoch, t.epochs), jit=jit,
                                 steps_per_execution=spe)

        choice = compile_probe.resolve(
            t.compile, make_model=make_model, dataset=datasets(recipe, splits)[0], steps_per_epoch=steps_per_epoch,
            total_steps=steps_per_epoch * max(0, min(t.epochs, stop_after or t.epochs) - initial_epoch),
            batch_hooks=compile_probe.uses_batch_hooks([*recipe_cbs, *callbacks]),
            cache_key=compile_probe.probe_key(model.get_config(), batch_size=t.batch_size, input_shape=input_shape,
                                              cfg=t.compile))
    log(choice.describe())
    with D.scope(setting):
        if optimizer is None:  # a resumed model keeps the precision it was saved with
            model = compile_probe.with_precision(model, choice.precision)
        compile_model(model, t, schedule, optimizer=optimizer, jit=choice.jit,
                      steps_per_execution=choice.steps_per_execution)
    # the same random state whether or not a probe ran, so the choice alone decides nothing else
    keras.utils.set_random_seed(recipe.seed + initial_epoch)

    train_ds, val_ds, test_ds = datasets(recipe, splits)
    monitor = t.checkpoint.monitor if val_ds is not None else t.checkpoint.monitor.removeprefix("val_")
    fit_started = time.perf_counter()

    def fit_seconds_so_far():
        return previous_seconds + time.perf_counter() - fit_started

    ckpt = Checkpointer(run.partial, monitor, t.checkpoint.direction(), state,
                        extra_state={"lr_state": plateau.get_state, "fit_seconds": fit_seconds_so_far,
                                     "compile": choice.as_dict})
    cbs = [plateau, *extra, ckpt, *callbacks]
    if stop_after is not None:
        cbs.append(StopAfter(stop_after))
    verbose = (1 if sys.stdout.isatty() else 2) if t.verbose == "auto" else t.verbose
    if worker_root is not None:
        verbose = 0  # the chief reports progress; the others would repeat it line for line

    fit_started = time.perf_counter()
    try:
        if initial_epoch < min(t.epochs, stop_after or t.epochs):
            model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, initial_epoch=initial_epoch,
                      callbacks=cbs, verbose=verbose)
    except KeyboardInterrupt:
        # the interrupted stretch was training time too; the next --resume adds it up
        write_state_key(run.partial, "fit_seconds", fit_seconds_so_far())
        raise Interrupted(
            f"interrupted; the last completed epoch is checkpointed in {run.partial}. Continue with "
            f"the same command plus --resume."
        ) from None
    fit_seconds = fit_seconds_so_far()
    bad = [r for r in ckpt.history if not all(math.isfinite(v) for v in r.values())]
    if bad:
        epoch = bad[0]["epoch"] if bad else "?"
        raise Diverged(
            f"training diverged: the loss became NaN or infinite in epoch {epoch}. The last finite "
            f"checkpoint is kept in {run.partial}/checkpoints. Lower train.lr.initial "
            f"({policy.initial:g}) or set train.optimizer.global_clipnorm."
        )
    if t.restore_best and run.path("checkpoints", "best.keras").is_file():
        model.set_weights(load_keras(run.path("checkpoints", "best.keras")).get_weights())

    if choice.precision != "float32":
        # the run's model computes in float32, as it will be exported and deployed
        trained = model
        with D.scope(setting):
            model = compile_probe.with_precision(trained, "float32")
            compile_model(model, t, policy.initial, jit=choice.jit, steps_per_execution=choice.steps_per_execution)
    log("evaluating on the test set")
    test = model.evaluate(test_ds, verbose=0, return_dict=True)
    metrics = {
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
        "distribute": D.describe(setting, t.batch_size),
        "steps_per_epoch": steps_per_epoch,
        "wall_seconds": None,
        "normalization": splits.normalization,
        "versions": versions(),
    }
    save_keras(model, run.path("model.keras"), include_optimizer=False)
    if recipe.output.saved_model:
        save_savedmodel(model, run.path("saved_model"))
    if recipe.output.plot:
        from tfopt.report.plots import training_curves

        training_curves(ckpt.history, run.path("training.png"), title=recipe.name)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(run.path("metrics.json"), metrics)
    final = run.commit()
    if worker_root is not None:
        import shutil

        shutil.rmtree(worker_root, ignore_errors=True)
        final = Path(output or recipe.output.dir) / recipe.run_name()
        log(f"worker {D.task().index} done; the chief writes the run")
    return RunResult(final, metrics, model, ckpt.history)


def _worker_folder(target: Path, resume: bool) -> Path:
    """A temporary folder for a non-chief worker's copy of the run; on ``resume`` it starts from
    the chief's checkpoints (on one host, or a shared filesystem, as ``BackupAndRestore`` needs)."""
    import shutil

    from tfopt.rundir import PARTIAL
    from tfopt.training import distribute as D

    root = D.worker_scratch(target)
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
    import tf_keras

    from tfopt.data import load_data
    from tfopt.models.builder import build_model

    tf_keras.utils.set_random_seed(recipe.seed)
    splits = load_data(recipe.data, recipe.seed)
    return build_model(recipe.model, recipe.model.input_shape or splits.input_shape, name=recipe.name), splits


def summary(recipe) -> str:
    """The table of the model ``recipe`` builds: layers, output shapes, parameters and MACs
    (the data are read only when the recipe does not give the input shape)."""
    from tfopt.models.builder import build_model
    from tfopt.models.stats import summary_table

    shape = recipe.input_shape()
    if shape is None:
        from tfopt.data import load_data

        shape = load_data(recipe.data, recipe.seed).input_shape
    return summary_table(build_model(recipe.model, shape, name=recipe.name))


def lr_find(recipe, *, min_lr=None, max_lr=None, steps=None, rule=None, plot=None, log=print) -> dict:
    """The learning-rate range test on ``recipe``'s freshly built model and training data.

    Settings not given come from the recipe's ``lr_finder`` callback entry, else its defaults.
    Returns the suggestion (``lr``, ``rule``, ``reason``, ``min_lr``, ``max_lr``, ``steps``) plus
    ``curve``, a dozen ``(lr, smoothed loss)`` points.
    """
    from tfopt.config.callbacks import LRFinderConfig
    from tfopt.callbacks import LRFinder

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
