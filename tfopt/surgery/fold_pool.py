"""Pool folding: a stride-1 conv followed by a 2×2 max-pool becomes one stride-2 conv and a max
over four channel groups, with the same outputs.

The pool's output at ``(p, q)`` is the largest of the conv's outputs at ``(2p + i, 2q + j)``,
``i, j ∈ {0, 1}``. Each of those four is a conv over a window that starts at ``(2p, 2q)`` and is
one row and one column larger than the kernel; so one conv with a ``(kh + 1) × (kw + 1)`` kernel,
stride 2 and four times the filters (the kernel shifted by ``(i, j)`` in each group of filters)
computes all four at the pooled positions only (a ``same`` conv gets its padding as a
``ZeroPadding2D`` before it). The conv's activation, and activation layers between it and the
pool, run on each of the four groups before the max, as they ran before the pool: any
element-wise activation folds (not softmax, which mixes channels, nor PReLU, whose weights are per
channel). The max over the groups is a ``(1, 4)`` max-pool
between two reshapes, all standard layers, so the model saves, loads and converts as before.

It pays where the conv reads few channels, as a network's first conv on a grey image: LiteRT's
(XNNPACK's) float32 conv computes every output position of a one-channel 5×5 conv, a quarter of
which the pool keeps, with a kernel too narrow for its vector tiles. It costs 1.44× the MACs of a
5×5 conv, so it is a measured choice (``tfopt optimize --target latency`` keeps it only where the
file runs faster), never a default. It is meant as the last step before export: a later fine-tune would train the
four groups apart, and a kernel regularizer counts each weight four times.
"""

from __future__ import annotations

import numpy as np

from tfopt.config.validation import did_you_mean
from tfopt.errors import TfoptError
from tfopt.surgery.fold_bn import fold_batchnorm
from tfopt.surgery.graph import consumers, copy_layer, inbound, rebuild

#: Activations that mix the channels of a position: on four filter groups they would mix the groups.
NOT_ELEMENTWISE = frozenset({"softmax", "log_softmax"})


def _activation_name(layer) -> str:
    import tf_keras as keras

    name = keras.activations.serialize(layer.activation)
    return name if isinstance(name, str) else repr(name)


def _elementwise_layer(layer) -> bool:
    """An activation layer with no weights that works on each value alone."""
    import tf_keras as keras

    L = keras.layers
    if type(layer) is L.Activation:
        return _activation_name(layer) not in NOT_ELEMENTWISE
    return type(layer) in (L.ReLU, L.LeakyReLU, L.ELU, L.ThresholdedReLU)


def why_not(conv, pool) -> str | None:
    """Why ``conv`` → ``pool`` cannot be folded, or None when it can."""
    import tf_keras as keras

    L = keras.layers
    if type(conv) is L.BatchNormalization:
        return f"{pool.name} follows BatchNormalization {conv.name}, which does not fold into a conv before it"
    if type(conv) is not L.Conv2D:
        return f"{pool.name} follows {type(conv).__name__} {conv.name}, not a Conv2D"
    if type(pool) is not L.MaxPooling2D:
        return f"{pool.name} is not a MaxPooling2D"
    if tuple(pool.pool_size) != (2, 2) or tuple(pool.strides) != (2, 2) or pool.padding != "valid":
        return f"{pool.name} is not a 2×2 max-pool with stride 2 and valid padding"
    if conv.data_format != "channels_last" or pool.data_format != "channels_last":
        return f"{conv.name} is not channels-last"
    if tuple(conv.strides) != (1, 1) or tuple(conv.dilation_rate) != (1, 1) or getattr(conv, "groups", 1) != 1:
        return f"{conv.name} has strides, dilation or groups"
    if conv.padding not in ("valid", "same"):
        return f"{conv.name} pads its input ('{conv.padding}')"
    act = _activation_name(conv)
    if act in NOT_ELEMENTWISE:
        return f"{conv.name}'s activation '{act}' mixes its channels"
    h, w = conv.output_shape[1:3]
    if h is None or w is None or h < 2 or w < 2:
        return f"{conv.name}'s output has no fixed size of at least 2×2"
    return None


def _also_used(layer, below, users, outputs) -> str | None:
    """Why ``layer``'s output is needed as it is (it feeds more than ``below``, or is a model output)."""
    others = [n for n in users[layer.name] if n != below.name]
    if others:
        return f"{layer.name}'s output also feeds {', '.join(others)}"
    if layer.name in outputs:
        return f"{layer.name}'s output is a model output"
    return None


def _chain(pool, users, outputs) -> tuple:
    """``(conv, reason)`` for a MaxPooling2D: the conv it can fold into (through element-wise
    activation layers whose output nothing else takes), or None and why not."""
    parents = inbound(pool)
    below = pool
    while len(parents) == 1 and _elementwise_layer(parents[0]):
        why = _also_used(parents[0], below, users, outputs)
        if why:
            return None, why
        below = parents[0]
        parents = inbound(below)
    if len(parents) != 1:
        return None, f"{below.name} has {len(parents)} inputs"
    conv = parents[0]
    why = why_not(conv, pool) or _also_used(conv, below, users, outputs)
    return (conv, None) if why is None else (None, why)


