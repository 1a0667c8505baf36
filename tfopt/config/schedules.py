"""Learning-rate schedules as plain formulas of the step (or epoch) index.

Every schedule is a pure function ``rate(t, initial, total)``: ``t`` counts steps or
epochs from 0, ``total`` is the number of steps or epochs the schedule spans. Each also has
``tf_rate``, the same formula in TensorFlow ops, which :class:`tfopt.training.lr.PolicySchedule`
runs inside the optimizer (so no per-step callback is needed and ``steps_per_execution``
can batch steps). TensorFlow is imported only when ``tf_rate`` runs; validating a recipe
imports none. :class:`tfopt.callbacks.LearningRateDecay` applies the Python values from a
callback, for users' own ``model.fit``.
Arguments given in steps (``decay_steps``, ``step_size``, ``boundaries``...) are in the
same unit as ``per`` of the policy that uses them.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from tfopt.config.registry import Config, Registry

SCHEDULES = Registry("schedule")


def _tf():
    import tensorflow as tf

    return tf


class Schedule(Config):
    def rate(self, t: float, initial: float, total: int) -> float:  # pragma: no cover
        raise NotImplementedError

    def tf_rate(self, t, initial: float, total: int):  # pragma: no cover
        """The rate as a float64 tensor, for a float64 tensor ``t``; the same formula as :meth:`rate`."""
        raise NotImplementedError


@SCHEDULES.register
class Constant(Schedule):
    """``lr``."""

    name: Literal["constant"] = "constant"

    def rate(self, t, initial, total):
        return initial

    def tf_rate(self, t, initial, total):
        return _tf().zeros_like(t) + initial


@SCHEDULES.register
class Step(Schedule):
    """``lr · gamma^floor(t / step_size)``."""

    name: Literal["step"] = "step"
    step_size: PositiveInt = 10
    gamma: PositiveFloat = 0.1

    def rate(self, t, initial, total):
        return initial * self.gamma ** math.floor(t / self.step_size)

    def tf_rate(self, t, initial, total):
        tf = _tf()
        return initial * tf.pow(tf.constant(self.gamma, tf.float64), tf.floor(t / self.step_size))


@SCHEDULES.register
class Exponential(Schedule):
    """``lr · decay_rate^(t / decay_steps)``; ``decay_steps`` defaults to the whole run."""

    name: Literal["exponential"] = "exponential"
    decay_rate: PositiveFloat = 0.1
    decay_steps: Optional[PositiveInt] = None
    staircase: bool = False

    def rate(self, t, initial, total):
        p = t / (self.decay_steps or max(total, 1))
        return initial * self.decay_rate ** (math.floor(p) if self.staircase else p)

    def tf_rate(self, t, initial, total):
        tf = _tf()
        p = t / float(self.decay_steps or max(total, 1))
        return initial * tf.pow(tf.constant(self.decay_rate, tf.float64), tf.floor(p) if self.staircase else p)


@SCHEDULES.register
class InverseTime(Schedule):
    """Time-based decay: ``lr / (1 + decay_rate · t / decay_steps)``."""

    name: Literal["inverse_time"] = "inverse_time"
    decay_rate: PositiveFloat = 1.0
    decay_steps: PositiveInt = 1
    staircase: bool = False

    def rate(self, t, initial, total):
        p = t / self.decay_steps
        return initial / (1.0 + self.decay_rate * (math.floor(p) if self.staircase else p))

    def tf_rate(self, t, initial, total):
        p = t / float(self.decay_steps)
        return initial / (1.0 + self.decay_rate * (_tf().floor(p) if self.staircase else p))


@SCHEDULES.register
class InverseSqrt(Schedule):
    """``lr / sqrt(1 + k · t)``."""

    name: Literal["inverse_sqrt"] = "inverse_sqrt"
    k: PositiveFloat = 0.01

    def rate(self, t, initial, total):
        return initial / math.sqrt(1.0 + self.k * t)

    def tf_rate(self, t, initial, total):
        return initial / _tf().sqrt(1.0 + self.k * t)


@SCHEDULES.register
class Polynomial(Schedule):
    """``(lr − end_lr) · (1 − t/T)^power + end_lr`` with ``T = decay_steps`` (default: the run)."""

    name: Literal["polynomial"] = "polynomial"
    end_lr: float = Field(0.0, ge=0)
    power: PositiveFloat = 1.0
    decay_steps: Optional[PositiveInt] = None

    def rate(self, t, initial, total):
        horizon = self.decay_steps or max(total, 1)
        frac = 1.0 - min(t, horizon) / horizon
        return (initial - self.end_lr) * frac**self.power + self.end_lr

    def tf_rate(self, t, initial, total):
        tf = _tf()
        horizon = float(self.decay_steps or max(total, 1))
        frac = 1.0 - tf.minimum(t, horizon) / horizon
        return (initial - self.end_lr) * tf.pow(frac, self.power) + self.end_lr


@SCHEDULES.register
class Cosine(Schedule):
    """``lr · ((1 − alpha) · ½(1 + cos(π · t/T)) + alpha)``, flat at ``lr · alpha`` after ``T``."""

    name: Literal["cosine"] = "cosine"
    alpha: float = Field(0.0, ge=0, le=1)
    decay_steps: Optional[PositiveInt] = None

    def rate(self, t, initial, total):
        horizon = self.decay_steps or max(total, 1)
        cos = 0.5 * (1.0 + math.cos(math.pi * min(t, horizon) / horizon))
        return initial * ((1.0 - self.alpha) * cos + self.alpha)

    def tf_rate(self, t, initial, total):
        tf = _tf()
        horizon = float(self.decay_steps or max(total, 1))
        cos = 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(t, horizon) / horizon))
        return initial * ((1.0 - self.alpha) * cos + self.alpha)


@SCHEDULES.register
class CosineRestarts(Schedule):
    """SGDR: cosine periods of ``first_decay_steps · t_mul^i``, peaks scaled by ``m_mul^i``.

    ``first_decay_steps`` defaults to a quarter of the run.
    """

    name: Literal["cosine_restarts"] = "cosine_restarts"
    first_decay_steps: Optional[PositiveInt] = None
    t_mul: float = Field(2.0, ge=1.0)
    m_mul: float = Field(1.0, gt=0, le=1.0)
    alpha: float = Field(0.0, ge=0, le=1)

    def rate(self, t, initial, total):
        period = float(self.first_decay_steps or max(total // 4, 1))
        peak = 1.0
        while t >= period:
            t -= period
            period *= self.t_mul
            peak *= self.m_mul
        cos = 0.5 * (1.0 + math.cos(math.pi * t / period))
        return initial * peak * ((1.0 - self.alpha) * cos + self.alpha)

    def tf_rate(self, t, initial, total):
        tf = _tf()
        period = tf.constant(float(self.first_decay_steps or max(total // 4, 1)), tf.float64)
        if self.t_mul == 1.0:
            # equal periods: a division, not a loop as long as the run
            cycles = tf.floor(t / period)
            t, peak = t - cycles * period, tf.pow(tf.constant(self.m_mul, tf.float64), cycles)
        else:
            # the same walk as rate(): exact at period ends, where a closed form by logarithms
            # can land one period short in floating point; periods grow, so it is a few turns
            t, period, peak = tf.while_loop(
                lambda t, p, m: t >= p, lambda t, p, m: (t - p, p * self.t_mul, m * self.m_mul),
                (t, period, tf.ones_like(t)))
        cos = 0.5 * (1.0 + tf.cos(math.pi * t / period))
        return initial * peak * ((1.0 - self.alpha) * cos + self.alpha)


@SCHEDULES.register
class Piecewise(Schedule):
    """``values[i]`` while ``boundaries[i-1] < t ≤ boundaries[i]`` (absolute rates; ``lr`` unused)."""

    name: Literal["piecewise"] = "piecewise"
    boundaries: list[int]
    values: list[PositiveFloat]

    @model_validator(mode="after")
    def _lengths(self):
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(
                f"needs one more value than boundaries; got {len(self.boundaries)} "
                f"boundaries and {len(self.values)} values"
            )
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"boundaries must increase strictly; got {self.boundaries}")
        return self

    def rate(self, t, initial, total):
        for boundary, value in zip(self.boundaries, self.values):
            if t <= boundary:
                return value
        return self.values[-1]

    def tf_rate(self, t, initial, total):
        tf = _tf()
        value = tf.zeros_like(t) + self.values[-1]
        for boundary, v in reversed(list(zip(self.boundaries, self.values))):
            value = tf.where(t <= boundary, tf.constant(v, tf.float64), value)
        return value


class Plateau(Config):
    """Reduce-on-plateau: multiply the rate by ``factor`` after ``patience`` epochs without gain."""

    monitor: str = "val_loss"
    factor: float = Field(0.5, gt=0, lt=1)
    patience: PositiveInt = 3
    min_delta: float = Field(1e-4, ge=0)
    cooldown: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"


class PlateauTracker:
    """Reduce-on-plateau bookkeeping, one value per epoch: :meth:`update` says when the rate is
    to be cut by ``plateau.factor``. Its state (``wait``, ``cooldown``, ``best``) is what a
    checkpoint keeps, so a resumed run continues the same count."""

    def __init__(self, plateau: Plateau | None):
        self.plateau = plateau
        self.wait = 0
        self.cooldown = 0
        self.best = None

    def update(self, value) -> bool:
        p = self.plateau
        if p is None or value is None or not math.isfinite(value):
            return False
        mode = p.mode if p.mode != "auto" else ("max" if "acc" in p.monitor else "min")
        better = (self.best is None or (value < self.best - p.min_delta if mode == "min"
                                        else value > self.best + p.min_delta))
        if self.cooldown > 0:
            self.cooldown -= 1
            self.wait = 0
        if better:
            self.best = value
            self.wait = 0
        elif self.cooldown == 0:
            self.wait += 1
            if self.wait >= p.patience:
                self.wait = 0
                self.cooldown = p.cooldown
                return True
        return False

    def message(self, epoch: int, factor: float) -> str:
        return (f"\nEpoch {epoch + 1}: {self.plateau.monitor} has not improved for {self.plateau.patience} epochs; "
                f"learning-rate factor now {factor:g}")

    def get_state(self, factor: float) -> dict:
        return {"factor": factor, "wait": self.wait, "cooldown": self.cooldown, "best": self.best}

    def set_state(self, state: dict) -> float:
        """Restore the counts; returns the saved factor."""
        self.wait = state.get("wait", 0)
        self.cooldown = state.get("cooldown", 0)
        self.best = state.get("best")
        return float(state.get("factor", 1.0))


class LRPolicy(Config):
    """The whole learning-rate policy of a run: warm-up, a schedule, and reduce-on-plateau.

    Example:
        >>> p = LRPolicy(initial=0.1, schedule="cosine", warmup=10, per="step")
        >>> round(p.rate(5, total=110), 4), round(p.rate(10, total=110), 4)
        (0.05, 0.1)
    """

    initial: PositiveFloat = 1e-3
    schedule: SCHEDULES.union() = Field(default_factory=Constant)
    per: Literal["step", "epoch"] = "step"
    warmup: int = Field(0, ge=0, description="linear warm-up length, in units of `per`")
    warmup_start: float = Field(0.0, ge=0, le=1, description="warm-up start, as a fraction of `initial`")
    plateau: Optional[Plateau] = None

    def rate(self, t: float, total: int) -> float:
        """The scheduled rate at step (or epoch) ``t`` of ``total``, before any plateau factor."""
        if t < self.warmup:
            return self.initial * (self.warmup_start + (1.0 - self.warmup_start) * t / self.warmup)
        return float(self.schedule.rate(t - self.warmup, self.initial, max(total - self.warmup, 1)))

    def tf_rate(self, t, total: int):
        """:meth:`rate` in TensorFlow ops, for a float64 tensor ``t``."""
        tf = _tf()
        after = self.schedule.tf_rate(tf.maximum(t - self.warmup, 0.0), self.initial, max(total - self.warmup, 1))
        if not self.warmup:
            return after
        ramp = self.initial * (self.warmup_start + (1.0 - self.warmup_start) * t / self.warmup)
        return tf.where(t < self.warmup, ramp, after)
