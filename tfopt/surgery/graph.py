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


def as_functional(model):
    """``model`` itself, or for a Sequential the functional model over the same layers (its
    input layer included), so that every layer's inputs can be followed."""
    import tf_keras as keras

    if isinstance(model, keras.Sequential):
        if not model.inputs:
            raise TfoptError(f"Sequential model '{model.name}' has no input shape yet; start it with "
                             f"keras.Input(shape) or call model.build(input_shape) first.")
        return keras.Model(model.inputs, model.outputs, name=model.name)
    return model


def _as_sequential(model, like):
    """``model`` (a rebuilt chain) as a Sequential when ``like`` was one."""
    import tf_keras as keras

    if not isinstance(like, keras.Sequential) or len(model.inputs) != 1 or len(model.outputs) != 1:
        return model
    first, *rest = model.layers
    seq = keras.Sequential([keras.Input(batch_shape=first.get_config()["batch_input_shape"], name=first.name),
                            *(type(layer).from_config(layer.get_config()) for layer in rest)], name=model.name)
    seq.set_weights(model.get_weights())
    return seq


def consumers(model) -> dict:
    """``{layer name: [names of the layers that take its output]}``."""
    model = as_functional(model)
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

    A kept layer is called again with its original call's arguments, constants and keywords
    included (``x + 3.0`` or ``x[..., :8]`` as TensorFlow-op layers), its tensors swapped for the
    rebuilt ones.
    """
    import tensorflow as tf
    import tf_keras as keras
    from tf_keras.src.engine.keras_tensor import KerasTensor

    if not getattr(model, "_is_graph_network", False):
        raise TfoptError(f"model '{model.name}' is subclassed; surgery needs a Sequential or functional model")
    original, model = model, as_functional(model)
    tensors = {}

    def new_of(t):
        return tensors[id(t)] if isinstance(t, KerasTensor) else t

    inputs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            t = keras.Input(batch_shape=layer.get_config()["batch_input_shape"], name=layer.name)
            inputs.append(t)
            tensors[id(layer.output)] = t
            continue
        inbound(layer)
        node = layer.inbound_nodes[0]
        args = [new_of(t) for t in tf.nest.flatten(node.keras_inputs)]
        out = replace(layer, args)
        if out is None:
            new = copy_layer(layer)
            call_args, call_kwargs = tf.nest.map_structure(new_of, (tuple(node.call_args), dict(node.call_kwargs)))
            out = new(*call_args, **call_kwargs)
            new.set_weights(layer.get_weights())
        for old, rebuilt in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
            tensors[id(old)] = rebuilt
    outputs = [tensors[id(t)] for t in model.outputs]
    return _as_sequential(keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name),
                          original)
