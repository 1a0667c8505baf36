"""What a model's output is: the activation it ends with, and whether it emits logits.

Imports no TensorFlow at module level: the fine-tune loop and the compile step read it, and
the step modules import those while the command line builds its help.
"""

from __future__ import annotations

PROBABILITIES = ("softmax", "sigmoid")


def output_activation(model) -> str:
    """The activation the model's output goes through last ('linear' when it emits logits).

    TFMOT's wrappers (pruning, clustering, quantization) are looked through, and so are a
    trailing Dropout or Flatten.
    """
    import tf_keras as keras

    layer = model.layers[-1]
    while layer is not None:
        while hasattr(layer, "layer"):  # TFMOT wrappers (pruning, clustering, quantization)
            layer = layer.layer
        act = getattr(layer, "activation", None)
        while act is not None and not hasattr(act, "__name__") and hasattr(act, "activation"):
            act = act.activation  # TFMOT's QuantizeAwareActivation wraps the function
        if act is not None:
            return getattr(act, "__name__", str(act))
        if isinstance(layer, (keras.layers.Dropout, keras.layers.Flatten)) and layer.inbound_nodes:
            inbound = layer.inbound_nodes[0].inbound_layers
            layer = inbound if not isinstance(inbound, list) else None
            continue
        return "linear"
    return "linear"


def emits_logits(model) -> bool:
    """Whether the output is logits (it ends with neither softmax nor sigmoid): a loss's ``from_logits``."""
    return output_activation(model) not in PROBABILITIES
