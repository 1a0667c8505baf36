"""A Sequential or functional model's layers and calls in a library-neutral form."""

from __future__ import annotations

from tfopt.errors import TfoptError
from tfopt.interop.models import library


def is_graph(model, kind) -> bool:
    """Whether ``model`` (of ``kind``) is Sequential or functional, not subclassed."""
    lib = library(kind)
    if isinstance(model, lib.Sequential):
        return True
    if kind == "keras3":
        from keras.src.models.functional import Functional

        return isinstance(model, Functional)
    return bool(getattr(model, "_is_graph_network", False))


class Ref:
    """A reference to output ``tensor`` of call ``node`` of layer ``layer`` in a config."""

    __slots__ = ("layer", "node", "tensor")

    def __init__(self, layer, node, tensor):
        self.layer, self.node, self.tensor = layer, int(node), int(tensor)


class Graph:
    """A model's layers in a library-neutral form: inputs, ``(name, object, calls)`` and outputs."""

    def __init__(self, model, kind):
        self.model, self.kind = model, kind
        lib = library(kind)
        if isinstance(model, lib.Sequential):
            self._sequential(model, lib)
        else:
            self._functional(model, kind)

    def _sequential(self, model, lib):
        try:
            shape = tuple(model.inputs[0].shape)
            dtype = model.inputs[0].dtype
        except (AttributeError, IndexError, TypeError, ValueError):
            raise TfoptError(f"Sequential model '{model.name}' has no input shape yet; start it with "
                             f"keras.Input(shape) or call model.build(input_shape) first.") from None
        first = getattr(model, "_layers", [None])[0] if self.kind == "keras3" else None
        name = first.name if first is not None and type(first).__name__ == "InputLayer" else f"{model.name}_input"
        self.inputs = [(name, shape, getattr(dtype, "name", dtype))]
        self.nodes, prev = [], Ref(name, 0, 0)
        for layer in model.layers:
            self.nodes.append((layer.name, layer, [([prev], {})]))
            prev = Ref(layer.name, 0, 0)
        self.outputs = [prev]

    def _functional(self, model, kind):
        cfg = model.get_config()
        objects = {op.name: op for op in (model.operations if kind == "keras3" else model.layers)}

        def refs(value):
            value = list(value.values()) if isinstance(value, dict) else list(value)
            return [Ref(*value)] if value and isinstance(value[0], str) else [Ref(*v) for v in value]

        # inputs given as a dict ({name: Input}) keep their keys
        self.input_keys = list(cfg["input_layers"]) if isinstance(cfg["input_layers"], dict) else None
        in_refs = refs(cfg["input_layers"])
        layer_cfg = {entry["name"]: entry for entry in cfg["layers"]}
        self.inputs = []
        for r in in_refs:
            icfg = layer_cfg[r.layer]["config"]
            shape = icfg.get("batch_shape") or icfg.get("batch_input_shape")
            dtype = icfg.get("dtype")
            self.inputs.append((r.layer, tuple(shape), dtype if isinstance(dtype, str) else "float32"))
        self.nodes = []
        for entry in cfg["layers"]:
            if entry["class_name"] == "InputLayer":
                continue
            calls = [self._call(node, kind) for node in entry["inbound_nodes"]]
            self.nodes.append((entry["name"], objects[entry["name"]], calls))
        self.outputs = refs(cfg["output_layers"])
        # outputs given as a dict ({name: tensor}) keep their keys
        self.output_keys = list(cfg["output_layers"]) if isinstance(cfg["output_layers"], dict) else None

    @staticmethod
    def _call(node, kind):
        if kind == "keras3":
            def parse(v):
                if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
                    return Ref(*v["config"]["keras_history"])
                if isinstance(v, (list, tuple)):
                    return [parse(x) for x in v]
                return v

            return [parse(a) for a in node["args"]], dict(node.get("kwargs") or {})
        entries = node if isinstance(node, list) else []
        if not entries or not all(isinstance(e, list) and len(e) >= 3 for e in entries):
            raise TfoptError(f"unsupported inbound node structure {node!r}; tfopt converts plain functional graphs.")
        kwargs = dict(entries[0][3]) if len(entries[0]) > 3 else {}
        refs = [Ref(*e[:3]) for e in entries]
        if len(refs) == 1 and _is_ref(kwargs.get("value")):  # attention: query, then value and key by keyword
            tensors = [refs[0]] + [Ref(*kwargs.pop(k)[:3]) for k in ("value", "key") if _is_ref(kwargs.get(k))]
            return tensors, kwargs
        return ([refs[0]] if len(refs) == 1 else [refs]), kwargs


def _is_ref(value) -> bool:
    """Whether ``value`` is a serialized tensor reference ``[layer name, node, tensor]``."""
    return isinstance(value, (list, tuple)) and len(value) >= 3 and isinstance(value[0], str)


def layer_class(obj) -> str:
    """The class name of a layer or operation, the same in both libraries for built-in ones."""
    return type(obj).__name__
