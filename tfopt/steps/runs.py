"""A step's command: a source run in, the step on its model, the test metrics, a new run directory out.

:func:`run_source` is what every step command does; :func:`run_step` dispatches on the step
registry to the step's own command or to :func:`run_generic`. The source is never changed;
:func:`write_run` writes the new run atomically beside it.

Imports no TensorFlow at module level: the step modules import it while the command line
builds its help.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from tfopt.config import steps as C
from tfopt.config.limits import model_file_kind
from tfopt.config.step_registry import STEPS
from tfopt.config.validation import format_validation_errors
from tfopt.data.pipeline import load_splits, make_dataset
from tfopt.errors import TfoptError
from tfopt.export import save_savedmodel
from tfopt.interop import save_like
from tfopt.models.stats import model_stats
from tfopt.rundir import RunDir, atomic_write_json, atomic_write_text, history_csv, provenance
from tfopt.steps.settings import apply_step, step_settings
from tfopt.steps.source import beside, check_source_path, check_writable, load_source, looks_like, source_recipe
from tfopt.training import distribute
from tfopt.training.compile import compile_model
from tfopt.training.finetune import logging_to, logs_dir


def splits_of(source):
    """The data splits of a source's recipe."""
    return load_splits(source.recipe.data, source.recipe.seed)


def evaluate(model, recipe, splits) -> dict:
    """Test loss and metrics of a Keras model, compiled with the recipe's loss if it is not."""
    if getattr(model, "compiled_loss", None) is None:
        compile_model(model, recipe.train, 1e-3)
    ds = make_dataset(splits.x_test, splits.y_test, 256, one_hot=recipe.train.loss.one_hot,
                      num_classes=splits.num_classes)
    return {f"test_{k}": float(v) for k, v in model.evaluate(ds, verbose=0, return_dict=True).items()}


def base_metrics(source, model, splits, log=print) -> dict:
    """The test metrics and size of ``model``, with the source's own figures as ``baseline``."""
    log("evaluating on the test set")
    metrics = {**evaluate(model, source.recipe, splits), **model_stats(model)}
    if source.metrics:
        metrics["baseline"] = {k: source.metrics.get(k) for k in ("test_accuracy", "test_loss", "params", "macs")}
    return metrics


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a model's predictions."""
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(1) == y))


def selection_split(splits):
    """The data used to choose among variants: the validation split, else the test split."""
    return (splits.x_val, splits.y_val) if len(splits.x_val) else (splits.x_test, splits.y_test)


def write_run(source, suffix, *, recipe, metrics, model=None, files=None, history=None, output=None,
              overwrite=False, saved_model=None, step=None, log=print) -> Path:
    """Write a new run directory ``<output>/<source>-<suffix>`` atomically; the source is untouched.

    ``saved_model`` forces (or skips) the SavedModel; by default ``output.saved_model`` decides.
    ``step`` (the registered step's name) is appended to the source's ``steps`` in metrics.json,
    so every run records the chain of steps that made it. Under tf.distribute only the chief
    writes the run; the other workers write the same files where nobody reads them.

    Returns:
        The run's path.
    """
    intended = Path(output or beside(source.path)) / f"{source.name}-{suffix}"
    worker_root = None if distribute.is_chief() else distribute.worker_scratch(intended)
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
    logs = logs_dir()
    if logs is not None and logs.is_dir() and any(logs.iterdir()):
        shutil.copytree(logs, run.path("logs"), dirs_exist_ok=True)
    atomic_write_text(run.path("recipe.yaml"), recipe.to_yaml())
    steps = [*((getattr(source, "metrics", None) or {}).get("steps") or []), *([step] if step else [])]
    atomic_write_json(run.path("metrics.json"), {**metrics, "source": str(source.path), "steps": steps,
                                                 **provenance()})
    final = run.commit()
    if worker_root is not None:
        shutil.rmtree(worker_root, ignore_errors=True)
        log(f"worker {distribute.task().index} done; the chief writes {intended}")
        return intended
    log(f"run written to {final}")
    return final


def with_step(recipe, step: str, cfg):
    """A copy of the recipe whose ``optimize.<step>`` holds the settings actually used."""
    r = recipe.model_copy(deep=True)
    setattr(r.optimize, step, cfg)
    return r


def json_plain(report: dict) -> dict:
    """The entries of a step's report that JSON can hold."""
    plain = {}
    for k, v in report.items():
        try:
            json.dumps(v)
            plain[k] = v
        except TypeError:
            continue
    return plain


