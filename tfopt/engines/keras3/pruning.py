"""Magnitude pruning of a Keras 3 model, weight by weight, with a gradual schedule.

During the fine-tune each selected variable carries a constraint: at a pruning step the
mask is recomputed from the masked weight at the scheduled sparsity, and at every step the
weight is multiplied by the mask. The mask lives in the optimizer's state (see
:mod:`tfopt.engines.keras3.training`), so it stays put between pruning steps on every
backend and a pruned weight never comes back. The returned model is the user's
architecture with zeros in it: no wrapper layers, no constraints left behind.
"""

from __future__ import annotations

import warnings

import numpy as np
from keras import ops

from tfopt.engines.keras3.masks import Blocks, MByN, Schedule, Unstructured
from tfopt.engines.keras3.selection import check_patterns, find_entry_value
from tfopt.engines.keras3.training import FineTune, Session

ALLOCATIONS = ("erk", "er", "uniform")
SCHEDULES = ("polynomial", "constant")


def _raw_density(entry, allocation):
    """Erdős–Rényi(-Kernel) density factor of a variable (RigL, Evci et al. 2020)."""
    shape = entry.shape
    if allocation == "erk":
        return sum(shape) / float(np.prod(shape))
    outputs = int(np.prod([shape[a] for a in entry.output_axes]))
    inputs = int(np.prod(shape)) // max(outputs, 1)
    return (inputs + outputs) / float(inputs * outputs)


def allocate(entries, sparsity, allocation="erk", targets=None):
    """Per-variable sparsities: ``targets`` where given, the rest sharing ``sparsity``.

    With ``"erk"`` or ``"er"`` a variable's density is proportional to its Erdős–Rényi
    factor (small, thin variables stay denser), capped at 1 with the budget spread over the
    others, so that the variables ``targets`` does not name hold ``sparsity`` of their
    weights at zero together. ``"uniform"`` gives each the same sparsity.

    Args:
        entries: The table from :func:`~tfopt.engines.keras3.selection.select_weights`.
        sparsity: Overall target in [0, 1).
        allocation: ``"erk"``, ``"er"`` or ``"uniform"``.
        targets: ``{layer name or path glob: sparsity}`` overriding the allocation.

    Returns:
        One sparsity per entry.
    """
    fixed = find_entry_value(entries, targets, None)
    free = [i for i, f in enumerate(fixed) if f is None]
    result = [float(f) if f is not None else float(sparsity) for f in fixed]
    if allocation == "uniform" or not free:
        return result
    sizes = {i: entries[i].size for i in free}
    raw = {i: _raw_density(entries[i], allocation) for i in free}
    keep_budget = (1.0 - sparsity) * sum(sizes.values())
    dense = set()
    while True:
        rest = [i for i in free if i not in dense]
        if not rest:
            break
        budget = keep_budget - sum(sizes[i] for i in dense)
        scale = budget / sum(raw[i] * sizes[i] for i in rest)
        over = [i for i in rest if scale * raw[i] > 1.0]
        if not over:
            break
        dense.update(over)
    for i in free:
        result[i] = 0.0 if i in dense else float(min(1.0, max(0.0, 1.0 - scale * raw[i])))
    return result


def _structure(entry, m_by_n, block):
    if m_by_n is not None:
        return MByN(int(m_by_n[0]), int(m_by_n[1]), entry.input_axis)
    if block is not None and block > 1:
        return Blocks(int(block), entry.input_axis)
    return Unstructured()


def _pruning_constraint(session, mask, structure, schedule, final):
    def constraint(weight):
        step = session.step()
        kept = ops.convert_to_tensor(mask)
        target = schedule.sparsity(step, final)
        updated = ops.cond(schedule.is_update(step),
                           lambda: structure.mask(weight * kept, target),
                           lambda: kept)
        mask.assign(updated)
        return weight * updated

    return constraint


def _schedule(session, schedule, begin_step, end_step, frequency, initial_sparsity):
    if schedule not in SCHEDULES:
        raise ValueError(f"prune(): unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}.")
    total = session.total_steps
    end = total // 2 if end_step is None else int(end_step)
    end = max(end, int(begin_step))
    if end >= total:
        warnings.warn(f"prune(): end_step={end} is not before the fine-tune's last step "
                      f"({total - 1}); the final sparsity is applied after training, without "
                      f"fine-tuning to recover.", stacklevel=3)
    every = int(frequency) if frequency else max(1, (end - int(begin_step)) // 10)
    return Schedule(schedule, int(begin_step), end, every, float(initial_sparsity))


def _check_arguments(sparsity, allocation, m_by_n, block, targets):
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"prune(): sparsity must be in [0, 1); received {sparsity}.")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"prune(): unknown allocation {allocation!r}; allowed: {', '.join(ALLOCATIONS)}.")
    if m_by_n is not None and (len(m_by_n) != 2 or not 0 < int(m_by_n[0]) < int(m_by_n[1])):
        raise ValueError(f"prune(): m_by_n must be (m, n) with 0 < m < n (m zeros in every n "
                         f"weights); received {m_by_n}.")
    if m_by_n is not None and block is not None:
        raise ValueError("prune(): give m_by_n or block, not both.")
    for pattern, value in (targets or {}).items():
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"prune(): targets[{pattern!r}] must be in [0, 1); received {value}.")


