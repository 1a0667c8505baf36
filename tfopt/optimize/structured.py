"""Structured (channel) pruning in rounds, each checked against the masked original and fine-tuned."""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError


def channel_prune(model, recipe, splits, cfg, log=print):
    """Remove channels in ``cfg.rounds`` steps reaching ``cfg.ratio``; fine-tune after each.

    Returns the new model and ``{"history", "seconds", "diffs", "first_report"}``. The input
    model is not changed.
    """
    from tfopt.models.builder import output_activation
    from tfopt.models.stats import model_stats
    from tfopt.optimize.runner import fine_tune
    from tfopt.surgery.channels import masked_copy, prune_channels

    t = recipe.train
    y = splits.y_train[: cfg.probe_samples]
    data = (splits.x_train[: cfg.probe_samples], np.eye(splits.num_classes, dtype="float32")[y] if t.loss.one_hot else y)
    loss = t.loss.build(output_activation(model) not in ("softmax", "sigmoid"))
    step = lambda r: 1 - (1 - r) ** (1 / cfg.rounds)  # noqa: E731  per-round ratio reaching r after all rounds
    history, seconds, diffs, first_report = [], 0.0, [], None
    for round_ in range(cfg.rounds):
        pruned, report = prune_channels(model, ratio=step(cfg.ratio), per_layer={k: step(v) for k, v in cfg.per_layer.items()},
                                        criterion=cfg.criterion, min_channels=cfg.min_channels, protect=cfg.protect,
                                        data=data, loss=loss)
        first_report = first_report or report
        x = splits.x_test[:256]
        diff = float(np.max(np.abs(pruned.predict(x, verbose=0) - masked_copy(model, report["keep"]).predict(x, verbose=0))))
        if diff > 1e-4:
            raise TfoptError(f"channel surgery check failed: outputs differ from the masked original by {diff:.3g}")
        diffs.append(diff)
        log(f"round {round_ + 1}/{cfg.rounds}: MACs {model_stats(model)['macs']:,} -> {model_stats(pruned)['macs']:,}; "
            f"outputs equal the masked original's (max |Δ| {diff:.2g})")
        rows, secs = fine_tune(pruned, recipe, splits, cfg, log=log)
        history += [{**r, "round": round_ + 1} for r in rows]
        seconds += secs
        model = pruned
    return model, {"history": history, "seconds": seconds, "diffs": diffs, "first_report": first_report}
