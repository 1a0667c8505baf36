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
from tfopt.surgery.graph import as_functional, consumers, inbound, rebuild
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


def _passed_on(model, removed) -> dict:
    """``{removed layer: the kept layer whose output it passes on}``: a removed layer passes on its
    first input, so a removed stretch passes on what enters it."""
    out = {}
    for layer in model.layers:
        if layer.name in removed:
            parents = inbound(layer)
            first = parents[0].name if parents else layer.name
            out[layer.name] = out.get(first, first)
    return out


def check_removal(model, removed) -> None:
    """Raise with the reason and the shapes when ``removed`` cannot be taken out. A removed layer
    that a kept layer reads must pass on the shape it had; layers read only by removed layers
    (the inside of a removed block) may change shapes."""
    import tf_keras as keras

    model = as_functional(model)
    layers = {layer.name: layer for layer in model.layers}
    outputs = {t.node.layer.name for t in model.outputs}
    users = consumers(model)
    passed = _passed_on(model, removed)
    for layer in model.layers:
        if layer.name not in removed:
            continue
        if isinstance(layer, keras.layers.InputLayer) or layer.name in outputs:
            raise TfoptError(f"cannot remove {layer.name}: it is the model's {'input' if not inbound(layer) else 'output'}")
        if all(user in removed for user in users[layer.name]):
            continue
        parents = inbound(layer)
        if len(parents) > 1 and not isinstance(layer, keras.layers.Add):
            raise TfoptError(f"cannot remove {layer.name}: it joins {len(parents)} inputs")
        got, keeps = _shape(layers[passed[layer.name]].output_shape), _shape(layer.output_shape)
        if got != keeps:
            first = layer
            while inbound(first)[0].name in removed:
                first = inbound(first)[0]
            what = layer.name if first is layer else f"{first.name} through {layer.name}"
            raise TfoptError(
                f"cannot remove {what}: it maps {fmt_shape(got)} to {fmt_shape(keeps)}, and the layers after it "
                f"expect {fmt_shape(keeps)}; only layers (or blocks) that keep the shape can be removed")


def remove_layers(model, names):
    """A new model without ``names`` (layers or blocks); returns ``(model, removed layer names)``."""
    removed = expand(model, names)
    check_removal(model, set(removed))

    def replace(layer, args):
        return args[0] if layer.name in removed else None

    return rebuild(model, replace), removed


def _between(start: str, end: str, users: dict, parents: dict) -> set:
    """The layers on the paths from ``start`` (left out) to ``end`` (included)."""
    def reach(first, step):
        seen, todo = set(), [first]
        while todo:
            for nxt in step[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    after = reach(start, users)
    return (reach(end, parents) | {end}) & after if end in after else set()


def _block_name(block: set, add: str, layers: dict, users: dict):
    """The longest ``_``-separated prefix of ``add`` whose layers are ``block`` and, after the
    join, nothing but shape-keeping single-input layers (``block1_out``); None when there is none."""
    parts = add.split("_")
    for k in range(len(parts) - 1, 0, -1):
        prefix = "_".join(parts[:k])
        group = {name for name in layers if name.startswith(prefix + "_")}
        extra, tail, current = group - block, set(), add
        while len(users[current]) == 1 and users[current][0] in extra:
            current = users[current][0]
            if len(inbound(layers[current])) != 1 or \
                    _shape(layers[current].output_shape) != _shape(layers[add].output_shape):
                break
            tail.add(current)
        if block <= group and extra == tail:
            return prefix
    return None


def residual_blocks(model) -> list[str]:
    """The blocks an identity shortcut skips, in graph order: an ``Add`` of a tensor and a branch
    that starts from that tensor and feeds nothing else, named by the prefix its layers share
    (``block1``, ``ir5``, ``conv2_block2``, ``block_5``). Removing one leaves the shortcut."""
    import tf_keras as keras

    model = as_functional(model)
    layers = {layer.name: layer for layer in model.layers}
    users = consumers(model)
    parents = {name: [p.name for p in inbound(layer)] for name, layer in layers.items()}
    out = []
    for add in model.layers:
        if not isinstance(add, keras.layers.Add) or len(parents[add.name]) != 2:
            continue
        a, b = parents[add.name]
        for start, end in ((a, b), (b, a)):
            branch = _between(start, end, users, parents)
            if branch and all(set(users[name]) <= branch | {add.name} for name in branch):
                name = _block_name(branch | {add.name}, add.name, layers, users)
                if name and name not in out:
                    out.append(name)
                break
    return out


def candidates(model) -> list[str]:
    """Every conv/dense unit and residual block that could be removed on its own."""
    names = [layer.name for layer in model.layers if layer_kinds.role(layer) == "producer" and "_" not in layer.name]
    names += [name for name in residual_blocks(model) if name not in names]
    ok = []
    for name in names:
        try:
            check_removal(model, set(expand(model, [name])))
            ok.append(name)
        except TfoptError:
            continue
    return ok
