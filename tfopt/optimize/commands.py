"""One function per command (prune, cluster, quantize, export): load, optimize, verify, write a run."""

from __future__ import annotations

from pydantic import ValidationError

from tfopt.errors import TfoptError
from tfopt.optimize import config as C
from tfopt.tflite import VerificationFailed


def settings(recipe, step: str, cls, given: dict):
    """The recipe's ``optimize.<step>`` (or defaults) with the command-line values on top."""
    from tfopt.recipe import format_validation_errors

    base = getattr(recipe.optimize, step) if step else recipe.export
    data = {**(base.model_dump() if base else {}), **{k: v for k, v in given.items() if v is not None}}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where = f"optimize.{step}" if step else "export"
        raise TfoptError("; ".join(f"{where}.{k}: {m}" for k, m in format_validation_errors(exc, data, cls))) from None


def _base_metrics(source, model, splits, log):
    from tfopt.models.stats import model_stats
    from tfopt.optimize.runner import evaluate

    log("evaluating on the test set")
    metrics = {**evaluate(model, source.recipe, splits), **model_stats(model)}
    if source.metrics:
        metrics["baseline"] = {k: source.metrics.get(k) for k in ("test_accuracy", "test_loss", "params", "macs")}
    return metrics


def _splits(source):
    from tfopt.data.pipeline import load_splits

    return load_splits(source.recipe.data, source.recipe.seed)


