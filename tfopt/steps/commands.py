"""The optimization commands: recipe and command-line values -> keyword arguments -> the
library step -> a new run directory.

Each step's work is a library function that takes a model and plain keyword arguments
(:mod:`tfopt.steps.prune`, ``cluster``, ``quantize``, ``structured``, ``remove``, ``fold``);
the functions here only resolve settings, load the data, call it, verify and write. Every step
is registered once in :data:`tfopt.config.step_registry.STEPS`, which :func:`run` dispatches on.
"""

from __future__ import annotations

import os

from tfopt.errors import TfoptError
from tfopt.config import steps as C
from tfopt.config.step_registry import STEPS, register
from tfopt.tflite import VerificationFailed


def settings(recipe, step: str | None, cls, given: dict):
    """The recipe's ``optimize.<step>`` (or ``export``, or defaults) with the command-line values on top."""
    base = getattr(recipe.optimize, step, None) if step else recipe.export
    data = {**(base.model_dump() if base else {}), **{k: v for k, v in given.items() if v is not None}}
    return C.validated(cls, data, f"optimize.{step}" if step else "export")


def step_settings(recipe, step, given: dict):
    """The settings of registered ``step``: its recipe section with ``given`` on top (None for a
    step without settings)."""
    if step.config is None:
        return None
    return settings(recipe, None if step.recipe_section == "export" else step.name, step.config, given)


def check_output(step, source, given: dict, output=None, overwrite=False) -> None:
    """Refuse an existing output run before any work, as ``fit`` does (a step whose suffix is
    None for these settings writes no run)."""
    from pathlib import Path

    from tfopt.rundir import RunDir

    suffix = step.folder_suffix(step_settings(source.recipe, step, given))
    if suffix is not None:
        RunDir(Path(output or source.recipe.output.dir) / f"{source.name}-{suffix}", overwrite=overwrite).check()


def run(step, source, given: dict, output=None, overwrite=False, log=print):
    """Run the registered step ``step`` (a name or a :class:`Step`) on a loaded ``source`` with
    the command-line values ``given``; the output folder is checked first."""
    s = STEPS[step] if isinstance(step, str) else step
    check_output(s, source, given, output, overwrite)
    return (s.command or run_generic)(source, given, output=output, overwrite=overwrite, log=log, step=s)


def run_source(step, path, recipe=None, overrides=(), given=None, *, output=None, overwrite=False, log=print):
    """Load ``path`` (a run directory, or a model file with ``recipe``) and run ``step`` on it:
    what every step command does. Returns ``(new run path or None, metrics)``."""
    from tfopt.steps.source import load_source, source_recipe
    from tfopt.training import distribute as D

    s = STEPS[step] if isinstance(step, str) else step
    found = source_recipe(path, recipe, overrides)
    setting = found.train.distribute if found is not None else "none"
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
    D.strategy(setting)  # before the model is loaded: MultiWorkerMirroredStrategy must come first
    with D.scope(setting):
        return run(s, load_source(path, recipe, overrides), given or {}, output=output, overwrite=overwrite,
                   log=log)


def _base_metrics(source, model, splits, log):
    from tfopt.models.stats import model_stats
    from tfopt.steps.runner import evaluate

    log("evaluating on the test set")
    metrics = {**evaluate(model, source.recipe, splits), **model_stats(model)}
    if source.metrics:
        metrics["baseline"] = {k: source.metrics.get(k) for k in ("test_accuracy", "test_loss", "params", "macs")}
    return metrics


def _splits(source):
    from tfopt.data.pipeline import load_splits

    return load_splits(source.recipe.data, source.recipe.seed)


def fit_kwargs(recipe, splits, cfg, model=None, log=print) -> dict:
    """The fine-tune keyword arguments of a step from the recipe and its data; with
    ``cfg.distill``, ``cfg.teacher`` (a path) or else ``model`` (the step's input) is the teacher.
    A fine-tune of more epochs than the augmentation has placements of an image learns from the
    teacher's outputs computed once (:class:`tfopt.distill.TeacherTargets`)."""
    from tfopt.steps.runner import recipe_fit
    from tfopt.steps.source import load_teacher

    kwargs = recipe_fit(recipe, splits, cfg)
    if getattr(cfg, "distill", False):
        if model is None:
            raise TfoptError("distillation needs the step's input model as its teacher")
        teacher = load_teacher(cfg.teacher, model) if getattr(cfg, "teacher", None) else model
        kwargs.update(teacher=_stored_teacher(teacher, recipe, splits, kwargs, log) or teacher,
                      temperature=cfg.temperature, alpha=cfg.alpha)
    return kwargs


