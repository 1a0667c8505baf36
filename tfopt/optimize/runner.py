"""What every optimization command shares: fine-tuning, evaluation and writing the new run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tfopt.rundir import RunDir, atomic_write_json, atomic_write_text


def fine_tune_settings(recipe, cfg):
    """``(learning rate, batch size)`` for a fine-tune: the step's own, else derived from the recipe."""
    return (cfg.lr or recipe.lr_policy().initial / 10, cfg.batch_size or recipe.train.batch_size)


def fine_tune(model, recipe, splits, cfg, callbacks=(), log=print):
    """Compile ``model`` with the recipe's loss and metrics and fit it for ``cfg.epochs``, the
    learning rate following a cosine decay from ``lr`` over the fine-tune steps.

    Returns the history rows and the seconds spent.
    """
    from tfopt.callbacks.lr import LearningRateDecay
    from tfopt.data.pipeline import make_dataset
    from tfopt.schedules import LRPolicy
    from tfopt.training.run import compile_model

    import tf_keras as keras

    keras.utils.set_random_seed(recipe.seed)
    lr, batch_size = fine_tune_settings(recipe, cfg)
    t = recipe.train
    compile_model(model, t, lr)
    common = dict(one_hot=t.loss.one_hot, num_classes=splits.num_classes)
    train = make_dataset(splits.x_train, splits.y_train, batch_size, training=True, seed=recipe.seed,
                         augment=recipe.data.augment, shuffle_buffer=recipe.data.shuffle_buffer, **common)
    val = make_dataset(splits.x_val, splits.y_val, batch_size, **common) if len(splits.x_val) else None
    log(f"fine-tuning {cfg.epochs} epoch(s), learning rate {lr:g} with cosine decay, batch size {batch_size}")
    started = time.perf_counter()
    decay = LearningRateDecay(LRPolicy(initial=lr, schedule="cosine", per="step"))
    hist = model.fit(train, validation_data=val, epochs=cfg.epochs, callbacks=[decay, *callbacks],
                     verbose=1 if sys.stdout.isatty() else 2)
    rows = [{"epoch": i + 1, **{k: float(v[i]) for k, v in hist.history.items()}} for i in range(len(hist.epoch))]
    return rows, time.perf_counter() - started


def steps_per_epoch(recipe, splits, cfg) -> int:
    _, batch_size = fine_tune_settings(recipe, cfg)
    return int(np.ceil(len(splits.x_train) / batch_size))


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
              overwrite=False, saved_model=None, log=print) -> Path:
    """Write a new run directory ``<output>/<source>-<suffix>`` atomically; the source is untouched.

    ``saved_model`` forces (or skips) the SavedModel; by default ``output.saved_model`` decides.
    """
    from tfopt.export import save_keras, save_savedmodel
    from tfopt.training.checkpoint import history_csv

    run = RunDir(Path(output or recipe.output.dir) / f"{source.name}-{suffix}", overwrite=overwrite).open()
    if model is not None:
        save_keras(model, run.path("model.keras"), include_optimizer=False)
        if recipe.output.saved_model if saved_model is None else saved_model:
            save_savedmodel(model, run.path("saved_model"))
    for name, content in (files or {}).items():
        run.path(name).write_bytes(content)
    if history:
        atomic_write_text(run.path("history.csv"), history_csv(history))
    atomic_write_text(run.path("recipe.yaml"), recipe.to_yaml())
    atomic_write_json(run.path("metrics.json"), {**metrics, "source": str(source.path)})
    final = run.commit()
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
