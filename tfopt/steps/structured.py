"""Structured (channel) pruning in rounds, each checked against the masked original and fine-tuned."""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError


def channel_prune(model, data=None, *, ratio: float = 0.5, per_layer: dict | None = None, criterion: str = "l1",
                  probe_samples: int = 256, rounds: int = 1, min_channels: int = 1, protect=(), epochs: int = 2,
                  lr: float | None = None, batch_size: int | None = None, probe=None, check_x=None, log=print,
                  **fit):
    """Remove whole channels of a copy of ``model`` in ``rounds`` steps reaching ``ratio``,
    checking each surgery against the masked original and fine-tuning after each.

    Args:
        model: a functional or Sequential tf_keras model; it is not changed.
        data: ``(x, y)`` or a ``tf.data.Dataset``: fine-tune data, and the probe images of the
            ``activation`` and ``taylor`` criteria. May be None with ``epochs=0`` and a weight criterion.
        ratio: fraction of channels removed per layer (``per_layer`` overrides it by name).
        criterion: ``l1``, ``l2``, ``bn_gamma``, ``activation`` or ``taylor``.
        epochs: fine-tune epochs after each round (0: none).
        probe: ``(x, y)`` arrays ranked on by the data criteria; default: ``probe_samples`` of ``data``.
        check_x: images for the masked-original check; default: the first probe images.
        **fit: more :func:`tfopt.steps.runner.fine_tune` arguments.

    Returns:
        ``(smaller model, report)`` with ``history``, ``seconds``, ``diffs`` (masked check per
        round) and ``first_report`` (channels kept, before and protected, of the first round).
    """
    from tfopt.models.stats import model_stats
    from tfopt.config.steps import StructuredConfig
    from tfopt.config.validation import validated
    from tfopt.steps.runner import (
        RECALIBRATION_BATCHES,
        _build_loss,
        fine_tune,
        recalibrate_batchnorm,
        sample_xy,
    )
    from tfopt.surgery.channels import masked_copy, prune_channels

    bn_batches = fit.pop("bn_batches", RECALIBRATION_BATCHES)
    cfg = validated(StructuredConfig, dict(ratio=ratio, per_layer=per_layer, criterion=criterion,
                                           probe_samples=probe_samples, rounds=rounds, min_channels=min_channels,
                                           protect=list(protect), epochs=max(epochs, 1), lr=lr,
                                           batch_size=batch_size), "structured")
    if data is None and (epochs or cfg.criterion in ("activation", "taylor")):
        raise TfoptError(f"channel pruning with criterion {cfg.criterion} and {epochs} fine-tune epoch(s) needs data: "
                         f"pass data=(x, y) or a tf.data.Dataset")
    loss = None
    if probe is None and data is not None:
        probe = sample_xy(data, cfg.probe_samples)
    if probe is not None and cfg.criterion in ("activation", "taylor"):
        loss, _ = _build_loss(model, fit.get("loss"), probe)
    x_check = np.asarray(check_x if check_x is not None else
                         (probe[0] if probe is not None else _random_inputs(model)), np.float32)[:256]
    step = lambda r: 1 - (1 - r) ** (1 / cfg.rounds)  # noqa: E731  per-round ratio reaching r after all rounds
    history, seconds, diffs, first_report = [], 0.0, [], None
    for round_ in range(cfg.rounds):
        pruned, report = prune_channels(model, ratio=step(cfg.ratio),
                                        per_layer={k: step(v) for k, v in cfg.per_layer.items()},
                                        criterion=cfg.criterion, min_channels=cfg.min_channels, protect=cfg.protect,
                                        data=probe, loss=loss)
        first_report = first_report or report
        diff = float(np.max(np.abs(pruned.predict(x_check, verbose=0)
                                   - masked_copy(model, report["keep"]).predict(x_check, verbose=0))))
        if diff > 1e-4:
            raise TfoptError(f"channel surgery check failed: outputs differ from the masked original by {diff:.3g}")
        diffs.append(diff)
        log(f"round {round_ + 1}/{cfg.rounds}: MACs {model_stats(model)['macs']:,} -> {model_stats(pruned)['macs']:,}; "
            f"outputs equal the masked original's (max |Δ| {diff:.2g})")
        if epochs:
            rows, secs = fine_tune(pruned, data, epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, log=log, **fit)
            recalibrate_batchnorm(pruned, data, batches=bn_batches, batch_size=cfg.batch_size, log=log)
            history += [{**r, "round": round_ + 1} for r in rows]
            seconds += secs
        model = pruned
    return model, {"history": history, "seconds": seconds, "diffs": diffs, "first_report": first_report}


def _random_inputs(model, n: int = 8):
    shape = [n, *model.input_shape[1:]]
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)
