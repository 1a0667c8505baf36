"""Parameter and MAC counts of any tf_keras model, layer by layer.

MACs count multiply-accumulates of one forward pass for one sample: convolutions and dense
layers only (BatchNorm, activations, pooling and adds are counted as zero, as is usual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfopt import layer_kinds


@dataclass
class LayerStats:
    name: str
    kind: str
    output_shape: tuple
    params: int
    nonzero: int
    macs: int


def _out_shape(layer):
    shape = layer.output_shape
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:])


def layer_macs(layer) -> int:
    """Multiply-accumulates of one layer for one sample (the formula in :mod:`tfopt.layer_kinds`)."""
    return layer_kinds.macs(layer)


def layer_stats(model) -> list[LayerStats]:
    rows = []
    for layer in model.layers:
        weights = layer.get_weights()
        params = int(sum(w.size for w in weights))
        nonzero = int(sum(np.count_nonzero(w) for w in weights))
        rows.append(LayerStats(layer.name, type(layer).__name__, _out_shape(layer), params, nonzero,
                               int(layer_macs(layer))))
    return rows


def model_stats(model) -> dict:
    """Totals: parameters, trainable parameters, non-zero parameters and MACs."""
    rows = layer_stats(model)
    trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    return {
        "params": sum(r.params for r in rows),
        "trainable_params": trainable,
        "nonzero_params": sum(r.nonzero for r in rows),
        "macs": sum(r.macs for r in rows),
    }


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def summary_table(model) -> str:
    """A layer-by-layer table: name, type, output shape, parameters and MACs."""
    rows = layer_stats(model)
    header = ("layer", "type", "output shape", "params", "MACs")
    body = [(r.name, r.kind, "×".join(str(d) for d in r.output_shape), f"{r.params:,}", _human(r.macs))
            for r in rows]
    totals = model_stats(model)
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(5)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "-" * (sum(widths) + 8)]
    lines += [fmt.format(*row) for row in body]
    lines.append("-" * (sum(widths) + 8))
    lines.append(f"total: {totals['params']:,} parameters ({totals['trainable_params']:,} trainable), "
                 f"{_human(totals['macs'])} MACs per sample ({totals['macs']:,})")
    return "\n".join(lines)
