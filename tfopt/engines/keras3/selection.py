"""Which variables of a Keras 3 model get compressed: a table of weight variables by rule.

The table is found through the layers, recursively (nested models, ``Bidirectional``,
``TimeDistributed``, RNN cells, ``MultiHeadAttention``'s inner ``EinsumDense`` layers), so
subclassed models and custom layers are covered without reading the graph.

Rules, by layer class (subclasses included):

========================================  ==============================================
layer                                     variables
========================================  ==============================================
Dense, EinsumDense                        ``kernel``
Conv1D/2D/3D, Conv1D/2D/3DTranspose       ``kernel``
DepthwiseConv1D/2D                        ``depthwise_kernel``
SeparableConv1D/2D                        ``depthwise_kernel``, ``pointwise_kernel``
Embedding                                 ``embeddings``
LSTMCell, GRUCell, SimpleRNNCell          ``kernel``, ``recurrent_kernel``
a custom layer (defined outside Keras)    its own trainable float variables of rank >= 2
========================================  ==============================================

Biases, normalization parameters and scalars are never selected, and neither are variables
the model does not train (a frozen layer's). Other Keras layers with weights (``PReLU``,
normalization layers...) are not compressed. ``include`` replaces the rules with variable
path globs (``"my_layer/w*"``); ``skip`` removes layers or paths from the table.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

import keras

_KERNEL = ("kernel",)
_RNN = ("kernel", "recurrent_kernel")


@dataclass(frozen=True)
class WeightEntry:
    """One weight variable selected for compression.

    Attributes:
        variable: The ``keras.Variable`` itself (of the model the table was made from).
        path: ``variable.path``, unique in the model, e.g. ``"functional/dense/kernel"``.
        layer_name: Name of the layer owning the variable.
        layer_class: Class name of that layer.
        rule: Why it was selected: ``"Dense.kernel"``, ``"custom"`` or ``"include"``.
        input_axis: Axis of the variable along which the layer reads its inputs (the
            contracted axis); m:n groups and blocks run along it.
        output_axes: Axes indexing output channels; per-channel quantization keeps one
            scale per index of these axes.
    """

    variable: object
    path: str
    layer_name: str
    layer_class: str
    rule: str
    input_axis: int
    output_axes: tuple

    @property
    def shape(self) -> tuple:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _axes_last(rank):
    # A kernel stored as (..., inputs, outputs): Dense, Conv, RNN cells, pointwise kernels.
    return rank - 2, (rank - 1,)


def _axes_transpose(rank):
    # Conv*Transpose stores (..., outputs, inputs).
    return rank - 1, (rank - 2,)


def _axes_depthwise(rank):
    # (..., channels, multiplier): every (channel, multiplier) pair is one output channel.
    return rank - 2, (rank - 2, rank - 1)


def _axes_embedding(rank):
    # One scale per token row, as Keras's own int8 Embedding does.
    return rank - 1, (0,)


def _axes_einsum(layer, rank):
    """Input and output axes of an EinsumDense kernel, read from its equation."""
    equation = getattr(layer, "equation", "")
    match = re.match(r"^\s*([\w.]+)\s*,\s*(\w+)\s*->\s*([\w.]+)\s*$", equation)
    if not match or len(match.group(2)) != rank:
        return _axes_last(rank)
    kernel, output = match.group(2), match.group(3)
    outputs = tuple(i for i, c in enumerate(kernel) if c in output)
    contracted = [i for i, c in enumerate(kernel) if c not in output]
    return (contracted[0] if contracted else 0), (outputs or (rank - 1,))


def _rules():
    """(classes, variable names, axes function) in the order they are tried."""
    L = keras.layers
    return [
        ((L.EinsumDense,), _KERNEL, None),
        ((L.Dense,), _KERNEL, _axes_last),
        ((L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), _KERNEL, _axes_transpose),
        ((L.SeparableConv1D, L.SeparableConv2D), ("depthwise_kernel", "pointwise_kernel"), None),
        ((L.DepthwiseConv1D, L.DepthwiseConv2D), ("depthwise_kernel",), _axes_depthwise),
        ((L.Conv1D, L.Conv2D, L.Conv3D), _KERNEL, _axes_last),
        ((L.Embedding,), ("embeddings",), _axes_embedding),
        ((L.LSTMCell, L.GRUCell, L.SimpleRNNCell), _RNN, _axes_last),
    ]


def _is_custom(layer) -> bool:
    module = type(layer).__module__ or ""
    return not (module == "keras" or module.startswith(("keras.", "tf_keras.")))


def _own_variables(layer):
    """The variables a layer created itself (not those of its sublayers)."""
    own = list(getattr(layer, "_trainable_variables", [])) + list(getattr(layer, "_non_trainable_variables", []))
    return own


def _sublayers(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def all_layers(model):
    """Every layer of ``model``, the model itself first, nested models, wrappers and cells included,
    each once (a layer shared by two parents is yielded once)."""
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(_sublayers(layer))


def _layer_axes(layer, rule_axes, name, rank):
    if rank < 2:
        return None
    if isinstance(layer, keras.layers.EinsumDense):
        return _axes_einsum(layer, rank)
    if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
        return _axes_depthwise(rank) if name == "depthwise_kernel" else _axes_last(rank)
    return rule_axes(rank)


def _walk(layer, seen):
    """Yield (layer, variable) pairs for every variable a layer owns, depth first."""
    if id(layer) in seen:
        return
    seen.add(id(layer))
    for variable in _own_variables(layer):
        yield layer, variable
    for sub in _sublayers(layer):
        yield from _walk(sub, seen)


def _rule_for(layer, variable):
    """(rule name, (input axis, output axes)) for one owned variable, or None."""
    rank = len(variable.shape)
    for classes, names, axes in _rules():
        if isinstance(layer, classes):
            if variable.name not in names:
                return None
            found = _layer_axes(layer, axes, variable.name, rank)
            return (f"{type(layer).__name__}.{variable.name}", found) if found else None
    if _is_custom(layer) and rank >= 2 and _is_float(variable):
        return "custom", _axes_last(rank)
    return None


def _is_float(variable) -> bool:
    return "float" in str(variable.dtype)


def _matches(patterns, entry_path, layer_name) -> bool:
    return any(fnmatch.fnmatchcase(entry_path, p) or fnmatch.fnmatchcase(layer_name, p)
               or _path_suffix_match(entry_path, p) for p in patterns)


def _path_suffix_match(path, pattern) -> bool:
    """A glob also matches the end of a path: ``"dense/kernel"`` finds ``"model/dense/kernel"``."""
    return fnmatch.fnmatchcase(path, "*/" + pattern)


def _all_candidates(model):
    """Every trainable variable of the model, once, with the layer that owns it."""
    trainable = {id(v) for v in model.trainable_variables}
    out, done = [], set()
    for layer, variable in _walk(model, set()):
        if id(variable) in trainable and id(variable) not in done:
            done.add(id(variable))
            out.append((layer, variable))
    return out


def select_weights(model, *, include=None, skip=()) -> list:
    """The table of weight variables a compression step works on.

    Args:
        model: A built Keras 3 model (functional, Sequential or subclassed).
        include: Optional variable path globs (``"my_layer/w*"``, matched against the full
            ``variable.path`` or its end). When given, exactly the trainable float variables
            of rank >= 2 that match are selected, instead of the rules above.
        skip: Layer names or variable path globs to leave out.

    Returns:
        A list of :class:`WeightEntry`, in the order the layers are found.

    Raises:
        ValueError: When an ``include`` or ``skip`` pattern matches nothing, naming the
            pattern and the paths that exist.
    """
    candidates = _all_candidates(model)
    entries = []
    for layer, variable in candidates:
        if include:
            hit = (len(variable.shape) >= 2 and _is_float(variable)
                   and _matches(include, variable.path, "\0"))
            found = ("include", _axes_last(len(variable.shape))) if hit else None
        else:
            found = _rule_for(layer, variable)
        if found:
            rule, (in_axis, out_axes) = found
            entries.append(WeightEntry(variable, variable.path, layer.name, type(layer).__name__,
                                       rule, int(in_axis), tuple(int(a) for a in out_axes)))
    all_paths = [v.path for _, v in candidates]
    layer_names = {layer.name for layer, _ in candidates}
    check_patterns("include", include or (), all_paths, set())
    check_patterns("skip", skip, all_paths, layer_names)
    return [e for e in entries if not _matches(skip, e.path, e.layer_name)]


def check_patterns(argument, patterns, paths, layer_names):
    """Raise ValueError for a pattern matching no path or layer name, with the closest ones."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(n, pattern) for n in layer_names):
            continue
        if any(fnmatch.fnmatchcase(p, pattern) or _path_suffix_match(p, pattern) for p in paths):
            continue
        close = difflib.get_close_matches(pattern, list(paths) + sorted(layer_names), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"{argument}: the pattern {pattern!r} matches no trainable variable path"
            f"{' or layer name' if layer_names else ''} of the model.{hint} "
            f"Variable paths: {', '.join(paths[:12])}{' ...' if len(paths) > 12 else ''}."
        )


def find_entry_value(entries, mapping, default):
    """A per-entry value from ``{layer name or path glob: value}``, the first match winning.

    Args:
        entries: The table from :func:`select_weights`.
        mapping: ``{pattern: value}``; a pattern is a layer name or a variable path glob.
        default: Value for entries no pattern matches.

    Returns:
        A list with one value per entry.
    """
    values = []
    for entry in entries:
        value = default
        for pattern, v in (mapping or {}).items():
            if _matches((pattern,), entry.path, entry.layer_name):
                value = v
                break
        values.append(value)
    return values
