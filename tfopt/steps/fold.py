"""Exact rewrites as checked steps: BatchNorm folding and pool folding. Each rewrites the model,
then compares the outputs with the original's and refuses a rewrite that changed them."""

from __future__ import annotations

import numpy as np

from tfopt import tflite
from tfopt.config import steps as C
from tfopt.data.coerce import random_inputs, sample_x
from tfopt.errors import TfoptError
from tfopt.models.stats import model_stats
from tfopt.steps.runs import base_metrics, splits_of, write_run
from tfopt.surgery.fold_bn import fold_batchnorm
from tfopt.surgery.fold_pool import fold_pools

#: Largest output difference a fold may cause, relative to the largest output (it is exact up to
#: float rounding).
TOLERANCE = 1e-4


def _checked(model, rewritten, data, what: str) -> tuple[float, str]:
    """The largest output difference between ``model`` and ``rewritten`` on up to 256 images of
    ``data`` (``(x, y)``, bare ``x`` or a dataset), else on random inputs, relative to the largest
    output of the same model output, and what was compared; raises when it exceeds
    :data:`TOLERANCE`. (Relative to each value, float rounding on an output near zero would count
    as a change.)"""
    x = sample_x(data, 256) if data is not None else random_inputs(model, 16)
    refs = model.predict(x, batch_size=256, verbose=0)
    gots = rewritten.predict(x, batch_size=256, verbose=0)
    refs, gots = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (refs, gots))
    rel = max(float(np.max(np.abs(np.asarray(g) - np.asarray(r))) / max(float(np.max(np.abs(r))), 1e-6))
              for r, g in zip(refs, gots))
    if rel > TOLERANCE:
        raise TfoptError(f"{what} changed the outputs by {rel:.2e} (relative to the largest output); nothing was "
                         f"written.")
    return rel, f"{len(x)} {'images' if data is not None else 'random inputs'}"


def _say(log, report, folded_line: str) -> None:
    """One line per folded pair (``folded_line`` formatted with it) and per kept layer, with why."""
    for pair in report["folded"]:
        log(folded_line.format(*pair))
    for name, why in report["kept"]:
        log(f"  kept {name}: {why}")


def fold(model, data=None, config=None, fine_tune=None, *, log=print, **inputs):
    """Fold every foldable BatchNorm of ``model`` into the layer before it, in a new model.

    The outputs are compared with the original's on up to 256 images of ``data`` (``(x, y)``,
    bare ``x`` or a dataset), else on random inputs. The step has no settings and no fine-tune:
    ``config``, ``fine_tune`` and ``inputs`` are not read.

    Returns:
        ``(folded model, report)``: ``folded`` ``(bn, into)`` pairs, ``kept`` ``(bn, reason)``
        pairs and ``max_relative_output_difference``.

    Raises:
        TfoptError: the fold changed the outputs by more than :data:`TOLERANCE`.
    """
    folded, report = fold_batchnorm(model)
    rel, on = _checked(model, folded, data, "BatchNorm folding")
    _say(log, report, "  folded {} into {}")
    log(f"{len(report['folded'])} BatchNorm layer(s) folded; outputs match the original within {rel:.2e} "
        f"(relative, on {on}). The TFLite converter folds BatchNorm too: expect no TFLite speed-up from this step.")
    return folded, {**report, "max_relative_output_difference": rel}


def fold_pool(model, data, config, fine_tune=None, *, log=print, **inputs):
    """Fold each 2×2 max-pool into the stride-1 conv before it (see
    :mod:`tfopt.surgery.fold_pool`): one stride-2 conv with four filter groups and a max over
    them, the same outputs, checked on ``data`` (else random inputs). ``config`` (a
    :class:`~tfopt.config.steps.FoldPoolConfig`): ``layers``, only the pools after these convs
    (default: every one that can be folded); ``measure``, time both models' float32 TFLite files
    (1 thread; None: on). Nothing is fine-tuned: ``fine_tune`` and ``inputs`` are not read.

    Returns:
        ``(model, report)``: ``folded`` ``(pool, conv)`` pairs, ``kept`` ``(pool, reason)`` pairs,
        ``max_relative_output_difference`` and, when measured, ``latency_us`` ``{"before", "after"}``.

    Raises:
        TfoptError: a named layer is not a conv with a foldable pool after it, nothing could be
            folded, or the outputs changed by more than :data:`TOLERANCE`.
    """
    folded, report = fold_pools(model, config.layers)
    if not report["folded"]:
        reasons = "; ".join(f"{p}: {r}" for p, r in report["kept"]) or "the model has no MaxPooling2D layer"
        raise TfoptError(f"fold_pool: no max-pool could be folded ({reasons})")
    rel, on = _checked(model, folded, data, "pool folding")
    for bn, into in report["batchnorm_folded"]:
        log(f"  folded {bn} into {into} (BatchNorm, folded first: one stood between a conv and its pool)")
    _say(log, report, "  folded {} into {} (stride 2, 4 filter groups)")
    log(f"{len(report['folded'])} max-pool(s) folded; outputs match the original within {rel:.2e} (relative, "
        f"on {on})")
    report = {**report, "max_relative_output_difference": rel}
    if config.measure is not False:  # None: the command's default, on
        report["latency_us"] = _float32_latencies(model, folded, data)
        t = report["latency_us"]
        log(f"float32 TFLite, 1 thread: {t['before']:.1f} µs before, {t['after']:.1f} µs after "
            f"({t['after'] / t['before']:.2f}×)" + ("" if t["after"] < t["before"] else
                                                    "; not faster: keep the model as it was"))
    return folded, report


def _float32_latencies(model, folded, data) -> dict:
    """Median 1-thread latency of one input through each model's float32 TFLite file, timed in
    alternating blocks, each the fastest of three."""
    x = (sample_x(data, 1) if data is not None else random_inputs(model, 1))[0]
    files = [tflite.convert(m, "float32") for m in (model, folded)]
    times = [[], []]
    for _ in range(2):
        for i, content in enumerate(files):
            times[i].append(tflite.latency_us(content, x, runs=300, repeats=3)["median_us"])
    return {"before": float(min(times[0])), "after": float(min(times[1]))}


# ---- the commands and the chain steps ------------------------------------------------------------

def apply_fold_bn(model, recipe, splits, cfg, log=print):
    """:func:`fold`, checked on the test images."""
    return fold(model, (splits.x_test, splits.y_test), log=log)


def run_fold_bn(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt fold-bn``: fold BatchNorm layers, check the outputs against the original on the test
    images, write a ``<source>-folded`` run. Returns ``(run path, metrics)``."""
    splits = splits_of(source)
    folded, report = apply_fold_bn(source.model, source.recipe, splits, None, log=log)
    metrics = {**base_metrics(source, folded, splits, log), "folded": report["folded"], "kept": report["kept"],
               "max_relative_output_difference": report["max_relative_output_difference"],
               "params_before": model_stats(source.model)["params"]}
    path = write_run(source, "folded", step="fold_bn", recipe=source.recipe, metrics=metrics, model=folded,
                     output=output, overwrite=overwrite, log=log)
    return path, metrics


def apply_fold_pool(model, recipe, splits, cfg, log=print):
    """:func:`fold_pool`, checked on the test images."""
    return fold_pool(model, (splits.x_test, splits.y_test), cfg, log=log)
