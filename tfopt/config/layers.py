"""Layer configs for the ``model`` section, and their pure-Python shape rules.

Each config knows its output shape for a given input shape, so a recipe's shapes are
checked by ``tfopt validate`` without TensorFlow. The builder turns the same configs into
tf_keras layers (:mod:`tfopt.models.builder`).
"""

from __future__ import annotations

import math
import re
from typing import ClassVar, Literal, Optional, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from tfopt.config.limits import MAX_LAYERS
from tfopt.config.registry import Config, Registry

LAYERS = Registry("layer type", key="type")

ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "swish", "hard_swish", "sigmoid", "hard_sigmoid", "tanh",
    "softmax", "linear",
)
Activation = Literal[ACTIVATIONS]
INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal", "lecun_uniform")
Initializer = Literal[INITIALIZERS]
Pair = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]


#: A layer name TensorFlow also takes as the root of its name scope (its first character may not be '_').
LAYER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = ("input",)


def field_error(model, field: str, value, message: str):
    """A validation error located at ``field`` of ``model``, for use in its validators."""
    from pydantic import ValidationError

    return ValidationError.from_exception_data(type(model).__name__, [
        {"type": "value_error", "loc": (field,), "input": value, "ctx": {"error": ValueError(message)}}])


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def fmt_shape(shape) -> str:
    return "×".join(str(d) for d in shape)


class Regularizer(Config):
    """``{l1: ..., l2: ...}``: L1, L2 or both. ``{l2: 0}`` turns a recipe-wide default off."""

    l1: float = Field(0.0, ge=0)
    l2: float = Field(0.0, ge=0)


class Layer(Config):
    name: Optional[str] = Field(None, description="layer name; default: prefix + running number")
    repeat: PositiveInt = Field(1, description="this layer n times in a row; copies of a conv or "
                                               "residual block after the first use stride 1")
    prefix: ClassVar[str] = "layer"

    @field_validator("repeat")
    @classmethod
    def _repeat_within_limit(cls, v):
        if v > MAX_LAYERS:
            raise ValueError(f"{v:,} copies are over the limit of {MAX_LAYERS:,} (limit: layers after repeat)")
        return v

    def copies(self):
        """The configs this entry stands for: itself, then ``repeat - 1`` shape-keeping copies."""
        yield self
        for k in range(2, self.repeat + 1):
            update = {"repeat": 1, "name": f"{self.name}_{k}" if self.name else None}
            if isinstance(self, (_Conv, Residual, InvertedResidual)):
                update["strides"] = 1
            yield self.model_copy(update=update)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v):
        if v is not None and not LAYER_NAME.fullmatch(v):
            raise ValueError(f"'{v}' is not a usable layer name: use ASCII letters, digits, '_' and '-', "
                             f"starting with a letter or a digit (at most 64 characters)")
        return v

    def internal_names(self, name: str) -> list[str]:
        """Names of the layers this entry builds inside itself (a residual block's convs...)."""
        return []

    def out_shape(self, shape: tuple) -> tuple:
        return shape


def _spatial(shape, what):
    if len(shape) != 3:
        raise ValueError(
            f"needs an image-shaped input (height×width×channels) but receives {fmt_shape(shape)}; "
            f"{what} must come before flatten/global_avg_pool"
        )
    return shape