def _stored_teacher(teacher, recipe, splits, kwargs, log):
    """The teacher's outputs computed once for this fine-tune's pipeline, where that takes fewer
    passes of the teacher than the fine-tune's epochs; else None."""
    from tfopt.distill import TeacherTargets
    from tfopt.training import distribute as D

    if D.active() is not None or recipe.train.loss.one_hot:  # a sharded pipeline, or one-hot labels
        return None
    return TeacherTargets.build(teacher, splits.x_train, splits.y_train, source=kwargs["data"],
                                augment=recipe.data.augment, batch_size=kwargs["batch_size"], seed=recipe.seed,
                                shuffle_buffer=recipe.data.shuffle_buffer, max_passes=kwargs["epochs"] - 1, log=log)


def step_kwargs(cfg, exclude=()) -> dict:
    """A step config as keyword arguments for its library function (fine-tune fields dropped:
    :func:`fit_kwargs` carries them)."""
    return {k: v for k, v in cfg.model_dump().items() if k not in (*C.FINE_TUNE_FIELDS, *exclude)}


def apply_generic(step, model, recipe, splits, cfg, log=print):
    """A registered step's function on ``model`` with the recipe's fine-tune settings."""
    kwargs = step_kwargs(cfg) if cfg is not None else {}
    fit = fit_kwargs(recipe, splits, cfg, model, log) if cfg is not None and hasattr(cfg, "epochs") else {}
    return step.function(model, **fit, **kwargs, log=log)


def apply_step(step, model, recipe, splits, cfg, log=print):
    """The registered ``step`` on ``model`` for a chain (``tune.compress``): its own ``apply``,
    else its function with the recipe's fine-tune settings. Returns ``(model, report)``."""
    if step.apply is not None:
        return step.apply(model, recipe, splits, cfg, log=log)
    return apply_generic(step, model, recipe, splits, cfg, log=log)


