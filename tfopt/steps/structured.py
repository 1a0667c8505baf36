"""Structured (channel) pruning in rounds, each checked against the masked original and fine-tuned."""

from __future__ import annotations

import numpy as np

from tfopt.config import steps as C
from tfopt.data.coerce import random_inputs, sample_xy
from tfopt.errors import TfoptError
from tfopt.interop import plain_copy
from tfopt.models.stats import model_stats
from tfopt.steps.runs import base_metrics, splits_of, with_step, write_run
from tfopt.steps.settings import fine_tune_from_recipe, step_settings
from tfopt.surgery.channels import masked_copy, prune_channels
from tfopt.training import finetune
from tfopt.training.finetune import RECALIBRATION_BATCHES, build_loss

#: The largest output difference a surgery may show against the masked original.
CHECK_TOLERANCE = 1e-4


def max_difference(a, b) -> float:
    """The largest absolute difference between two outputs (arrays, or lists or dicts of them)."""
    import tensorflow as tf

    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(tf.nest.flatten(a),
                                                                                     tf.nest.flatten(b)))


def per_round(ratio: float, rounds: int) -> float:
    """The ratio each of ``rounds`` rounds removes so that ``ratio`` is removed after all of them."""
    return 1 - (1 - ratio) ** (1 / rounds)


def first_rows(x, n: int = 256):
    """The first ``n`` rows of inputs: an array, or a list or dict of arrays (several inputs)."""
    import tensorflow as tf

    def rows(a):
        a = np.asarray(a)[:n]
        return a if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)

    return tf.nest.map_structure(rows, x)


def _checked_round(model, config, ratio, per_layer, probe, loss, x_check, log, round_):
    """One round of channel removal from ``model``, its outputs checked against the masked original."""
    pruned, report = prune_channels(model, ratio=ratio, per_layer=per_layer, criterion=config.criterion,
                                    min_channels=config.min_channels, protect=config.skip, data=probe, loss=loss)
    diff = max_difference(pruned.predict(x_check, verbose=0), masked_copy(model, report["keep"]).predict(x_check, verbose=0))
    if diff > CHECK_TOLERANCE:
        raise TfoptError(f"channel surgery check failed: outputs differ from the masked original by {diff:.3g}")
    log(f"round {round_ + 1}/{config.rounds}: MACs {model_stats(model)['macs']:,} -> {model_stats(pruned)['macs']:,}; "
        f"outputs equal the masked original's (max |Δ| {diff:.2g})")
    return pruned, report, diff


def channel_prune(model, data, config, fine_tune, *, log=print, probe=None, check_x=None,
                  bn_batches: int = RECALIBRATION_BATCHES, **inputs):
    """Remove whole channels of a copy of ``model`` in ``config.rounds`` steps reaching
    ``config.ratio``, checking each surgery against the masked original and fine-tuning after each.

    Args:
        model: a functional or Sequential tf_keras model; it is not changed.
        data: ``(x, y)`` or a ``tf.data.Dataset``: fine-tune data, and the probe images of the
            ``activation`` and ``taylor`` criteria. May be None with ``fine_tune.epochs=0`` and a
            weight criterion.
        config: a :class:`~tfopt.config.steps.StructuredConfig`: the ratio of channels removed per
            layer (``per_layer`` overrides it by name), the criterion (``l1``, ``l2``, ``bn_gamma``,
            ``activation`` or ``taylor``), rounds, channels kept, layers skipped (``skip``).
        fine_tune: the :class:`~tfopt.config.fine_tune.FineTuneSettings` of the fine-tune after each
            round (``epochs=0``: none).
        log: receives progress lines.
        probe: ``(x, y)`` arrays ranked on by the data criteria; default: ``config.probe_samples`` of ``data``.
        check_x: images for the masked-original check; default: the first probe images.
        bn_batches: batches that re-estimate BatchNorm statistics after each fine-tune (0: none).
        **inputs: options of :func:`tfopt.training.finetune.fine_tune`; others are ignored.

    Returns:
        ``(smaller model, report)`` with ``history``, ``seconds``, ``diffs`` (masked check per
        round) and ``first_report`` (channels kept, before and protected, of the first round).
    """
    epochs = fine_tune.epochs
    if data is None and (epochs or config.criterion in ("activation", "taylor")):
        raise TfoptError(f"channel pruning with criterion {config.criterion} and {epochs} fine-tune epoch(s) needs "
                         f"data: pass data=(x, y) or a tf.data.Dataset")
    loss = None
    if probe is None and data is not None:
        probe = sample_xy(data, config.probe_samples)
    if probe is not None and config.criterion in ("activation", "taylor"):
        loss, _ = build_loss(model, fine_tune.loss, probe)
    x_check = first_rows(check_x if check_x is not None else probe[0] if probe is not None else random_inputs(model))
    step = lambda r: per_round(r, config.rounds)  # noqa: E731
    history, seconds, diffs, first_report = [], 0.0, [], None
    for round_ in range(config.rounds):
        pruned, report, diff = _checked_round(model, config, step(config.ratio),
                                              {k: step(v) for k, v in config.per_layer.items()}, probe, loss, x_check,
                                              log, round_)
        first_report = first_report or report
        diffs.append(diff)
        if epochs:
            rows, secs = finetune.after_surgery("prune_channels", pruned, data, fine_tune, inputs,
                                                bn_batches=bn_batches, log=log)
            history += [{**r, "round": round_ + 1} for r in rows]
            seconds += secs
        model = pruned
    return model, {"history": history, "seconds": seconds, "diffs": diffs, "first_report": first_report}


