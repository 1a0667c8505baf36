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
#: The smallest map size (the shorter side) a late downsampling starts from: a 7×7 map becomes 4×4.
LATE_MIN_SIZE = 4


def _spatial_conv(layer) -> bool:
    import tf_keras as keras

    return type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def _stride_1(layer) -> bool:
    """A 2-D convolution of stride 1 and no dilation."""
    return _spatial_conv(layer) and tuple(layer.strides) == (1, 1) and tuple(layer.dilation_rate) == (1, 1)


def full_resolution_convs(model) -> list[str]:
    """The 2-D convolutions of stride 1 (and no dilation) that read maps of the model input's own
    height and width, in graph order: where downsampling saves the most."""
    model = as_functional(model)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        return []
    size = tuple(model.inputs[0].shape[1:3])
    if None in size:
        return []
    return [layer.name for layer in model.layers if _stride_1(layer) and tuple(layer.input.shape[1:3]) == size]


def _spatial_stride_1(layer) -> bool:
    """:func:`_stride_1` with a kernel wider than 1×1: a stride of 2 on it still reads every input position."""
    return _stride_1(layer) and max(layer.kernel_size) > 1


def downsample_points(model, factor: int = FACTOR) -> tuple[list[str], list[str]]:
    """Where a search downsamples, mildest first: the first stride-1 spatial convolution (kernel
    wider than 1×1) at the smallest map size still at least :data:`LATE_MIN_SIZE` that the graph lets
    take the stride, or at the next larger size where none can (a late downsampling, which keeps the
    early features at full resolution), then the last and the first such convolution at the input's
    own height and width (the first saves the most). Each is checked with :func:`downsampled`.

    Returns:
        ``(layer names, refusals)``: the refusals' messages, in the order the layers were tried.
    """
    model = as_functional(model)
    full = set(full_resolution_convs(model))
    sizes = {}
    for layer in model.layers:
        if _spatial_stride_1(layer) and None not in tuple(layer.input.shape[1:3]):
            sizes.setdefault(min(layer.input.shape[1:3]), []).append(layer.name)
    refusals = []

    def accepted(names):
        for name in names:
            try:
                downsampled(model, name, factor)
                return name
            except TfoptError as exc:
                refusals.append(str(exc))
        return None

    at_input = [layer.name for layer in model.layers if layer.name in full and _spatial_stride_1(layer)]
    first = accepted(at_input)
    last = accepted(list(reversed(at_input))) if first else None
    late = None
    for size in sorted(s for s in sizes if s >= LATE_MIN_SIZE and not set(sizes[s]) & full):
        late = accepted(sizes[size])
        if late:
            break
    points = [late, last, first]
    return [p for i, p in enumerate(points) if p and p not in points[:i]], refusals


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
