"""Channel surgery layer by layer: which weights of each layer kind write or read a channel, and
those weights with some channels kept (filters, units of every gate, attention heads, embedding
dimensions, an EinsumDense's output axis, a transposed conv's filters and inputs)."""

from __future__ import annotations

import numpy as np

from tfopt import layer_kinds


def layer_classes():
    import tf_keras as keras
    from tf_keras.src.layers.convolutional.base_conv import Conv
    from tf_keras.src.layers.convolutional.base_depthwise_conv import DepthwiseConv
    from tf_keras.src.layers.convolutional.base_separable_conv import SeparableConv

    return keras.layers, (Conv, DepthwiseConv, SeparableConv), None


def flatten_rows(shape, channels) -> np.ndarray:
    """Rows of a dense kernel fed by ``Flatten`` over an input of ``shape`` (``…×c``, any number
    of spatial axes) that read ``channels``."""
    positions, c = int(np.prod(shape[:-1])), shape[-1]
    return (np.arange(positions)[:, None] * c + np.asarray(channels, dtype=int)[None, :]).reshape(-1)


def recurrent(layer) -> bool:
    L, _, _ = layer_classes()
    return isinstance(layer, (L.LSTM, L.GRU, L.SimpleRNN))


def attention_weights(layer) -> dict:
    """``{"query/kernel": index, ...}``: where each of a MultiHeadAttention layer's weights sits."""
    return {"/".join(w.name.split(":")[0].split("/")[-2:]): n for n, w in enumerate(layer.weights)}


def attention_kernels(layer) -> list:
    """The query, key, value and output kernels of a MultiHeadAttention layer."""
    at, w = attention_weights(layer), layer.get_weights()
    return [w[at[f"{part}/kernel"]] for part in ("query", "key", "value", "attention_output")]


def bidirectional(layer) -> bool:
    L, _, _ = layer_classes()
    return isinstance(layer, L.Bidirectional)


def directions(layer) -> list:
    """``[(recurrent layer, its weights, first output channel)]``: the forward and backward layers
    of a Bidirectional (their outputs side by side), or the recurrent layer itself."""
    if not bidirectional(layer):
        return [(layer, layer.get_weights(), 0)]
    w, n = layer.get_weights(), len(layer.forward_layer.weights)
    return [(layer.forward_layer, w[:n], 0), (layer.backward_layer, w[n:], layer.forward_layer.units)]


def _rnn_filters(layer, w):
    both = np.concatenate([w[0], w[1]], axis=0)
    return both.reshape(both.shape[0], layer_kinds.gates(layer), layer.units).reshape(-1, layer.units)


def _rnn_sliced(layer, w, o, i):
    """A recurrent layer's weights keeping units ``o`` (all gates; recurrent rows and columns) and
    input channels ``i`` (None: all)."""
    units = layer.units
    kept = np.arange(units) if o is None else np.asarray(o)
    cols = np.concatenate([g * units + kept for g in range(layer_kinds.gates(layer))])
    return [(w[0] if i is None else w[0][i])[:, cols], w[1][kept][:, cols], *[b[..., cols] for b in w[2:]]]


def transposed(layer) -> bool:
    """A transposed convolution: its kernel holds output channels on axis -2, inputs on axis -1."""
    L, _, _ = layer_classes()
    return isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose))


def has_units(layer) -> bool:
    """A recurrent layer, or a Bidirectional one: its channels are units of every gate."""
    return recurrent(layer) or bidirectional(layer)


def width(layer) -> int:
    """The channels a source writes: its filters, units (both directions) or embedding size."""
    _, (_, _, separable), _ = layer_classes()
    if has_units(layer):
        return int(sum(d.units for d, _, _ in directions(layer)))
    if transposed(layer):
        return int(layer.get_weights()[0].shape[-2])
    return int(layer.get_weights()[1 if isinstance(layer, separable) else 0].shape[-1])


def filters(layer):
    """``(rows, channels)``: every weight that writes each output channel (a recurrent layer's
    input and recurrent kernels, all gates)."""
    L, (_, _, separable), _ = layer_classes()
    w = layer.get_weights()
    if isinstance(layer, L.MultiHeadAttention):  # per head: its query, key, value and output weights
        heads = int(layer._num_heads)
        parts = [np.moveaxis(k, 1, -1).reshape(-1, heads) for k in attention_kernels(layer)[:3]]
        parts.append(np.moveaxis(attention_kernels(layer)[3], 0, -1).reshape(-1, heads))
        return np.concatenate(parts, axis=0)
    if has_units(layer):
        parts = [_rnn_filters(d, dw) for d, dw, _ in directions(layer)]
        rows = max(p.shape[0] for p in parts)
        return np.concatenate([np.pad(p, ((0, rows - p.shape[0]), (0, 0))) for p in parts], axis=1)
    kernel = w[1] if isinstance(layer, separable) else np.swapaxes(w[0], -1, -2) if transposed(layer) else w[0]
    return kernel.reshape(-1, kernel.shape[-1])


