"""Turn the recipe's ``model`` section into a tf_keras functional model.

Layer names are stable (``conv1``, ``bn1``, ``act1``, ``block1_conv1``...) so that later
steps can address layers by name. Every layer is a stock tf_keras layer: saved models load
without custom objects.
"""

from __future__ import annotations

import tf_keras as keras

from tfopt.errors import ShapeError
from tfopt.config import layers as L
from tfopt.config.layers import SEPARATE_ACTIVATIONS, activation_names, pair, plan
from tfopt.models.outputs import output_activation  # noqa: F401  (read from the builder by its users)

KL = keras.layers
# the layer configs with a kernel, an optional BatchNorm and a fused or separate activation
WEIGHTED = (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D, L.Dense)


def activation(x, activation_name: str, name: str):
    """``x`` through any supported activation, built from stock layers (see
    :func:`tfopt.config.layers.activation_names` for the hard sigmoid and hard swish)."""
    if activation_name == "relu6":
        return KL.ReLU(max_value=6.0, name=name)(x)
    if activation_name == "leaky_relu":
        return KL.LeakyReLU(alpha=0.2, name=name)(x)
    if activation_name in ("hard_sigmoid", "hard_swish"):
        names = activation_names(activation_name, name)
        gate = KL.Rescaling(1.0, offset=3.0, name=names[0])(x)
        gate = KL.ReLU(max_value=6.0, name=names[1])(gate)
        gate = KL.Rescaling(1 / 6, name=names[2])(gate)
        return gate if activation_name == "hard_sigmoid" else KL.Multiply(name=name)([x, gate])
    return KL.Activation(activation_name, name=name)(x)


class _Defaults:
    """Recipe-wide initializer and regularizers, overridden per layer."""

    def __init__(self, model_cfg):
        self.cfg = model_cfg

    def kernel_init(self, layer_cfg):
        return layer_cfg.kernel_initializer or self.cfg.kernel_initializer

    def _reg(self, value):
        if value is None or (value.l1 == 0 and value.l2 == 0):
            return None
        return keras.regularizers.L1L2(l1=value.l1, l2=value.l2)

    def kernel_reg(self, layer_cfg):
        return self._reg(layer_cfg.kernel_regularizer or self.cfg.kernel_regularizer)

    def bias_reg(self, layer_cfg):
        return self._reg(layer_cfg.bias_regularizer or self.cfg.bias_regularizer)


def _weighted(cfg, name, extra, d: _Defaults):
    """The core layer of a conv/dense config, and whether its activation is fused in."""
    fused = not cfg.batch_norm and cfg.activation not in SEPARATE_ACTIVATIONS
    act = cfg.activation if fused else "linear"
    common = dict(use_bias=cfg.bias(), bias_regularizer=d.bias_reg(cfg), activation=act, name=name)
    kinit, kreg = d.kernel_init(cfg), d.kernel_reg(cfg)
    if isinstance(cfg, L.Dense):
        return KL.Dense(cfg.units, kernel_initializer=kinit, kernel_regularizer=kreg, **common)
    conv = dict(kernel_size=pair(cfg.kernel_size), strides=pair(cfg.strides), padding=cfg.padding,
                dilation_rate=pair(cfg.dilation_rate), **common)
    if isinstance(cfg, L.Conv2D):
        return KL.Conv2D(cfg.filters, kernel_initializer=kinit, kernel_regularizer=kreg, **conv)
    if isinstance(cfg, L.DepthwiseConv2D):
        return KL.DepthwiseConv2D(depth_multiplier=cfg.depth_multiplier, depthwise_initializer=kinit,
                                  depthwise_regularizer=kreg, **conv)
    return KL.SeparableConv2D(cfg.filters, depth_multiplier=cfg.depth_multiplier,
                              depthwise_initializer=kinit, pointwise_initializer=kinit,
                              depthwise_regularizer=kreg, pointwise_regularizer=kreg, **conv)


def _residual(x, cfg: L.Residual, name: str, in_shape, d: _Defaults):
    k, s = pair(cfg.kernel_size), pair(cfg.strides)
    conv = dict(padding="same", kernel_initializer=d.kernel_init(cfg), kernel_regularizer=d.kernel_reg(cfg),
                bias_regularizer=d.bias_reg(cfg), use_bias=not cfg.batch_norm)
    shortcut = x
    y = KL.Conv2D(cfg.filters, k, strides=s, name=f"{name}_conv1", **conv)(x)
    if cfg.batch_norm:
        y = KL.BatchNormalization(name=f"{name}_bn1")(y)
    y = activation(y, cfg.activation, f"{name}_act1")
    y = KL.Conv2D(cfg.filters, k, name=f"{name}_conv2", **conv)(y)
    if cfg.batch_norm:
        y = KL.BatchNormalization(name=f"{name}_bn2")(y)
    if cfg.projects(in_shape):
        shortcut = KL.Conv2D(cfg.filters, 1, strides=s, name=f"{name}_proj", **conv)(x)
        if cfg.batch_norm:
            shortcut = KL.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = KL.Add(name=f"{name}_add")([y, shortcut])
    return activation(y, cfg.activation, f"{name}_out")