def _outputs(model) -> set:
    return {t.node.layer.name for t in model.outputs}


def plan(model) -> tuple[dict, list]:
    """``({conv name: pool layer}, [(pool name, reason kept)])`` for every MaxPooling2D."""
    import tf_keras as keras

    users, outputs = consumers(model), _outputs(model)
    todo, kept = {}, []
    for layer in model.layers:
        if isinstance(layer, keras.layers.MaxPooling2D):
            conv, why = _chain(layer, users, outputs)
            if conv is None:
                kept.append((layer.name, why))
            else:
                todo[conv.name] = layer
    return todo, kept


def refusal(model, name: str, todo: dict, kept: list) -> str | None:
    """Why no pool can be folded into layer ``name``, or None when one can (``todo`` and ``kept``
    from :func:`plan`)."""
    layers = {layer.name: layer for layer in model.layers}
    if name not in layers:
        return f"the model has no such layer{did_you_mean(name, layers)}"
    if name in todo:
        return None
    users = consumers(model)
    below = name
    while len(users[below]) == 1 and _elementwise_layer(layers[users[below][0]]):
        below = users[below][0]
    pools = [u for u in users[below] if type(layers[u]).__name__ == "MaxPooling2D"]
    if not pools:
        return "no MaxPooling2D takes its output (directly or through activation layers)"
    into = {pool.name: conv for conv, pool in todo.items()}
    if pools[0] in into:
        return f"{pools[0]} folds into {into[pools[0]]}, not into {type(layers[name]).__name__} {name}"
    return dict(kept)[pools[0]]


def folded_weights(kernel, bias):
    """Kernel ``(kh + 1, kw + 1, cin, 4 · cout)`` and bias ``(4 · cout,)``: filter group ``2i + j``
    is the kernel shifted down ``i`` rows and right ``j`` columns."""
    kh, kw, cin, cout = kernel.shape
    out = np.zeros((kh + 1, kw + 1, cin, 4 * cout), kernel.dtype)
    for g, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[i:i + kh, j:j + kw, :, g * cout:(g + 1) * cout] = kernel
    return out, np.tile(bias, 4)


def without_blocking_batchnorm(model):
    """``(model, [(bn, into)])``: the model with its BatchNorms folded (an exact rewrite; all that
    fold, as ``tfopt fold-bn`` does) when one stands between a conv and its pool, else the model
    itself and no pairs."""
    _, kept = plan(model)
    if not any("follows BatchNormalization" in why for _, why in kept):
        return model, []
    folded, report = fold_batchnorm(model)
    return folded, report["folded"]


def fold_pools(model, layers=None):
    """A new model with each foldable conv → 2×2 max-pool pair (only those whose conv is named in
    ``layers``, when given; a named layer that cannot take its pool raises, saying why) replaced by
    a stride-2 conv and a max over filter groups. A BatchNorm between a conv and its pool is folded
    into the conv first.

    Returns ``(model, report)``: ``folded`` ``(pool, conv)`` pairs, ``kept`` ``(pool, reason)``
    and ``batchnorm_folded`` ``(bn, into)`` pairs.
    """
    import tf_keras as keras

    L = keras.layers
    model, bn_folded = without_blocking_batchnorm(model)
    todo, kept = plan(model)
    if layers is not None:
        into = dict(bn_folded)
        for name in layers:
            why = (f"{name} is a BatchNorm, folded into {into[name]} first: name {into[name]}" if name in into
                   else refusal(model, name, todo, kept))
            if why:
                raise TfoptError(f"fold_pool: cannot fold a pool into '{name}': {why}")
        wanted = set(layers)
        kept += [(pool.name, f"{conv} was not asked for") for conv, pool in todo.items() if conv not in wanted]
        todo = {conv: pool for conv, pool in todo.items() if conv in wanted}
    if not todo:
        return model, {"folded": [], "kept": kept, "batchnorm_folded": bn_folded}
    pools = {pool.name: conv for conv, pool in todo.items()}
    folded = []

    def replace(layer, args):
        x = args[0] if len(args) == 1 else args
        if layer.name in todo:
            kh, kw = layer.kernel_size
            if layer.padding == "same":  # TensorFlow's split of the padding: the extra row or column at the end
                x = L.ZeroPadding2D((((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)), name=f"{layer.name}_pad")(x)
            new = copy_layer(layer, filters=4 * layer.filters, kernel_size=(kh + 1, kw + 1), strides=(2, 2),
                             padding="valid", use_bias=True)
            out = new(x)
            w = layer.get_weights()
            new.set_weights(list(folded_weights(w[0], w[1] if layer.use_bias else np.zeros(layer.filters,
                                                                                          w[0].dtype))))
            return out
        if layer.name in pools:
            h, w, c = layer.output_shape[1:]
            t = L.Reshape((h * w, 4, c), name=f"{layer.name}_groups")(x)
            t = L.MaxPooling2D((1, 4), name=layer.name)(t)
            folded.append((layer.name, pools[layer.name]))
            return L.Reshape((h, w, c), name=f"{layer.name}_restore")(t)
        return None

    return rebuild(model, replace), {"folded": folded, "kept": kept, "batchnorm_folded": bn_folded}