def run_generic(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """Any registered ``step``: its settings, the step, the test metrics and its JSON-able report
    (``<step>_<key>``), a new run. Returns ``(run path, metrics)``."""
    cfg = step_settings(source.recipe, step, given)
    splits = splits_of(source)
    model, report = apply_step(step, source.model, source.recipe, splits, cfg, log=log)
    metrics = {**base_metrics(source, model, splits, log),
               **{f"{step.name}_{k}": v for k, v in json_plain(report).items()}}
    in_optimize = step.name in C.Optimize.model_fields or step.name in C.Optimize.extra_keys()
    recipe = with_step(source.recipe, step.name, cfg) if cfg is not None and in_optimize else source.recipe
    path = write_run(source, step.folder_suffix(cfg), step=step.name, recipe=recipe, metrics=metrics, model=model,
                     history=report.get("history"), output=output, overwrite=overwrite, log=log)
    return path, metrics


def source_name(path) -> str:
    """The name of the source at ``path``, as its new runs are named (``<name>-pruned``): a run
    directory's or folder's own name, a model file's name without its suffix."""
    p = Path(path)
    return p.name if p.is_dir() else p.stem


def check_model_archive(path, run=None) -> None:
    """Refuse a ``.keras`` zip archive that cannot be read or holds no ``config.json``, from its
    table of contents only; any other file passes.

    Args:
        path: a model file.
        run: the run directory holding it, if any (the message then says the run is damaged).

    Raises:
        TfoptError: the archive is damaged, with the reason.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                return
        with zipfile.ZipFile(p) as archive:
            if "config.json" in archive.namelist():
                return
        reason = "it holds no config.json"
    except (zipfile.BadZipFile, OSError) as exc:
        reason = f"it cannot be read as a zip archive ({getattr(exc, 'strerror', None) or exc})"
    then = (f"; the run directory {run} is damaged. Train it again with tfopt fit --overwrite." if run is not None
            else ". Give a model file as Keras saved it.")
    raise TfoptError(f"{p} is a damaged Keras model file: {reason}{then}")


def check_teacher_path(path, label="--teacher") -> None:
    """Refuse a teacher that cannot be a Keras model, from its name and first bytes only.

    Args:
        path: a run directory, a SavedModel folder or a model file.
        label: what named it (``--teacher``, a recipe key), first in the message.

    Raises:
        TfoptError: ``path`` does not exist, is a folder without a model, a TFLite file, a file
            that is not a model (the message says what it looks like) or a damaged archive.
    """
    p = Path(path)
    model = p / "model.keras" if p.is_dir() else p
    if p.is_dir() and not model.is_file():
        if (p / "saved_model.pb").is_file():
            return
        raise TfoptError(f"{label}: {p} is a folder without model.keras or saved_model.pb: give a run directory from "
                         f"tfopt fit or a model file.")
    if not p.exists():
        raise TfoptError(f"{label}: {p} does not exist: give a run directory from tfopt fit or a model file.")
    kind = model_file_kind(model)
    if kind is None:
        raise TfoptError(f"{label}: {model} is not a model file: it is {looks_like(model)}. Give a run directory from "
                         f"tfopt fit or a model file (.keras, .h5).")
    if "TFLite" in kind:
        raise TfoptError(f"{label}: {model} is {kind}: a teacher is a Keras model; give the run directory it came "
                         f"from, or its .keras model.")
    check_model_archive(model)


def check_source(path, recipe=None, overrides=()):
    """What can be known of a source without loading its model: the path (see
    :func:`check_source_path`), its ``.keras`` archive, and its recipe with ``overrides``.

    Returns:
        The recipe the source is run with.

    Raises:
        TfoptError: the first problem found.
    """
    check_source_path(path)
    p = Path(path)
    run = p if p.is_dir() and (p / "recipe.yaml").is_file() else None
    model = p / "model.keras" if p.is_dir() else p
    if model.is_file():
        check_model_archive(model, run)
    found = source_recipe(path, recipe, overrides)
    if found is None:
        load_source(path, None, overrides)  # without a recipe, it refuses the source before loading any model
    return found


def validate_named(config, data: dict, where: str, flags: dict | None = None):
    """``config`` built from ``data``; a problem names its key as ``<where>.<key>``, or by the
    flag that gave the value (``flags``: key -> option, e.g. ``{"sparsity": "--sparsity"}``).

    Raises:
        TfoptError: every problem, in one paragraph.
    """
    data = {k: v for k, v in data.items() if v is not None}
    try:
        return config.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_errors(exc, data, config)
    flags = flags or {}
    named = [(flags.get(key.split(".")[0]) or f"{where}.{key}", message) for key, message in problems]
    raise TfoptError("; ".join(f"{name}: {message}" for name, message in named)) from None


def check_settings(step, recipe, given: dict, flags: dict | None = None):
    """The step's settings (see :func:`~tfopt.steps.settings.step_settings`), checked before any
    work; a problem with a value of ``given`` names its flag (``flags``: field -> option).

    Returns:
        The step's config, or None for a step without settings.
    """
    s = STEPS[step] if isinstance(step, str) else step
    if s.config is None:
        return None
    values = {k: v for k, v in given.items() if v is not None}
    own = step_settings(recipe, s, {})  # the recipe's section alone: its problems are named by their keys
    validate_named(s.config, {**own.model_dump(), **values}, s.recipe_section,
                   {k: v for k, v in (flags or {}).items() if k in values})
    return step_settings(recipe, s, values)


def check_new_run(path, name: str, suffix, output=None, overwrite=False) -> None:
    """Refuse the run ``<output>/<name>-<suffix>`` that exists (without ``overwrite``) or is half
    written, before any work, as ``fit`` does; a ``suffix`` of None writes no run."""
    if suffix is not None:
        RunDir(Path(output or beside(path)) / f"{name}-{suffix}", overwrite=overwrite).check()


def check_output(step, source, given: dict, output=None, overwrite=False) -> None:
    """Refuse an existing output run of a loaded ``source`` (see :func:`check_new_run`)."""
    check_new_run(source.path, source.name, step.folder_suffix(step_settings(source.recipe, step, given)), output,
                  overwrite)


def check_step_run(step, path, recipe=None, overrides=(), given=None, *, output=None, overwrite=False,
                   flags=None):
    """Everything a step command checks before it loads a model or imports TensorFlow: the source
    and its recipe (:func:`check_source`), the output folder, the step's settings (a value the
    command line gave named by its flag, see :func:`check_settings`), the teacher they name, and
    the new run's folder.

    Returns:
        The recipe the source is run with.

    Raises:
        TfoptError: the first problem found.
    """
    s = STEPS[step] if isinstance(step, str) else step
    given = given or {}
    found = check_source(path, recipe, overrides)
    check_writable(output or beside(path))
    cfg = check_settings(s, found, given, flags)
    teacher = getattr(cfg, "teacher", None)
    if teacher:
        check_teacher_path(teacher, (flags or {}).get("teacher", "--teacher") if given.get("teacher")
                           else f"{s.recipe_section}.teacher")
    check_new_run(path, source_name(path), s.folder_suffix(cfg), output, overwrite)
    return found


def run_step(step, source, given: dict, output=None, overwrite=False, log=print):
    """Run the registered ``step`` (a name or a :class:`~tfopt.config.step_registry.Step`) on a
    loaded ``source`` with the command-line values ``given``; the output folder is checked first.

    Returns:
        ``(new run path or None, metrics)``.
    """
    s = STEPS[step] if isinstance(step, str) else step
    check_output(s, source, given, output, overwrite)
    return (s.command or run_generic)(source, given, output=output, overwrite=overwrite, log=log, step=s)


def run_source(step, path, recipe=None, overrides=(), given=None, *, output=None, overwrite=False, log=print,
               flags=None):
    """Load ``path`` (a run directory, or a model file with ``recipe``) and run ``step`` on it:
    what every step command does, after the checks of :func:`check_step_run` (``flags``: the
    options that gave the values of ``given``, named in its messages). Returns ``(new run path
    or None, metrics)``."""
    s = STEPS[step] if isinstance(step, str) else step
    found = check_step_run(s, path, recipe, overrides, given, output=output, overwrite=overwrite, flags=flags)
    setting = found.train.distribute
    if setting == "multi_worker" and not os.environ.get("TF_CONFIG"):
        # the run trained on several workers; this fine-tune has no cluster (no --workers, no TF_CONFIG)
        log("train.distribute is multi_worker, but TF_CONFIG is not set: fine-tuning in one process")
        setting = "none"
    if setting != "none" and not s.distributed:
        if setting == "multi_worker":
            raise TfoptError(f"{s.name} does not run under tf.distribute; run it in one process (without --workers "
                             f"or TF_CONFIG, and with train.distribute: none)")
        log(f"{s.name} does not run under tf.distribute; running in one process")
        setting = "none"
    distribute.strategy(setting)  # before the model is loaded: MultiWorkerMirroredStrategy must come first
    # the fine-tunes' TensorBoard logs gather here until write_run copies them into the new run's logs/
    logs = Path(tempfile.mkdtemp(prefix="tfopt-logs-"))
    try:
        with distribute.scope(setting), logging_to(logs):
            return run_step(s, load_source(path, recipe, overrides), given or {}, output=output,
                            overwrite=overwrite, log=log)
    finally:
        shutil.rmtree(logs, ignore_errors=True)