def run_prune(source, given: dict, output=None, overwrite=False, log=print):
    from tfopt.optimize.prune import prune
    from tfopt.optimize.runner import with_step, write_run

    cfg = settings(source.recipe, "prune", C.PruneConfig, given)
    splits = _splits(source)
    model, report = prune(source.model, source.recipe, splits, cfg, log=log)
    metrics = {**_base_metrics(source, model, splits, log), "sparsity": report["sparsity"],
               "per_layer_sparsity": report["per_layer"], "preflight": report["plan"],
               "fine_tune_seconds": round(report["fine_tune_seconds"], 2)}
    for name, v in report["per_layer"].items():
        log(f"  {name:<20} sparsity {v['sparsity']:.1%} of {v['weights']:,} weights")
    log(f"overall kernel sparsity {report['sparsity']:.1%}; test accuracy {metrics.get('test_accuracy', float('nan')):.4f}")
    path = write_run(source, "pruned", recipe=with_step(source.recipe, "prune", cfg), metrics=metrics, model=model,
                     history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics


def run_cluster(source, given: dict, output=None, overwrite=False, log=print):
    from tfopt.optimize.cluster import cluster
    from tfopt.optimize.runner import with_step, write_run

    cfg = settings(source.recipe, "cluster", C.ClusterConfig, given)
    splits = _splits(source)
    model, report = cluster(source.model, source.recipe, splits, cfg, log=log)
    metrics = {**_base_metrics(source, model, splits, log), "unique_values": report["unique_values"],
               "fine_tune_seconds": round(report["fine_tune_seconds"], 2)}
    for name, n in report["unique_values"].items():
        log(f"  {name:<20} {n} unique values")
    path = write_run(source, "clustered", recipe=with_step(source.recipe, "cluster", cfg), metrics=metrics,
                     model=model, history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics


def _verified(keras_model, content, mode, splits, threshold, log):
    from tfopt.tflite import verify

    log(f"verifying the {mode} TFLite file on {len(splits.x_test)} held-out images")
    v = verify(keras_model, content, splits.x_test, splits.y_test, mode, threshold, log=log)
    log("  " + v.line())
    return v


def _threshold(export_cfg, mode):
    return export_cfg.min_agreement_float if mode in ("float32", "float16") else export_cfg.min_agreement_int8


def run_quantize(source, given: dict, output=None, overwrite=False, log=print):
    from tfopt.optimize.quantize import post_training, quantization_aware
    from tfopt.optimize.runner import with_step, write_run

    cfg = settings(source.recipe, "quantize", C.QuantizeConfig, given)
    splits = _splits(source)
    export_cfg = source.recipe.export
    metrics = _base_metrics(source, source.model, splits, log)
    if cfg.mode == "qat":
        qat, content, report = quantization_aware(source.model, source.recipe, splits, cfg, log=log)
        reference, mode, history = qat, "int8", report["history"]
        from tfopt.optimize.runner import evaluate

        metrics.update({f"qat_{k}": v for k, v in evaluate(qat, source.recipe, splits).items()},
                       scheme=report["scheme"], float_layers=report["float_layers"],
                       fine_tune_seconds=round(report["fine_tune_seconds"], 2))
    else:
        log(f"converting to TFLite ({cfg.mode})")
        content = post_training(source.model, cfg.mode, splits, cfg.int8_io, cfg.representative_samples,
                                source.recipe.seed)
        reference, mode, history = source.model, cfg.mode, None
    v = _verified(reference, content, mode, splits, _threshold(export_cfg, mode), log)
    metrics["tflite"] = {f"model_{mode}.tflite": {**v.__dict__, "bytes": len(content)}}
    if not v.passed:
        raise VerificationFailed(f"TFLite verification failed: {v.line()}. Nothing was written.")
    suffix = "qat" if cfg.mode == "qat" else cfg.mode
    path = write_run(source, suffix, recipe=with_step(source.recipe, "quantize", cfg), metrics=metrics,
                     model=source.model if cfg.mode != "qat" else None, files={f"model_{mode}.tflite": content},
                     history=history, output=output, overwrite=overwrite, log=log)
    return path, metrics


def run_export(source, given: dict, output=None, overwrite=False, log=print):
    from tfopt.optimize.quantize import post_training
    from tfopt.optimize.runner import write_run

    cfg = settings(source.recipe, None, C.Export, given)
    splits = _splits(source)
    metrics = _base_metrics(source, source.model, splits, log)
    files, results, failed = {}, {}, []
    for mode in cfg.tflite:
        log(f"converting to TFLite ({mode})")
        content = post_training(source.model, mode, splits, cfg.int8_io, cfg.representative_samples,
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
    path = write_run(source, "export", recipe=recipe, metrics=metrics, model=source.model, files=files,
                     output=output, overwrite=overwrite, saved_model=True, log=log)
    return path, metrics


def run_fold_bn(source, given: dict, output=None, overwrite=False, log=print):
    """Fold BatchNorm layers and check the outputs against the original on the test images."""
    import numpy as np

    from tfopt.models.stats import model_stats
    from tfopt.surgery.fold_bn import fold_batchnorm
    from tfopt.optimize.runner import write_run

    splits = _splits(source)
    folded, report = fold_batchnorm(source.model)
    ref = source.model.predict(splits.x_test, batch_size=256, verbose=0)
    got = folded.predict(splits.x_test, batch_size=256, verbose=0)
    rel = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-3)))
    for bn, into in report["folded"]:
        log(f"  folded {bn} into {into}")
    for bn, why in report["kept"]:
        log(f"  kept {bn}: {why}")
    log(f"{len(report['folded'])} BatchNorm layer(s) folded; outputs match the original within {rel:.2e} "
        f"(relative, on {len(ref)} test images). The TFLite converter folds BatchNorm too: expect no TFLite "
        f"speed-up from this step.")
    if rel > 1e-4:
        raise TfoptError(f"BatchNorm folding changed the outputs by {rel:.2e} (relative); nothing was written.")
    metrics = {**_base_metrics(source, folded, splits, log), "folded": report["folded"], "kept": report["kept"],
               "max_relative_output_difference": rel, "params_before": model_stats(source.model)["params"]}
    path = write_run(source, "folded", recipe=source.recipe, metrics=metrics, model=folded, output=output,
                     overwrite=overwrite, log=log)
    return path, metrics


def run_structured(source, given: dict, output=None, overwrite=False, log=print):
    """Remove channels (in ``rounds`` steps), check each surgery against the masked original,
    fine-tune after each, write a run."""
    from tfopt.export import plain_copy
    from tfopt.models.stats import model_stats
    from tfopt.optimize.runner import with_step, write_run
    from tfopt.optimize.structured import channel_prune

    cfg = settings(source.recipe, "structured", C.StructuredConfig, given)
    splits = _splits(source)
    before = model_stats(source.model)
    model, info = channel_prune(source.model, source.recipe, splits, cfg, log=log)
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
    path = write_run(source, "channels", recipe=with_step(source.recipe, "structured", cfg), metrics=metrics,
                     model=plain_copy(model), history=history, output=output, overwrite=overwrite, log=log)
    return path, metrics


