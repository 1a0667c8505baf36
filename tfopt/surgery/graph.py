"""Rebuild a functional tf_keras model layer by layer, letting a callback replace or drop layers.

The rebuilt model is new: new layer objects, weights copied, the input model untouched.
"""

from __future__ import annotations

from tfopt.errors import TfoptError


def inbound(layer) -> list:
    """The layers feeding ``layer`` (its first call); models with shared layers are refused."""
    nodes = layer.inbound_nodes
    if len(nodes) > 1:
        raise TfoptError(f"layer '{layer.name}' is called more than once (shared layer); surgery needs a "
                         f"plain graph")
    if not nodes:
        return []
    parents = nodes[0].inbound_layers
    return list(parents) if isinstance(parents, (list, tuple)) else [parents]


def consumers(model) -> dict:
    """``{layer name: [names of the layers that take its output]}``."""
    out = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for parent in inbound(layer):
            out[parent.name].append(layer.name)
    return out


def copy_layer(layer, **config_changes):
    """A new layer of the same class and config (with changes); weights are set by the caller."""
    config = layer.get_config()
    config.update(config_changes)
    return type(layer).from_config(config)


def rebuild(model, replace):
    """Rebuild ``model``; ``replace(layer, inputs)`` returns the output tensor for ``layer`` given
    its rebuilt input tensors, or None to keep a copy of the layer with its weights.
    """
    import tf_keras as keras

    if not getattr(model, "_is_graph_network", False):
        raise TfoptError(f"model '{model.name}' is subclassed; surgery needs a Sequential or functional model")
    tensors = {}
    inputs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            t = keras.Input(batch_shape=layer.get_config()["batch_input_shape"], name=layer.name)
            inputs.append(t)
            tensors[layer.name] = t
            continue
        args = [tensors[p.name] for p in inbound(layer)]
        out = replace(layer, args)
        if out is None:
            new = copy_layer(layer)
            out = new(args[0] if len(args) == 1 else args)
            new.set_weights(layer.get_weights())
        tensors[layer.name] = out
    outputs = [tensors[t.node.layer.name] for t in model.outputs]
    return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name)
