"""Pruning masks computed with ``keras.ops`` from a weight and a sparsity, on any backend.

Every function here is traceable: the sparsity (and so the count of weights to prune) may
be a traced scalar, as it is inside a jitted training step. Ranks come from a double
argsort, so exactly ``round(sparsity * n)`` weights (or blocks) are pruned however many
magnitudes tie; weights already zero rank first, so a mask never brings a pruned weight
back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keras import ops


def _prune_count(sparsity, n):
    return ops.cast(ops.round(ops.cast(sparsity, "float32") * float(n)), "int32")


def _keep_ranked(scores, k):
    """1 where a score's rank (ascending) is >= k, i.e. all but the k smallest, else 0."""
    ranks = ops.argsort(ops.argsort(scores))
    return ops.cast(ranks >= k, "float32")


@dataclass(frozen=True)
class Unstructured:
    """Prune individual weights of smallest magnitude."""

    def mask(self, weight, sparsity):
        """A 0/1 mask of ``weight``'s shape and dtype pruning ``sparsity`` of its weights."""
        flat = ops.reshape(ops.abs(weight), (-1,))
        keep = _keep_ranked(flat, _prune_count(sparsity, int(flat.shape[0])))
        return ops.cast(ops.reshape(keep, weight.shape), weight.dtype)

    def describe(self) -> str:
        return "unstructured"


def _to_groups(weight, axis, size):
    """Move ``axis`` last, zero-pad it to a multiple of ``size`` and split it into groups."""
    moved = ops.moveaxis(weight, axis, -1)
    length = int(moved.shape[-1])
    padded_length = math.ceil(length / size) * size
    if padded_length != length:
        pads = [(0, 0)] * (len(moved.shape) - 1) + [(0, padded_length - length)]
        moved = ops.pad(moved, pads)
    grouped = ops.reshape(moved, tuple(moved.shape[:-1]) + (padded_length // size, size))
    return grouped, length


def _from_groups(grouped, axis, length):
    flat = ops.reshape(grouped, tuple(grouped.shape[:-2]) + (-1,))
    return ops.moveaxis(flat[..., :length], -1, axis)


@dataclass(frozen=True)
class Blocks:
    """Prune blocks of ``size`` consecutive weights along the input axis, by mean magnitude.

    A trailing partial block is scored by the weights it has.
    """

    size: int
    axis: int

    def mask(self, weight, sparsity):
        grouped, length = _to_groups(ops.abs(weight), self.axis, self.size)
        block_count = int(math.prod(grouped.shape[:-1]))
        sums = ops.sum(grouped, axis=-1)
        # A partial block holds fewer real weights: divide by how many it has.
        last = length - (math.ceil(length / self.size) - 1) * self.size
        per_block = ops.concatenate([ops.full((int(grouped.shape[-2]) - 1,), float(self.size)),
                                     ops.full((1,), float(last))])
        scores = ops.reshape(sums / ops.cast(per_block, sums.dtype), (-1,))
        keep = _keep_ranked(scores, _prune_count(sparsity, block_count))
        keep = ops.reshape(keep, tuple(grouped.shape[:-1]) + (1,))
        full = ops.broadcast_to(keep, grouped.shape)
        return ops.cast(_from_groups(full, self.axis, length), weight.dtype)

    def describe(self) -> str:
        return f"blocks of {self.size}"


@dataclass(frozen=True)
class MByN:
    """m zeros in every n consecutive weights along the input axis (TFMOT's ``(m, n)``).

    The pattern does not depend on the scheduled sparsity: it is applied whole at every
    pruning step. A trailing partial group is padded with zeros, which are pruned first.
    """

    m: int
    n: int
    axis: int

    def mask(self, weight, sparsity=None):
        grouped, length = _to_groups(ops.abs(weight), self.axis, self.n)
        ranks = ops.argsort(ops.argsort(grouped, axis=-1), axis=-1)
        keep = ops.cast(ranks >= self.m, weight.dtype)
        return _from_groups(keep, self.axis, length)

    def describe(self) -> str:
        return f"{self.m}:{self.n}"


@dataclass(frozen=True)
class Schedule:
    """When masks are recomputed and to which sparsity (TFMOT's polynomial decay or constant).

    Attributes:
        kind: ``"polynomial"`` or ``"constant"``.
        begin_step: First optimizer step that prunes.
        end_step: Last step that prunes; the final sparsity is reached there.
        frequency: Steps between mask updates; ``end_step`` always updates.
        initial_sparsity: Sparsity at ``begin_step`` (polynomial only).
        power: Exponent of the polynomial (3, as TFMOT).
    """

    kind: str
    begin_step: int
    end_step: int
    frequency: int
    initial_sparsity: float = 0.0
    power: int = 3

    def is_update(self, step):
        """Whether masks are recomputed at ``step`` (a traced or Python integer)."""
        in_range = ops.logical_and(step >= self.begin_step, step <= self.end_step)
        turn = ops.logical_or(ops.equal(ops.mod(step - self.begin_step, self.frequency), 0),
                              ops.equal(step, self.end_step))
        return ops.logical_and(in_range, turn)

    def sparsity(self, step, final):
        """The target sparsity at ``step``, for a variable whose final target is ``final``.

        ``s_t = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin)) ** 3``, with the
        progress clipped to [0, 1] and ``s_i`` capped at ``s_f``.
        """
        if self.kind == "constant" or self.end_step <= self.begin_step:
            return ops.convert_to_tensor(float(final), "float32")
        span = float(max(self.end_step - self.begin_step, 1))
        progress = ops.clip((ops.cast(step, "float32") - float(self.begin_step)) / span, 0.0, 1.0)
        initial = min(float(self.initial_sparsity), float(final))
        return final + (initial - final) * (1.0 - progress) ** self.power
