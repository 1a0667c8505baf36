"""Layer removal: drop named layers or residual blocks where the shapes allow it, and rewire.

A removed layer passes its first input straight on, so a removal is possible exactly when
every removed layer's output has the shape of its first input (dropout, BatchNorm,
activations, shape-keeping convs, whole identity-shortcut residual blocks). A conv or dense
layer takes its BatchNorm/activation tail with it. Anything else is refused with the shapes.
"""

from __future__ import annotations

from tfopt import layer_kinds
from tfopt.errors import TfoptError
from tfopt.config.layers import fmt_shape
from tfopt.surgery.graph import consumers, inbound, rebuild
from tfopt.config.validation import did_you_mean


def _shape(s):
    return tuple(s[0][1:]) if isinstance(s, list) else tuple(s[1:])


def expand(model, names) -> list[str]:
    """Layer names for the requested names: ``blockN`` means every ``blockN_*`` layer; a conv or
    dense layer brings its BatchNorm/activation tail."""
    layers = {layer.name: layer for layer in model.layers}
    users = consumers(model)
    out = []
    for name in names:
        block = [n for n in layers if n.startswith(f"{name}_")]
        if name in layers:
            out.append(name)
            current = name
            # a conv or dense layer (one BatchNorm can fold into) takes its BatchNorm/activation tail
            while len(users[current]) == 1 and layer_kinds.is_tail(layers[users[current][0]]) \
                    and layer_kinds.kind(layers[name]).foldable:
                current = users[current][0]
                out.append(current)
        elif block:
            out += block
        else:
            blocks = sorted({n.split("_")[0] for n in layers if "_" in n})
            raise TfoptError(f"no layer or block '{name}' in this model{did_you_mean(name, [*layers, *blocks])}")
    return list(dict.fromkeys(out))


def check_removal(model, removed) -> None:
    """Raise with the reason and the shapes when ``removed`` cannot be taken out."""
    import tf_keras as keras

    outputs = {t.node.layer.name for t in model.outputs}
    for layer in model.layers:
        if layer.name not in removed:
            continue
        if isinstance(layer, keras.layers.InputLayer) or layer.name in outputs:
            raise TfoptError(f"cannot remove {layer.name}: it is the model's {'input' if not inbound(layer) else 'output'}")
        parents = inbound(layer)
        if len(parents) > 1 and not isinstance(layer, keras.layers.Add):
            raise TfoptError(f"cannot remove {layer.name}: it joins {len(parents)} inputs")
        got, keeps = _shape(layer.input_shape), _shape(layer.output_shape)
        if got != keeps:
            raise TfoptError(
                f"cannot remove {layer.name}: it maps {fmt_shape(got)} to {fmt_shape(keeps)}, and the layers after it "
                f"expect {fmt_shape(keeps)}; only layers (or blocks) that keep the shape can be removed")


def remove_layers(model, names):
    """A new model without ``names`` (layers or blocks); returns ``(model, removed layer names)``."""
    removed = expand(model, names)
    check_removal(model, set(removed))

    def replace(layer, args):
        return args[0] if layer.name in removed else None

    return rebuild(model, replace), removed


def candidates(model) -> list[str]:
    """Every conv/dense unit and residual block that could be removed on its own."""
    names = [layer.name for layer in model.layers if layer_kinds.role(layer) == "producer" and "_" not in layer.name]
    names += sorted({layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")})
    ok = []
    for name in names:
        try:
            check_removal(model, set(expand(model, [name])))
            ok.append(name)
        except TfoptError:
            continue
    return ok
