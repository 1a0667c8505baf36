"""Hard swish for int8 files: x · relu6(x + 3), its division by 6 moved into the layers that read it.

The TFLite converter fuses x · relu6(x + 3) / 6 into one ``HARD_SWISH`` op, which the XNNPACK
delegate runs in float32 but leaves to the built-in kernels in int8, cutting the delegated graph
around each one (``benchmarks/bench_int8_activations.py``: 12 of them add 234 µs to a 17-µs int8
stack, the same with and without the delegate). Without the division the converter writes an
``ADD`` with a fused RELU6 and a ``MUL``, which the delegate takes (+3 µs).

:func:`defer_hard_swish_scale` drops the division wherever every path from the hard swish reaches a
weighted layer through layers that commute with a positive scale (pooling, reshapes, dropout, a
multiply by a tensor that does not carry the scale, such as a squeeze-excite gate): those weighted
layers' kernels are divided by 6 instead. The new model computes what the input model computes.
"""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError
from tfopt.surgery.graph import Replacement, as_functional, consumers, copy_layer, inbound, rebuild

#: The factor a hard swish's division carries.
SIX = 6.0


def _affine(layer):
    """``(scale, offset)`` of a layer computing ``x · scale + offset`` with constants: a Rescaling,
    or a TensorFlow-op layer adding, multiplying or dividing by a number (``x + 3.0``,
    ``x * (1 / 6)`` in keras.applications' MobileNetV3); None for any other layer."""
    import tf_keras as keras

    if type(layer) is keras.layers.Rescaling:
        cfg = layer.get_config()
        scale, offset = np.asarray(cfg["scale"], np.float64), np.asarray(cfg["offset"], np.float64)
        return (float(scale), float(offset)) if scale.size == 1 and offset.size == 1 else None
    if type(layer).__name__ != "TFOpLambda" or len(layer.inbound_nodes) != 1:
        return None
    node = layer.inbound_nodes[0]
    rest = list(node.call_args[1:]) + [v for k, v in node.call_kwargs.items() if k != "name"]
    if len(rest) != 1 or not isinstance(rest[0], (int, float)):
        return None
    c = float(rest[0])
    function = layer.get_config().get("function")
    if function in ("__operators__.add", "math.add"):
        return 1.0, c
    if function in ("math.multiply", "__operators__.mul"):
        return c, 0.0
    if function in ("math.truediv", "math.divide", "__operators__.truediv") and c != 0:
        return 1.0 / c, 0.0
    return None


def _is(layer, scale: float, offset: float) -> bool:
    found = _affine(layer)
    return found is not None and np.isclose(found[0], scale, rtol=1e-6) and np.isclose(found[1], offset, atol=1e-6)


def _relu6(layer) -> bool:
    import tf_keras as keras

    return type(layer) is keras.layers.ReLU and layer.max_value is not None and float(layer.max_value) == 6.0 \
        and float(layer.threshold) == 0.0 and float(layer.negative_slope) == 0.0


def _divisions(model, users) -> dict:
    """``{division layer name: Multiply name}`` of each hard swish x · (relu6(x + 3) / 6) whose
    gate layers feed nothing else (the + 3 and / 6 as Rescaling or TensorFlow-op layers)."""
    import tf_keras as keras

    found = {}
    for layer in model.layers:
        if type(layer) is not keras.layers.Multiply:
            continue
        parents = inbound(layer)
        if len(parents) != 2:
            continue
        for x, scale in (parents, parents[::-1]):
            chain = [scale]
            while len(chain) < 3 and len(inbound(chain[-1])) == 1:
                chain.append(inbound(chain[-1])[0])
            if len(chain) < 3 or inbound(chain[-1]) != [x]:
                continue
            divide, relu, shift = chain
            if _is(divide, 1 / SIX, 0.0) and _relu6(relu) and _is(shift, 1.0, 3.0) and \
                    all(users[a.name] == [b.name] for a, b in ((shift, relu), (relu, divide), (divide, layer))):
                found[divide.name] = layer.name
                break
    return found


#: Layers whose kernel can take the factor: linear in their input before bias and activation.
ABSORBING = ("Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
#: The same without depthwise kernels: the fallback where XNNPACK crashed preparing a rewritten file
#: (a channel-pruned MobileNetV3-Small's did, by a collapsed range that :func:`tfopt.tflite.widened_dead_ranges`
#: now widens; its file with the factor in 1×1 convs only did not crash).
POINTWISE = ("Conv1D", "Conv2D", "Dense")
#: Layers of one input that commute with a positive scale.
PASSING = ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "AveragePooling1D", "AveragePooling2D",
           "GlobalMaxPooling1D", "GlobalMaxPooling2D", "MaxPooling1D", "MaxPooling2D", "Flatten", "Reshape", "Dropout",
           "SpatialDropout2D", "ZeroPadding2D", "Cropping2D", "Permute", "UpSampling2D")


def _role(layer, readers=ABSORBING) -> str | None:
    """``absorbs`` (a class of ``readers``), ``passes`` or ``multiply`` for a layer of either Keras
    reading a scaled tensor (class names and configs are the same in both); None for any other."""
    kind = type(layer).__name__
    if kind in readers:
        return "absorbs"
    if kind in PASSING:
        return "passes"
    if kind == "Multiply":
        return "multiply"
    cfg = layer.get_config()
    if kind == "ReLU" and cfg.get("max_value") is None and float(cfg.get("threshold") or 0.0) == 0.0:
        return "passes"
    if kind == "Activation" and cfg.get("activation") in ("linear", "relu"):
        return "passes"
    return None


