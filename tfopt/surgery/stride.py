"""Downsampling earlier: a convolution's stride multiplied, so every layer after it works on smaller
maps (a network's resolution multiplier, applied inside the model; the input stays as it is).

The weights keep their shapes: only the maps shrink. A graph whose later layers depend on the
map size (a Flatten before a Dense, a Reshape to fixed sizes, an Add with a branch that does
not pass through the strided layer) is refused, naming the layer where it breaks.
"""

from __future__ import annotations

from tfopt.errors import TfoptError
from tfopt.surgery.graph import Replacement, as_functional, copy_layer, rebuild

#: How much a downsampling multiplies a stride by, by default.
FACTOR = 2


def _spatial_conv(layer) -> bool:
    import tf_keras as keras

    return type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def full_resolution_convs(model) -> list[str]:
    """The 2-D convolutions of stride 1 (and no dilation) that read maps of the model input's own
    height and width, in graph order: where downsampling saves the most."""
    model = as_functional(model)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        return []
    size = tuple(model.inputs[0].shape[1:3])
    if None in size:
        return []
    return [layer.name for layer in model.layers
            if _spatial_conv(layer) and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)
            and tuple(layer.input.shape[1:3]) == size]


def downsampled(model, layer: str, factor: int = FACTOR):
    """A new model whose ``layer`` has its stride multiplied by ``factor``, the same weights.

    Raises:
        TfoptError: ``layer`` is not a 2-D convolution of this model, it is dilated, or a later
            layer cannot take the smaller maps (named, with Keras' reason).
    """
    model = as_functional(model)
    layers = {x.name: x for x in model.layers}
    if layer not in layers:
        raise TfoptError(f"downsample: the model has no layer '{layer}'")
    target = layers[layer]
    if not _spatial_conv(target):
        raise TfoptError(f"downsample: '{layer}' ({type(target).__name__}) is not a Conv2D, DepthwiseConv2D or "
                         f"SeparableConv2D, whose stride downsampling multiplies")
    if any(None in tuple(t.shape[1:-1]) for t in model.inputs):
        raise TfoptError(f"downsample: the model '{model.name}' takes inputs of any height and width; downsampling "
                         f"needs them known, to check that every later layer takes the smaller maps")
    if tuple(target.dilation_rate) != (1, 1):
        raise TfoptError(f"downsample: '{layer}' is dilated ({target.dilation_rate}); a stride cannot grow with it")
    strides = tuple(s * factor for s in target.strides)
    at = [layer]

    def replace(current, args):
        at[0] = current.name
        if current.name == layer:
            return Replacement(copy_layer(current, strides=strides), current.get_weights())
        return None

    try:
        new = rebuild(model, replace)
    except (ValueError, TypeError) as exc:
        raise TfoptError(f"downsample: with '{layer}' at stride {strides[0]}, layer '{at[0]}' cannot take the "
                         f"smaller maps ({_reason(exc)})") from None
    for before, after in zip(model.outputs, new.outputs):
        if tuple(before.shape) != tuple(after.shape):
            raise TfoptError(f"downsample: with '{layer}' at stride {strides[0]}, the output "
                             f"'{before._keras_history.layer.name}' would change shape from {tuple(before.shape)} "
                             f"to {tuple(after.shape)}; downsampling keeps a model's outputs as they are")
    return new


def _reason(exc) -> str:
    """Keras' message, without the header it wraps an error raised inside a layer's call in."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception encountered when calling")] or lines or [""]
    return lines[0][:200]