def run_generic(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """Any registered step: settings, the function, the test metrics, a new run."""
    import json

    from tfopt.steps.runner import with_step, write_run

    cfg = step_settings(source.recipe, step, given)
    splits = _splits(source)
    model, report = apply_step(step, source.model, source.recipe, splits, cfg, log=log)
    plain = {}
    for k, v in report.items():  # keep what JSON can hold
        try:
            json.dumps(v)
            plain[k] = v
        except TypeError:
            continue
    metrics = {**_base_metrics(source, model, splits, log), **{f"{step.name}_{k}": v for k, v in plain.items()}}
    in_optimize = step.name in C.Optimize.model_fields or step.name in C.Optimize.extra_keys()
    recipe = with_step(source.recipe, step.name, cfg) if cfg is not None and in_optimize else source.recipe
    path = write_run(source, step.folder_suffix(cfg), step=step.name, recipe=recipe, metrics=metrics, model=model,
                     history=report.get("history"), output=output, overwrite=overwrite, log=log)
    return path, metrics


# ---- magnitude pruning ---------------------------------------------------------------------

def apply_prune(model, recipe, splits, cfg, log=print):
    from tfopt.steps.prune import prune

    probe = splits.x_train[: cfg.probe_samples] if cfg.criterion == "activation" else None
    return prune(model, **fit_kwargs(recipe, splits, cfg, model, log), **step_kwargs(cfg), probe=probe, log=log)


def run_prune(source, given: dict, output=None, overwrite=False, log=print, step=None):
    from tfopt.steps.runner import with_step, write_run

    cfg = settings(source.recipe, "prune", C.PruneConfig, given)
    splits = _splits(source)
    model, report = apply_prune(source.model, source.recipe, splits, cfg, log=log)
    metrics = {**_base_metrics(source, model, splits, log), "sparsity": report["sparsity"],
               "per_layer_sparsity": report["per_layer"], "preflight": report["plan"],
               "fine_tune_seconds": round(report["fine_tune_seconds"], 2)}
    for name, v in report["per_layer"].items():
        log(f"  {name:<20} sparsity {v['sparsity']:.1%} of {v['weights']:,} weights")
    log(f"overall kernel sparsity {report['sparsity']:.1%}; test accuracy {metrics.get('test_accuracy', float('nan')):.4f}")
    path = write_run(source, "pruned", step="prune", recipe=with_step(source.recipe, "prune", cfg), metrics=metrics, model=model,
                     history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics


# ---- clustering ------------------------------------------------------------------------------

def apply_cluster(model, recipe, splits, cfg, log=print):
    from tfopt.steps.cluster import cluster

    return cluster(model, **fit_kwargs(recipe, splits, cfg, model, log), **step_kwargs(cfg), log=log)


def run_cluster(source, given: dict, output=None, overwrite=False, log=print, step=None):
    from tfopt.steps.runner import with_step, write_run

    cfg = settings(source.recipe, "cluster", C.ClusterConfig, given)
    splits = _splits(source)
    model, report = apply_cluster(source.model, source.recipe, splits, cfg, log=log)
    metrics = {**_base_metrics(source, model, splits, log), "unique_values": report["unique_values"],
               "fine_tune_seconds": round(report["fine_tune_seconds"], 2)}
    for name, n in report["unique_values"].items():
        log(f"  {name:<20} {n} unique values")
    path = write_run(source, "clustered", step="cluster", recipe=with_step(source.recipe, "cluster", cfg), metrics=metrics,
                     model=model, history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics


# ---- quantization and export -------------------------------------------------------------------

def _verified(keras_model, content, mode, splits, threshold, log):
    from tfopt.tflite import verify

    log(f"verifying the {mode} TFLite file on {len(splits.x_test)} held-out images")
    v = verify(keras_model, content, splits.x_test, splits.y_test, mode, threshold, log=log)
    log("  " + v.line())
    return v


def _threshold(export_cfg, mode):
    return export_cfg.min_agreement_float if mode in ("float32", "float16") else export_cfg.min_agreement_int8


def apply_quantize(model, recipe, splits, cfg, log=print):
    """``(keras model, report with "tflite" bytes)``: the QAT model for ``qat``, else the input."""
    from tfopt.steps import quantize as q

    if cfg.mode == "qat":
        qat, report = q.quantize_aware(model, **fit_kwargs(recipe, splits, cfg, model, log), log=log)
        return qat, {**report, "tflite": q.qat_tflite(qat, cfg.int8_io)}
    log(f"converting to TFLite ({cfg.mode})")
    content = q.post_training(model, cfg.mode, splits.x_train, cfg.int8_io, cfg.representative_samples, recipe.seed)
    return model, {"tflite": content}


def run_quantize(source, given: dict, output=None, overwrite=False, log=print, step=None):
    from tfopt.steps.runner import evaluate, with_step, write_run

    cfg = settings(source.recipe, "quantize", C.QuantizeConfig, given)
    splits = _splits(source)
    metrics = _base_metrics(source, source.model, splits, log)
    reference, report = apply_quantize(source.model, source.recipe, splits, cfg, log=log)
    content, history = report["tflite"], report.get("history")
    mode = "int8" if cfg.mode == "qat" else cfg.mode
    if cfg.mode == "qat":
        metrics.update({f"qat_{k}": v for k, v in evaluate(reference, source.recipe, splits).items()},
                       scheme=report["scheme"], float_layers=report["float_layers"],
                       fine_tune_seconds=round(report["fine_tune_seconds"], 2))
    v = _verified(reference, content, mode, splits, _threshold(source.recipe.export, mode), log)
    metrics["tflite"] = {f"model_{mode}.tflite": {**v.__dict__, "bytes": len(content)}}
    if not v.passed:
        raise VerificationFailed(f"TFLite verification failed: {v.line()}. Nothing was written.")
    path = write_run(source, _quantize_suffix(cfg), step="quantize", recipe=with_step(source.recipe, "quantize", cfg), metrics=metrics,
                     model=source.model if cfg.mode != "qat" else None, files={f"model_{mode}.tflite": content},
                     history=history, output=output, overwrite=overwrite, log=log)
    return path, metrics


def _quantize_suffix(cfg) -> str:
    return "qat" if cfg.mode == "qat" else cfg.mode


def _remove_suffix(cfg):
    """``removed``; None when the settings only analyze (no layers, no budget): no run is written."""
    return None if cfg.analyze and cfg.budget is None and not cfg.layers else "removed"


def run_export(source, given: dict, output=None, overwrite=False, log=print, step=None):
    from tfopt.steps import quantize as q
    from tfopt.steps.runner import write_run

    cfg = settings(source.recipe, None, C.Export, given)
    splits = _splits(source)
    metrics = _base_metrics(source, source.model, splits, log)
    files, results, failed = {}, {}, []
    for mode in cfg.tflite:
        log(f"converting to TFLite ({mode})")
        content = q.post_training(source.model, mode, splits.x_train, cfg.int8_io, cfg.representative_samples,
                                  source.recipe.seed)
        v = _verified(source.model, content, mode, splits, _threshold(cfg, mode), log)
        files[f"model_{mode}.tflite"] = content
        results[f"model_{mode}.tflite"] = {**v.__dict__, "bytes": len(content)}
        if not v.passed:
            failed.append(v.line())
    if failed:
        raise VerificationFailed("TFLite verification failed: " + "; ".join(failed) + ". Nothing was written.")
    metrics["tflite"] = results
    recipe = source.recipe.model_copy(deep=True)
    recipe.export = cfg
    path = write_run(source, "export", step="export", recipe=recipe, metrics=metrics, model=source.model, files=files,
                     output=output, overwrite=overwrite, saved_model=True, log=log)
    return path, metrics


def _export_function(model, data=None, *, tflite=("float32",), int8_io=False, representative_samples=500, seed=0,
                     log=print, **_):
    """TFLite files of ``model`` (not verified here: the export command verifies them)."""
    from tfopt.steps import quantize as q
    from tfopt.steps.runner import sample_x

    x = sample_x(data) if data is not None else None
    return model, {"tflite": {m: q.post_training(model, m, x, int8_io, representative_samples, seed) for m in tflite}}


# ---- surgery ------------------------------------------------------------------------------------

def apply_fold_bn(model, recipe, splits, cfg, log=print):
    from tfopt.steps.fold import fold

    return fold(model, (splits.x_test, splits.y_test), log=log)


def run_fold_bn(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """Fold BatchNorm layers and check the outputs against the original on the test images."""
    from tfopt.models.stats import model_stats
    from tfopt.steps.runner import write_run

    splits = _splits(source)
    folded, report = apply_fold_bn(source.model, source.recipe, splits, None, log=log)
    metrics = {**_base_metrics(source, folded, splits, log), "folded": report["folded"], "kept": report["kept"],
               "max_relative_output_difference": report["max_relative_output_difference"],
               "params_before": model_stats(source.model)["params"]}
    path = write_run(source, "folded", step="fold_bn", recipe=source.recipe, metrics=metrics, model=folded, output=output,
                     overwrite=overwrite, log=log)
    return path, metrics


def apply_fold_pool(model, recipe, splits, cfg, log=print):
    from tfopt.steps.fold import fold_pool

    return fold_pool(model, (splits.x_test, splits.y_test), **step_kwargs(cfg), log=log)


def apply_structured(model, recipe, splits, cfg, log=print):
    import numpy as np

    from tfopt.steps.structured import channel_prune

    y = splits.y_train[: cfg.probe_samples]
    one_hot = recipe.train.loss.one_hot
    probe = (splits.x_train[: cfg.probe_samples], np.eye(splits.num_classes, dtype="float32")[y] if one_hot else y)
    return channel_prune(model, **fit_kwargs(recipe, splits, cfg, model, log), **step_kwargs(cfg), probe=probe,
                         check_x=splits.x_test[:256], log=log)


def run_structured(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """Remove channels (in ``rounds`` steps), check each surgery against the masked original,
    fine-tune after each, write a run."""
    from tfopt.export import plain_copy
    from tfopt.models.stats import model_stats
    from tfopt.steps.runner import with_step, write_run

    cfg = settings(source.recipe, "structured", C.StructuredConfig, given)
    splits = _splits(source)
    before = model_stats(source.model)
    model, info = apply_structured(source.model, source.recipe, splits, cfg, log=log)
    history, seconds, diffs, first_report = info["history"], info["seconds"], info["diffs"], info["first_report"]
    after = model_stats(model)
    channels = {name: len(idx) for name, idx in first_report["keep"].items()}
    final = {layer.name: int(getattr(layer, "filters", 0) or getattr(layer, "units", 0)) for layer in model.layers
             if layer.name in channels}
    for name in channels:
        log(f"  {name:<20} {first_report['channels_before'][name]} -> {final[name]} channels")
    for name, why in first_report["protected"].items():
        log(f"  {name:<20} kept whole: {why}")
    log(f"MACs {before['macs']:,} -> {after['macs']:,} ({after['macs'] / before['macs']:.2f}×), parameters "
        f"{before['params']:,} -> {after['params']:,}")
    report = {"kept": final, "channels_before": first_report["channels_before"], "protected": first_report["protected"]}
    metrics = {**_base_metrics(source, model, splits, log), "channels": report,
               "macs_before": before["macs"], "params_before": before["params"],
               "masked_check_max_abs_diff": max(diffs), "fine_tune_seconds": round(seconds, 2)}
    path = write_run(source, "channels", step="structured", recipe=with_step(source.recipe, "structured", cfg), metrics=metrics,
                     model=plain_copy(model), history=history, output=output, overwrite=overwrite, log=log)
    return path, metrics


def analyze_removals(model, splits, log=print, recipe=None, epochs=0) -> list[dict]:
    """Accuracy (validation split, else test) and savings for each removable layer or block,
    right after removal or, with ``epochs``, after that short fine-tune of each candidate."""
    from tfopt.models.stats import model_stats
    from tfopt.steps.remove import remove
    from tfopt.steps.runner import accuracy, selection_split
    from tfopt.surgery.remove import candidates

    x, y = selection_split(splits)
    base, stats = accuracy(model, x, y), model_stats(model)
    fit = fit_kwargs(recipe, splits, C.RemoveConfig(epochs=epochs)) if epochs else {}
    rows = []
    for name in candidates(model):
        smaller, report = remove(model, layers=[name], **{**fit, "epochs": epochs}, log=lambda *_: None)
        s = model_stats(smaller)
        acc = accuracy(smaller, x, y)
        rows.append({"candidate": name, "layers": len(report["removed"]), "accuracy": acc,
                     "drop_points": (base - acc) * 100, "params_saved": stats["params"] - s["params"],
                     "macs_saved": stats["macs"] - s["macs"]})
        log(f"  without {name:<12} accuracy {acc:.2%} ({(acc - base) * 100:+.2f} points), saves "
            f"{stats['macs'] - s['macs']:,} MACs and {stats['params'] - s['params']:,} parameters")
    return sorted(rows, key=lambda r: r["drop_points"])


def choose_removals(model, splits, rows, budget: float) -> list[str]:
    """Greedy: add candidates, smallest drop first, while the combined drop stays within ``budget`` points."""
    from tfopt.steps.runner import accuracy, selection_split
    from tfopt.surgery.remove import remove_layers

    x, y = selection_split(splits)
    base, chosen = accuracy(model, x, y), []
    for row in rows:
        trial = chosen + [row["candidate"]]
        try:
            smaller, _ = remove_layers(model, trial)
        except TfoptError:
            continue
        if (base - accuracy(smaller, x, y)) * 100 <= budget:
            chosen = trial
    return chosen


def apply_remove(model, recipe, splits, cfg, log=print):
    from tfopt.steps.remove import remove

    fit = fit_kwargs(recipe, splits, cfg, model, log) if cfg.epochs else {}
    return remove(model, **{**fit, "epochs": cfg.epochs}, layers=cfg.layers, log=log)


def run_remove(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """Remove the named layers or blocks, or analyze every candidate (and pick within a budget)."""
    from tfopt.models.stats import model_stats
    from tfopt.steps.runner import write_run

    cfg = settings(source.recipe, "remove", C.RemoveConfig, given)
    splits = _splits(source)
    names, rows, files = list(cfg.layers), None, {}
    if cfg.analyze:
        ft = cfg.analyze_epochs
        log("measuring the model without each removable layer or block "
            + (f"after {ft} fine-tune epoch(s) each" if ft else "(no fine-tuning)"))
        rows = analyze_removals(source.model, splits, log, source.recipe, ft)
        if not rows:
            raise TfoptError("no layer or block of this model can be removed: none keeps its input's shape")
        files["analysis.csv"] = _csv(rows).encode()
        if cfg.budget is not None and not names:
            names = choose_removals(source.model, splits, rows, cfg.budget)
            log(f"within a {cfg.budget:g}-point budget: remove {', '.join(names) or 'nothing'}")
    if not names:
        if rows is None:
            raise TfoptError("remove-layers: name the layers or blocks (--layers conv3,block2), or pass --analyze")
        for line in _csv(rows).splitlines():
            log(line)
        return None, {"analysis": rows}
    before = model_stats(source.model)
    model, report = apply_remove(source.model, source.recipe, splits, cfg.model_copy(update={"layers": names}),
                                 log=log)
    metrics = {**_base_metrics(source, model, splits, log), "removed": report["removed"], "requested": names,
               "macs_before": before["macs"], "params_before": before["params"], "analysis": rows}
    log(f"removed {', '.join(report['removed'])}; MACs {before['macs']:,} -> {metrics['macs']:,}")
    if rows:
        import tempfile
        from pathlib import Path

        from tfopt.report.plots import removal_plot

        with tempfile.TemporaryDirectory() as tmp:
            removal_plot(rows, Path(tmp) / "analysis.png")
            files["analysis.png"] = (Path(tmp) / "analysis.png").read_bytes()
    path = write_run(source, "removed", step="remove", recipe=source.recipe, metrics=metrics, model=model,
                     files=files, history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics


def _csv(rows) -> str:
    keys = list(rows[0])
    return "\n".join([",".join(keys)] + [",".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                                                   for k in keys) for r in rows]) + "\n"


# ---- the built-in steps, registered once -------------------------------------------------------

def _lazy(module, name):
    """The library function ``module.name``, imported on first call (keeps this module light)."""
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__module__ = module
    call.__doc__ = f"See :func:`{module}.{name}`."
    call.legacy_keywords = True
    return call


register("structured", C.StructuredConfig, "channels", _lazy("tfopt.steps.structured", "channel_prune"),
         command=run_structured, apply=apply_structured, cli="prune", cli_flag="structured", distributed=True,
         help="Remove whole channels (filters, units) and every weight that reads them.")
register("prune", C.PruneConfig, "pruned", _lazy("tfopt.steps.prune", "prune"), command=run_prune,
         apply=apply_prune, distributed=True, help="Magnitude pruning with a schedule preflight, then strip.")
register("cluster", C.ClusterConfig, "clustered", _lazy("tfopt.steps.cluster", "cluster"), command=run_cluster,
         apply=apply_cluster, distributed=True, help="Weight clustering: a few shared values per layer, then strip.")
register("quantize", C.QuantizeConfig, _quantize_suffix, _lazy("tfopt.steps.quantize", "quantize_aware"),
         command=run_quantize, apply=apply_quantize, distributed=True,
         help="Post-training quantization (dynamic, float16, int8) or quantization-aware training.")
register("remove", C.RemoveConfig, _remove_suffix, _lazy("tfopt.steps.remove", "remove"), command=run_remove,
         apply=apply_remove, chain=False, cli="remove-layers", distributed=True, help="Remove shape-keeping layers or residual blocks, rewire, fine-tune.")
register("fold_bn", None, "folded", _lazy("tfopt.steps.fold", "fold"), command=run_fold_bn, apply=apply_fold_bn,
         chain=False, help="Fold BatchNorm into the conv or dense layer before it.")
register("fold_pool", C.FoldPoolConfig, "poolfolded", _lazy("tfopt.steps.fold", "fold_pool"), apply=apply_fold_pool,
         help="Fold each 2×2 max-pool into the conv before it: one stride-2 conv, the same outputs.")
register("export", C.Export, "export", _export_function, command=run_export, chain=False, section="export",
         help="SavedModel, .keras and verified .tflite files.")
