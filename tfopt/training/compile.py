"""Compiling a run's model: the recipe's loss, metrics and optimizer (:func:`compile_model`), and
``train.compile: auto``, a short timed probe that picks the precision, XLA and steps per execution.

None of them can be switched on blindly on a CPU: XLA made one MNIST CNN 0.70× as slow per
epoch and a Conv-BN-ReLU net 2.5× slower; bfloat16 math (``mixed_bfloat16``: float32 weights,
bfloat16 compute) runs at 0.6–0.75× on CPUs with AMX or AVX-512 BF16, and far slower on CPUs
without them; ``steps_per_execution`` pays when the step is short and Python's per-step cost is
a large share. So the probe times the real model on the real data pipeline, on throw-away
copies (the run's own model, optimizer and data iterators are not touched), and keeps the
fastest. It is greedy, so it stays short: float32 against mixed_bfloat16 (XLA off, the most
steps per call), then XLA on for the faster of the two. Steps per execution are not probed:
many steps per call is never measurably slower, unless a callback works per batch, which then
keeps one.

A probe's choice is kept in a small cache (``compile-probe.json`` in the user's cache folder,
or in ``TFOPT_CACHE_DIR``), keyed by the model's configuration, the batch and image shapes, the
compile settings asked for, TensorFlow's version and the CPU: the next run of the same model on
the same machine starts training at once. ``TFOPT_CACHE_DIR=off`` turns the cache off.

Imports no TensorFlow at module level: the fine-tune loop imports this module, and the step
modules import that while the command line builds its help.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from tfopt.models.outputs import emits_logits
from tfopt.rundir import atomic_write_json

# Below this many optimizer steps in the whole run a probe costs more than it can save.
MIN_STEPS_TO_PROBE = 400
# Candidates within this fraction of the fastest count as equal; the simpler one wins.
TIE = 0.03
SPE = 32
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass
class CompileChoice:
    jit: bool
    steps_per_execution: int
    source: str  # "recipe", "auto (probe)" or "auto: ..." (why no probe ran)
    probe: dict = field(default_factory=dict)  # "float32,jit=..,spe=..": seconds per step
    probe_seconds: float = 0.0
    precision: str = "float32"

    def as_dict(self) -> dict:
        return {"jit": self.jit, "steps_per_execution": self.steps_per_execution, "precision": self.precision,
                "source": self.source, "probe_ms_per_step": {k: round(v * 1000, 3) for k, v in self.probe.items()},
                "probe_seconds": round(self.probe_seconds, 3)}

    def describe(self) -> str:
        text = (f"compile: jit={'on' if self.jit else 'off'}, steps_per_execution={self.steps_per_execution}, "
                f"precision={self.precision} ({self.source})")
        if self.probe:
            text += "; ms/step " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in self.probe.items())
        return text


def compile_model(model, train_cfg, learning_rate=None, *, optimizer=None, jit=False, steps_per_execution=1):
    """Compile ``model`` in place with the recipe's loss, metrics and optimizer.

    Args:
        model: a tf_keras model.
        train_cfg: the recipe's ``train`` section.
        learning_rate: a float or a ``LearningRateSchedule`` for a new optimizer.
        optimizer: an existing optimizer instead (a resumed run's, with its state).
        jit: compile the train step with XLA.
        steps_per_execution: optimizer steps per compiled call.

    Returns:
        ``model``, compiled.
    """
    model.compile(
        optimizer=optimizer if optimizer is not None else train_cfg.optimizer.build(learning_rate),
        loss=train_cfg.loss.build(emits_logits(model)),
        metrics=[m.build(train_cfg.loss.one_hot) for m in train_cfg.metrics],
        jit_compile=bool(jit),
        steps_per_execution=int(steps_per_execution),
    )
    return model


def uses_batch_hooks(callbacks) -> bool:
    """Whether any callback does work per batch (then steps_per_execution would skip its calls)."""
    from tf_keras.callbacks import Callback

    for cb in callbacks:
        for name in ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end"):
            if getattr(type(cb), name, None) is not getattr(Callback, name):
                return True
    return False


def label(precision, jit, spe) -> str:
    return f"{precision},jit={'on' if jit else 'off'},spe={spe}"


def with_precision(model, precision: str):
    """``model`` computing in ``precision`` (a new model with the same weights, or ``model`` itself
    when nothing changes). The output layer stays float32, as Keras advises for mixed precision."""
    import tf_keras as keras

    if all(layer.dtype_policy.name == precision for layer in model.layers[1:-1]):
        return model
    last = model.layers[-1].name

    def clone(layer):
        cfg = layer.get_config()
        cfg["dtype"] = "float32" if layer.name == last else precision
        return layer.__class__.from_config(cfg)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


#: A candidate already this many times slower per step than the fastest so far stops being timed.
GIVE_UP = 1.5


def _time_candidate(make_model, dataset, precision, jit, spe, steps, fastest=float("inf")):
    """Seconds per training step: one warm-up call (tracing, XLA), then ``steps`` timed steps, twice.

    A candidate whose first timed call is already :data:`GIVE_UP` times slower than ``fastest``
    (seconds per step of the best candidate so far) is not timed further: on some CPUs bfloat16
    depthwise convolutions run ten times slower, and timing them in full would cost minutes.
    """
    model = make_model(jit, spe, precision)
    fn = model.make_train_function(force=True)
    it = iter(dataset.repeat())
    logs = fn(it)
    float(logs["loss"])
    best = float("inf")
    calls = max(steps // spe, 1)
    for _ in range(2):
        t0 = time.perf_counter()
        for done in range(1, calls + 1):
            logs = fn(it)
            float(logs["loss"])  # wait for the call
            per_step = (time.perf_counter() - t0) / (done * spe)
            if per_step > fastest * GIVE_UP:
                return per_step
        best = min(best, per_step)
    return best


def _fixed(value, auto):
    return auto if value == "auto" else value


CACHE_ENV = "TFOPT_CACHE_DIR"


def _cache_file() -> Path | None:
    where = os.environ.get(CACHE_ENV)
    if where == "off":
        return None
    if not where:
        from platformdirs import user_cache_dir

        where = user_cache_dir("tfopt", appauthor=False)
    return Path(where) / "compile-probe.json"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_key(model_config: dict, *, batch_size: int, input_shape, cfg) -> str:
    """What a probe's result depends on, hashed: the model, the batch, the settings asked for,
    TensorFlow's version and the machine (CPU model, cores)."""
    import tensorflow as tf

    text = json.dumps({"model": model_config, "batch_size": int(batch_size), "input_shape": list(input_shape),
                       "compile": cfg.model_dump(mode="json"), "tensorflow": tf.__version__, "cpu": _cpu(),
                       "cores": os.cpu_count()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(key: str | None) -> CompileChoice | None:
    """A previous probe's choice for ``key``, or None."""
    path = _cache_file()
    if key is None or path is None or not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text()).get(key)
        if entry is None:
            return None
        return CompileChoice(bool(entry["jit"]), int(entry["steps_per_execution"]),
                             f"auto (probe of {entry['when']}, cached)", dict(entry["probe"]), 0.0, entry["precision"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # an unreadable cache is a cache miss


def remember(key: str | None, choice: CompileChoice) -> None:
    """Store a probe's choice under ``key`` (atomically, under a file lock); failures are ignored."""
    path = _cache_file()
    if key is None or path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            try:
                entries = json.loads(path.read_text()) if path.is_file() else {}
            except ValueError:
                entries = {}
            entries[key] = {"jit": choice.jit, "steps_per_execution": choice.steps_per_execution,
                            "precision": choice.precision, "probe": choice.probe,
                            "when": time.strftime("%Y-%m-%d %H:%M")}
            atomic_write_json(path, entries)
    except (OSError, Timeout):
        pass


def resolve(cfg, *, make_model, dataset, steps_per_epoch: int, total_steps: int, batch_hooks: bool,
            cache_key: str | None = None) -> CompileChoice:
    """The compile settings for a run.

    Args:
        cfg: ``train.compile`` (:class:`tfopt.config.train.Compile`).
        make_model: ``make_model(jit, steps_per_execution, precision)`` returns a fresh compiled
            copy of the run's model for the probe.
        dataset: a training pipeline the probe may consume (not the run's own).
        steps_per_epoch, total_steps: the run's optimizer steps.
        batch_hooks: a callback works per batch; ``auto`` then keeps one step per execution.
        cache_key: :func:`probe_key` of the run; a cached choice is used instead of probing,
            and a new probe's choice is cached.
    """
    spe_max = max(1, min(SPE, steps_per_epoch))
    spe = int(cfg.steps_per_execution) if cfg.steps_per_execution != "auto" else (1 if batch_hooks else spe_max)
    auto_spe_why = "a callback works per batch, so one step per execution" if cfg.steps_per_execution == "auto" \
        and batch_hooks else None
    precisions = list(PRECISIONS) if cfg.precision == "auto" else [cfg.precision]
    jits = [False, True] if cfg.jit == "auto" else [bool(cfg.jit)]
    if len(precisions) == 1 and len(jits) == 1:
        auto = "auto" in (cfg.jit, cfg.steps_per_execution, cfg.precision)
        return CompileChoice(jits[0], spe, f"auto: {auto_spe_why}" if auto_spe_why else "auto" if auto else "recipe",
                             precision=precisions[0])
    if total_steps < MIN_STEPS_TO_PROBE:
        return CompileChoice(_fixed(cfg.jit, False), spe, f"auto: run of {total_steps} steps too short to probe",
                             precision=_fixed(cfg.precision, "float32"))
    hit = cached(f"{cache_key}-spe{spe}" if cache_key else None)
    if hit is not None:
        return hit
    started = time.perf_counter()
    probe = {}
    steps = 2 * spe
    jit0 = jits[0]
    for precision in precisions:
        probe[label(precision, jit0, spe)] = _time_candidate(make_model, dataset, precision, jit0, spe, steps,
                                                             min(probe.values(), default=float("inf")))
    # within TIE of the fastest, the simpler choice: float32 before bfloat16, XLA off before on
    fastest = min(probe.values())
    precision = next(p for p in precisions if probe[label(p, jit0, spe)] <= fastest * (1 + TIE))
    for jit in jits[1:]:
        probe[label(precision, jit, spe)] = _time_candidate(make_model, dataset, precision, jit, spe, steps,
                                                            min(probe.values()))
    jit = next(j for j in jits if probe[label(precision, j, spe)] <= min(probe.values()) * (1 + TIE))
    source = "auto (probe)" + (f"; {auto_spe_why}" if auto_spe_why else "")
    choice = CompileChoice(jit, spe, source, probe, time.perf_counter() - started, precision)
    remember(f"{cache_key}-spe{spe}" if cache_key else None, choice)
    return choice


def unprobed(cfg, why: str) -> CompileChoice:
    """The recipe's settings where no probe runs; ``auto`` means off (float32, no XLA, one step per call)."""
    jit = _fixed(cfg.jit, False)
    spe = 1 if cfg.steps_per_execution == "auto" else int(cfg.steps_per_execution)
    auto = "auto" in (cfg.jit, cfg.steps_per_execution, cfg.precision)
    return CompileChoice(bool(jit), spe, f"auto: {why}" if auto else "recipe",
                         precision=_fixed(cfg.precision, "float32"))
