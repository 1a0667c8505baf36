"""``train.compile: auto``: a short timed probe picks XLA and steps per execution.

Neither setting can be switched on blindly on a CPU: XLA made one MNIST CNN 0.70× as slow
per epoch and a Conv-BN-ReLU net 2.5× slower; ``steps_per_execution`` pays when the step is
short and Python's per-step cost is a large share. So the probe times the real model on the
real data pipeline for each candidate, on a throw-away copy (the run's own model, optimizer
and data iterators are not touched), and keeps the fastest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Below this many optimizer steps in the whole run a probe costs more than it can save.
MIN_STEPS_TO_PROBE = 400
# Candidates within this fraction of the fastest count as equal; the simpler one wins.
TIE = 0.03
SPE = 32


@dataclass
class CompileChoice:
    jit: bool
    steps_per_execution: int
    source: str  # "recipe", "auto (probe)" or "auto (no probe: ...)"
    probe: dict = field(default_factory=dict)  # "jit=..,spe=..": seconds per step
    probe_seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"jit": self.jit, "steps_per_execution": self.steps_per_execution, "source": self.source,
                "probe_ms_per_step": {k: round(v * 1000, 3) for k, v in self.probe.items()},
                "probe_seconds": round(self.probe_seconds, 3)}

    def describe(self) -> str:
        text = f"compile: jit={'on' if self.jit else 'off'}, steps_per_execution={self.steps_per_execution} ({self.source})"
        if self.probe:
            text += "; ms/step " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in self.probe.items())
        return text


def uses_batch_hooks(callbacks) -> bool:
    """Whether any callback does work per batch (then steps_per_execution would skip its calls)."""
    from tf_keras.callbacks import Callback

    for cb in callbacks:
        for name in ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"):
            if getattr(type(cb), name, None) is not getattr(Callback, name):
                return True
    return False


def _label(jit, spe):
    return f"jit={'on' if jit else 'off'},spe={spe}"


def _time_candidate(make_model, dataset, jit, spe, steps):
    """Seconds per training step: one warm-up call (tracing, XLA), then ``steps`` timed steps, twice."""
    model = make_model(jit, spe)
    fn = model.make_train_function(force=True)
    it = iter(dataset.repeat())
    logs = fn(it)
    float(logs["loss"])
    best = float("inf")
    calls = max(steps // spe, 1)
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(calls):
            logs = fn(it)
        float(logs["loss"])  # wait for the last call
        best = min(best, (time.perf_counter() - t0) / (calls * spe))
    return best


def resolve(cfg, *, make_model, dataset, steps_per_epoch: int, total_steps: int, batch_hooks: bool) -> CompileChoice:
    """The compile settings for a run.

    Args:
        cfg: ``train.compile`` (:class:`tfopt.training.config.Compile`).
        make_model: ``make_model(jit, steps_per_execution)`` returns a fresh compiled copy of the
            run's model for the probe.
        dataset: a training pipeline the probe may consume (not the run's own).
        steps_per_epoch, total_steps: the run's optimizer steps.
        batch_hooks: a callback works per batch; ``auto`` then keeps one step per execution.
    """
    spe_max = max(1, min(SPE, steps_per_epoch))
    jits = [False, True] if cfg.jit == "auto" else [bool(cfg.jit)]
    if cfg.steps_per_execution != "auto":
        spes = [int(cfg.steps_per_execution)]
    elif batch_hooks:
        spes = [1]
    else:
        spes = [1, spe_max] if spe_max > 1 else [1]
    if len(jits) == 1 and len(spes) == 1:
        auto_spe = cfg.steps_per_execution == "auto"
        return CompileChoice(jits[0], spes[0], "auto: a callback works per batch, so one step per execution"
                             if auto_spe and batch_hooks else "auto" if auto_spe else "recipe")
    if total_steps < MIN_STEPS_TO_PROBE:
        spe = spes[-1]
        why = f"run of {total_steps} steps too short to probe"
        return CompileChoice(False if cfg.jit == "auto" else bool(cfg.jit), spe, f"auto: {why}")
    started = time.perf_counter()
    probe = {}
    steps = 2 * spe_max
    for jit in jits:
        for spe in spes:
            probe[_label(jit, spe)] = _time_candidate(make_model, dataset, jit, spe, steps)
    fastest = min(probe.values())
    # within TIE of the fastest, prefer jit off (no XLA compile) and then more steps per call
    order = sorted(((jit, spe) for jit in jits for spe in spes), key=lambda c: (c[0], -c[1]))
    jit, spe = next(c for c in order if probe[_label(*c)] <= fastest * (1 + TIE))
    return CompileChoice(jit, spe, "auto (probe)", probe, time.perf_counter() - started)


def unprobed(cfg, why: str) -> CompileChoice:
    """The recipe's settings where no probe runs; ``auto`` means off (no XLA, one step per call)."""
    jit = False if cfg.jit == "auto" else bool(cfg.jit)
    spe = 1 if cfg.steps_per_execution == "auto" else int(cfg.steps_per_execution)
    auto = "auto" in (cfg.jit, cfg.steps_per_execution)
    return CompileChoice(jit, spe, f"auto: {why}" if auto else "recipe")
