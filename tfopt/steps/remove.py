"""Layer removal as a step: take layers or residual blocks out, then fine-tune; and the analysis
that measures the model without each removable layer or block and picks some within a budget."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tfopt.config import steps as C
from tfopt.config.fine_tune import FineTuneSettings
from tfopt.errors import TfoptError
from tfopt.interop import plain_copy
from tfopt.models.stats import model_stats
from tfopt.plots import removal_plot
from tfopt.steps.runs import accuracy, base_metrics, selection_split, splits_of, write_run
from tfopt.steps.settings import fine_tune_from_recipe, step_settings
from tfopt.surgery.remove import candidates, remove_layers
from tfopt.training import finetune
from tfopt.training.finetune import RECALIBRATION_BATCHES


def remove(model, data, config, fine_tune, *, log=print, bn_batches: int = RECALIBRATION_BATCHES, **inputs):
    """A new model without ``config.layers`` (layer names or residual blocks such as ``block2``;
    a :class:`~tfopt.config.steps.RemoveConfig`), fine-tuned on ``data`` for ``fine_tune.epochs``
    (0: no fine-tune, ``data`` may be None).

    Args:
        bn_batches: batches that re-estimate BatchNorm statistics after the fine-tune (0: none).
        **inputs: options of :func:`tfopt.training.finetune.fine_tune`; others are ignored.

    Returns:
        ``(smaller model, report)`` with ``removed`` (every layer taken out) and ``history``.

    Raises:
        TfoptError: no layers named, a removal that breaks the graph, or epochs without data.
    """
    if not config.layers:
        raise TfoptError("remove_layers: name the layers or blocks to remove, e.g. ['conv3', 'block2']")
    smaller, removed = remove_layers(model, list(config.layers))
    history, seconds = finetune.after_surgery("remove_layers", smaller, data, fine_tune, inputs, bn_batches=bn_batches,
                                              log=log)
    return plain_copy(smaller), {"removed": removed, "history": history, "fine_tune_seconds": seconds}


def _without_fine_tune(recipe, splits, cfg, model=None, log=print):
    """``(data, FineTuneSettings)`` for a removal: the recipe's fine-tune, or none for 0 epochs."""
    if not cfg.epochs:
        return None, FineTuneSettings(epochs=0)
    return fine_tune_from_recipe(recipe, splits, cfg, model, log)


def analyze_removals(model, splits, log=print, recipe=None, epochs=0) -> list[dict]:
    """Accuracy (validation split, else test) and savings for each removable layer or block,
    right after removal or, with ``epochs``, after that short fine-tune of each candidate
    (``recipe``'s settings), sorted by the accuracy drop."""
    x, y = selection_split(splits)
    base, stats = accuracy(model, x, y), model_stats(model)
    data, fine_tune = _without_fine_tune(recipe, splits, C.RemoveConfig(epochs=epochs))
    rows = []
    for name in candidates(model):
        smaller, report = remove(model, data, C.RemoveConfig(layers=[name]), fine_tune, log=lambda *_: None)
        s = model_stats(smaller)
        acc = accuracy(smaller, x, y)
        rows.append({"candidate": name, "layers": len(report["removed"]), "accuracy": acc,
                     "drop_points": (base - acc) * 100, "params_saved": stats["params"] - s["params"],
                     "macs_saved": stats["macs"] - s["macs"]})
        log(f"  without {name:<12} accuracy {acc:.2%} ({(acc - base) * 100:+.2f} points), saves "
            f"{stats['macs'] - s['macs']:,} MACs and {stats['params'] - s['params']:,} parameters")
    return sorted(rows, key=lambda r: r["drop_points"])


def choose_removals(model, splits, rows, max_drop: float) -> list[str]:
    """Greedy: add candidates, smallest drop first, while the combined drop stays within ``max_drop`` points."""
    x, y = selection_split(splits)
    base, chosen = accuracy(model, x, y), []
    for row in rows:
        trial = chosen + [row["candidate"]]
        try:
            smaller, _ = remove_layers(model, trial)
        except TfoptError:
            continue
        if (base - accuracy(smaller, x, y)) * 100 <= max_drop:
            chosen = trial
    return chosen


def _csv(rows) -> str:
    keys = list(rows[0])
    return "\n".join([",".join(keys)] + [",".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                                                   for k in keys) for r in rows]) + "\n"


def _png(rows) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        removal_plot(rows, Path(tmp) / "analysis.png")
        return (Path(tmp) / "analysis.png").read_bytes()


# ---- the command and the chain step ------------------------------------------------------------

def apply_remove(model, recipe, splits, cfg, log=print):
    """:func:`remove` with the recipe's fine-tune settings (none for ``epochs: 0``)."""
    data, fine_tune = _without_fine_tune(recipe, splits, cfg, model, log)
    return remove(model, data, cfg, fine_tune, log=log)


def _analyzed(source, cfg, splits, log):
    """``(the layers to remove, the analysis rows or None, files for the run)``, with ``cfg.analyze``
    measuring every candidate and, with a budget and no layers named, choosing some."""
    names, rows, files = list(cfg.layers), None, {}
    if cfg.analyze:
        ft = cfg.analyze_epochs
        log("measuring the model without each removable layer or block "
            + (f"after {ft} fine-tune epoch(s) each" if ft else "(no fine-tuning)"))
        rows = analyze_removals(source.model, splits, log, source.recipe, ft)
        if not rows:
            raise TfoptError("no layer or block of this model can be removed: none keeps its input's shape")
        files["analysis.csv"] = _csv(rows).encode()
        if cfg.max_drop is not None and not names:
            names = choose_removals(source.model, splits, rows, cfg.max_drop)
            log(f"within a {cfg.max_drop:g}-point budget: remove {', '.join(names) or 'nothing'}")
    return names, rows, files


def run_remove(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt remove-layers``: remove the named layers or blocks, or analyze every candidate (and
    pick within a budget); a new ``<source>-removed`` run unless it only analyzed.
    Returns ``(run path or None, metrics)``."""
    cfg = step_settings(source.recipe, "remove", given)
    splits = splits_of(source)
    names, rows, files = _analyzed(source, cfg, splits, log)
    if not names:
        if rows is None:
            raise TfoptError("remove-layers: name the layers or blocks (--layers conv3,block2), or pass --analyze")
        for line in _csv(rows).splitlines():
            log(line)
        return None, {"analysis": rows}
    before = model_stats(source.model)
    model, report = apply_remove(source.model, source.recipe, splits, cfg.model_copy(update={"layers": names}),
                                 log=log)
    metrics = {**base_metrics(source, model, splits, log), "removed": report["removed"], "requested": names,
               "macs_before": before["macs"], "params_before": before["params"], "analysis": rows}
    log(f"removed {', '.join(report['removed'])}; MACs {before['macs']:,} -> {metrics['macs']:,}")
    if rows:
        files["analysis.png"] = _png(rows)
    path = write_run(source, "removed", step="remove", recipe=source.recipe, metrics=metrics, model=model,
                     files=files, history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics
