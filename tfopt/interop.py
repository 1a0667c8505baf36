"""Keras 3 <-> tf_keras: convert models at tfopt's door and back, checked numerically.

tfopt works in tf_keras (TFMOT prunes, clusters and quantizes only tf_keras models), while
``import keras`` is Keras 3 since TensorFlow 2.16. :func:`to_tf_keras` rebuilds a Keras 3
Sequential or functional model layer by layer from translated configs, copies its weights
and checks the two models agree on sample inputs; :func:`from_tf_keras` does the reverse.
Layers that hold arbitrary code (``Lambda``, custom classes) are refused before any work.

The two libraries' configs differ: Keras 3 stores dtype policies as dicts, the input's
``batch_shape``, ``module``/``registered_name`` on nested objects, ``negative_slope`` for
LeakyReLU, and activations tf_keras lacks or defines differently (``hard_sigmoid``,
``hard_silu``); MobileNetV3 also records scalar arithmetic (``x + 3``) as graph operations.
Each of these is translated into stock layers of the other library (a scalar operation
becomes a ``Rescaling``, ``hard_silu`` becomes Rescaling → ReLU(6) → Rescaling → Multiply).

Importing TFMOT sets ``TF_USE_LEGACY_KERAS=1`` and pins ``tf.keras`` to tf_keras for the
rest of the process; :func:`import_tfmot` imports it inside :func:`legacy_keras`, which
puts both back afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from pathlib import Path

import numpy as np

from tfopt.errors import TfoptError

KINDS = ("tf_keras", "keras3")
TOLERANCE = 1e-5
#: A deep network amplifies float32 rounding: where the outputs differ by more than TOLERANCE,
#: the conversion is still exact if they differ by at most this many times what a one-ulp change
#: of the input does to the original's own outputs (its float32 noise floor).
ROUNDING_FACTOR = 4.0
LEGACY_VAR = "TF_USE_LEGACY_KERAS"

# Built-in layer classes (same name in both libraries) that convert by config translation.
LAYERS = frozenset({
    "Conv1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D", "Dense",
    "BatchNormalization", "LayerNormalization", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "PReLU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Permute",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D", "UpSampling2D", "Rescaling",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
})
# Keras 3 graph operations on a tensor and a scalar (``x + 3.0``), turned into Rescaling(scale, offset).
_SCALAR_OPS = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide"}
_MERGE_FOR_OP = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply"}
# Activations with the same name and meaning in both libraries.
_SAME_ACTIVATIONS = {"relu", "relu6", "elu", "selu", "gelu", "sigmoid", "tanh", "softmax", "linear", "softplus",
                     "softsign", "exponential", "mish", "log_softmax"}
_ACTIVATION_ALIASES = {"keras3": {"swish": "swish", "silu": "swish"}, "tf_keras": {"swish": "silu", "silu": "silu"}}
# Options that exist in one library only and change nothing at their default value.
_IGNORABLE = {"optional": False, "synchronized": False, "lora_rank": None, "lora_alpha": None,
              "quantization_config": None, "renorm": False, "renorm_clipping": None, "renorm_momentum": None,
              "fused": None, "virtual_batch_size": None, "adjustment": None, "rms_scaling": False,
              "sparse": False, "ragged": False, "interpolation_order": None, "groups": 1}
_FAMILIES = {"_initializer": "initializers", "_regularizer": "regularizers", "_constraint": "constraints"}


# ---- process hygiene -------------------------------------------------------------------------

def _keras_loaders():
    """Every ``keras`` attribute of a loaded TensorFlow module, with a snapshot of the loaders
    that have not yet decided between Keras 3 and tf_keras."""
    from tensorflow.python.util.lazy_loader import KerasLazyLoader

    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "tensorflow" or name.startswith("tensorflow.")):
            continue
        value = getattr(module, "__dict__", {}).get("keras")
        if isinstance(value, KerasLazyLoader):
            fresh = not value.__dict__.get("_tfll_initialized", False)
            found.append((module, value, dict(value.__dict__) if fresh else None))
    return found


@contextlib.contextmanager
def legacy_keras():
    """Run a block with ``TF_USE_LEGACY_KERAS=1`` (what TFMOT needs while it imports), then
    put the process back: the variable as it was, and every ``tf.keras`` that had not been
    resolved yet unresolved again, so it still follows the user's environment."""
    import tensorflow  # noqa: F401  (its lazy loaders must exist before the snapshot)

    saved = os.environ.get(LEGACY_VAR)
    loaders = _keras_loaders()
    os.environ[LEGACY_VAR] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(LEGACY_VAR, None)
        else:
            os.environ[LEGACY_VAR] = saved
        for module, loader, snapshot in loaders:
            if snapshot is not None:
                loader.__dict__.clear()
                loader.__dict__.update(snapshot)
            module.__dict__["keras"] = loader


def import_tfmot():
    """``tensorflow_model_optimization``, imported without changing the user's process.

    Example:
        >>> tfmot = import_tfmot()
        >>> pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    """
    if "tensorflow_model_optimization" not in sys.modules:
        with legacy_keras():
            import tensorflow_model_optimization  # noqa: F401
    return sys.modules["tensorflow_model_optimization"]


# ---- kinds and files -------------------------------------------------------------------------

def model_kind(model) -> str:
    """``"tf_keras"`` or ``"keras3"``; anything else is refused."""
    if "tf_keras" in sys.modules and isinstance(model, sys.modules["tf_keras"].Model):
        return "tf_keras"
    if "keras" in sys.modules:
        import keras

        if keras.__version__.startswith("3.") and isinstance(model, keras.Model):
            return "keras3"
    raise TfoptError(f"expected a Keras model (tf_keras or Keras 3) but received {type(model).__name__}.")


def _libraries(kind):
    if kind == "keras3":
        import keras

        return keras
    import tf_keras

    return tf_keras


def file_kind(path) -> str:
    """``"keras3"`` for a ``.keras``/``.h5`` file written by Keras 3, else ``"tf_keras"``.

    Read from the file's own record of the Keras version (``metadata.json`` in a ``.keras``
    archive, the ``keras_version`` attribute of an HDF5 file); TensorFlow is not imported.
    """
    import json
    import zipfile

    path = Path(path)
    if not path.exists():
        raise TfoptError(f"model file {path} does not exist.")
    version = None
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                version = json.loads(archive.read("metadata.json")).get("keras_version")
        except (KeyError, ValueError, zipfile.BadZipFile):
            version = None
    elif path.is_file() and path.suffix in (".h5", ".hdf5"):
        try:
            import h5py

            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
        except (OSError, ImportError):
            version = None
    if isinstance(version, bytes):
        version = version.decode()
    return "keras3" if isinstance(version, str) and version.startswith("3.") else "tf_keras"


def _load_error(path, kind, exc):
    detail = str(exc).splitlines()[0] if str(exc) else "no detail"
    what = "tf_keras model" if kind == "tf_keras" else "Keras 3 model"
    return TfoptError(f"{path}: not a loadable {what} ({type(exc).__name__}: {detail}).")


def load_model(path):
    """The model stored at ``path``, of the kind it was saved from.

    A tf_keras ``.keras``/``.h5`` file or SavedModel folder loads as tf_keras; a ``.keras`` or
    ``.h5`` file written by Keras 3 loads as a Keras 3 model (uncompiled).

    Example:
        >>> model = load_model("model.keras")
        >>> model_kind(model)
        'keras3'
    """
    path = Path(path)
    kind = file_kind(path)
    lib = _libraries(kind)
    try:
        if kind == "keras3":
            return lib.saving.load_model(path, compile=False)
        return lib.models.load_model(path)
    except Exception as exc:  # loaders raise many types for a bad file
        raise _load_error(path, kind, exc) from None


def load_as_tf_keras(path):
    """``(tf_keras model, kind of the file)``: a Keras 3 file is converted (and checked)."""
    model = load_model(path)
    kind = model_kind(model)
    return to_tf_keras(model), kind


def plain_copy(model):
    """An uncompiled copy of a model with the same weights: saves without optimizer state."""
    lib = _libraries(model_kind(model))
    cls = lib.Sequential if isinstance(model, lib.Sequential) else lib.Model
    copy = cls.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_atomic(model, path) -> Path:
    """``model.save(path)`` under a temporary name, then renamed: no half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix or '.keras'}")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_like(model, kind, path) -> Path:
    """Save a tf_keras ``model`` (no optimizer state) as a ``.keras`` file of ``kind``, converted
    for ``"keras3"``, so a Keras 3 user's output loads with ``keras.saving.load_model``."""
    if kind not in KINDS:
        raise TfoptError(f"unknown model kind '{kind}'; expected one of {', '.join(KINDS)}.")
    out = from_tf_keras(model, kind) if model_kind(model) == "tf_keras" else model
    return save_atomic(plain_copy(out) if out is model else out, path)


# ---- conversion ------------------------------------------------------------------------------

def to_tf_keras(model, *, check: bool = True, sample=None):
    """The tf_keras equivalent of a Keras 3 model; a tf_keras model is returned as is.

    Args:
        model: a Sequential or functional model built from built-in Keras layers.
        check: compare both models on ``sample`` and raise if they differ by more than 1e-5
            (relative to the largest output).
        sample: inputs for the check; default: 4 seeded random normal samples.

    Raises:
        TfoptError: a layer cannot be converted (named, with its class and what to do), or the
            converted model disagrees with the original.

    Example:
        >>> tfk = to_tf_keras(keras.applications.MobileNetV2(weights=None))
    """
    kind = model_kind(model)
    if kind == "tf_keras":
        return model
    return _convert(model, "keras3", "tf_keras", check, sample)


def from_tf_keras(model, kind, *, check: bool = True, sample=None):
    """``model`` (tf_keras) as ``kind``: returned as is for ``"tf_keras"``, converted (and
    checked like :func:`to_tf_keras`) for ``"keras3"``."""
    if kind not in KINDS:
        raise TfoptError(f"unknown model kind '{kind}'; expected one of {', '.join(KINDS)}.")
    have = model_kind(model)
    if have == kind:
        return model
    if have != "tf_keras":
        raise TfoptError(f"from_tf_keras expects a tf_keras model but received a {have} model.")
    return _convert(model, "tf_keras", "keras3", check, sample)


def _convert(model, src, dst, check, sample):
    if not _is_graph(model, src):
        raise TfoptError(f"model '{model.name}' ({type(model).__name__}) is subclassed; tfopt converts Sequential "
                         f"and functional models only. Rebuild it with the functional API (keras.Input, then call "
                         f"the layers).")
    graph = _Graph(model, src)
    problems = _problems(graph, src, dst)
    if problems:
        shown = problems[:6] + ([f"and {len(problems) - 6} more"] if len(problems) > 6 else [])
        raise TfoptError(f"model '{model.name}' cannot be converted from {src} to {dst}: " + "; ".join(shown)
                         + ". tfopt converts built-in layers only: rebuild these parts from built-in layers "
                           "(keras.layers), or convert the model yourself.")
    built = _Builder(src, dst).build(graph)
    if check:
        verify(model, built, sample)
    return built


def _is_graph(model, kind):
    lib = _libraries(kind)
    if isinstance(model, lib.Sequential):
        return True
    if kind == "keras3":
        from keras.src.models.functional import Functional

        return isinstance(model, Functional)
    return bool(getattr(model, "_is_graph_network", False))


class _Ref:
    """A reference to output ``tensor`` of call ``node`` of layer ``layer`` in a config."""

    __slots__ = ("layer", "node", "tensor")

    def __init__(self, layer, node, tensor):
        self.layer, self.node, self.tensor = layer, int(node), int(tensor)


class _Graph:
    """A model's layers in a library-neutral form: inputs, ``(name, object, calls)`` and outputs."""

    def __init__(self, model, kind):
        self.model, self.kind = model, kind
        lib = _libraries(kind)
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
        self.nodes, prev = [], _Ref(name, 0, 0)
        for layer in model.layers:
            self.nodes.append((layer.name, layer, [([prev], {})]))
            prev = _Ref(layer.name, 0, 0)
        self.outputs = [prev]

    def _functional(self, model, kind):
        cfg = model.get_config()
        objects = {op.name: op for op in (model.operations if kind == "keras3" else model.layers)}

        def refs(value):
            value = list(value)
            return [_Ref(*value)] if value and isinstance(value[0], str) else [_Ref(*v) for v in value]

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

    @staticmethod
    def _call(node, kind):
        if kind == "keras3":
            def parse(v):
                if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
                    return _Ref(*v["config"]["keras_history"])
                if isinstance(v, (list, tuple)):
                    return [parse(x) for x in v]
                return v

            return [parse(a) for a in node["args"]], dict(node.get("kwargs") or {})
        entries = node if isinstance(node, list) else []
        if not entries or not all(isinstance(e, list) and len(e) >= 3 for e in entries):
            raise TfoptError(f"unsupported inbound node structure {node!r}; tfopt converts plain functional graphs.")
        kwargs = dict(entries[0][3]) if len(entries[0]) > 3 else {}
        refs = [_Ref(*e[:3]) for e in entries]
        return ([refs[0]] if len(refs) == 1 else [refs]), kwargs


def _class(obj):
    return type(obj).__name__


def _is_builtin(obj, kind):
    lib = _libraries(kind)
    cls = getattr(lib.layers, _class(obj), None)
    return cls is not None and type(obj) is cls


def _problems(graph, src, dst):
    """Everything that stops the conversion, found before any layer is built."""
    out = []
    for name, obj, calls in graph.nodes:
        cls = _class(obj)
        module = type(obj).__module__
        if cls == "Lambda" or cls == "TFOpLambda":
            out.append(f"layer '{name}' ({cls}) runs arbitrary Python code; replace it with built-in layers")
        elif src == "keras3" and ".ops." in module:
            if cls not in _SCALAR_OPS:
                out.append(f"operation '{name}' ({cls}, {module}) has no layer equivalent; express it with "
                           f"keras.layers")
        elif _is_graph(obj, src) and hasattr(obj, "layers"):
            sub = _Graph(obj, src)
            out += _problems(sub, src, dst)
        elif cls not in LAYERS or not _is_builtin(obj, src):
            hint = " (a TFMOT wrapper: strip the model first)" if "model_optimization" in module else ""
            out.append(f"layer '{name}' ({cls} from {module}) is not a built-in layer tfopt can convert{hint}; "
                       f"rebuild it from built-in layers")
        else:
            try:
                _translate(obj.get_config(), cls, src, dst, name)
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


def _translate(config, cls_name, src, dst, name):
    """``(target config, post-activation or None)`` for one layer's config."""
    where = f"layer '{name}' ({cls_name})"
    dst_lib = _libraries(dst)
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


