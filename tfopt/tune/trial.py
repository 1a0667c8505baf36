"""One trial: a concrete recipe trained with ``tfopt fit``, optionally compressed, then scored.

A trial trains exactly as ``tfopt fit`` would (same code, same seed), so the best recipe,
run with ``tfopt fit``, reproduces the trial. Its run directory lives in the trial's folder::

    trial_<id>/run/          the fit run (checkpoints, history.csv, metrics.json, model.keras)
    trial_<id>/result.json   the values the trial reported

An interrupted trial continues from its last finished epoch (``run.partial``). A Hyperband
trial that continues an earlier one starts from a copy of that trial's checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tfopt.data.pipeline import load_splits
from tfopt.errors import TfoptError
from tfopt.export import load_keras
from tfopt.models.stats import model_stats
from tfopt.report.report import gzip_size
from tfopt.rundir import PARTIAL, atomic_write_json
from tfopt.steps import STEPS
from tfopt.steps.runs import accuracy
from tfopt.steps.settings import apply_step
from tfopt.tflite import accuracy as tflite_accuracy
from tfopt.tflite import convert, latency_us
from tfopt.training.checkpoint import read_state
from tfopt.training.run import fit

RUN = "run"
_SPLITS: dict = {}


def splits_for(recipe):
    """The recipe's data, loaded once per data config and seed and kept for the next trial."""
    key = (json.dumps(recipe.data.model_dump(mode="json"), sort_keys=True), recipe.seed)
    if key not in _SPLITS:
        _SPLITS.clear()  # one dataset in memory at a time
        _SPLITS[key] = load_splits(recipe.data, recipe.seed)
    return _SPLITS[key]


def trial_recipe(recipe):
    """The recipe as a trial trains it: the same training, a lean run directory."""
    output = recipe.output.model_copy(update={"dir": ".", "run_name": RUN, "tensorboard": False,
                                              "saved_model": False, "plot": False})
    return recipe.model_copy(update={"output": output})


def _fit(recipe, folder: Path, epochs, parent: Path | None, splits, log):
    """Train (or continue) the trial's run; returns ``(model, history, metrics, epochs trained here)``."""
    final, partial = folder / RUN, folder / (RUN + PARTIAL)
    for old in (final, partial):
        if old.is_dir() and not _same_recipe(old, recipe):
            log(f"{old} holds a different recipe's run; starting this trial afresh")
            shutil.rmtree(old)
    if final.is_dir():
        log(f"trial already trained in {final}; reusing it")
        return (load_keras(final / "model.keras"), read_state(final)["history"],
                json.loads((final / "metrics.json").read_text()), 0)
    resume = (partial / "checkpoints" / "state.json").is_file()
    if not resume and parent is not None:
        if (parent / RUN / "checkpoints" / "state.json").is_file():
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(parent / RUN, partial)
            resume = True
            log(f"continuing trial {parent.name.removeprefix('trial_')} from its epoch "
                f"{read_state(partial)['epochs_done']}")
        else:
            log(f"the checkpoint of {parent.name} is not on this machine; training from the first epoch")
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    before = read_state(partial)["epochs_done"] if resume else 0
    result = fit(recipe, output=folder, resume=resume, stop_after=epochs, splits=splits, log=log)
    return result.model, result.history, result.metrics, len(result.history) - before


def _same_recipe(folder: Path, recipe) -> bool:
    saved = folder / "recipe.yaml"
    return saved.is_file() and saved.read_text() == recipe.to_yaml()


def _final_row(history, recipe) -> dict:
    """The logged values of the model training ends with (its best epoch with ``restore_best``)."""
    finite = [r for r in history if all(v == v for v in r.values())]
    row = finite[-1] if finite else {}
    if recipe.train.restore_best and finite:
        monitor, mode = recipe.train.checkpoint.monitor, recipe.train.checkpoint.direction()
        scored = [r for r in finite if monitor in r]
        if scored:
            row = (max if mode == "max" else min)(scored, key=lambda r: r[monitor])
    return {k: float(v) for k, v in row.items() if k not in ("epoch", "lr")}


def _compress(model, recipe, splits, steps, log):
    """Apply the ``tune.compress`` steps in order, each the registered step with the recipe's
    ``optimize.<step>`` settings (or its defaults); returns ``(keras model, tflite bytes or None)``."""
    content = None
    for name in steps:
        step = STEPS[name]
        cfg = getattr(recipe.optimize, name, None) or (step.config() if step.config else None)
        log(f"compressing: {name}")
        model, report = apply_step(step, model, recipe, splits, cfg, log=log)
        if isinstance(report.get("tflite"), bytes):
            content = report["tflite"]
    return model, content


def _measure(model, content, splits, needs, compressed, log) -> dict:
    out = {}
    if compressed:
        out["val_accuracy"] = (tflite_accuracy(content, splits.x_val, splits.y_val, log=log) if content is not None
                               else accuracy(model, splits.x_val, splits.y_val))
    stats = model_stats(model)
    out["params"], out["macs"] = float(stats["params"]), float(stats["macs"])
    if needs & {"tflite_kb", "latency_ms"}:
        if content is None:
            content = convert(model, "float32")
        out["tflite_kb"] = gzip_size(content) / 1000
        if "latency_ms" in needs:
            out["latency_ms"] = latency_us(content, splits.x_val[:1] if len(splits.x_val) else splits.x_test[:1],
                                           log=log)["median_us"] / 1000
    return out


def run_trial(recipe, folder: Path, objective, compress=(), epochs=None, parent: Path | None = None,
              log=print) -> dict:
    """Train, compress and score one concrete recipe in ``folder``.

    Args:
        recipe: the trial's validated recipe.
        folder: the trial's own folder (created if needed).
        objective: a :class:`tfopt.config.tune.Objective`.
        compress: ``tune.compress`` steps, applied in order after training.
        epochs: stop after this epoch (Hyperband); the schedule still spans ``train.epochs``.
        parent: the folder of the trial this one continues (Hyperband).

    Returns:
        every value the trial reports, ``score`` included.
    """
    started = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = splits_for(recipe)
    model, history, fit_metrics, trained = _fit(trial_recipe(recipe), folder, epochs, parent, splits, log)
    values = _final_row(history, recipe)
    if compress:
        values = {f"fit_{k}": v for k, v in values.items()}  # before compression; the scored values follow
    needs = objective.needs() | ({"tflite_kb"} if "quantize" in compress else set())
    if compress or needs:
        model, content = _compress(model, recipe, splits, compress, log) if compress else (model, None)
        values.update(_measure(model, content, splits, needs, bool(compress), log))
    missing = [k for k in (objective.metric, *objective.penalty) if k not in values]
    if missing:
        raise TfoptError(f"the trial did not report {', '.join(missing)}; it reported {', '.join(sorted(values))}")
    values.update(score=objective.score(values), epochs=float(len(history)), epochs_trained=float(trained),
                  seconds=round(time.perf_counter() - started, 3))
    if "test_accuracy" in fit_metrics:
        values["fit_test_accuracy" if compress else "test_accuracy"] = float(fit_metrics["test_accuracy"])
    atomic_write_json(folder / "result.json", values)
    return values