def _inverted_residual(x, cfg: L.InvertedResidual, name: str, in_shape, d: _Defaults):
    conv = dict(padding="same", kernel_initializer=d.kernel_init(cfg), kernel_regularizer=d.kernel_reg(cfg),
                use_bias=False)
    width = cfg.width(in_shape[2])
    y = x
    if width != in_shape[2]:
        y = KL.Conv2D(width, 1, name=f"{name}_expand", **conv)(y)
        y = KL.BatchNormalization(name=f"{name}_expand_bn")(y)
        y = activation(y, cfg.activation, f"{name}_expand_act")
    y = KL.DepthwiseConv2D(pair(cfg.kernel_size), strides=pair(cfg.strides), padding="same", use_bias=False,
                           depthwise_initializer=d.kernel_init(cfg), depthwise_regularizer=d.kernel_reg(cfg),
                           name=f"{name}_dw")(y)
    y = KL.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = activation(y, cfg.activation, f"{name}_dw_act")
    if cfg.squeeze_excite:
        s = KL.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(y)
        s = KL.Conv2D(cfg.se_width(in_shape[2]), 1, activation="relu", name=f"{name}_se_reduce",
                      kernel_initializer=d.kernel_init(cfg), bias_regularizer=d.bias_reg(cfg))(s)
        s = KL.Conv2D(width, 1, name=f"{name}_se_expand", kernel_initializer=d.kernel_init(cfg),
                      bias_regularizer=d.bias_reg(cfg))(s)
        s = activation(s, cfg.se_activation, f"{name}_se_gate")
        y = KL.Multiply(name=f"{name}_se_scale")([y, s])
    y = KL.Conv2D(cfg.filters, 1, name=f"{name}_project", **conv)(y)
    y = KL.BatchNormalization(name=f"{name}_project_bn")(y)
    return KL.Add(name=f"{name}_add")([x, y]) if cfg.keeps_shape(in_shape) else y


def _simple(cfg, name):
    if isinstance(cfg, (L.MaxPool, L.AvgPool)):
        cls = KL.MaxPooling2D if isinstance(cfg, L.MaxPool) else KL.AveragePooling2D
        return cls(pair(cfg.pool_size), strides=pair(cfg.strides) if cfg.strides else None,
                   padding=cfg.padding, name=name)
    if isinstance(cfg, L.GlobalAvgPool):
        return KL.GlobalAveragePooling2D(name=name)
    if isinstance(cfg, L.Flatten):
        return KL.Flatten(name=name)
    if isinstance(cfg, L.Dropout):
        return KL.Dropout(cfg.rate, name=name)
    if isinstance(cfg, L.SpatialDropout):
        return KL.SpatialDropout2D(cfg.rate, name=name)
    if isinstance(cfg, L.BatchNorm):
        return KL.BatchNormalization(momentum=cfg.momentum, epsilon=cfg.epsilon, center=cfg.center,
                                     scale=cfg.scale, name=name)
    raise TypeError(f"no builder for layer config {type(cfg).__name__}")  # a bug, not bad input


def build_model(model_cfg, input_shape, name: str = "model") -> keras.Model:
    """Build a new functional model from a ``model`` config.

    Args:
        model_cfg: a :class:`tfopt.config.recipe.Model` (``recipe.model``).
        input_shape: ``(height, width, channels)``; ``model_cfg.input_shape`` wins when set.
        name: the Keras model name.

    Returns:
        A new tf_keras functional model.

    Raises:
        ShapeError: a layer cannot take the shape it receives; the message names the layer.

    Example:
        >>> model = build_model(recipe.model, (8, 8, 1))
        >>> [l.name for l in model.layers][:3]
        ['input', 'conv1', 'bn1']
    """
    shape = tuple(model_cfg.input_shape or input_shape)
    try:
        steps = plan(model_cfg.layers, shape)
    except ValueError as exc:
        raise ShapeError(f"{exc} (model input {L.fmt_shape(shape)})") from None
    d = _Defaults(model_cfg)
    inputs = keras.Input(shape, name="input")
    x = inputs
    for name_, cfg, in_shape, _, extra in steps:
        if isinstance(cfg, L.Residual):
            x = _residual(x, cfg, name_, in_shape, d)
        elif isinstance(cfg, L.InvertedResidual):
            x = _inverted_residual(x, cfg, name_, in_shape, d)
        elif isinstance(cfg, L.ActivationLayer):
            x = activation(x, cfg.activation, name_)
        elif isinstance(cfg, WEIGHTED):
            x = _weighted(cfg, name_, extra, d)(x)
            if "bn" in extra:
                x = KL.BatchNormalization(name=extra["bn"])(x)
            if "act" in extra:
                x = activation(x, cfg.activation, extra["act"])
        else:
            x = _simple(cfg, name_)(x)
    return keras.Model(inputs, x, name=name)