def _reach(start: str, layers: dict, users: dict, outputs: set, readers=ABSORBING):
    """``(scaled layers, absorbing layers)`` reached from ``start``'s output, or None when a path
    meets a layer that neither passes nor absorbs the factor, or a model output."""
    scaled, absorbing, todo = {start}, set(), [start]
    while todo:
        name = todo.pop()
        if name in outputs:
            return None
        for user in users[name]:
            role = _role(layers[user], readers)
            if role == "absorbs":
                absorbing.add(user)
            elif role is not None:
                if user not in scaled:
                    scaled.add(user)
                    todo.append(user)
            else:
                return None
    return scaled, absorbing


def _accepted(sources: dict, layers: dict, users: dict, parents: dict, outputs: set, readers=ABSORBING) -> dict:
    """``{source: (layers carrying the factor, layers whose kernels take it)}`` of the ``sources``
    (``{name: the layer whose output carries the factor once the source changes}``) whose factor
    can move: every path absorbed, no layer taken twice, no multiply with the factor on both inputs."""
    accepted, carrying, taken = {}, set(), set()
    for source, start in sources.items():
        if source in outputs:  # a divided gate read as an output must stay divided
            continue
        reached = _reach(start, layers, users, outputs, readers)
        if reached is None:
            continue
        scaled, absorbing = reached
        together = carrying | scaled
        if scaled & carrying or absorbing & taken or any(
                _role(layers[n]) == "multiply" and sum(p in together for p in parents[n]) > 1 for n in together):
            continue
        accepted[source] = (scaled, absorbing)
        carrying, taken = together, taken | absorbing
    return accepted


def plan(model, readers=ABSORBING) -> dict:
    """``{division layer name: (layers carrying the factor, layers whose kernels take it)}`` for
    each hard swish of a tf_keras model whose division can move into layers of the classes
    ``readers``."""
    model = as_functional(model)
    users, layers = consumers(model), {layer.name: layer for layer in model.layers}
    parents = {name: [p.name for p in inbound(layer)] for name, layer in layers.items()}
    outputs = {t._keras_history.layer.name for t in model.outputs}
    return _accepted(_divisions(model, users), layers, users, parents, outputs, readers)


def _divided(layer, factor: float) -> list:
    """``layer``'s weights with the kernel it applies first divided by ``factor``."""
    w = layer.get_weights()
    return [w[0] / factor, *w[1:]]


def _times_six(x):
    """x · relu6(x + 3): a hard swish times 6, in ops XNNPACK runs in int8."""
    from keras import ops

    return x * ops.relu6(x + 3.0)


def _keras3_graph(model):
    """``(layers, users, parents, outputs)`` of a Keras 3 functional or Sequential model, by layer
    name; None when a layer is called more than once."""
    layers = {layer.name: layer for layer in model.layers}
    parents = {}
    for name, layer in layers.items():
        if len(layer._inbound_nodes) > 1:
            return None
        parents[name] = [p.operation.name for n in layer._inbound_nodes for p in n.parent_nodes]
    users = {name: [] for name in layers}
    for name, ps in parents.items():
        for p in ps:
            users.setdefault(p, []).append(name)
    return layers, users, parents, {t._keras_history[0].name for t in model.outputs}


def _defer_keras3(model, readers=ABSORBING):
    """:func:`defer_hard_swish_scale` for Keras 3, whose hard swish is one layer's activation
    (``Activation("hard_swish")``, or a conv's ``activation="hard_swish"``): that activation
    becomes x · relu6(x + 3) in a clone of the model."""
    import keras

    if type(model).__name__ not in ("Functional", "Sequential"):
        return model, []
    graph = _keras3_graph(model)
    if graph is None:
        return model, []
    layers, users, parents, outputs = graph
    sources = {name: name for name, layer in layers.items()
               if layer.get_config().get("activation") in ("hard_silu", "hard_swish")}
    todo = _accepted(sources, layers, users, parents, outputs, readers)
    if not todo:
        return model, []
    absorbing = set().union(*(a for _, a in todo.values()))

    def clone(layer):
        cfg = layer.get_config()
        if layer.name in todo:
            cfg["activation"] = _times_six
        return type(layer).from_config(cfg)

    try:
        new = keras.models.clone_model(model, clone_function=clone)
        for layer in model.layers:
            weights = layer.get_weights()
            if not weights:  # the input layer is renamed in a clone
                continue
            new.get_layer(layer.name).set_weights(_divided(layer, SIX) if layer.name in absorbing else weights)
    except Exception:  # noqa: BLE001  a layer that does not copy from its config: converted as it is
        return model, []
    return new, sorted(todo)


def defer_hard_swish_scale(model, readers=ABSORBING):
    """``(new model, names of the hard swishes whose division moved)``: each hard swish that can
    computes x · relu6(x + 3) and the layers reading it divide their kernels by 6 (tf_keras: the
    division layers of :func:`plan` taken out; Keras 3: each hard-swish activation replaced).
    ``readers``: the classes of layers whose kernels may take the factor (:data:`ABSORBING`, or
    :data:`POINTWISE`). ``model`` itself is returned (with ``[]``) when there is nothing to move; it
    is never changed."""
    if type(model).__module__.startswith("keras."):
        return _defer_keras3(model, readers)
    if not getattr(model, "_is_graph_network", False):
        return model, []
    try:
        todo = plan(model, readers)
    except TfoptError:  # a shared layer: the graph is converted as it is
        return model, []
    if not todo:
        return model, []
    absorbing = set().union(*(a for _, a in todo.values()))

    def replace(layer, args):
        if layer.name in todo:
            return args[0]
        if layer.name in absorbing:
            return Replacement(copy_layer(layer), _divided(layer, SIX))
        return None

    try:
        return rebuild(model, replace), sorted(todo)
    except Exception:  # noqa: BLE001  a layer that does not copy from its config: converted as it is
        return model, []
