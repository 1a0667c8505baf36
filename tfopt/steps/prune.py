"""Magnitude pruning (TFMOT prune_low_magnitude) with a schedule preflight, then strip.

TFMOT prunes only at steps ``begin_step + k·frequency`` up to ``end_step``; with its default
frequency of 100 a short fine-tune can end before the schedule gets anywhere and nothing
is pruned, silently (tensorflow/model-optimization#975). :func:`preflight` works out the
sparsity the schedule actually reaches within the fine-tune budget and :func:`prune`
refuses, unless forced, when that falls short of the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tfopt import layer_kinds
from tfopt.config import steps as C
from tfopt.config.validation import did_you_mean
from tfopt.data.coerce import count_steps, sample_x
from tfopt.errors import TfoptError
from tfopt.interop import import_tfmot, plain_copy
from tfopt.steps.runs import base_metrics, splits_of, with_step, write_run
from tfopt.steps.settings import fine_tune_from_recipe, step_settings
from tfopt.training import finetune
from tfopt.training.finetune import DEFAULT_BATCH_SIZE, RECALIBRATION_BATCHES, recalibrate_batchnorm


class PreflightError(TfoptError):
    """The pruning schedule cannot reach its target within the fine-tune budget."""


@dataclass
class Plan:
    begin: int
    end: int
    frequency: int
    total_steps: int
    last_update: int | None
    reached: float
    target: float
    schedule: str

    @property
    def ok(self) -> bool:
        return self.reached >= self.target - 1e-6

    def describe(self) -> str:
        return (f"{self.schedule} schedule over {self.total_steps} fine-tune steps: begin_step {self.begin}, "
                f"end_step {self.end}, frequency {self.frequency}; last pruning update at step "
                f"{self.last_update if self.last_update is not None else 'none'}, reaching "
                f"{self.reached:.1%} of a {self.target:.1%} target")


#: Where the last pruning update falls by default, as a fraction of the fine-tune steps: early
#: enough that the network recovers from the final cut before the fine-tune ends.
DEFAULT_END = 1 / 2


def polynomial_sparsity(step, initial, final, begin, end, power=3):
    """TFMOT PolynomialDecay's sparsity at ``step``."""
    p = min(1.0, max(0.0, (step - begin) / max(end - begin, 1)))
    return (initial - final) * (1 - p) ** power + final


