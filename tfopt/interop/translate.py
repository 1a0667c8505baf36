"""What converts, and how: layer configs and activations translated between tf_keras and Keras 3.

The two libraries' configs differ: Keras 3 stores dtype policies as dicts, the input's
``batch_shape``, ``module``/``registered_name`` on nested objects, ``negative_slope`` for
LeakyReLU, and activations tf_keras lacks or defines differently (``hard_sigmoid``,
``hard_silu``). :func:`problems` finds everything that stops a conversion before any layer is
built; :func:`translate` gives one layer's config in the other library.
"""

from __future__ import annotations

import inspect

from tfopt.errors import TfoptError
from tfopt.interop.graph import Graph, is_graph, layer_class
from tfopt.interop.models import library

# Built-in layer classes (same name in both libraries) that convert by config translation.
LAYERS = frozenset({
    "Conv1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense",
    "BatchNormalization", "LayerNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "PReLU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Permute",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "Rescaling",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Normalization",
    "LSTM", "GRU", "SimpleRNN", "Embedding", "MultiHeadAttention", "EinsumDense",
})
RECURRENT = frozenset({"LSTM", "GRU", "SimpleRNN"})
# Keras 3 graph operations on a tensor and a scalar (``x + 3.0``), turned into Rescaling(scale, offset).
SCALAR_OPS = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide"}
# Activations with the same name and meaning in both libraries.
_SAME_ACTIVATIONS = {"relu", "relu6", "elu", "selu", "gelu", "sigmoid", "tanh", "softmax", "linear", "softplus",
                     "softsign", "exponential", "mish", "log_softmax"}
_ACTIVATION_ALIASES = {"keras3": {"swish": "swish", "silu": "swish"}, "tf_keras": {"swish": "silu", "silu": "silu"}}
# Options that exist in one library only and change nothing at their default value.
_IGNORABLE = {"optional": False, "synchronized": False, "lora_rank": None, "lora_alpha": None,
              "quantization_config": None, "renorm": False, "renorm_clipping": None, "renorm_momentum": None,
              "fused": None, "virtual_batch_size": None, "adjustment": None, "rms_scaling": False,
              "sparse": False, "ragged": False, "interpolation_order": None, "groups": 1,
              "seed": None, "use_cudnn": "auto", "time_major": False, "implementation": 2,
              "zero_output_for_mask": False, "use_gate": False, "softmax_robust_masking": False}
_FAMILIES = {"_initializer": "initializers", "_regularizer": "regularizers", "_constraint": "constraints"}


# Layers of keras.applications that both libraries define alike: {class name: its own options}.
APPLICATION_LAYERS = {"LayerScale": ("init_values", "projection_dim"), "StochasticDepth": ("drop_path_rate",)}
_APPLICATION_MODULES = {"keras3": "keras.src.applications.convnext", "tf_keras": "tf_keras.src.applications.convnext"}


def application_layer(obj, src, dst):
    """``(class in dst, config)`` for a layer of keras.applications (ConvNeXt's layer scale and
    stochastic depth) that the other library defines alike, else None."""
    import importlib

    cls = layer_class(obj)
    if cls not in APPLICATION_LAYERS or type(obj).__module__ != _APPLICATION_MODULES[src]:
        return None
    config = obj.get_config()
    return (getattr(importlib.import_module(_APPLICATION_MODULES[dst]), cls),
            {"name": config["name"], "trainable": config.get("trainable", True),
             **{k: config[k] for k in APPLICATION_LAYERS[cls]}})


def _is_builtin(obj, kind):
    lib = library(kind)
    cls = getattr(lib.layers, layer_class(obj), None)
    return cls is not None and type(obj) is cls


def problems(graph, src, dst):
    """Everything that stops the conversion, found before any layer is built."""
    out = []
    for name, obj, calls in graph.nodes:
        cls = layer_class(obj)
        module = type(obj).__module__
        if cls == "Lambda" or cls == "TFOpLambda":
            out.append(f"layer '{name}' ({cls}) runs arbitrary Python code; replace it with built-in layers")
        elif src == "keras3" and ".ops." in module:
            if cls not in SCALAR_OPS:
                out.append(f"operation '{name}' ({cls}, {module}) has no layer equivalent; express it with "
                           f"keras.layers")
        elif is_graph(obj, src) and hasattr(obj, "layers"):
            sub = Graph(obj, src)
            out += problems(sub, src, dst)
        elif application_layer(obj, src, dst) is not None:
            pass
        elif cls == "Bidirectional" and _is_builtin(obj, src):
            for inner in (obj.forward_layer, obj.backward_layer):
                if layer_class(inner) not in RECURRENT or not _is_builtin(inner, src):
                    out.append(f"layer '{name}' (Bidirectional) wraps {layer_class(inner)}; tfopt converts a "
                               f"Bidirectional LSTM, GRU or SimpleRNN")
                    break
                try:
                    translate(inner.get_config(), layer_class(inner), src, dst, f"{name}/{inner.name}")
                except TfoptError as exc:
                    out.append(str(exc))
        elif cls not in LAYERS or not _is_builtin(obj, src):
            hint = " (a TFMOT wrapper: strip the model first)" if "model_optimization" in module else ""
            out.append(f"layer '{name}' ({cls} from {module}) is not a built-in layer tfopt can convert{hint}; "
                       f"rebuild it from built-in layers")
        else:
            try:
                translate(obj.get_config(), cls, src, dst, name)
            except TfoptError as exc:
                out.append(str(exc))
        for args, kwargs in calls:
            extra = {k: v for k, v in kwargs.items() if v is not None and k != "training"}
            if extra:
                out.append(f"layer '{name}' ({cls}) is called with {', '.join(extra)}; tfopt converts calls on "
                           f"tensors only")
    return out


