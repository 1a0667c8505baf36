"""The one table of what tfopt knows about each tf_keras layer class.

For every class it records:

* ``prunable``: the weights magnitude pruning and clustering work on (``kernel``, or the
  depthwise and pointwise kernels of a separable conv); empty for layers without such weights;
* ``foldable``: whether a BatchNorm right after it can be folded into it (when its own
  activation is linear);
* ``role``: what it does to channels, for structured pruning —

  - ``producer``: writes a channel space of its own (its filters or units) and reads its input's
    channels (conv, separable conv, dense);
  - ``transparent``: keeps channels apart, so a channel can be followed through it (BatchNorm,
    activations, dropout, pooling, flatten, padding, a depthwise conv with multiplier 1, ...);
  - ``coupled``: joins its inputs channel by channel, so their producers must keep the same
    channels (Add, Multiply, ...);
  - ``concat``: lays its inputs' channels side by side (Concatenate on the channel axis);
  - ``input``: the model's input;
  - ``blocking``: known, but channels cannot be followed through it (a Reshape that moves the
    channel axis, a depthwise conv with multiplier 2, ...): the group is kept whole, and said why.

  A role may depend on the layer's settings: it is then a function of the layer.
* ``macs``: multiply-accumulates of one forward pass for one sample;
* ``tail``: it belongs to the conv or dense layer before it (BatchNorm, activations), so layer
  removal takes it out with that layer.

Pruning, BatchNorm folding, channel surgery and the statistics all read :func:`kind`, which
refuses a layer class it does not know by name instead of skipping it in silence. TFMOT's
wrappers (pruning, clustering, quantization) are looked through to the layer they wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from tfopt.errors import TfoptError

ROLES = ("producer", "transparent", "coupled", "concat", "input", "blocking")


@dataclass(frozen=True)
class Kind:
    prunable: tuple = ()
    foldable: bool = False
    role: Union[str, Callable] = "transparent"
    macs: Callable = staticmethod(lambda layer: 0)
    tail: bool = False

    def role_of(self, layer) -> str:
        return self.role(layer) if callable(self.role) else self.role


class UnknownLayer(TfoptError):
    """A layer class the table does not hold."""


def _shape(s):
    return tuple((s[0] if isinstance(s, list) else s)[1:])


def _conv_macs(layer):
    out, cin = _shape(layer.output_shape), _shape(layer.input_shape)[-1] // getattr(layer, "groups", 1)
    return math.prod(out[:-1]) * math.prod(layer.kernel_size) * cin * out[-1]


def _depthwise_macs(layer):
    out = _shape(layer.output_shape)
    return math.prod(out[:-1]) * math.prod(layer.kernel_size) * out[-1]


def _separable_macs(layer):
    out, cin = _shape(layer.output_shape), _shape(layer.input_shape)[-1]
    spatial, mid = math.prod(out[:-1]), cin * layer.depth_multiplier
    return spatial * math.prod(layer.kernel_size) * mid + spatial * mid * out[-1]


def _dense_macs(layer):
    return int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]) * math.prod(_shape(layer.output_shape)[:-1])


def _transpose_macs(layer):
    cin = _shape(layer.input_shape)
    return math.prod(cin[:-1]) * math.prod(layer.kernel_size) * cin[-1] * layer.filters


def _conv_role(layer):
    """A plain conv writes channels of its own; a grouped conv with one channel per group
    (ConvNeXt's depthwise ``Conv2D(groups=C)``) keeps them apart; other grouped convs block."""
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        return "producer"
    return "transparent" if groups == layer.filters == _shape(layer.input_shape)[-1] else "blocking"


def gates(layer) -> int:
    """Gate blocks in a recurrent layer's kernels: 4 for LSTM, 3 for GRU, 1 for SimpleRNN."""
    import tf_keras as keras

    return 4 if isinstance(layer, keras.layers.LSTM) else 3 if isinstance(layer, keras.layers.GRU) else 1


def _rnn_role(layer):
    """A recurrent layer writes its units as channels, unless it returns its states or keeps them."""
    return "blocking" if layer.return_state or layer.stateful else "producer"


def _rnn_macs(layer, shape=None):
    shape = _shape(layer.input_shape) if shape is None else shape
    steps = (shape[0] or 1) if len(shape) == 2 else 1
    return steps * (shape[-1] + layer.units) * gates(layer) * layer.units


def _bidirectional_role(layer):
    """Its two directions' units side by side (``merge_mode="concat"``); summed or multiplied
    directions, or returned states, block."""
    if layer.merge_mode != "concat" or layer.return_state or layer.forward_layer.stateful:
        return "blocking"
    return "producer"


def _bidirectional_macs(layer):
    shape = _shape(layer.input_shape)
    return _rnn_macs(layer.forward_layer, shape) + _rnn_macs(layer.backward_layer, shape)


def _attention_macs(layer):
    """Query, key and value projections, scores, weighted sum and output projection (key = value)."""
    node = layer.inbound_nodes[0]
    shapes = [tuple(t.shape)[1:] for t in node.keras_inputs]
    (tq, dq), (tv, dv) = (math.prod(shapes[0][:-1]), shapes[0][-1]), (math.prod(shapes[-1][:-1]), shapes[-1][-1])
    h, k, v = layer._num_heads, layer._key_dim, layer._value_dim or layer._key_dim
    return tq * dq * h * k + tv * dv * h * (k + v) + tq * tv * h * (k + v) + tq * h * v * dq


def einsum_axes(layer):
    """``(kernel axis read from the input's last axis, kernel axis written to the output's last
    axis)`` of an EinsumDense whose equation works like a Dense on the last axis (``abc,cd->abd``,
    ``...b,bc->...c``): the input's last index is summed with the kernel, the output's last index is
    the kernel's last. None for other equations."""
    spec = layer.equation.replace("...", "")
    inputs, out = spec.split("->")
    x, k = inputs.split(",")
    if not (x and k and out) or x[-1] not in k or x[-1] in out or out[-1] != k[-1] or out[-1] in x:
        return None
    return k.index(x[-1]), len(k) - 1


def _einsum_role(layer):
    return "producer" if einsum_axes(layer) is not None else "blocking"


def _einsum_macs(layer):
    """Kernel weights times the output positions the kernel does not index (batch excluded)."""
    spec = layer.equation.replace("...", "")
    kernel_letters, out = spec.split("->")[0].split(",")[1], spec.split("->")[1]
    shape = _shape(layer.output_shape)
    letters = [out[-j] if j <= len(out) else None for j in range(1, len(shape) + 1)]
    free = [n for n, letter in zip(reversed(shape), letters) if letter is None or letter not in kernel_letters]
    return int(np.prod(layer.kernel.shape)) * math.prod(int(n or 1) for n in free)


def _depthwise_role(layer):
    return "transparent" if layer.depth_multiplier == 1 else "blocking"


def _rescaling_role(layer):
    return "transparent" if np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0 else "blocking"


def _reshape_role(layer):
    return "transparent" if _shape(layer.input_shape)[-1:] == _shape(layer.output_shape)[-1:] else "blocking"


def _concat_role(layer):
    return "concat" if layer.axis in (-1, len(layer.output_shape) - 1) else "blocking"


# TensorFlow functions applied value by value: a layer running one of them on tensors of the
# same shape, or on one tensor and scalars, keeps channels apart.
ELEMENTWISE_OPS = frozenset({
    "math.add", "__operators__.add", "math.subtract", "math.multiply", "math.truediv", "math.divide",
    "math.maximum", "math.minimum", "nn.relu", "nn.relu6", "nn.silu", "nn.swish", "nn.gelu", "nn.elu",
    "nn.leaky_relu", "math.sigmoid", "nn.sigmoid", "math.tanh", "math.negative", "math.abs", "math.square",
    "math.sqrt", "math.exp", "math.softplus", "clip_by_value", "identity", "math.scalar_mul",
})


def _op_role(layer):
    """``transparent`` for an element-wise op on one tensor (and scalars), ``coupled`` for one
    joining same-shaped tensors, else ``blocking``."""
    if layer.get_config().get("function") not in ELEMENTWISE_OPS:
        return "blocking"
    node = layer.inbound_nodes[0] if layer.inbound_nodes else None
    if node is None:
        return "blocking"
    import tensorflow as tf
    from tf_keras.src.engine.keras_tensor import KerasTensor

    flat = tf.nest.flatten((node.call_args, node.call_kwargs))
    tensors = [a for a in flat if isinstance(a, KerasTensor)]
    constants = [a for a in flat if not isinstance(a, (KerasTensor, str, type(None), type(Ellipsis)))]
    if any(len(np.shape(a)) > 0 for a in constants):
        return "blocking"
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        return "blocking"
    return "coupled" if len(tensors) > 1 else "transparent"


_TABLE: dict | None = None


def table() -> dict:
    """``{tf_keras layer class: Kind}``."""
    global _TABLE
    if _TABLE is None:
        import tf_keras as keras

        L = keras.layers
        t = {
            L.InputLayer: Kind(role="input"),
            L.Conv2D: Kind(("kernel",), True, _conv_role, _conv_macs),
            L.Conv1D: Kind(("kernel",), True, _conv_role, _conv_macs),
            L.Conv3D: Kind(("kernel",), True, _conv_role, _conv_macs),
            L.Conv1DTranspose: Kind(("kernel",), False, "producer", _transpose_macs),
            L.Conv2DTranspose: Kind(("kernel",), False, "producer", _transpose_macs),
            L.Conv3DTranspose: Kind(("kernel",), False, "producer", _transpose_macs),
            L.SeparableConv1D: Kind(("depthwise_kernel", "pointwise_kernel"), True, "producer", _separable_macs),
            L.DepthwiseConv2D: Kind(("depthwise_kernel",), True, _depthwise_role, _depthwise_macs),
            L.SeparableConv2D: Kind(("depthwise_kernel", "pointwise_kernel"), True, "producer", _separable_macs),
            L.Dense: Kind(("kernel",), True, "producer", _dense_macs),
            L.EinsumDense: Kind(role=_einsum_role, macs=_einsum_macs),
            L.LSTM: Kind(role=_rnn_role, macs=_rnn_macs), L.GRU: Kind(role=_rnn_role, macs=_rnn_macs),
            L.SimpleRNN: Kind(role=_rnn_role, macs=_rnn_macs),
            L.Bidirectional: Kind(role=_bidirectional_role, macs=_bidirectional_macs),
            L.Embedding: Kind(role="producer"),
            L.MultiHeadAttention: Kind(role="blocking", macs=_attention_macs),
            L.Add: Kind(role="coupled"), L.Subtract: Kind(role="coupled"), L.Multiply: Kind(role="coupled"),
            L.Average: Kind(role="coupled"), L.Maximum: Kind(role="coupled"), L.Minimum: Kind(role="coupled"),
            L.Concatenate: Kind(role=_concat_role),
            L.Rescaling: Kind(role=_rescaling_role),
            L.Reshape: Kind(role=_reshape_role),
            L.DepthwiseConv1D: Kind(("depthwise_kernel",), True, _depthwise_role, _depthwise_macs),
        }
        for cls in (L.BatchNormalization, L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax, L.ThresholdedReLU):
            t[cls] = Kind(tail=True)
        t[L.PReLU] = Kind(role="blocking", tail=True)
        for cls in (L.Dropout, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
                    L.MaxPooling2D, L.AveragePooling2D, L.GlobalAveragePooling2D, L.GlobalMaxPooling2D,
                    L.Flatten, L.ZeroPadding2D, L.Cropping2D, L.UpSampling2D, L.ActivityRegularization,
                    L.SpatialDropout1D, L.SpatialDropout3D, L.MaxPooling1D, L.AveragePooling1D,
                    L.GlobalAveragePooling1D, L.GlobalMaxPooling1D, L.ZeroPadding1D, L.Cropping1D, L.UpSampling1D,
                    L.MaxPooling3D, L.AveragePooling3D, L.GlobalAveragePooling3D, L.GlobalMaxPooling3D,
                    L.ZeroPadding3D, L.Cropping3D, L.UpSampling3D, L.Resizing, L.CenterCrop):
            t[cls] = Kind()
        for cls in (L.LayerNormalization, L.Normalization, L.Permute, L.Lambda, L.RepeatVector):
            t[cls] = Kind(role="blocking")
        # Raw TensorFlow ops in a functional model (``x + 3.0`` in tf_keras's MobileNetV3): no
        # weights, no MACs counted; channels are followed through the element-wise ones.
        from tf_keras.src.layers.core.tf_op_layer import SlicingOpLambda, TFOpLambda

        t[TFOpLambda] = Kind(role=_op_role)
        t[SlicingOpLambda] = Kind(role="blocking")
        # ConvNeXt's own layers: a per-channel scale, and a residual branch dropped only in training.
        from tf_keras.src.applications.convnext import LayerScale, StochasticDepth

        t[LayerScale] = t[StochasticDepth] = Kind()
        _TABLE = t
    return _TABLE


def _unwrap(layer):
    """The layer a TFMOT wrapper (pruning, clustering, quantization) wraps, else the layer."""
    import tf_keras as keras

    while isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "layer") and \
            not isinstance(layer, keras.layers.Bidirectional):
        layer = layer.layer
    return layer