def plan_schedule(cfg, target: float, total_steps: int) -> Plan:
    """Resolve default begin/end/frequency and compute what the schedule really reaches."""
    begin = cfg.begin_step
    end = cfg.end_step
    frequency = cfg.frequency
    if end is None:
        end = max(begin + 1, int(round(total_steps * DEFAULT_END)))
        if frequency is None:
            frequency = max(1, min(100, (end - begin) // 10))
        end = begin + max(1, (end - begin) // frequency) * frequency
    if frequency is None:
        frequency = max(1, min(100, (end - begin) // 10))
    stop = min(end, total_steps - 1) if cfg.schedule == "polynomial" else total_steps - 1
    last = None if stop < begin else begin + ((stop - begin) // frequency) * frequency
    if last is None:
        reached = 0.0
    elif cfg.schedule == "polynomial":
        reached = polynomial_sparsity(last, cfg.initial_sparsity, target, begin, end)
    else:
        reached = target
    return Plan(begin, end, frequency, total_steps, last, reached, target, cfg.schedule)


def preflight(cfg, steps_per_epoch: int, epochs: int, targets=None) -> Plan:
    """The plan for the lowest-reaching target among the global and per-layer sparsities over
    ``epochs`` of ``steps_per_epoch`` (``targets``: the per-layer ones actually used, see
    :func:`layer_targets`)."""
    total = steps_per_epoch * epochs
    targets = [s for s in (targets.values() if targets is not None else [cfg.sparsity, *cfg.per_layer.values()])
               if s > 0] or [cfg.sparsity]
    plans = [plan_schedule(cfg, t, total) for t in targets]
    return min(plans, key=lambda p: p.reached / p.target)


def preflight_message(plan: Plan, epochs: int, steps_per_epoch: int) -> str:
    return (
        f"pruning preflight: the schedule reaches only {plan.reached:.1%} sparsity, not the {plan.target:.1%} "
        f"target, within the fine-tune budget of {epochs} epoch(s) × {steps_per_epoch} steps = {plan.total_steps} "
        f"steps ({plan.describe()}). TFMOT prunes only every `frequency` steps between begin_step and end_step. "
        f"Lower end_step below {plan.total_steps} and frequency so that it divides end_step − begin_step, give more "
        f"epochs, or pass --force to go on anyway."
    )


def prunable(layer) -> bool:
    """Whether ``layer`` has weights that magnitude pruning works on (:mod:`tfopt.layer_kinds`)."""
    return layer_kinds.is_prunable(layer)


def kernels(layer):
    """The variables of ``layer`` that pruning and clustering work on."""
    return layer_kinds.prunable_weights(layer)


def layer_sparsity(model) -> dict:
    """Fraction of exact zeros in each prunable layer's kernels, counted from the weights."""
    out = {}
    for layer in model.layers:
        if prunable(layer):
            ws = [w.numpy() for w in kernels(layer)]
            n = sum(w.size for w in ws)
            out[layer.name] = {"sparsity": sum(int(np.count_nonzero(w == 0)) for w in ws) / n, "weights": n}
    return out


def overall_sparsity(per_layer: dict) -> float:
    total = sum(v["weights"] for v in per_layer.values())
    return sum(v["sparsity"] * v["weights"] for v in per_layer.values()) / max(total, 1)


def check_layer_names(model, names, option) -> None:
    known = [layer.name for layer in model.layers if prunable(layer)]
    for name in names:
        if name not in known:
            raise TfoptError(f"{option}: '{name}' is not a prunable layer of this model{did_you_mean(name, known)}; "
                             f"prunable layers: {', '.join(known)}")


def erk_sparsities(sizes: dict, target: float, kernel: bool = True) -> dict:
    """Per-layer sparsities whose weighted mean is ``target``, Erdős–Rényi(-Kernel) style.

    With ``kernel`` (ERK, Evci et al., "Rigging the Lottery", 2020) each layer's density (the
    fraction of weights kept) is proportional to ``sum(kernel dims) / prod(kernel dims)``, so a
    3×3×1×12 first conv keeps several times the share of a 2028×10 dense layer. Without it (ER,
    Mocanu et al., 2018) only the input and output channels count, ``(c_in + c_out) / (c_in · c_out)``:
    a 3×3 conv is then treated like a dense layer of its channels and keeps a larger share than
    under ERK, and a large dense head is pruned harder. A layer whose density would pass 1 stays
    dense and the others make up for it.

    Args:
        sizes: ``{layer name: [kernel shapes]}``.
        target: the overall sparsity over these layers.
        kernel: ERK (count the spatial kernel dims) or ER (channels only).

    Example:
        >>> s = erk_sparsities({"conv": [(3, 3, 1, 12)], "dense": [(2028, 10)]}, 0.8)
        >>> round(s["conv"], 3), round(s["dense"], 4)
        (0.651, 0.8008)
        >>> s = erk_sparsities({"conv": [(3, 3, 64, 128)], "dense": [(1152, 256)]}, 0.9, kernel=False)
        >>> round(s["conv"], 3), round(s["dense"], 3)
        (0.724, 0.944)
    """
    def score(shape):
        dims = tuple(shape) if kernel else tuple(shape)[-2:]
        return sum(dims) / max(int(np.prod(dims)), 1)

    n = {k: sum(int(np.prod(s)) for s in shapes) for k, shapes in sizes.items()}
    raw = {k: sum(score(s) * int(np.prod(s)) for s in shapes) / max(n[k], 1) for k, shapes in sizes.items()}
    keep = (1 - target) * sum(n.values())
    dense: set = set()
    while True:
        rest = [k for k in n if k not in dense]
        if not rest:
            return {k: 0.0 for k in n}
        eps = (keep - sum(n[k] for k in dense)) / sum(raw[k] * n[k] for k in rest)
        over = [k for k in rest if eps * raw[k] > 1]
        if not over:
            return {k: 0.0 if k in dense else float(1 - eps * raw[k]) for k in n}
        dense.add(max(over, key=lambda k: raw[k]))


def layer_targets(model, cfg) -> dict:
    """The sparsity each prunable layer is pruned to: its own target from ``cfg.per_layer``, 0 for
    ``cfg.skip``, and ``cfg.sparsity`` spread over the others by ``cfg.allocation``."""
    own = {layer.name: 0.0 if layer.name in cfg.skip else cfg.per_layer[layer.name]
           for layer in model.layers if prunable(layer) and (layer.name in cfg.skip or layer.name in cfg.per_layer)}
    rest = {layer.name: [tuple(w.shape) for w in kernels(layer)] for layer in model.layers
            if prunable(layer) and layer.name not in own}
    if cfg.allocation in ("erk", "er") and cfg.m_by_n is None:
        spread = erk_sparsities(rest, cfg.sparsity, kernel=cfg.allocation == "erk")
    else:
        spread = {k: cfg.sparsity for k in rest}
    return {**own, **spread}


def _input_axis(layer, variable) -> int | None:
    """The axis of a kernel that indexes the layer's input channels (None: the kernel reads an
    intermediate result, as a separable conv's pointwise kernel does)."""
    if kernel_name(variable) == "pointwise_kernel" or getattr(layer, "groups", 1) != 1:
        return None
    return -1 if "Transpose" in type(layer).__name__ else -2


def input_scales(model, x, layers=None, batch_size: int = 256) -> dict:
    """For the activation criterion: ``{layer name: {kernel name: scale or None}}``, each scale the
    root-mean-square of the layer's input per input channel over the images ``x`` (per input
    feature of a dense layer, per channel of a convolution), shaped to broadcast against its
    kernel and divided by its mean. A weight's rank is then ``|w| · scale``: the criterion of
    Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
    2023), here inside TFMOT's gradual schedule. A weight on an input that is zero in every
    image scores zero. Layers whose input cannot be read (a layer shared between several calls)
    get None and keep the magnitude ranking.
    """
    import tensorflow as tf
    import tf_keras as keras

    if not getattr(model, "inputs", None):
        raise TfoptError("prune: the activation criterion reads each layer's input, so the model needs a defined "
                         "input (a keras.Input, or input_shape on its first layer)")
    wanted = [layer for layer in model.layers if prunable(layer) and (layers is None or layer.name in layers)]
    readable = []
    for layer in wanted:
        try:
            if not isinstance(layer.input, (list, tuple)):
                readable.append(layer)
        except (AttributeError, ValueError):  # several inbound nodes
            continue
    out = {layer.name: {kernel_name(w): None for w in kernels(layer)} for layer in wanted}
    if not readable:
        return out
    probe = keras.Model(model.inputs, [layer.input for layer in readable])
    sums = [None] * len(readable)
    count = [0] * len(readable)
    for start in range(0, len(x), batch_size):
        outs = probe(tf.convert_to_tensor(x[start:start + batch_size], tf.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, (layer, a) in enumerate(zip(readable, outs)):
            a = np.asarray(a, np.float64)
            axis = 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else a.ndim - 1
            a = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])
            sq = np.sum(a * a, axis=0)
            sums[i] = sq if sums[i] is None else sums[i] + sq
            count[i] += len(a)
    for layer, sq, n in zip(readable, sums, count):
        rms = np.sqrt(sq / max(n, 1))
        mean = float(rms.mean())
        for w in kernels(layer):
            axis = _input_axis(layer, w)
            if axis is None or mean <= 0 or w.shape[axis] != len(rms):
                continue
            shape = [1] * len(w.shape)
            shape[axis] = len(rms)
            out[layer.name][kernel_name(w)] = (rms / mean).reshape(shape).astype(np.float32)
    return out


def kernel_name(variable) -> str:
    """A kernel variable's own name (``kernel``, ``depthwise_kernel``), without its layer's."""
    return variable.name.split("/")[-1].split(":")[0]


def _rank_by_activation(wrapper, scales) -> None:
    """Make a pruning wrapper rank its kernels by ``|w| · scale`` (per-weight masks only): the
    mask of each variable is TFMOT's magnitude mask of the scaled weights."""
    import tensorflow as tf

    pairs = [(var, tf.constant(scales[kernel_name(var)])) for var, _, _ in wrapper.pruning_obj._pruning_vars
             if scales.get(kernel_name(var)) is not None]
    if not pairs:
        return
    magnitude = wrapper.pruning_obj._update_mask

    def ranked(weight):
        for var, scale in pairs:
            if weight is var:
                return magnitude(weight * scale)
        return magnitude(weight)

    wrapper.pruning_obj._maybe_update_block_mask = ranked


def _schedule(sp, cfg, plan, target):
    if cfg.schedule == "constant":
        return sp.ConstantSparsity(target, begin_step=plan.begin, end_step=plan.end, frequency=plan.frequency)
    return sp.PolynomialDecay(cfg.initial_sparsity, target, plan.begin, plan.end, frequency=plan.frequency)


def _wrap(model, cfg, plan, targets, scales=None):
    """A copy of ``model`` with TFMOT pruning wrappers on the prunable layers with a target above 0
    (ranking their kernels by ``scales``, see :func:`input_scales`, where given)."""
    import tf_keras as keras

    sp = import_tfmot().sparsity.keras

    def wrap(layer):
        # Layers of a private copy are reused as they are: their weights come along.
        if not prunable(layer) or layer.name in cfg.skip or targets.get(layer.name, 0) <= 0:
            return layer
        kwargs = {"sparsity_m_by_n": tuple(cfg.m_by_n)} if cfg.m_by_n else {
            "pruning_schedule": _schedule(sp, cfg, plan, targets[layer.name])}
        if cfg.block > 1 and all(len(w.shape) == 2 for w in kernels(layer)):
            # A dense kernel is (inputs, units); TFLite stores it as (units, inputs).
            kwargs["block_size"] = (cfg.block, 1)
        return sp.prune_low_magnitude(layer, **kwargs)

    wrapped = keras.models.clone_model(plain_copy(model), clone_function=wrap)
    for layer in wrapped.layers:
        inner = getattr(layer, "layer", None)
        if not scales or inner is None or not any(v is not None for v in scales.get(inner.name, {}).values()):
            continue
        if getattr(layer, "pruning_obj", None) is None:
            raise TfoptError(f"prune: the pruning wrapper of '{inner.name}' was not built, so the activation "
                             f"criterion cannot rank its weights; pass a built model (one with an Input)")
        _rank_by_activation(layer, scales[inner.name])
    return wrapped


def describe_scales(scales: dict) -> str:
    """One line on what the activation criterion found: inputs never active per layer."""
    parts = []
    for name, per_kernel in scales.items():
        s = next((v for v in per_kernel.values() if v is not None), None)
        if s is None:
            parts.append(f"{name} by magnitude")
        else:
            parts.append(f"{name} {int(np.sum(s == 0))} of {s.size} inputs never active")
    return "; ".join(parts)


def _plan(model, config, steps_per_epoch: int, epochs: int) -> tuple[Plan, dict]:
    """``(the schedule's plan, the per-layer targets)`` of ``config`` on ``model`` over ``epochs``
    of ``steps_per_epoch``; a layer name that is not prunable raises."""
    check_layer_names(model, config.per_layer, "per_layer")
    check_layer_names(model, config.skip, "skip")
    targets = layer_targets(model, config)
    return preflight(config, steps_per_epoch, epochs, targets=targets), targets


def _activation_scales(model, targets, images, log=None) -> dict:
    """The activation criterion's :func:`input_scales` over ``images``, for the layers with a target."""
    x = np.asarray(images, np.float32)
    scales = input_scales(model, x, [k for k, v in targets.items() if v > 0])
    if log is not None:
        log(f"activation criterion over {len(x):,} images: {describe_scales(scales)}")
    return scales


def wrap_for_pruning(model, config, *, total_steps: int, probe=None):
    """For your own training loop: a copy of ``model`` wrapped for magnitude pruning as ``config``
    (a :class:`~tfopt.config.steps.PruneConfig`) says.

    Train it with :func:`pruning_callbacks` (TFMOT's ``UpdatePruningStep``) for ``total_steps``
    steps, then :func:`strip`. The schedule is resolved as :func:`prune` does (see
    :func:`plan_schedule`); a schedule that cannot reach its target raises :class:`PreflightError`.
    The activation criterion ranks by :func:`input_scales` over the images ``probe``.
    """
    plan, targets = _plan(model, config, total_steps, 1)
    if not plan.ok and config.m_by_n is None:
        raise PreflightError(preflight_message(plan, 1, total_steps))
    scales = None
    if config.criterion == "activation":
        if probe is None:
            raise TfoptError("prune: the activation criterion needs training images (data=x)")
        scales = _activation_scales(model, targets, probe)
    return _wrap(model, config, plan, targets, scales)


def pruning_callbacks() -> list:
    """The callbacks a pruning-wrapped model needs in ``fit``: TFMOT's ``UpdatePruningStep``."""
    return [import_tfmot().sparsity.keras.UpdatePruningStep()]


def strip(model):
    """A plain tf_keras copy of a pruning- or clustering-wrapped model, wrappers removed."""
    tfmot = import_tfmot()
    model = tfmot.sparsity.keras.strip_pruning(model)
    model = tfmot.clustering.keras.strip_clustering(model)
    return plain_copy(model)


def prune(model, data, config, fine_tune, *, log=print, probe=None, bn_batches: int = RECALIBRATION_BATCHES,
          **inputs):
    """Magnitude-prune a copy of ``model`` while fine-tuning it on ``data``, then strip the wrappers.

    The learning rate stays at the fine-tune's rate until the last pruning update and then
    decays (cosine) to a tenth, so the network recovers from the final cut at a useful rate.

    Args:
        model: a tf_keras model; it is not changed.
        data: ``(x, y)`` arrays or a ``tf.data.Dataset``.
        config: a :class:`~tfopt.config.steps.PruneConfig`: the sparsity and its allocation over
            the layers, the schedule (a default ``end_step`` is half of the fine-tune steps), per-layer
            targets, layers skipped, ``m_by_n`` or ``block`` patterns, the criterion, ``force``.
        fine_tune: the :class:`~tfopt.config.fine_tune.FineTuneSettings` of the fine-tune.
        log: receives progress lines.
        probe: the images the activation criterion measures inputs on (the command passes
            un-augmented training images); default: the first ``config.probe_samples`` of ``data``.
        bn_batches: batches that re-estimate BatchNorm statistics afterwards (0: none).
        **inputs: options of :func:`tfopt.training.finetune.fine_tune` (``hold``, ``floor``,
            ``callbacks``, ``verbose``, ...); other inputs are not this step's and are ignored.

    Returns:
        ``(pruned model, report)``: the report holds the plan, the sparsity per layer counted
        from the weights, and the fine-tune history.

    Raises:
        PreflightError: the schedule cannot reach the target and ``config.force`` is off.
    """
    batch_size = fine_tune.batch_size or DEFAULT_BATCH_SIZE
    spe = count_steps(data, batch_size, model)
    plan, targets = _plan(model, config, spe, fine_tune.epochs)
    if not plan.ok and config.m_by_n is None:
        message = preflight_message(plan, fine_tune.epochs, spe)
        if not config.force:
            raise PreflightError(message)
        log("warning: " + message.replace(" or pass --force to go on anyway.", " Going on (--force)."))
    log(f"pruning plan: {plan.describe()}")
    if config.m_by_n is None:
        log("per-layer targets (" + (f"own or spread by {config.allocation}" if config.allocation in ("erk", "er")
                                    else config.allocation) + "): "
            + ", ".join(f"{k} {v:.1%}" for k, v in targets.items()))
    scales = None
    if config.criterion == "activation":
        images = np.asarray(probe, np.float32)[:config.probe_samples] if probe is not None \
            else sample_x(data, config.probe_samples)
        scales = _activation_scales(model, targets, images, log)
    work = _wrap(model, config, plan, targets, scales)
    fit = finetune.options(inputs)
    if config.m_by_n is None:
        fit.setdefault("hold", min(1.0, (plan.last_update or 0) / max(plan.total_steps, 1)))
    history, seconds = finetune.fine_tune(work, data, fine_tune, log=log,
                                          **{**fit, "callbacks": [*pruning_callbacks(), *fit.get("callbacks", ())]})
    pruned = strip(work)
    recalibrate_batchnorm(pruned, data, batches=bn_batches, batch_size=batch_size, log=log)
    per_layer = layer_sparsity(pruned)
    return pruned, {"plan": plan.__dict__, "per_layer": per_layer, "sparsity": overall_sparsity(per_layer),
                    "history": history, "fine_tune_seconds": seconds}


# ---- the command and the chain step ------------------------------------------------------------

def apply_prune(model, recipe, splits, cfg, log=print):
    """:func:`prune` with the recipe's fine-tune settings; the activation criterion measures
    un-augmented training images."""
    data, fine_tune = fine_tune_from_recipe(recipe, splits, cfg, model, log)
    probe = splits.x_train[: cfg.probe_samples] if cfg.criterion == "activation" else None
    return prune(model, data, cfg, fine_tune, log=log, probe=probe)


def run_prune(source, given: dict, output=None, overwrite=False, log=print, step=None):
    """``tfopt prune``: the recipe's ``optimize.prune`` with ``given`` on top, the sparsity per
    layer, a new ``<source>-pruned`` run. Returns ``(run path, metrics)``."""
    cfg = step_settings(source.recipe, "prune", given)
    splits = splits_of(source)
    model, report = apply_prune(source.model, source.recipe, splits, cfg, log=log)
    metrics = {**base_metrics(source, model, splits, log), "sparsity": report["sparsity"],
               "per_layer_sparsity": report["per_layer"], "preflight": report["plan"],
               "fine_tune_seconds": round(report["fine_tune_seconds"], 2)}
    for name, v in report["per_layer"].items():
        log(f"  {name:<20} sparsity {v['sparsity']:.1%} of {v['weights']:,} weights")
    log(f"overall kernel sparsity {report['sparsity']:.1%}; test accuracy "
        f"{metrics.get('test_accuracy', float('nan')):.4f}")
    path = write_run(source, "pruned", step="prune", recipe=with_step(source.recipe, "prune", cfg), metrics=metrics,
                     model=model, history=report["history"], output=output, overwrite=overwrite, log=log)
    return path, metrics