def analyze_removals(model, splits, log=print, recipe=None, epochs=0) -> list[dict]:
    """Accuracy (validation split, else test) and savings for each removable layer or block,
    right after removal or, with ``epochs``, after that short fine-tune of each candidate."""
    from tfopt.models.stats import model_stats
    from tfopt.optimize.runner import accuracy, selection_split
    from tfopt.surgery.remove import candidates, remove_layers

    x, y = selection_split(splits)
    base, stats = accuracy(model, x, y), model_stats(model)
    rows = []
    for name in candidates(model):
        smaller, removed = remove_layers(model, [name])
        if epochs:
            from tfopt.optimize.config import FineTune
            from tfopt.optimize.runner import fine_tune

            fine_tune(smaller, recipe, splits, FineTune(epochs=epochs), log=lambda *_: None)
        s = model_stats(smaller)
        acc = accuracy(smaller, x, y)
        rows.append({"candidate": name, "layers": len(removed), "accuracy": acc, "drop_points": (base - acc) * 100,
                     "params_saved": stats["params"] - s["params"], "macs_saved": stats["macs"] - s["macs"]})
        log(f"  without {name:<12} accuracy {acc:.2%} ({(acc - base) * 100:+.2f} points), saves "
            f"{stats['macs'] - s['macs']:,} MACs and {stats['params'] - s['params']:,} parameters")
    return sorted(rows, key=lambda r: r["drop_points"])


def choose_removals(model, splits, rows, budget: float) -> list[str]:
    """Greedy: add candidates, smallest drop first, while the combined drop stays within ``budget`` points."""
    from tfopt.optimize.runner import accuracy, selection_split
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


def run_remove(source, given: dict, output=None, overwrite=False, log=print):
    """Remove the named layers or blocks, or analyze every candidate (and pick within a budget)."""
    from tfopt.export import plain_copy
    from tfopt.models.stats import model_stats
    from tfopt.optimize.config import FineTune
    from tfopt.optimize.runner import fine_tune, write_run
    from tfopt.surgery.remove import remove_layers

    splits = _splits(source)
    names, rows, files = list(given.get("layers") or []), None, {}
    if given.get("analyze"):
        ft = given.get("analyze_epochs") or 0
        log("measuring the model without each removable layer or block "
            + (f"after {ft} fine-tune epoch(s) each" if ft else "(no fine-tuning)"))
        rows = analyze_removals(source.model, splits, log, source.recipe, ft)
        if not rows:
            raise TfoptError("no layer or block of this model can be removed: none keeps its input's shape")
        files["analysis.csv"] = _csv(rows).encode()
        if given.get("budget") is not None and not names:
            names = choose_removals(source.model, splits, rows, given["budget"])
            log(f"within a {given['budget']:g}-point budget: remove {', '.join(names) or 'nothing'}")
    if not names:
        if rows is None:
            raise TfoptError("remove-layers: name the layers or blocks (--layers conv3,block2), or pass --analyze")
        for line in _csv(rows).splitlines():
            log(line)
        return None, {"analysis": rows}
    model, removed = remove_layers(source.model, names)
    before = model_stats(source.model)
    cfg = FineTune(epochs=given.get("epochs") or 1, lr=given.get("lr"))
    history = []
    if given.get("epochs", 1) != 0:
        history, _ = fine_tune(model, source.recipe, splits, cfg, log=log)
    metrics = {**_base_metrics(source, model, splits, log), "removed": removed, "requested": names,
               "macs_before": before["macs"], "params_before": before["params"], "analysis": rows}
    log(f"removed {', '.join(removed)}; MACs {before['macs']:,} -> {metrics['macs']:,}")
    if rows:
        from tfopt.report.plots import removal_plot

        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            removal_plot(rows, Path(tmp) / "analysis.png")
            files["analysis.png"] = (Path(tmp) / "analysis.png").read_bytes()
    path = write_run(source, "removed", recipe=source.recipe, metrics=metrics, model=plain_copy(model),
                     files=files, history=history, output=output, overwrite=overwrite, log=log)
    return path, metrics


def _csv(rows) -> str:
    keys = list(rows[0])
    return "\n".join([",".join(keys)] + [",".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                                                   for k in keys) for r in rows]) + "\n"