class _Builder:
    """Builds the target model from a :class:`_Graph`, keeping layer names."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.lib = _libraries(dst)
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
        self.used |= {n for n, _, _ in graph.nodes} | {n for n, _, _ in graph.inputs}
        inputs = [self.lib.Input(batch_shape=shape, name=name, dtype=dtype) for name, shape, dtype in graph.inputs]
        outputs = self._walk(graph, inputs)
        model = self.lib.Model(inputs if len(inputs) > 1 else inputs[0],
                               outputs if len(outputs) > 1 else outputs[0], name=graph.model.name)
        for source, target in self.pairs:
            w = source.get_weights()
            have = [tuple(v.shape) for v in target.get_weights()]
            if [tuple(v.shape) for v in w] != have:
                raise TfoptError(f"layer '{source.name}' ({_class(source)}): its weights "
                                 f"{[tuple(v.shape) for v in w]} do not fit the converted layer's {have}")
            target.set_weights(w)
        return model

    def _walk(self, graph, input_tensors, training=None):
        produced = {(name, 0): t for (name, _, _), t in zip(graph.inputs, input_tensors)}
        layers = {}
        pending = [(name, obj, i, call) for name, obj, calls in graph.nodes for i, call in enumerate(calls)]

        def ready(v):
            if isinstance(v, _Ref):
                return (v.layer, v.node) in produced
            if isinstance(v, list):
                return all(ready(x) for x in v)
            return True

        def resolve(v):
            if isinstance(v, _Ref):
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
        cls = _class(obj)
        if self.src == "keras3" and ".ops." in type(obj).__module__:
            return self._scalar_op(name, cls, values)
        if _is_graph(obj, self.src) and hasattr(obj, "layers"):
            sub = _Graph(obj, self.src)
            self.used |= {n for n, _, _ in sub.nodes}
            x = values[0]
            outs = self._walk(sub, x if isinstance(x, list) else [x], call_kw.get("training"))
            return outs if len(outs) > 1 else outs[0]
        if name not in layers:
            config, post = _translate(obj.get_config(), cls, self.src, self.dst, name)
            target = getattr(L, cls).from_config(config)
            self.pairs.append((obj, target))
            layers[name] = (target, post)
        target, post = layers[name]
        x = values[0] if len(values) == 1 else values
        y = target(x, **call_kw)
        return self._post(name, post, y) if post else y

    def _post(self, name, post, x):
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


def _is_scalar(v):
    return isinstance(v, (int, float, np.number)) or (isinstance(v, np.ndarray) and v.ndim == 0)


# ---- the numerical check ---------------------------------------------------------------------

def sample_inputs(model, n: int = 4, seed: int = 0):
    """Seeded random normal inputs for ``model``; unknown spatial sizes become 32."""
    rng = np.random.default_rng(seed)
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    xs = [rng.normal(size=(n, *[32 if d is None else d for d in s[1:]])).astype("float32") for s in shapes]
    return xs if len(xs) > 1 else xs[0]


def max_relative_difference(a, b) -> float:
    """``max|a - b|`` relative to the largest ``|b|`` (outputs near zero do not inflate it)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12)) if b.size else 0.0


def verify(original, converted, sample=None, tolerance: float = TOLERANCE) -> float:
    """Compare two models' outputs on ``sample``; raise TfoptError above ``tolerance``.

    Returns the largest relative difference over all outputs.
    """
    x = sample_inputs(original) if sample is None else sample

    def outputs(model, inputs):
        out = model(inputs, training=False)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    def difference(a, b):
        return max(max_relative_difference(p, q) for p, q in zip(a, b))

    ref = outputs(original, x)
    worst = difference(outputs(converted, x), ref)
    if np.isfinite(worst) and worst > tolerance:
        # within what float32 rounding of the input alone does to the original: still exact
        floor = difference(outputs(original, _one_ulp(x)), ref)
        if worst <= ROUNDING_FACTOR * floor:
            return worst
        raise TfoptError(f"model '{original.name}': the converted model's outputs differ from the original's by "
                         f"{worst:.3g} (relative to the largest output), more than the allowed {tolerance:g} and "
                         f"more than {ROUNDING_FACTOR:g}× the {floor:.3g} that a one-ulp change of the input makes; "
                         f"the conversion is not exact for this model, so tfopt stops here.")
    if not np.isfinite(worst):
        raise TfoptError(f"model '{original.name}': the converted model's outputs are not finite where the "
                         f"original's are; the conversion is not exact for this model, so tfopt stops here.")
    return worst


def _one_ulp(x):
    """``x`` with every value moved by one float32 ulp, up or down (seeded)."""
    rng = np.random.default_rng(1)
    xs = x if isinstance(x, (list, tuple)) else [x]
    moved = [np.asarray(v, np.float32) for v in xs]
    moved = [np.where(rng.random(v.shape) < 0.5, np.nextafter(v, np.float32(np.inf)),
                      np.nextafter(v, np.float32(-np.inf))).astype(np.float32) for v in moved]
    return moved if isinstance(x, (list, tuple)) else moved[0]
