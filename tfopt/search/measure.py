"""What the search measures: accuracy, TFLite files (size, accuracy, latency), model statistics,
the sensitivity sweeps that set per-layer ratios, and the layers each kind of step can work on.

Models here are tf_keras; data are ``(x, y)`` arrays. Every change to a model goes through the
registered steps (:data:`tfopt.steps.STEPS`); the sweeps cut or zero one layer without a fine-tune.
"""

from __future__ import annotations

import numpy as np

from tfopt import api, tflite
from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.steps import PruneConfig
from tfopt.config.validation import validated
from tfopt.export import save_keras
from tfopt.interop import load_as_tf_keras, plain_copy
from tfopt.models.stats import model_stats
from tfopt.steps import STEPS
from tfopt.steps import prune as prune_step
from tfopt.steps.quantize import is_qat
from tfopt.steps.sensitivity import magnitude_pruned, one_layer_cuts
from tfopt.surgery.channels import one_group_cuts, trace
from tfopt.surgery.fold_pool import plan, without_blocking_batchnorm
from tfopt.surgery.remove import remove_layers, residual_blocks
from tfopt.training.finetune import fine_tune, recalibrate_batchnorm

#: Channel ratios and kernel sparsities the sensitivity sweeps try on each layer.
CHANNEL_RATIOS = (0.25, 0.5, 0.75, 0.8, 0.9)
SPARSITY_LEVELS = (0.5, 0.75, 0.9, 0.95, 0.98)


def quiet(*_):
    """A log that says nothing: the search logs its own lines."""


def accuracy(model, x, y) -> float:
    """Top-1 accuracy of a Keras model on ``(x, y)``."""
    return float(np.mean(model.predict(x, batch_size=512, verbose=0).argmax(-1) == y))


def class_labels(y):
    """Labels as class indices (one-hot rows become their argmax)."""
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y))


def to_tflite(model, mode: str, x_calib) -> bytes:
    """TFLite bytes (``float32`` or ``int8``, calibrated on ``x_calib``; a QAT model converts to int8
    with its own ranges), unverified: the search measures every file on the selection split."""
    return api.to_tflite(model, mode, data=x_calib, min_agreement=0.0, min_snr=float("-inf"))


def tflite_accuracy(content: bytes, x, y) -> float:
    return tflite.accuracy(content, x, y)


def tflite_sizes(content: bytes) -> dict:
    """``{"raw_bytes", "gzip_bytes"}`` of a TFLite file."""
    return tflite.sizes(content)


def sparse_raw_bytes(model, mode: str, x_calib) -> int | None:
    """Raw bytes of the TFLite file with sparse weight storage (``EXPERIMENTAL_SPARSITY``), for
    models with zeros to pack; None when it fails to convert."""
    try:
        if is_qat(model):
            return len(tflite.convert(model, "int8", qat=True, sparse=True))
        return len(tflite.convert(model, mode, representative=x_calib if mode == "int8" else None, sparse=True))
    except Exception:  # noqa: BLE001  the sparse encoder is experimental: a failure only loses this figure
        return None


def latency_us(content: bytes, sample, runs: int = 200, repeats: int = 5, threads: int = 1) -> float:
    """Median LiteRT latency of one image on ``threads`` threads (the fastest of ``repeats`` blocks of ``runs``)."""
    return tflite.latency_us(content, sample, num_threads=threads, runs=runs, repeats=repeats)["median_us"]


def stats(model) -> dict:
    """Parameters, non-zero parameters, MACs."""
    return model_stats(model)


def fine_tuned(model, data, settings: FineTuneSettings, log=quiet):
    """A copy of ``model`` fine-tuned with ``settings`` and nothing else (BatchNorm statistics
    re-estimated afterwards, as the steps do)."""
    copy = plain_copy(model)
    fine_tune(copy, data, settings, log=log)
    recalibrate_batchnorm(copy, data, batch_size=settings.batch_size, log=log)
    return copy


def channel_groups(model) -> list[str]:
    """Layers whose channels can be removed (one name per coupled group)."""
    return [name for name, g in trace(model).items() if not g.blocked]


def prunable_layers(model) -> dict:
    """``{layer name: kernel weight count}`` for layers magnitude pruning can work on."""
    return {layer.name: int(sum(int(np.prod(w.shape)) for w in prune_step.kernels(layer)))
            for layer in model.layers if prune_step.prunable(layer)}


#: For the latency target, the files within budget whose latency is within this fraction of the
#: fastest (at most :data:`FINALISTS` of them) are timed again at the end, in turn, over
#: :data:`FINALIST_ROUNDS` rounds: each keeps the fastest of its new figures, taken under the same
#: conditions as its rivals' (a file timed once during a busy minute ran 25% slower).
FINALIST_SPREAD = 0.3
FINALISTS = 6
FINALIST_ROUNDS = 3


