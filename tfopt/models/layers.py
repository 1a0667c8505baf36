"""Layer configs for the ``model`` section, and their pure-Python shape rules.

Each config knows its output shape for a given input shape, so a recipe's shapes are
checked by ``tfopt validate`` without TensorFlow. The builder turns the same configs into
tf_keras layers (:mod:`tfopt.models.builder`).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Optional, Union

from pydantic import Field, PositiveInt, field_validator

from tfopt.registry import Config, Registry

LAYERS = Registry("layer type", key="type")

ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "swish", "sigmoid", "tanh", "softmax", "linear",
)
Activation = Literal[ACTIVATIONS]
INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal", "lecun_uniform")
Initializer = Literal[INITIALIZERS]
Pair = Union[PositiveInt, tuple[PositiveInt, PositiveInt]]


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
    repeat: PositiveInt = Field(1, description="this layer n times in a row; copies of a conv or residual "
                                               "block after the first use stride 1")
    prefix: ClassVar[str] = "layer"

    def copies(self):
        """The configs this entry stands for: itself, then ``repeat - 1`` shape-keeping copies."""
        yield self
        for k in range(2, self.repeat + 1):
            update = {"repeat": 1, "name": f"{self.name}_{k}" if self.name else None}
            if isinstance(self, (_Conv, Residual)):
                update["strides"] = 1
            yield self.model_copy(update=update)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v):
        if v is not None and not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("layer names may use letters, digits, '_' and '-'")
        return v

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


def plan(layers, input_shape):
    """Name every layer and infer every shape; raise ValueError naming the first bad layer.

    Returns a list of ``(name, config, in_shape, out_shape)``. Names are the config's
    ``name`` or the type's prefix plus a running number (``conv1``, ``bn1``...); a conv or
    dense with ``batch_norm`` also takes the next ``bn`` and ``act`` numbers.
    """
    counters: dict[str, int] = {}
    names = set()

    def next_name(prefix):
        counters[prefix] = counters.get(prefix, 0) + 1
        return f"{prefix}{counters[prefix]}"

    steps = []
    shape = tuple(input_shape)
    for index, cfg in ((i, c) for i, entry in enumerate(layers) for c in entry.copies()):
        name = cfg.name or next_name(cfg.prefix)
        if name in names:
            raise ValueError(f"model.layers.{index}.name: duplicate layer name '{name}'")
        names.add(name)
        try:
            out = cfg.out_shape(shape)
        except ValueError as exc:
            raise ValueError(f"model.layers.{index}: {name} ({cfg.type}) {exc}") from None
        extra = {}
        if isinstance(cfg, _Weighted) and cfg.batch_norm:
            extra["bn"] = next_name("bn")
            extra["act"] = next_name("act")
        elif isinstance(cfg, _Weighted) and cfg.activation in SEPARATE_ACTIVATIONS:
            extra["act"] = next_name("act")
        names.update(extra.values())
        steps.append((name, cfg, shape, out, extra))
        shape = out
    return steps


# Activations tf_keras has no string for; they become their own layer.
SEPARATE_ACTIVATIONS = ("relu6", "leaky_relu")