def _tfmot_layer(layer) -> bool:
    """TFMOT's own non-wrapper layers (the quantize-input layer of a QAT model)."""
    return type(layer).__module__.startswith("tensorflow_model_optimization")


def kind(layer) -> Kind:
    """The table's entry for ``layer``'s class (its closest known base class).

    Raises:
        UnknownLayer: naming the layer and its class, when no entry matches.
    """
    inner = _unwrap(layer)
    t = table()
    for cls in type(inner).__mro__:
        if cls in t:
            return t[cls]
    if _tfmot_layer(inner):
        return Kind()
    raise UnknownLayer(
        f"layer '{layer.name}' is a {type(inner).__name__}, which tfopt does not know: it cannot tell how to "
        f"prune it, fold into it, follow channels through it or count its MACs. Use built-in Keras layers "
        f"(Conv2D, DepthwiseConv2D, SeparableConv2D, Dense, BatchNormalization, pooling, merges, ...) or "
        f"take this layer out of the model before optimizing it.")


def unwrapped(layer):
    """``layer`` itself, or the layer a TFMOT wrapper holds."""
    return _unwrap(layer)


def role(layer) -> str:
    """The channel role of ``layer`` (see the module docstring)."""
    return kind(layer).role_of(_unwrap(layer))


def macs(layer) -> int:
    return int(kind(layer).macs(_unwrap(layer)))


def prunable_weights(layer) -> list:
    """The variables of ``layer`` that pruning and clustering work on (empty when none)."""
    names = kind(layer).prunable
    if not names:
        return []
    return [w for w in _unwrap(layer).weights if w.name.split("/")[-1].split(":")[0] in names]


def is_prunable(layer) -> bool:
    return bool(kind(layer).prunable)


def is_foldable(layer) -> bool:
    """Whether a BatchNorm after ``layer`` can fold into it: the table says so, and its own
    activation is linear."""
    import tf_keras as keras

    return kind(layer).foldable and getattr(layer, "activation", None) is keras.activations.linear


def is_tail(layer) -> bool:
    """Whether ``layer`` belongs to the conv or dense layer before it (BatchNorm, an activation)."""
    return kind(layer).tail


def check_known(model) -> None:
    """Refuse a model with a layer the table does not know, naming the first such layer."""
    for layer in model.layers:
        kind(layer)