# ---- the command and the chain step ------------------------------------------------------------

def apply_structured(model, recipe, splits, cfg, log=print):
    """:func:`channel_prune` with the recipe's fine-tune settings; the data criteria rank on
    un-augmented training images, the surgery is checked on test images."""
    y = splits.y_train[: cfg.probe_samples]
    one_hot = recipe.train.loss.one_hot
    probe = (splits.x_train[: cfg.probe_samples], np.eye(splits.num_classes, dtype="float32")[y] if one_hot else y)
    data, fine_tune = fine_tune_from_recipe(recipe, splits, cfg, model, log)
    return channel_prune(model, data, cfg, fine_tune, log=log, probe=probe, check_x=splits.x_test[:256])


def _channels_log(model, before, after, first_report, log) -> dict:
    """Log the channels per layer and the MACs and parameters; the channels report for metrics.json."""
    channels = {name: len(idx) for name, idx in first_report["keep"].items()}
    final = {layer.name: int(getattr(layer, "filters", 0) or getattr(layer, "units", 0)) for layer in model.layers
             if layer.name in channels}
    for name in channels:
        log(f"  {name:<20} {first_report['channels_before'][name]} -> {final[name]} channels")
    for name, why in first_report["protected"].items():
        log(f"  {name:<20} kept whole: {why}")
    for name, why in first_report.get("limited", {}).items():
        log(f"  {name:<20} {why}")
    log(f"MACs {before['macs']:,} -> {after['macs']:,} ({after['macs'] / before['macs']:.2f}×), parameters "
        f"{before['params']:,} -> {after['params']:,}")
    return {"kept": final, "channels_before": first_report["channels_before"], "protected": first_report["protected"],
            "limited": first_report.get("limited", {})}


def run_structured(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt prune --structured``: remove channels (in ``rounds`` steps), check each surgery
    against the masked original, fine-tune after each, write a ``<source>-channels`` run.
    Returns ``(run path, metrics)``."""
    cfg = step_settings(source.recipe, "structured", given)
    splits = splits_of(source)
    before = model_stats(source.model)
    model, info = apply_structured(source.model, source.recipe, splits, cfg, log=log)
    after = model_stats(model)
    report = _channels_log(model, before, after, info["first_report"], log)
    metrics = {**base_metrics(source, model, splits, log), "channels": report,
               "macs_before": before["macs"], "params_before": before["params"],
               "masked_check_max_abs_diff": max(info["diffs"]), "fine_tune_seconds": round(info["seconds"], 2)}
    path = write_run(source, "channels", step="structured", recipe=with_step(source.recipe, "structured", cfg),
                     metrics=metrics, model=plain_copy(model), history=info["history"], output=output,
                     overwrite=overwrite, log=log)
    return path, metrics
