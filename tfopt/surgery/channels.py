"""Structured (channel) pruning: remove whole filters and units, and every weight that reads them.

For each conv, separable conv or dense layer (a *source*) the output channels are followed
through the layers that keep channels apart (BatchNorm, activations, dropout, pooling,
depthwise convs with depth multiplier 1, global pooling, flatten) and the channel-transparent
ones (ZeroPadding2D, Cropping2D, UpSampling2D, a scalar Rescaling, a Reshape that keeps the
channel axis) to the layers that read them (the *sinks*: a conv's or separable conv's input
channels, a dense layer's rows). Removing a channel then removes the source's filter, the BN
statistics, the depthwise filter, and the sink's input weights (for flatten → dense, every
row of that channel). Sources whose channels meet in an element-wise merge (Add, Multiply,
Subtract, Average, Maximum, Minimum: residuals, squeeze-and-excitation) are pruned as one
group: the same channels leave every one of them, ranked by their summed scores. A
Concatenate on the channel axis joins channel spaces side by side: each input group is pruned
on its own, and the layers after the concatenation read the kept channels at their offsets
(the concatenated index mapping). A group whose channels reach the model output, the model
input (an identity shortcut from it) or an unknown layer is protected and the reason is
reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfopt import layer_kinds
from tfopt.config.choices import CRITERIA, DATA_CRITERIA
from tfopt.config.validation import did_you_mean
from tfopt.errors import TfoptError
from tfopt.surgery.graph import Replacement, as_functional, consumers, copy_layer, inbound, rebuild
from tfopt.surgery.slicing import (attention_weights, bidirectional, directions, filters, flatten_rows, has_units,
                                   layer_classes, sliced_weights, transposed, width)


def is_source(layer) -> bool:
    """A layer that writes channels of its own (the table's ``producer`` role)."""
    return layer_kinds.role(layer) == "producer"


def _transparent(layer) -> bool:
    """Layers that move or scale values without mixing channels."""
    return layer_kinds.role(layer) == "transparent"


def _merge(layer) -> bool:
    """Element-wise merges: their inputs' channels are coupled."""
    return layer_kinds.role(layer) == "coupled"


def _channel_concat(layer) -> bool:
    return layer_kinds.role(layer) == "concat"


@dataclass
class Group:
    """One channel space: the sources that write it (several when a merge joins them) and every
    layer that passes or reads it."""

    source: str
    channels: int
    chain: list = field(default_factory=list)  # pass-through layers (names)
    sinks: list = field(default_factory=list)  # (sink name, flatten name or None)
    blocked: str | None = None
    members: list = field(default_factory=list)  # the sources, ``source`` first
    concats: list = field(default_factory=list)  # Concatenate layers the channels flow into
    heads: bool = False  # the attention heads inside one MultiHeadAttention layer
    output: bool = False  # its channels are a model output (through pass-through layers only)


@dataclass
class Concat:
    """The channel space after a Concatenate: ``parts`` are ``(group or None, channels)`` in input
    order (None: an input no group prunes); ``chain`` and ``sinks`` as in :class:`Group`."""

    name: str
    parts: list = field(default_factory=list)
    chain: list = field(default_factory=list)
    sinks: list = field(default_factory=list)
    blocked: str | None = None
    inner: dict = field(default_factory=dict, repr=False)  # {name: Concat} of the parts that are concatenations
    into: list = field(default_factory=list)  # the Concatenate layers its channels flow into
    output: bool = False  # its channels are a model output

    def kept(self, keep: dict) -> np.ndarray:
        """Kept indices of the concatenated channels, given each input group's kept indices (an
        input that is itself a concatenation contributes its own kept indices)."""
        out, offset = [], 0
        for owner, n in self.parts:
            idx = self.inner[owner].kept(keep) if owner in self.inner else keep.get(owner)
            out.append(offset + (np.asarray(idx) if idx is not None else np.arange(n)))
            offset += n
        return np.concatenate(out).astype(int)

    def touched(self, keep: dict) -> bool:
        """Whether any of its inputs loses channels."""
        return any(owner in keep or (owner in self.inner and self.inner[owner].touched(keep))
                   for owner, _ in self.parts)


class Groups(dict):
    """``{source: Group}``, with ``concats``: ``{Concatenate name: Concat}``."""

    concats: dict


def _follow(start, layers, users, outputs, g):
    """Walk the channels leaving ``start`` into ``g`` (chain, sinks, concats, blocked)."""
    L, _, _ = layer_classes()
    stack = [(start, None)]
    while stack and g.blocked is None:
        name, flat = stack.pop()
        if name in outputs:
            g.blocked = f"{name} is a model output"
            g.output = True
            break
        for user_name in users[name]:
            user = layers[user_name]
            if is_source(user) and flat is not None and isinstance(user, L.EinsumDense):
                g.blocked = f"its channels reach {user_name} (EinsumDense) through a Flatten"
                break
            if is_source(user):  # a Dense on a tensor of more axes reads its last one, position by position
                g.sinks.append((user_name, flat))
            elif _transparent(user) or _merge(user):
                if user_name not in g.chain:
                    g.chain.append(user_name)
                    stack.append((user_name, user_name if isinstance(user, L.Flatten) else flat))
            elif _channel_concat(user) and flat is None:
                if user_name not in g.concats:
                    g.concats.append(user_name)
            else:
                g.blocked = f"its channels reach {user_name} ({type(user).__name__})"
                break


def trace(model) -> Groups:
    """``{source name: Group}`` for every conv/separable/dense layer of ``model``; the channel
    spaces after each Concatenate are in the result's ``concats``."""
    L, _, _ = layer_classes()
    model = as_functional(model)
    layers = {layer.name: layer for layer in model.layers}
    users = consumers(model)
    outputs = {t.node.layer.name for t in model.outputs}
    groups = {}
    for layer in model.layers:
        if not is_source(layer):
            continue
        g = Group(layer.name, width(layer))
        _follow(layer.name, layers, users, outputs, g)
        g.members = [layer.name]
        groups[layer.name] = g
    merged = Groups(_merge_at_adds(model, groups))
    merged.concats = _link_concats(model, merged, layers, users, outputs)
    for layer in model.layers:  # attention heads: a channel space inside the layer
        if isinstance(layer, L.MultiHeadAttention):
            merged[layer.name] = Group(layer.name, int(layer._num_heads), members=[layer.name], heads=True)
    return merged


def _link_concats(model, groups: dict, layers, users, outputs) -> dict:
    """Trace the channels after each channel-axis Concatenate, map its inputs to the groups that
    write them, and protect the groups whose concatenated channels cannot be followed."""
    concats = {}
    for layer in model.layers:
        if not _channel_concat(layer):
            continue
        c = Concat(layer.name)
        _follow(layer.name, layers, users, outputs, c_group := Group(layer.name, int(layer.output_shape[-1])))
        c.chain, c.sinks, c.blocked, c.into = c_group.chain, c_group.sinks, c_group.blocked, c_group.concats
        if c.blocked is None and any(_merge(layers[n]) for n in c.chain):
            c.blocked = "its concatenation meets other channels in an element-wise merge"
        for parent, shape in zip(inbound(layer), layer.input_shape):
            owner = next((n for n, g in groups.items()
                          if parent.name in g.members or parent.name in g.chain), None)
            if owner is None:  # a concatenation of a concatenation (DenseNet's blocks)
                owner = next((n for n, cc in concats.items() if parent.name == n or parent.name in cc.chain), None)
                if owner is not None:
                    c.inner[owner] = concats[owner]
            c.parts.append((owner, int(shape[-1])))
        concats[layer.name] = c
    changed = True
    while changed:  # a concatenation whose channels flow into a blocked one is blocked too
        changed = False
        for c in concats.values():
            bad = next((n for n in c.into if n in concats and concats[n].blocked), None)
            if c.blocked is None and bad is not None:
                c.blocked = f"its channels reach {bad} whose output cannot be pruned ({concats[bad].blocked})"
                changed = True
    for name, g in groups.items():
        reasons = [f"its channels reach {c} whose output cannot be pruned ({concats[c].blocked})"
                   for c in g.concats if c in concats and concats[c].blocked]
        if reasons and g.blocked is None:
            g.blocked = reasons[0]
    return concats


def _merge_at_adds(model, groups: dict) -> dict:
    """Join the groups whose channels meet in an element-wise merge; block a join fed by anything else."""
    adds = [layer for layer in model.layers if _merge(layer)]
    parent = {name: name for name in groups}

    def root(n):
        while parent[n] != n:
            n = parent[n]
        return n

    for add in adds:
        touching = [n for n, g in groups.items() if add.name in g.chain]
        for n in touching[1:]:
            parent[root(n)] = root(touching[0])
    merged = {}
    for name in groups:
        r = root(name)
        g = groups[name]
        if r not in merged:
            merged[r] = Group(r, g.channels, list(g.chain), list(g.sinks), g.blocked, [name], list(g.concats),
                              output=g.output)
            continue
        m = merged[r]
        m.members.append(name)
        m.chain += [c for c in g.chain if c not in m.chain]
        m.sinks += [s for s in g.sinks if s not in m.sinks]
        m.concats += [c for c in g.concats if c not in m.concats]
        m.blocked = m.blocked or g.blocked
        m.output = m.output or g.output
    for m in merged.values():
        covered = set(m.members) | set(m.chain)
        for add in adds:
            if add.name in m.chain and m.blocked is None:
                strangers = [p.name for p in inbound(add) if p.name not in covered]
                if strangers:
                    m.blocked = f"its channels meet {', '.join(strangers)} in {add.name}, which cannot be pruned"
    return {m.source: m for m in merged.values()}


def _group_filters(model, group):
    return np.concatenate([filters(model.get_layer(m)) for m in group.members or [group.source]], axis=0)


def _probe_tensor(model, group: Group):
    """Where a group's channels are measured: after its first activation, else the source's output."""
    L, _, _ = layer_classes()
    for name in group.chain:
        layer = model.get_layer(name)
        if isinstance(layer, (L.Activation, L.ReLU, L.LeakyReLU)):
            return layer.output
        if not isinstance(layer, L.BatchNormalization):
            break
    return model.get_layer(group.source).output


def data_scores(model, groups: dict, criterion: str, data, loss=None) -> dict:
    """Mean |activation| per channel, or the first-order Taylor score |mean(a · ∂L/∂a)| per
    channel (Molchanov et al.), on a batch ``data = (x, y)``; ``{source: scores}``."""
    import tensorflow as tf
    import tf_keras as keras

    x, y = data
    names = list(groups)
    probe = keras.Model(model.inputs, [_probe_tensor(model, groups[n]) for n in names] + [model.output])
    loss_fn = loss or keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        outs = probe(tf.constant(x, tf.float32), training=False)
        acts, pred = outs[:-1], outs[-1]
        tape.watch(acts)
        value = loss_fn(y, pred)
    grads = tape.gradient(value, acts) if criterion == "taylor" else [None] * len(acts)
    out = {}
    for name, a, g in zip(names, acts, grads):
        axes = tuple(range(len(a.shape) - 1))
        if criterion == "taylor":
            out[name] = np.abs(tf.reduce_mean(a * g, axis=axes).numpy())
        else:
            out[name] = tf.reduce_mean(tf.abs(a), axis=axes).numpy()
    return out


def scores(model, group: Group, criterion: str, data=None, loss=None) -> np.ndarray:
    """Importance of each output channel of a group's source (higher is kept)."""
    L, _, _ = layer_classes()
    if group.heads and criterion not in ("l1", "l2"):
        criterion = "l1"  # attention heads are ranked by their weights
    if criterion in DATA_CRITERIA:
        if data is None:
            raise TfoptError(f"criterion {criterion} ranks channels on data: pass a batch of (x, y)")
        return data_scores(model, {group.source: group}, criterion, data, loss)[group.source]
    if criterion == "bn_gamma":
        bns = [model.get_layer(n) for n in group.chain if isinstance(model.get_layer(n), L.BatchNormalization)]
        bns = [bn for bn in bns if bn.scale]
        if not bns:
            raise TfoptError(f"criterion bn_gamma: {group.source} has no BatchNorm with a scale after it; "
                             f"use l1 or l2 for it")
        return sum(np.abs(bn.gamma.numpy()) for bn in bns)
    f = _group_filters(model, group)
    return np.abs(f).sum(axis=0) if criterion == "l1" else np.sqrt((f ** 2).sum(axis=0))


def _partitions(model, group) -> list:
    """``[(first channel, channels)]`` ranked apart: both directions of a Bidirectional source, else
    the whole group."""
    source = model.get_layer(group.source)
    if len(group.members) == 1 and bidirectional(source):
        return [(start, d.units) for d, _, start in directions(source)]
    return [(0, group.channels)]


def plan_channels(model, ratio=0.5, per_layer=None, criterion="l1", min_channels=1, protect=(), data=None,
                  loss=None) -> dict:
    """Which channels each source keeps: ``{source: sorted kept indices}``, plus the reasons
    for every protected source under the key ``"_protected"``."""
    if criterion not in CRITERIA:
        raise TfoptError(f"unknown criterion '{criterion}'{did_you_mean(criterion, CRITERIA)}; "
                         f"available: {', '.join(CRITERIA)}")
    per_layer = per_layer or {}
    groups = trace(model)
    sources = [m for g in groups.values() for m in g.members]
    for name in [*per_layer, *protect]:
        if name not in sources:
            raise TfoptError(f"'{name}' is not a conv, separable conv or dense layer of this model"
                             f"{did_you_mean(name, sources)}; those are: {', '.join(sources)}")
    keep, protected, limited = {}, {}, {}
    outputs = {g.source: g.channels for g in groups.values() if g.output and not g.heads}
    for name, g in groups.items():
        given = [per_layer[m] for m in g.members if m in per_layer]
        r = min(given) if given else ratio
        head = None if given else max(((outputs[sink], sink) for sink, _ in g.sinks if sink in outputs), default=None)
        if any(m in protect for m in g.members):
            protected[name] = "protected on request"
        elif g.blocked:
            protected[name] = g.blocked
        elif head is not None and r > 0 and head[0] >= g.channels:
            protected[name] = (f"it feeds the output layer {head[1]}, of {head[0]} channels: fewer channels here "
                               f"would narrow what the output is computed from below its own width")
        elif r > 0:
            s = None
            kept = []
            parts = _partitions(model, g)
            least = -(-head[0] // len(parts)) if head is not None else 0  # the output's width, shared by the parts
            for start, size in parts:  # a Bidirectional's two directions: each keeps its share
                n_keep = max(min_channels, int(round(size * (1 - r))), 1)
                if n_keep < least:
                    n_keep = min(size, least)
                    limited[name] = (f"keeps {n_keep * len(parts)} of {g.channels} channels: it feeds the output "
                                     f"layer {head[1]}, of {head[0]} channels")
                if n_keep < size:
                    s = scores(model, g, criterion, data, loss) if s is None else s
                    kept.append(start + np.argsort(-s[start:start + size], kind="stable")[:n_keep])
                else:
                    kept.append(np.arange(start, start + size))
            if s is not None:
                keep[name] = np.sort(np.concatenate(kept))
    return {"keep": keep, "protected": protected, "limited": limited, "groups": groups}


def prune_channels(model, ratio=0.5, per_layer=None, criterion="l1", min_channels=1, protect=(), data=None,
                   loss=None):
    """A new, physically smaller model; returns ``(model, report)``. The input is not changed.

    ``data=(x, y)`` is needed by the data-driven criteria ``activation`` and ``taylor``.
    """
    L, _, _ = layer_classes()
    plan = plan_channels(model, ratio, per_layer, criterion, min_channels, protect, data, loss)
    keep, groups = plan["keep"], plan["groups"]
    out_keep, in_keep, flat_of = {}, {}, {}
    for name, idx in keep.items():
        for source in groups[name].members:
            out_keep[source] = idx
        for member in groups[name].chain:
            in_keep[member] = out_keep[member] = idx
        for sink, flat in groups[name].sinks:
            in_keep[sink] = idx
            if flat:
                flat_of[sink] = flat
    for concat in groups.concats.values():
        if concat.blocked or not concat.touched(keep):
            continue
        idx = concat.kept(keep)
        for member in concat.chain:
            in_keep[member] = out_keep[member] = idx
        for sink, flat in concat.sinks:
            in_keep[sink] = idx
            if flat:
                flat_of[sink] = flat
    shapes = {layer.name: layer.input_shape for layer in model.layers if hasattr(layer, "input_shape")}

    def replace(layer, args):
        name = layer.name
        if name not in out_keep and name not in in_keep:
            return None
        if not layer.weights and not isinstance(layer, L.Reshape):
            return None
        rows = (lambda idx: flatten_rows(shapes[flat_of[name]][1:], idx)) if name in flat_of else None
        w, changes = sliced_weights(layer, out_keep.get(name), in_keep.get(name), rows)
        return Replacement(copy_layer(layer, **changes), w)

    pruned = rebuild(model, replace)
    report = {"kept": {m: len(v) for n, v in keep.items() for m in groups[n].members},
              "channels_before": {m: g.channels for g in groups.values() for m in g.members},
              "protected": {m: why for n, why in plan["protected"].items() for m in groups[n].members},
              "limited": {m: why for n, why in plan["limited"].items() for m in groups[n].members}}
    return pruned, {**report, "keep": keep}


def masked_copy(model, plan_keep: dict, into=None, groups=None):
    """The original model with the removed channels' readers zeroed: it must compute exactly what
    the pruned model computes (used by the tests and by ``--check``). ``into``: an earlier masked
    copy of ``model`` to reuse (its weights are reset from ``model`` first)."""
    L, _, _ = layer_classes()

    groups = trace(model) if groups is None else groups
    if into is None:
        masked = rebuild(model, lambda layer, args: None)  # a copy, its layers rebuilt by their own classes
    else:
        masked = into
        for layer in model.layers:
            if layer.weights:
                masked.get_layer(layer.name).set_weights(layer.get_weights())
    shapes = {layer.name: layer.input_shape for layer in model.layers if hasattr(layer, "input_shape")}
    spaces = [(groups[name].channels, idx, groups[name].sinks) for name, idx in plan_keep.items()]
    spaces += [(sum(n for _, n in c.parts), c.kept(plan_keep), c.sinks) for c in groups.concats.values()
               if not c.blocked and c.touched(plan_keep)]
    for name, idx in plan_keep.items():  # a recurrent source reads its own units back: zero those rows too
        for member in groups[name].members:
            layer = masked.get_layer(member)
            if groups[name].heads:  # a head's only reader: the output projection
                w, at = layer.get_weights(), attention_weights(layer)
                w[at["attention_output/kernel"]][np.setdiff1d(np.arange(groups[name].channels), idx)] = 0
                layer.set_weights(w)
            if has_units(layer):
                w = []
                for d, dw, start in directions(layer):
                    dw[1][np.setdiff1d(np.arange(d.units), np.asarray(idx) - start), :] = 0
                    w += dw
                layer.set_weights(w)
    for channels, idx, sinks in spaces:
        drop = np.setdiff1d(np.arange(channels), idx)
        for sink, flat in sinks:
            layer = masked.get_layer(sink)
            w = layer.get_weights()
            if isinstance(layer, L.Dense):
                w[0][flatten_rows(shapes[flat][1:], drop) if flat else drop, :] = 0
            elif isinstance(layer, L.EinsumDense):
                read, _ = layer_kinds.einsum_axes(layer)
                index = [slice(None)] * w[0].ndim
                index[read] = drop
                w[0][tuple(index)] = 0
            elif transposed(layer):
                w[0][..., drop] = 0
            elif bidirectional(layer):  # both directions read the input
                w = []
                for _, dw, _ in directions(layer):
                    dw[0][drop] = 0
                    w += dw
            else:
                w[0][..., drop, :] = 0
            layer.set_weights(w)
    return masked



def one_group_cuts(model, ratios, criterion: str = "l1"):
    """``(group, ratio, model)`` for each channel group that can be cut and each ratio: the model
    with ``ratio`` of that group's channels (ranked by ``criterion``, a weight criterion) removed,
    computed as the masked original, which gives exactly the smaller model's outputs. One copy is
    reused for every cut, so a scan of a deep network rebuilds it once."""
    groups, copy = trace(model), None
    for name, group in groups.items():
        if group.blocked:
            continue
        for r in ratios:
            keep = plan_channels(model, 0.0, {name: r}, criterion)["keep"]
            copy = masked_copy(model, keep, into=copy, groups=groups)
            yield name, r, copy
