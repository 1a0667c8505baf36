"""Sensitivity sweep: accuracy against channel ratio (or sparsity) one layer at a time, then
per-layer ratios chosen within an accuracy budget and written back into a recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfopt.config.steps import PruneConfig, StructuredConfig
from tfopt.data.pipeline import load_splits
from tfopt.errors import TfoptError
from tfopt.interop import plain_copy
from tfopt.rundir import atomic_write_text
from tfopt.steps.prune import kernel_name, kernels, prunable
from tfopt.steps.runs import accuracy, selection_split
from tfopt.steps.source import load_source
from tfopt.surgery.channels import one_group_cuts, trace


def magnitude_pruned(model, targets: dict, scales: dict | None = None, into=None):
    """A copy of ``model`` with the smallest ``targets[name]`` of each named layer's kernels set
    to zero, at once and without fine-tuning; ranked by ``|w|``, or by ``|w| · scale`` with the
    activation criterion's ``scales`` (:func:`tfopt.steps.prune.input_scales`). ``into``: an
    earlier result for ``model`` to reuse (its weights are reset from ``model`` first), so that a
    scan of many layers copies the model, and traces its predict function, once."""
    copy = plain_copy(model) if into is None else into
    if into is not None:
        copy.set_weights(model.get_weights())
    for name, sparsity in targets.items():
        for w in kernels(copy.get_layer(name)):
            a = w.numpy()
            scale = (scales or {}).get(name, {}).get(kernel_name(w))
            score = np.abs(a) if scale is None else np.abs(a) * scale
            k = int(round(a.size * sparsity))
            if k:
                cut = np.partition(score.ravel(), k - 1)[k - 1]
                a = np.where(score <= cut, 0, a)
            w.assign(a)
    return copy


def one_layer_cuts(model, layers, levels, scales=None):
    """``(layer, level, model)``: ``model`` with the smallest ``level`` of one layer's kernels
    zeroed (see :func:`magnitude_pruned`), for each layer and level, in one reused copy."""
    copy = None
    for name in layers:
        for level in levels:
            copy = magnitude_pruned(model, {name: level}, scales, into=copy)
            yield name, level, copy


def sweep(model, splits, ratios=(0.25, 0.5, 0.75), mode="channels", log=print) -> list[dict]:
    """One row per (layer, ratio): accuracy on the validation split (else test) without fine-tuning."""
    x, y = selection_split(splits)
    base = accuracy(model, x, y)
    if mode == "channels":
        layers = [name for name, g in trace(model).items() if not g.blocked]
    else:
        layers = [layer.name for layer in model.layers if prunable(layer)]
    if not layers:
        raise TfoptError(f"no layer of this model can be pruned in {mode} mode")
    rows = []
    cuts = one_group_cuts(model, ratios) if mode == "channels" else one_layer_cuts(model, layers, ratios)
    for name, r, smaller in cuts:
        acc = accuracy(smaller, x, y)
        rows.append({"layer": name, "ratio": r, "accuracy": acc, "drop_points": (base - acc) * 100})
        log(f"  {name:<16} {mode} ratio {r:.2f}: accuracy {acc:.2%} ({(acc - base) * 100:+.2f} points)")
    return rows


def choose(rows, max_drop: float) -> dict:
    """Per layer, the largest ratio whose drop stays within ``max_drop`` points (0 when none does)."""
    out = {}
    for row in rows:
        best = out.setdefault(row["layer"], 0.0)
        if row["drop_points"] <= max_drop and row["ratio"] > best:
            out[row["layer"]] = row["ratio"]
    return out


def write_back(recipe, per_layer: dict, mode: str):
    """A copy of ``recipe`` whose ``optimize.structured.per_layer`` (or ``optimize.prune.per_layer``)
    holds the chosen ratios."""
    r = recipe.model_copy(deep=True)
    if mode == "channels":
        cfg = r.optimize.structured or StructuredConfig()
        r.optimize.structured = cfg.model_copy(update={"per_layer": per_layer, "ratio": 0.0})
    else:
        cfg = r.optimize.prune or PruneConfig()
        r.optimize.prune = cfg.model_copy(update={"per_layer": per_layer})
    return r


def sensitivity_to_recipe(source, recipe=None, overrides=(), *, mode: str = "channels", ratios="0.25,0.5,0.75",
                          max_drop: float = 0.5, write_to, log=print) -> dict:
    """Sweep ``source`` (a run directory, or a model file with ``recipe``), choose per-layer
    ratios within ``max_drop`` points and write a recipe with them in ``optimize:`` to ``write_to``
    (which must not exist). Returns ``{"chosen": {layer: ratio}, "key": dotted key, "rows": ...}``."""
    if isinstance(ratios, str):
        try:
            ratios = [float(v) for v in ratios.split(",")]
        except ValueError:
            raise TfoptError(f"--ratios '{ratios}': expected numbers separated by commas, e.g. 0.25,0.5") from None
    if Path(write_to).exists():
        raise TfoptError(f"{write_to} already exists; pick a new file name for the tuned recipe")
    src = load_source(source, recipe, overrides)
    rows = sweep(src.model, load_splits(src.recipe.data, src.recipe.seed), ratios, mode, log=log)
    chosen = choose(rows, max_drop)
    atomic_write_text(Path(write_to), write_back(src.recipe, chosen, mode).to_yaml())
    key = "optimize.structured.per_layer" if mode == "channels" else "optimize.prune.per_layer"
    return {"chosen": chosen, "key": key, "rows": rows}
