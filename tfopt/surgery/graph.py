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


def copy_layer(original, /, **config_changes):
    """A new layer of the same class and config (with changes); weights are set by the caller."""
    config = original.get_config()
    config.update(config_changes)
    return type(original).from_config(config)


class Replacement:
    """What a ``replace`` callback may return instead of a tensor: a new layer, called like the
    one it replaces (same arguments, constants and keywords), then given ``weights``."""

    def __init__(self, layer, weights):
        self.layer, self.weights = layer, weights


def _replay(model, inputs, replace, taken=None, prefix=""):
    """Call new copies of functional ``model``'s layers on ``inputs`` (new tensors for its inputs,
    in order); returns the new tensors of its outputs. ``replace`` as in :func:`rebuild`. A copied
    layer whose name is in ``taken`` is renamed ``<prefix>_<name>``."""
    import tensorflow as tf
    import tf_keras as keras
    from tf_keras.src.engine.keras_tensor import KerasTensor

    tensors = {id(old): new for old, new in zip(model.inputs, inputs)}

    def new_of(t):
        return tensors[id(t)] if isinstance(t, KerasTensor) else t

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inbound(layer)
        node = layer.inbound_nodes[0]
        args = [new_of(t) for t in tf.nest.flatten(node.keras_inputs)]
        out = replace(layer, args)
        if out is None or isinstance(out, Replacement):
            rename = {"name": f"{prefix}_{layer.name}"} if taken is not None and layer.name in taken else {}
            new = copy_layer(layer, **rename) if out is None else out.layer
            weights = layer.get_weights() if out is None else out.weights
            call_args, call_kwargs = tf.nest.map_structure(new_of, (tuple(node.call_args), dict(node.call_kwargs)))
            out = new(*call_args, **call_kwargs)
            new.set_weights(weights)
        for old, rebuilt in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
            tensors[id(old)] = rebuilt
    return [tensors[id(t)] for t in model.outputs]


def rebuild(model, replace):
    """Rebuild ``model``; ``replace(layer, inputs)`` returns the output tensor for ``layer`` given
    its rebuilt input tensors, a :class:`Replacement`, or None to keep a copy of the layer with its
    weights.

    A kept layer is called again with its original call's arguments, constants and keywords
    included (``x + 3.0`` or ``x[..., :8]`` as TensorFlow-op layers), its tensors swapped for the
    rebuilt ones.
    """
    import tf_keras as keras

    if not getattr(model, "_is_graph_network", False):
        raise TfoptError(f"model '{model.name}' is subclassed; surgery needs a Sequential or functional model")
    original, model = model, as_functional(model)
    inputs = []
    for t in model.inputs:
        layer = t._keras_history.layer
        inputs.append(keras.Input(batch_shape=layer.get_config()["batch_input_shape"], name=layer.name,
                                  dtype=layer.dtype))
    outputs = _replay(model, inputs, replace)
    return _as_sequential(keras.Model(_structured(model, "_nested_inputs", inputs),
                                      _structured(model, "_nested_outputs", outputs), name=model.name), original)


def _structured(model, attribute: str, tensors: list):
    """``tensors`` (flat, in ``model.inputs``/``model.outputs`` order) in the structure the model was
    built with: a dict of inputs or outputs keeps its keys; a single one is the tensor itself."""
    import tensorflow as tf

    nested = getattr(model, attribute, None)
    if isinstance(nested, dict):
        return tf.nest.pack_sequence_as(nested, tensors)
    return tensors[0] if len(tensors) == 1 else tensors


def inline_nested(model):
    """``model`` itself, or, when it holds Sequential or functional models as layers, an equal
    model with their layers called in its own graph (recursively), so that every layer is in one
    graph. A nested layer whose name the outer model already uses is named ``<nested>_<name>``."""
    import tf_keras as keras

    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        return model
    taken = {layer.name for layer in model.layers}

    def replace(layer, args):
        if not isinstance(layer, keras.Model):
            return None
        if not getattr(layer, "_is_graph_network", False):
            raise TfoptError(f"layer '{layer.name}' is a subclassed model; surgery needs its layers in a graph")
        inner = as_functional(inline_nested(layer))
        outs = _replay(inner, args, lambda *_: None, taken, layer.name)
        return outs[0] if len(outs) == 1 else outs

    return rebuild(model, replace)