def _window(shape, kernel, strides, padding, dilation=(1, 1), what="kernel"):
    """Output height and width of a sliding window, as TensorFlow computes them."""
    out = []
    for size, k, s, d in zip(shape[:2], kernel, strides, dilation):
        span = d * (k - 1) + 1
        if padding == "same":
            out.append(math.ceil(size / s))
        else:
            if size < span:
                raise ValueError(
                    f"receives {fmt_shape(shape)}, smaller than its {kernel[0]}×{kernel[1]} {what}"
                    + (f" (dilated to {span})" if d > 1 else "")
                    + "; too many pooling or strided layers for this input, or use padding: same"
                )
            out.append((size - span) // s + 1)
    return tuple(out)


class _Weighted(Layer):
    """Fields shared by conv and dense layers."""

    activation: Activation = "linear"
    batch_norm: bool = Field(False, description="insert BatchNorm between the layer and its activation")
    use_bias: Optional[bool] = Field(None, description="default: true, false when batch_norm is on")
    kernel_initializer: Optional[Initializer] = None
    kernel_regularizer: Optional[Regularizer] = None
    bias_regularizer: Optional[Regularizer] = None

    def bias(self) -> bool:
        return (not self.batch_norm) if self.use_bias is None else self.use_bias


class _Conv(_Weighted):
    kernel_size: Pair = 3
    strides: Pair = 1
    padding: Literal["same", "valid"] = "same"
    dilation_rate: Pair = 1

    @model_validator(mode="after")
    def _dilation_or_strides(self):
        if max(pair(self.dilation_rate)) > 1 and max(pair(self.strides)) > 1:
            raise field_error(self, "dilation_rate", self.dilation_rate,
                              f"dilation_rate {self.dilation_rate} cannot be combined with strides {self.strides} "
                              f"(TensorFlow refuses both above 1 in one layer); use one or the other")
        return self

    def _hw(self, shape):
        _spatial(shape, self.type)
        return _window(shape, pair(self.kernel_size), pair(self.strides), self.padding, pair(self.dilation_rate))


@LAYERS.register
class Conv2D(_Conv):
    type: Literal["conv2d"] = "conv2d"
    filters: PositiveInt
    prefix: ClassVar[str] = "conv"

    def out_shape(self, shape):
        return (*self._hw(shape), self.filters)


@LAYERS.register
class DepthwiseConv2D(_Conv):
    type: Literal["depthwise_conv2d"] = "depthwise_conv2d"
    depth_multiplier: PositiveInt = 1
    prefix: ClassVar[str] = "dwconv"

    def out_shape(self, shape):
        return (*self._hw(shape), shape[2] * self.depth_multiplier)


@LAYERS.register
class SeparableConv2D(_Conv):
    type: Literal["separable_conv2d"] = "separable_conv2d"
    filters: PositiveInt
    depth_multiplier: PositiveInt = 1
    prefix: ClassVar[str] = "sepconv"

    def out_shape(self, shape):
        return (*self._hw(shape), self.filters)


class _Pool(Layer):
    pool_size: Pair = 2
    strides: Optional[Pair] = Field(None, description="default: pool_size")
    padding: Literal["same", "valid"] = "valid"
    prefix: ClassVar[str] = "pool"

    def out_shape(self, shape):
        _spatial(shape, self.type)
        size = pair(self.pool_size)
        hw = _window(shape, size, pair(self.strides or self.pool_size), self.padding, what="pooling window")
        return (*hw, shape[2])


@LAYERS.register
class MaxPool(_Pool):
    type: Literal["max_pool"] = "max_pool"


@LAYERS.register
class AvgPool(_Pool):
    type: Literal["avg_pool"] = "avg_pool"


@LAYERS.register
class GlobalAvgPool(Layer):
    type: Literal["global_avg_pool"] = "global_avg_pool"
    prefix: ClassVar[str] = "gap"

    def out_shape(self, shape):
        return (_spatial(shape, self.type)[2],)


@LAYERS.register
class Flatten(Layer):
    type: Literal["flatten"] = "flatten"
    prefix: ClassVar[str] = "flatten"

    def out_shape(self, shape):
        return (math.prod(shape),)


@LAYERS.register
class Dense(_Weighted):
    type: Literal["dense"] = "dense"
    units: PositiveInt
    prefix: ClassVar[str] = "fc"

    def out_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(
                f"needs a flat input but receives {fmt_shape(shape)}; put flatten or "
                f"global_avg_pool before it"
            )
        return (self.units,)


@LAYERS.register
class Dropout(Layer):
    type: Literal["dropout"] = "dropout"
    rate: float = Field(0.5, ge=0, lt=1)
    prefix: ClassVar[str] = "dropout"


@LAYERS.register
class SpatialDropout(Layer):
    type: Literal["spatial_dropout"] = "spatial_dropout"
    rate: float = Field(0.1, ge=0, lt=1)
    prefix: ClassVar[str] = "sdrop"

    def out_shape(self, shape):
        return _spatial(shape, self.type)


@LAYERS.register
class BatchNorm(Layer):
    type: Literal["batch_norm"] = "batch_norm"
    momentum: float = Field(0.99, gt=0, lt=1)
    epsilon: float = Field(1e-3, gt=0)
    center: bool = True
    scale: bool = True
    prefix: ClassVar[str] = "bn"


@LAYERS.register
class ActivationLayer(Layer):
    type: Literal["activation"] = "activation"
    activation: Activation
    prefix: ClassVar[str] = "act"

    def internal_names(self, name):
        return activation_names(self.activation, name)[:-1]


@LAYERS.register
class Residual(Layer):
    """Two 3×3 convs with BN and an Add shortcut (ResNet basic block).

    ``shortcut: identity`` needs matching channels and stride 1; ``projection`` uses a 1×1
    conv; ``auto`` picks identity when it can.
    """

    type: Literal["residual"] = "residual"
    filters: PositiveInt
    kernel_size: Pair = 3
    strides: Pair = 1
    shortcut: Literal["auto", "identity", "projection"] = "auto"
    activation: Activation = "relu"
    batch_norm: bool = True
    kernel_initializer: Optional[Initializer] = None
    kernel_regularizer: Optional[Regularizer] = None
    bias_regularizer: Optional[Regularizer] = None
    prefix: ClassVar[str] = "block"

    def internal_names(self, name):
        parts = [f"{name}_{part}" for part in ("conv1", "bn1", "conv2", "bn2", "proj", "proj_bn", "add")]
        return parts + activation_names(self.activation, f"{name}_act1") + activation_names(self.activation,
                                                                                           f"{name}_out")

    def projects(self, shape) -> bool:
        needs = shape[2] != self.filters or pair(self.strides) != (1, 1)
        return self.shortcut == "projection" or (self.shortcut == "auto" and needs)

    def out_shape(self, shape):
        _spatial(shape, self.type)
        hw = _window(shape, pair(self.kernel_size), pair(self.strides), "same")
        if self.shortcut == "identity" and (shape[2] != self.filters or pair(self.strides) != (1, 1)):
            raise ValueError(
                f"identity shortcut needs stride 1 and {shape[2]} filters to match its input "
                f"{fmt_shape(shape)}; got strides {self.strides} and {self.filters} filters "
                f"(use shortcut: projection or auto)"
            )
        return (*hw, self.filters)


@LAYERS.register
class InvertedResidual(Layer):
    """A MobileNetV2/V3 inverted residual block.

    A 1×1 expansion conv (skipped when the expanded width equals the input's), a k×k depthwise
    conv, an optional squeeze-and-excitation gate, and a linear 1×1 projection, each followed by
    BatchNorm; an Add shortcut when the block keeps the shape (stride 1, as many filters as
    input channels).
    """

    type: Literal["inverted_residual"] = "inverted_residual"
    filters: PositiveInt = Field(description="output channels (after the projection)")
    expansion: float = Field(6.0, gt=0, le=16, description="expanded width as a multiple of the input channels")
    expanded: Optional[PositiveInt] = Field(None, description="expanded width in channels (wins over expansion)")
    kernel_size: Pair = 3
    strides: Pair = 1
    squeeze_excite: float = Field(0.0, ge=0, le=1, description="squeeze-and-excitation width as a fraction of "
                                                               "the expanded width (0: no gate)")
    se_activation: Literal["sigmoid", "hard_sigmoid"] = "hard_sigmoid"
    activation: Activation = "relu6"
    kernel_initializer: Optional[Initializer] = None
    kernel_regularizer: Optional[Regularizer] = None
    bias_regularizer: Optional[Regularizer] = None
    prefix: ClassVar[str] = "ir"

    def width(self, in_channels: int) -> int:
        """The expanded width for an input of ``in_channels``."""
        return self.expanded or max(1, int(round(in_channels * self.expansion)))

    def se_width(self, in_channels: int) -> int:
        """Channels of the squeeze-and-excitation bottleneck (a multiple of 8, at least 8)."""
        return max(8, int(self.width(in_channels) * self.squeeze_excite + 4) // 8 * 8)

    def keeps_shape(self, shape) -> bool:
        return pair(self.strides) == (1, 1) and shape[2] == self.filters

    def internal_names(self, name):
        parts = [f"{name}_{p}" for p in ("expand", "expand_bn", "dw", "dw_bn", "se_pool", "se_reduce",
                                         "se_expand", "se_scale", "project", "project_bn", "add")]
        return (parts + activation_names(self.activation, f"{name}_expand_act")
                + activation_names(self.activation, f"{name}_dw_act")
                + activation_names(self.se_activation, f"{name}_se_gate"))

    def out_shape(self, shape):
        _spatial(shape, self.type)
        return (*_window(shape, pair(self.kernel_size), pair(self.strides), "same"), self.filters)


def layer_names(layers):
    """Name every layer the entries build; raise ValueError naming the entry at fault.

    Returns, per built layer, ``(index, config, name, extra)`` where ``extra`` holds the
    automatic ``bn``/``act`` names of a conv or dense with ``batch_norm`` or a separate
    activation. A given name may not repeat, be ``input``, or equal a name tfopt gives
    another layer (``bn1``, ``block2_conv1``...).
    """
    total = sum(entry.repeat for entry in layers)
    if total > MAX_LAYERS:
        raise ValueError(f"model.layers: {total:,} layers after repeat, over the limit of {MAX_LAYERS:,} "
                         f"(limit: layers after repeat)")
    given = {}
    for index, entry in enumerate(layers):
        for cfg in entry.copies():
            if cfg.name is None:
                continue
            if cfg.name in RESERVED_NAMES:
                raise ValueError(f"model.layers.{index}.name: '{cfg.name}' is the name of the model's input layer; "
                                 f"choose another name")
            if cfg.name in given:
                raise ValueError(f"model.layers.{index}.name: duplicate layer name '{cfg.name}'")
            given[cfg.name] = index
    counters: dict[str, int] = {}

    def next_name(prefix):
        counters[prefix] = counters.get(prefix, 0) + 1
        return f"{prefix}{counters[prefix]}"

    def claim(name, index, what, own=False):
        if name in given and (given[name] != index or not own):
            raise ValueError(f"model.layers.{given[name]}.name: '{name}' is also the name tfopt gives {what} of "
                             f"model.layers.{index}; choose another name")
        if name in RESERVED_NAMES:
            raise ValueError(f"model.layers.{index}.name: '{name}' is the name of the model's input layer; "
                             f"choose another name")

    out, taken = [], set()
    for index, entry in enumerate(layers):
        for cfg in entry.copies():
            name = cfg.name or next_name(cfg.prefix)
            if cfg.name is None:
                claim(name, index, "the layer", own=True)
            extra = {}
            if isinstance(cfg, _Weighted) and cfg.batch_norm:
                extra["bn"] = next_name("bn")
                extra["act"] = next_name("act")
            elif isinstance(cfg, _Weighted) and cfg.activation in SEPARATE_ACTIVATIONS:
                extra["act"] = next_name("act")
            for role, n in extra.items():
                claim(n, index, f"the {'BatchNorm' if role == 'bn' else 'activation'}")
            if "act" in extra:
                for n in activation_names(cfg.activation, extra["act"])[:-1]:
                    claim(n, index, "a layer inside the activation")
            for n in cfg.internal_names(name):
                claim(n, index, "a layer inside the block")
            acts = activation_names(cfg.activation, extra["act"])[:-1] if "act" in extra else []
            for n in (name, *extra.values(), *acts, *cfg.internal_names(name)):
                if n in taken:
                    raise ValueError(f"model.layers.{index}.name: duplicate layer name '{n}'")
                taken.add(n)
            out.append((index, cfg, name, extra))
    return out


def plan(layers, input_shape):
    """Name every layer and infer every shape; raise ValueError naming the first bad layer.

    Returns a list of ``(name, config, in_shape, out_shape, extra)``. Names come from
    :func:`layer_names`.
    """
    steps = []
    shape = tuple(input_shape)
    for index, cfg, name, extra in layer_names(layers):
        try:
            out = cfg.out_shape(shape)
        except ValueError as exc:
            raise ValueError(f"model.layers.{index}: {name} ({cfg.type}) {exc}") from None
        steps.append((name, cfg, shape, out, extra))
        shape = out
    return steps


# Activations tf_keras has no string for; they become their own layer (or layers).
SEPARATE_ACTIVATIONS = ("relu6", "leaky_relu", "hard_swish", "hard_sigmoid")


def activation_names(activation: str, name: str) -> list[str]:
    """Names of the layers an activation called ``name`` is built from, ``name`` last.

    MobileNetV3's hard sigmoid, relu6(x + 3) / 6, is a Rescaling (x + 3), a ReLU capped at 6 and a
    Rescaling (/ 6); its hard swish multiplies x by that gate. Stock layers only, so channel
    tracing, TFLite and every Keras load them without custom objects; in this form the TFLite
    converter fuses the hard swish into one HARD_SWISH op.
    """
    if activation == "hard_swish":
        return [f"{name}_shift", f"{name}_relu6", f"{name}_scale", name]
    if activation == "hard_sigmoid":
        return [f"{name}_shift", f"{name}_relu6", name]
    return [name]
