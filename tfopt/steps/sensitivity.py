"""Sensitivity sweep: accuracy against channel ratio (or sparsity) one layer at a time, then
per-layer ratios chosen within an accuracy budget and written back into a recipe."""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError


def _magnitude_prune(model, name, sparsity):
    """A copy of ``model`` with the smallest ``sparsity`` of ``name``'s kernel set to zero."""
    from tfopt.export import plain_copy
    from tfopt.steps.prune import kernels

    copy = plain_copy(model)
    layer = copy.get_layer(name)
    for w in kernels(layer):
        a = w.numpy()
        k = int(round(a.size * sparsity))
        if k:
            cut = np.partition(np.abs(a).ravel(), k - 1)[k - 1]
            a = np.where(np.abs(a) <= cut, 0, a)
        w.assign(a)
    return copy


def sweep(model, splits, ratios=(0.25, 0.5, 0.75), mode="channels", log=print) -> list[dict]:
    """One row per (layer, ratio): accuracy on the validation split (else test) without fine-tuning."""
    from tfopt.steps.prune import prunable
    from tfopt.steps.runner import accuracy, selection_split
    from tfopt.surgery.channels import prune_channels, trace

    x, y = selection_split(splits)
    base = accuracy(model, x, y)
    if mode == "channels":
        layers = [name for name, g in trace(model).items() if not g.blocked]
    else:
        layers = [layer.name for layer in model.layers if prunable(layer)]
    if not layers:
        raise TfoptError(f"no layer of this model can be pruned in {mode} mode")
    rows = []
    for name in layers:
        for r in ratios:
            if mode == "channels":
                others = [n for n in layers if n != name]
                smaller, _ = prune_channels(model, ratio=0.0, per_layer={name: r}, protect=others)
            else:
                smaller = _magnitude_prune(model, name, r)
            acc = accuracy(smaller, x, y)
            rows.append({"layer": name, "ratio": r, "accuracy": acc, "drop_points": (base - acc) * 100})
            log(f"  {name:<16} {mode} ratio {r:.2f}: accuracy {acc:.2%} ({(acc - base) * 100:+.2f} points)")
    return rows


def choose(rows, budget: float) -> dict:
    """Per layer, the largest ratio whose drop stays within ``budget`` points (0 when none does)."""
    out = {}
    for row in rows:
        best = out.setdefault(row["layer"], 0.0)
        if row["drop_points"] <= budget and row["ratio"] > best:
            out[row["layer"]] = row["ratio"]
    return out


def write_back(recipe, per_layer: dict, mode: str):
    """A copy of ``recipe`` whose ``optimize.structured.per_layer`` (or ``optimize.prune.layers``)
    holds the chosen ratios."""
    from tfopt.steps.config import PruneConfig, StructuredConfig

    r = recipe.model_copy(deep=True)
    if mode == "channels":
        cfg = r.optimize.structured or StructuredConfig()
        r.optimize.structured = cfg.model_copy(update={"per_layer": per_layer, "ratio": 0.0})
    else:
        cfg = r.optimize.prune or PruneConfig()
        r.optimize.prune = cfg.model_copy(update={"layers": per_layer})
    return r
