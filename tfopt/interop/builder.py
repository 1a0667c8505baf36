"""Builds the target library's model from a :class:`~tfopt.interop.graph.Graph`, layer by layer.

Keras 3 records scalar arithmetic (``x + 3``, as in MobileNetV3) as graph operations: each
becomes a ``Rescaling``. An activation the target library lacks becomes stock layers after the
layer (``hard_silu``: Rescaling → ReLU(6) → Rescaling → Multiply).
"""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError
from tfopt.interop.graph import Graph, Ref, is_graph, layer_class
from tfopt.interop.models import library
from tfopt.interop.translate import application_layer, translate

_MERGE_FOR_OP = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply"}


class Builder:
    """Builds the ``dst`` library's model from a :class:`Graph` of a ``src`` model, keeping layer names.

    Example:
        >>> converted = Builder("keras3", "tf_keras").build(Graph(model, "keras3"))
    """

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.lib = library(dst)
        self.pairs = []  # (source layer, target layer) whose weights are copied
        self.used = set()

    def _name(self, base):
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def build(self, graph):
        """The converted model, its weights copied from the source layers."""
        self.used |= {n for n, _, _ in graph.nodes} | {n for n, _, _ in graph.inputs}
        inputs = [self.lib.Input(batch_shape=shape, name=name, dtype=dtype) for name, shape, dtype in graph.inputs]
        outputs = self._walk(graph, inputs)
        keys = getattr(graph, "input_keys", None)
        out_keys = getattr(graph, "output_keys", None)
        model = self.lib.Model(dict(zip(keys, inputs)) if keys else inputs if len(inputs) > 1 else inputs[0],
                               dict(zip(out_keys, outputs)) if out_keys else outputs if len(outputs) > 1
                               else outputs[0], name=graph.model.name)
        for source, target in self.pairs:
            w = source.get_weights()
            have = [tuple(v.shape) for v in target.get_weights()]
            if [tuple(v.shape) for v in w] != have:
                raise TfoptError(f"layer '{source.name}' ({layer_class(source)}): its weights "
                                 f"{[tuple(v.shape) for v in w]} do not fit the converted layer's {have}")
            target.set_weights(w)
        return model

    def _walk(self, graph, input_tensors, training=None):
        produced = {(name, 0): t for (name, _, _), t in zip(graph.inputs, input_tensors)}
        layers = {}
        pending = [(name, obj, i, call) for name, obj, calls in graph.nodes for i, call in enumerate(calls)]

        def ready(v):
            if isinstance(v, Ref):
                return (v.layer, v.node) in produced
            if isinstance(v, list):
                return all(ready(x) for x in v)
            return True

        def resolve(v):
            if isinstance(v, Ref):
                out = produced[(v.layer, v.node)]
                return out[v.tensor] if isinstance(out, (list, tuple)) else out
            if isinstance(v, list):
                return [resolve(x) for x in v]
            return v

        while pending:
            progress = False
            for item in list(pending):
                name, obj, index, (args, kwargs) = item
                if not ready(args):
                    continue
                pending.remove(item)
                progress = True
                values = [resolve(a) for a in args]
                call_kw = {k: v for k, v in kwargs.items() if k == "training" and isinstance(v, bool)}
                if training is not None and "training" not in call_kw:
                    call_kw["training"] = training
                produced[(name, index)] = self._apply(name, obj, values, call_kw, layers)
            if not progress:
                raise TfoptError(f"model '{graph.model.name}': its graph could not be ordered (a layer waits "
                                 f"for an input that is never produced).")
        return [produced[(r.layer, r.node)] if not isinstance(produced[(r.layer, r.node)], (list, tuple))
                else produced[(r.layer, r.node)][r.tensor] for r in graph.outputs]

    def _apply(self, name, obj, values, call_kw, layers):
        L = self.lib.layers
        cls = layer_class(obj)
        if self.src == "keras3" and ".ops." in type(obj).__module__:
            return self._scalar_op(name, cls, values)
        if is_graph(obj, self.src) and hasattr(obj, "layers"):
            sub = Graph(obj, self.src)
            self.used |= {n for n, _, _ in sub.nodes}
            x = values[0]
            outs = self._walk(sub, x if isinstance(x, list) else [x], call_kw.get("training"))
            return outs if len(outs) > 1 else outs[0]
        if cls == "Bidirectional" and name not in layers:
            def inner(layer):
                config, _ = translate(layer.get_config(), layer_class(layer), self.src, self.dst,
                                      f"{name}/{layer.name}")
                return getattr(L, layer_class(layer))(**config)

            target = L.Bidirectional(inner(obj.forward_layer), merge_mode=obj.merge_mode,
                                     backward_layer=inner(obj.backward_layer), name=name)
            self.pairs.append((obj, target))
            layers[name] = (target, None)
        app = application_layer(obj, self.src, self.dst) if name not in layers else None
        if app is not None:
            target = app[0](**app[1])
            self.pairs.append((obj, target))
            layers[name] = (target, None)
        if name not in layers:
            config, post = translate(obj.get_config(), cls, self.src, self.dst, name)
            if cls == "Normalization":  # its statistics travel in the config: no weights to copy
                config.update(normalization_stats(obj, name))
                layers[name] = (getattr(L, cls).from_config(config), post)
            else:  # (tf_keras's attention from_config wants the call's shapes: its constructor builds on the call)
                target = getattr(L, cls)(**config) if cls == "MultiHeadAttention" else \
                    getattr(L, cls).from_config(config)
                self.pairs.append((obj, target))
                layers[name] = (target, post)
        target, post = layers[name]
        if cls == "MultiHeadAttention":  # called on (query, value[, key])
            y = target(*values, **call_kw)
            return self.post_activation(name, post, y) if post else y
        x = values[0] if len(values) == 1 else values
        y = target(x, **call_kw)
        return self.post_activation(name, post, y) if post else y

    def post_activation(self, name, post, x):
        """Stock layers after layer ``name`` for an activation the target library lacks (``post``)."""
        L = self.lib.layers
        kind = post[0]
        if kind == "leaky":
            return L.LeakyReLU(**({"alpha": post[1]} if self.dst == "tf_keras" else {"negative_slope": post[1]}),
                               name=self._name(f"{name}_leaky"))(x)
        if kind == "hard_sigmoid2":  # tf_keras: clip(0.2 x + 0.5, 0, 1)
            y = L.Rescaling(0.2, 0.5, name=self._name(f"{name}_hs_scale"))(x)
            return L.ReLU(max_value=1.0, name=self._name(f"{name}_hs_clip"))(y)
        # Keras 3: hard_sigmoid(x) = relu6(x + 3) / 6, hard_silu(x) = x · hard_sigmoid(x)
        y = L.Rescaling(1.0, 3.0, name=self._name(f"{name}_hs_shift"))(x)
        y = L.ReLU(max_value=6.0, name=self._name(f"{name}_hs_relu6"))(y)
        y = L.Rescaling(1.0 / 6.0, 0.0, name=self._name(f"{name}_hs_scale"))(y)
        if kind == "hard_sigmoid3":
            return y
        return L.Multiply(name=self._name(f"{name}_hs_mul"))([x, y])

    def _scalar_op(self, name, cls, values):
        L = self.lib.layers
        a, b = (values + [None, None])[:2]
        tensors = [v for v in (a, b) if not _is_scalar(v)]
        if len(tensors) == 2 and cls in _MERGE_FOR_OP:
            return getattr(L, _MERGE_FOR_OP[cls])(name=self._name(name))([a, b])
        if len(tensors) != 1 or len(values) != 2:
            raise TfoptError(f"operation '{name}' ({cls}) on {len(tensors)} tensor(s): tfopt converts operations "
                             f"between a tensor and a number only; use keras.layers for the rest")
        x, c, first = (a, float(np.asarray(b)), True) if tensors[0] is a else (b, float(np.asarray(a)), False)
        if cls == "Add":
            scale, offset = 1.0, c
        elif cls == "Subtract":
            scale, offset = (1.0, -c) if first else (-1.0, c)
        elif cls == "Multiply":
            scale, offset = c, 0.0
        elif first:
            scale, offset = 1.0 / c, 0.0
        else:
            raise TfoptError(f"operation '{name}' ({cls}) divides a number by a tensor; tfopt cannot express it "
                             f"with built-in layers")
        return L.Rescaling(scale, offset, name=self._name(name))(x)


def normalization_stats(layer, name) -> dict:
    """``{"mean": ..., "variance": ...}`` of a built Normalization layer (adapted or given), shaped
    as its kept axes, for the config of the same layer in the other library."""
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
    if getattr(layer, "mean", None) is None or len(axis) != 1:
        raise TfoptError(f"layer '{name}' (Normalization): tfopt converts a built Normalization over one axis; "
                         f"this one has axis {layer.axis!r}")
    return {"mean": np.asarray(layer.mean, dtype="float32").reshape(-1).tolist(),
            "variance": np.asarray(layer.variance, dtype="float32").reshape(-1).tolist()}


def _is_scalar(v):
    return isinstance(v, (int, float, np.number)) or (isinstance(v, np.ndarray) and v.ndim == 0)