def sliced_weights(layer, o, i, rows=None):
    """``(weights, config changes)`` of ``layer`` keeping output channels ``o`` and input channels
    ``i`` (either None: all); ``rows(i)`` maps a Dense layer's kept channels to its kernel rows
    when a Flatten feeds it."""
    L, (conv, depthwise, separable), _ = layer_classes()
    w = layer.get_weights()
    changes = {}
    if isinstance(layer, L.MultiHeadAttention):  # heads ``o``: query/key/value on axis 1, output on axis 0
        at = attention_weights(layer)
        for part in ("query", "key", "value"):
            w[at[f"{part}/kernel"]] = w[at[f"{part}/kernel"]][:, o]
            if f"{part}/bias" in at:
                w[at[f"{part}/bias"]] = w[at[f"{part}/bias"]][o]
        w[at["attention_output/kernel"]] = w[at["attention_output/kernel"]][o]
        changes["num_heads"] = len(o)
    elif has_units(layer):  # a Bidirectional's directions each keep their own share of ``o``
        w, config = [], layer.get_config()
        for key, (d, dw, start) in zip(("layer", "backward_layer"), directions(layer)):
            mine = None if o is None else np.asarray([c - start for c in o if start <= c < start + d.units])
            w += _rnn_sliced(d, dw, mine, i)
            units = d.units if mine is None else len(mine)
            if d is layer:
                changes["units"] = units
            else:
                inner = dict(config.get(key) or L.serialize(d))
                changes[key] = {**inner, "config": {**inner["config"], "units": units}}
    elif isinstance(layer, L.Embedding):
        w, changes = [w[0][:, o]], {"output_dim": len(o)}
    elif isinstance(layer, L.EinsumDense):  # a Dense on the last axis: kernel axes from its equation
        read, _ = layer_kinds.einsum_axes(layer)
        kernel, bias = w[0], (w[1] if len(w) > 1 else None)
        if i is not None:
            kernel = np.take(kernel, i, axis=read)
        if o is not None:
            kernel = kernel[..., o]
            if bias is not None and layer.bias_axes and layer.equation.split("->")[1][-1] in layer.bias_axes:
                bias = bias[..., o]
            shape = layer.get_config()["output_shape"]
            changes["output_shape"] = len(o) if isinstance(shape, int) else [*list(shape)[:-1], len(o)]
        w = [kernel, *([bias] if bias is not None else [])]
    elif w and layer_kinds.role(layer) == "transparent" and all(np.ndim(a) == 1 for a in w):
        w = [a[o] for a in w]  # per-channel weights: BatchNorm's statistics, a layer scale
    elif isinstance(layer, L.Reshape):
        changes["target_shape"] = (*layer.target_shape[:-1], len(o))
    elif transposed(layer):  # kernel (..., out, in)
        kernel, bias = w[0], (w[1] if layer.use_bias else None)
        if i is not None:
            kernel = kernel[..., i]
        if o is not None:
            kernel, bias = kernel[..., o, :], (bias[o] if bias is not None else None)
            changes["filters"] = len(o)
        w = [kernel, *([bias] if bias is not None else [])]
    elif isinstance(layer, conv) and layer.groups > 1:  # one channel per group: a depthwise conv
        w = [w[0][..., o], *([w[1][o]] if layer.use_bias else [])]
        changes.update(filters=len(o), groups=len(o))
    elif isinstance(layer, depthwise):
        w = [w[0][..., o, :], *([w[1][o]] if layer.use_bias else [])]
    elif isinstance(layer, separable):
        dw, pw = w[0], w[1]
        bias = w[2] if layer.use_bias else None
        if i is not None:
            m = layer.depth_multiplier
            dw = dw[..., i, :]
            pw = pw[..., [c * m + j for c in i for j in range(m)], :]
        if o is not None:
            pw, bias = pw[..., o], (bias[o] if bias is not None else None)
            changes["filters"] = len(o)
        w = [dw, pw, *([bias] if bias is not None else [])]
    elif isinstance(layer, (conv, L.Dense)):
        kernel = w[0]
        bias = w[1] if layer.use_bias else None
        if i is not None:
            if isinstance(layer, L.Dense):
                kernel = kernel[rows(i) if rows is not None else i, :]
            else:
                kernel = kernel[..., i, :]
        if o is not None:
            kernel, bias = kernel[..., o], (bias[o] if bias is not None else None)
            changes["units" if isinstance(layer, L.Dense) else "filters"] = len(o)
        w = [kernel, *([bias] if bias is not None else [])]
    return w, changes