def _policy_name(value, where):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        cls, name = value.get("class_name"), (value.get("config") or {}).get("name")
        if cls in ("DTypePolicy", "FloatDTypePolicy", "Policy") and isinstance(name, str):
            return name
    raise TfoptError(f"{where}: dtype policy {value!r} has no equivalent (quantized or custom policy); "
                     f"use a float policy")


def _translate_object(key, value, dst_lib, where):
    """An initializer, regularizer or constraint of the other library, rebuilt in ``dst_lib``."""
    if value is None or isinstance(value, str):
        return value
    family = next((f for suffix, f in _FAMILIES.items() if key.endswith(suffix)), None)
    if family is None or not isinstance(value, dict) or "class_name" not in value:
        raise TfoptError(f"{where}: option {key}={value!r} cannot be translated")
    cls = getattr(getattr(dst_lib, family), value["class_name"], None)
    conf = dict(value.get("config") or {})
    if cls is None:
        if family == "initializers":
            return None  # weights are copied; an initializer only matters for a re-initialisation
        raise TfoptError(f"{where}: {key} {value['class_name']} has no equivalent in {dst_lib.__name__}")
    params = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in conf.items() if k not in params and v is not None}
    if extra and family != "initializers":
        raise TfoptError(f"{where}: {key} {value['class_name']} option(s) {', '.join(extra)} have no equivalent")
    return cls(**{k: v for k, v in conf.items() if k in params})


def _accepted(cls):
    params = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            sig = inspect.signature(klass.__init__).parameters
            params |= {p for p in sig if p not in ("self", "kwargs", "args")}
            if not any(p.kind == p.VAR_KEYWORD for p in sig.values()):
                break
    return params


def translate(config, cls_name, src, dst, name):
    """``(target config, post-activation or None)`` for one layer's config.

    Raises:
        TfoptError: an option, activation or dtype policy has no equivalent in ``dst``.
    """
    where = f"layer '{name}' ({cls_name})"
    dst_lib = library(dst)
    cfg = dict(config)
    cfg["dtype"] = _policy_name(cfg.get("dtype"), where)
    if cfg["dtype"] is None:
        cfg.pop("dtype")
    if cls_name == "LeakyReLU":
        if src == "keras3" and "negative_slope" in cfg:
            cfg["alpha"] = cfg.pop("negative_slope")
        elif src == "tf_keras" and "alpha" in cfg:
            cfg["negative_slope"] = cfg.pop("alpha")
    if cls_name in ("BatchNormalization", "LayerNormalization") and not isinstance(cfg.get("axis"), int):
        axis = list(cfg["axis"])
        cfg["axis"] = axis[0] if len(axis) == 1 else axis
    post = None
    if isinstance(cfg.get("activation"), (str, type(None))) or "activation" not in cfg:
        act = cfg.get("activation")
        if act is not None:
            mapped, post = _activation(act, src, dst, where)
            cfg["activation"] = mapped
            if cls_name == "Activation" and post is not None:
                cfg["activation"] = "linear"
    else:
        raise TfoptError(f"{where}: activation {cfg['activation']!r} is not a built-in activation name; "
                         f"use one by name (e.g. 'relu')")
    target = getattr(dst_lib.layers, cls_name)
    accepted = _accepted(target)
    out = {}
    for key, value in cfg.items():
        if any(key.endswith(s) for s in _FAMILIES) and key in accepted:
            out[key] = _translate_object(key, value, dst_lib, where)
            if out[key] is None:
                out.pop(key)
        elif key in accepted:
            out[key] = value
        elif key in _IGNORABLE and (value == _IGNORABLE[key] or value is None or key == "renorm_momentum"):
            continue
        elif key == "zero_output_for_mask" and cls_name in RECURRENT:
            out[key] = value  # both libraries' recurrent layers take it (a Bidirectional sets it)
        elif key in ("batch_input_shape", "input_length", "query_shape", "key_shape", "value_shape"):
            continue  # the graph gives the shapes
        elif value is None or key.endswith("_initializer") or key == "trainable":
            continue  # weights are copied, and a class without ``trainable`` has no weights
        else:
            raise TfoptError(f"{where}: option {key}={value!r} has no {dst} equivalent")
    return out, post


def _activation(act, src, dst, where):
    """``(name for the target config, composite applied after the layer or None)``."""
    if act in _SAME_ACTIVATIONS:
        return act, None
    alias = _ACTIVATION_ALIASES[dst].get(act)
    if alias:
        return alias, None
    if src == "keras3" and act == "leaky_relu":
        return "linear", ("leaky", 0.2)
    if src == "keras3" and act == "hard_sigmoid":
        return "linear", ("hard_sigmoid3",)
    if src == "keras3" and act in ("hard_silu", "hard_swish"):
        return "linear", ("hard_silu3",)
    if src == "tf_keras" and act == "hard_sigmoid":
        return "linear", ("hard_sigmoid2",)
    if src == "tf_keras" and act == "leaky_relu":
        return "linear", ("leaky", 0.2)
    raise TfoptError(f"{where}: activation '{act}' has no {dst} equivalent")
