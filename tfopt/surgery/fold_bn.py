"""BatchNorm folding: merge each BN into the conv, depthwise conv or dense layer before it.

For a BN with scale ``s = γ / √(σ² + ε)``: ``W' = W · s`` (per output channel) and
``b' = (b − μ) · s + β``. A BN is folded when its only input is such a layer with a linear
activation and the BN is that layer's only consumer; any other BN is kept, and said why.
The TFLite converter already does this fold: the gain is on the Keras side (fewer layers,
simpler surgery), not in TFLite latency.
"""

from __future__ import annotations

import numpy as np

from tfopt import layer_kinds
from tfopt.surgery.graph import consumers, copy_layer, inbound, rebuild


def _bn_scale_shift(bn):
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in bn.weights], bn.get_weights()))
    n = bn.get_weights()[-1].shape[0]
    gamma = weights.get("gamma", np.ones(n, np.float32))
    beta = weights.get("beta", np.zeros(n, np.float32))
    scale = gamma / np.sqrt(weights["moving_variance"] + bn.epsilon)
    return scale, beta - weights["moving_mean"] * scale


def _foldable(layer) -> bool:
    return layer_kinds.is_foldable(layer)


def _folded_weights(layer, scale, shift):
    from tf_keras.src.layers.convolutional.base_depthwise_conv import DepthwiseConv
    from tf_keras.src.layers.convolutional.base_separable_conv import SeparableConv

    w = layer.get_weights()
    bias = w[-1] if layer.use_bias else np.zeros_like(shift)
    if isinstance(layer, SeparableConv):
        depthwise, pointwise = w[0], w[1] * scale
        return [depthwise, pointwise, bias * scale + shift]
    kernel = w[0]
    if isinstance(layer, DepthwiseConv):
        cin, mult = kernel.shape[-2:]
        kernel = kernel * scale.reshape(cin, mult)
    else:
        kernel = kernel * scale
    return [kernel, bias * scale + shift]


def batchnorm_plan(model) -> tuple[dict, list]:
    """``({name of a layer: the BatchNormalization that folds into it}, [(bn, reason kept)])``: a
    BatchNormalization folds when its only input is a foldable layer with a linear activation
    (:func:`tfopt.layer_kinds.is_foldable`) that it alone reads.

    Raises:
        TfoptError: a shared layer (called more than once).
    """
    import tf_keras as keras

    users = consumers(model)
    plan, kept = {}, []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        parents = inbound(layer)
        parent = parents[0] if len(parents) == 1 else None
        if parent is None or not _foldable(parent):
            why = f"follows {type(parent).__name__ if parent else 'several layers'}"
            if parent is not None and hasattr(parent, "activation") and \
                    parent.activation is not keras.activations.linear:
                why = f"follows {parent.name}, whose activation is not linear"
            kept.append((layer.name, why))
        elif users[parent.name] != [layer.name]:
            kept.append((layer.name, f"{parent.name}'s output also feeds {', '.join(users[parent.name])}"))
        else:
            plan[parent.name] = layer
    return plan, kept


def fold_batchnorm(model):
    """A new model with every foldable BatchNormalization merged into the layer before it.

    Returns ``(model, report)``; ``report`` lists ``folded`` as ``(bn, into)`` pairs and
    ``kept`` as ``(bn, reason)`` pairs.
    """
    plan, kept = batchnorm_plan(model)
    folded = []

    def replace(layer, args):
        x = args[0] if len(args) == 1 else args
        if layer.name in plan:
            bn = plan[layer.name]
            new = copy_layer(layer, use_bias=True)
            out = new(x)
            new.set_weights(_folded_weights(layer, *_bn_scale_shift(bn)))
            folded.append((bn.name, layer.name))
            return out
        if any(bn.name == layer.name for bn in plan.values()):
            return x  # the BN's parent already carries it
        return None

    return rebuild(model, replace), {"folded": folded, "kept": kept}