def prune(model, data, *, sparsity=0.8, allocation="erk", schedule="polynomial",
          initial_sparsity=0.0, begin_step=0, end_step=None, frequency=None, targets=None,
          skip=(), include=None, m_by_n=None, block=None, **fine_tune):
    """Magnitude-prune a copy of a Keras 3 model during a fine-tune.

    Example::

        pruned = prune(model, (x, y), sparsity=0.8, epochs=2)
        pruned_24 = prune(model, (x, y), m_by_n=(2, 4))

    Args:
        model: A built Keras 3 model: functional, Sequential, subclassed, nested, with
            custom layers. It is not changed.
        data: ``(x, y)``, ``(x, y, sample_weight)`` or a ``tf.data.Dataset``.
        sparsity: Fraction of zeros reached over the selected variables ``targets`` does not
            name (ignored for m_by_n, whose pattern fixes it at m/n).
        allocation: ``"erk"``, ``"er"`` or ``"uniform"`` (see :func:`allocate`).
        schedule: ``"polynomial"`` (TFMOT's cubic ramp from ``initial_sparsity``) or
            ``"constant"``.
        initial_sparsity: Sparsity at ``begin_step`` (polynomial).
        begin_step: First optimizer step that prunes.
        end_step: Step at which the final sparsity is reached; default half the fine-tune.
        frequency: Steps between mask updates; default a tenth of the ramp (at least 1).
        targets: ``{layer name or path glob: sparsity}`` per-variable overrides.
        skip: Layer names or path globs left dense.
        include: Variable path globs to prune instead of the default rules.
        m_by_n: ``(m, n)``: m zeros in every n consecutive weights along the input axis.
        block: Prune blocks of this many consecutive weights along the input axis.
        **fine_tune: Settings of the fine-tune (:class:`~tfopt.engines.keras3.training.FineTune`):
            epochs, lr, batch_size, steps_per_epoch, loss, loss_weights, optimizer, teacher,
            temperature, alpha, callbacks, verbose.

    Returns:
        A new model of the same class with zeros in the selected variables.

    Raises:
        ValueError: For an argument out of range, a pattern matching nothing, or no variable
            to prune.
        TypeError: For an unknown keyword argument, or a model that cannot be copied.
    """
    _check_arguments(sparsity, allocation, m_by_n, block, targets)
    session = Session(model, data, FineTune.from_kwargs("prune", fine_tune))
    entries = session.entries(include, skip, "prune")
    check_patterns("targets", list(targets or {}), [e.path for e in entries], {e.layer_name for e in entries})
    plan = _schedule(session, schedule, begin_step, end_step, frequency, initial_sparsity)
    finals = allocate(entries, sparsity, allocation, targets)
    structures = [_structure(e, m_by_n, block) for e in entries]
    for entry, final, structure in zip(entries, finals, structures):
        mask = session.slot(entry.variable, ops.ones(entry.shape), "mask")
        session.constrain(entry.variable, _pruning_constraint(session, mask, structure, plan, final))
    session.fit()
    for entry, final, structure in zip(entries, finals, structures):
        _complete(entry.variable, structure, final)
    return session.model


def _complete(variable, structure, final):
    """Apply the final mask when the fit stopped before the schedule reached it."""
    value = np.asarray(ops.convert_to_numpy(variable))
    if isinstance(structure, Unstructured) and np.count_nonzero(value == 0) >= round(final * value.size):
        return
    weight = ops.convert_to_tensor(variable)
    variable.assign(weight * structure.mask(weight, final))


def sparsity_of(variables) -> float:
    """Fraction of exact zeros over variables (or entries), counted from their values.

    Args:
        variables: ``keras.Variable`` objects, arrays, or :class:`WeightEntry` rows.

    Returns:
        Zeros divided by the number of weights (0.0 for no weights).
    """
    zeros = total = 0
    for v in variables:
        value = np.asarray(ops.convert_to_numpy(getattr(v, "variable", v)))
        zeros += int(np.count_nonzero(value == 0))
        total += value.size
    return zeros / total if total else 0.0