def retime_finalists(search) -> None:
    """Time the fastest files within budget again, in turn (see :data:`FINALIST_SPREAD`), and
    keep each one's fastest new figure, so that the choice compares files measured alike."""
    ok = search.standings.feasible() if search.target == "latency" else []
    fastest = min((r["latency_us"] for r in ok), default=0.0)
    close = sorted((r for r in ok if r["latency_us"] <= fastest * (1 + FINALIST_SPREAD)),
                   key=lambda r: r["latency_us"])[:FINALISTS]
    files = {r["id"]: search.out / "cache" / r["id"] / "model.tflite" for r in close}
    close = [r for r in close if files[r["id"]].is_file()]
    key = (len(search.standings.rows), sorted(r["id"] for r in close))
    if len(close) < 2 or getattr(search, "retimed_at", None) == key:  # nothing new since the last timing
        return
    search.retimed_at = key
    contents = {r["id"]: files[r["id"]].read_bytes() for r in close}
    times = {r["id"]: [] for r in close}
    for _ in range(FINALIST_ROUNDS):
        for r in close:
            times[r["id"]].append(latency_us(contents[r["id"]], search.x_sel[0]))
    for r in close:
        r["latency_us"] = min(times[r["id"]])
    search.state.rewrite(search.rows.values())
    note = (f"the {len(close)} fastest files within budget timed again, in turn ({FINALIST_ROUNDS} rounds): "
            + ", ".join(f"{r['id']} {r['latency_us']:.0f} µs" for r in sorted(close, key=lambda r: r["latency_us"])))
    search.log(note)
    search.emit("retimed", latency_us={r["id"]: r["latency_us"] for r in close}, note=note)


def removable_layers(model) -> list[str]:
    """What the remove stage may take out, most work first: the residual blocks an identity
    shortcut skips (``ir5``, ``block1``; :func:`tfopt.surgery.remove.residual_blocks`), the one
    saving the most multiply-adds first, then
    single layers whose removal keeps the graph valid (same input and output shape), e.g. a conv
    with ``same`` padding between equal widths. BatchNormalization layers are left out: a TFLite
    file folds them into the layer before them or runs them as one multiply-add, so taking one
    out saves next to nothing and risks accuracy (a ResNet-18's stem BatchNorm removed: the same
    MACs and latency, 0.4 pt down on the selection split, 1.05 on the test set)."""
    out = []
    for layer in model.layers[1:-1]:
        if type(layer).__name__ == "BatchNormalization":
            continue
        try:
            if layer.get_weights() and tuple(layer.input_shape) == tuple(layer.output_shape):
                out.append(layer.name)
        except (AttributeError, ValueError):
            continue
    macs = {name: model_stats(remove_layers(model, [name])[0])["macs"] for name in residual_blocks(model)}
    return sorted(macs, key=macs.get) + out


def foldable_pools(model) -> list[str]:
    """The convs whose 2×2 max-pool can be folded into them, in graph order."""
    model = without_blocking_batchnorm(model)[0]  # as the step does
    todo, _ = plan(model)
    return [layer.name for layer in model.layers if layer.name in todo]


def channel_sensitivity(model, x, y, ratios=CHANNEL_RATIOS) -> list[dict]:
    """Selection accuracy with ``ratio`` of one layer's channels removed, without fine-tuning."""
    return [{"layer": name, "ratio": r, "accuracy": accuracy(cut, x, y)} for name, r, cut in one_group_cuts(model, ratios)]


def magnitude_sensitivity(model, x, y, levels=SPARSITY_LEVELS, scales=None) -> list[dict]:
    """Selection accuracy with the smallest ``level`` of one layer's kernel zeroed, without
    fine-tuning (ranked by ``|w| · scale`` with the activation criterion's ``scales``)."""
    return [{"layer": name, "ratio": s, "accuracy": accuracy(cut, x, y)}
            for name, s, cut in one_layer_cuts(model, prunable_layers(model), levels, scales)]


def input_scales(model, x) -> dict:
    """The activation criterion's per-input scales of every prunable layer, measured on ``x``."""
    return prune_step.input_scales(model, x)


def allocation_accuracy(model, x, y, sparsity: float, allocation: str, scales=None) -> float:
    """Selection accuracy with ``sparsity`` of all prunable kernels zeroed at once, spread by
    ``allocation`` (``erk`` or ``er``), without fine-tuning (ranked by ``|w| · scale`` with the
    activation criterion's ``scales``)."""
    cfg = validated(PruneConfig, {"sparsity": sparsity, "allocation": allocation}, "prune")
    return accuracy(magnitude_pruned(model, prune_step.layer_targets(model, cfg), scales), x, y)


def save(model, path) -> None:
    save_keras(model, path, include_optimizer=False)


def load(path):
    return load_as_tf_keras(path)[0]
