"""The learning-rate policy inside the optimizer: a tf_keras ``LearningRateSchedule``.

The optimizer evaluates the schedule at its own step counter on every step, so no per-step
callback runs and ``steps_per_execution`` can put many steps in one compiled call. Plateau
reduction stays per epoch: :class:`PlateauFactor` multiplies a factor variable that the
schedule reads.
"""

from __future__ import annotations


import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfopt.config.schedules import LRPolicy, Plateau, PlateauTracker


@keras.saving.register_keras_serializable(package="tfopt")
class PolicySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``policy.rate(t, total) · factor``, floored at the plateau's ``min_lr``.

    Args:
        policy: an :class:`~tfopt.config.schedules.LRPolicy` (or its dict).
        steps_per_epoch: optimizer steps in one epoch; a ``per: epoch`` policy advances once
            every ``steps_per_epoch`` steps.
        epochs: the epochs the schedule spans.
        factor: the plateau factor to start from (a resumed run's).

    Example:
        >>> s = PolicySchedule(LRPolicy(initial=0.1, schedule="cosine"), steps_per_epoch=10, epochs=2)
        >>> round(float(s(10)), 4)
        0.05
    """

    def __init__(self, policy, steps_per_epoch: int, epochs: int, factor: float = 1.0):
        super().__init__()
        self.policy = policy if isinstance(policy, LRPolicy) else LRPolicy.model_validate(policy)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.epochs = int(epochs)
        self.factor = tf.Variable(float(factor), trainable=False, dtype=tf.float64, name="lr_factor")

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch if self.policy.per == "step" else self.epochs

    def index(self, step):
        """The schedule's ``t`` for optimizer step ``step`` (steps, or whole epochs)."""
        t = tf.cast(step, tf.float64)
        return t if self.policy.per == "step" else tf.floor(t / self.steps_per_epoch)

    def __call__(self, step):
        value = self.policy.tf_rate(self.index(step), self.total) * self.factor
        plateau = self.policy.plateau
        if plateau is not None and plateau.min_lr:
            value = tf.maximum(value, plateau.min_lr)
        return tf.cast(value, tf.float32)

    def get_config(self):
        return {"policy": self.policy.model_dump(mode="json"), "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "factor": float(self.factor.numpy())}


def current_rate(optimizer) -> float:
    """The rate the optimizer applied at its last step (its first step's rate before any)."""
    lr = optimizer.learning_rate if not hasattr(optimizer, "_learning_rate") else optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(lr(tf.maximum(optimizer.iterations - 1, 0)))
    return float(tf.convert_to_tensor(lr))


class PlateauFactor(keras.callbacks.Callback):
    """Per epoch: write the rate to ``logs["lr"]`` and, with a plateau policy, cut the
    schedule's factor after ``patience`` epochs without gain.

    Its state (``get_state``/``set_state``) goes into ``checkpoints/state.json`` so that
    ``--resume`` continues with the same factor, patience count and best value.
    """

    def __init__(self, schedule: PolicySchedule, verbose: int = 0):
        super().__init__()
        self.schedule = schedule
        self.plateau: Plateau | None = schedule.policy.plateau
        self.verbose = verbose
        self._tracker = PlateauTracker(self.plateau)

    @property
    def factor(self) -> float:
        return float(self.schedule.factor.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = current_rate(self.model.optimizer)
        if self.plateau is not None:
            self._step((logs or {}).get(self.plateau.monitor), epoch)

    def _step(self, value, epoch):
        if self._tracker.update(value):
            self.schedule.factor.assign(self.factor * self.plateau.factor)
            if self.verbose:
                print(self._tracker.message(epoch, self.factor))

    def get_state(self) -> dict:
        """The same keys as :meth:`tfopt.callbacks.LearningRateDecay.get_state`."""
        return self._tracker.get_state(self.factor)

    def set_state(self, state: dict) -> None:
        self.schedule.factor.assign(self._tracker.set_state(state))


@keras.saving.register_keras_serializable(package="tfopt")
class HoldThenCosine(keras.optimizers.schedules.LearningRateSchedule):
    """The fine-tunes' rate: ``lr`` for the first ``hold`` of ``total_steps``, then a cosine decay
    to ``floor · lr`` at the last step. The optimizer evaluates it at its own step counter; called
    with a step number it gives the same rate to :class:`RatePerStep`.

    Example:
        >>> s = HoldThenCosine(0.01, total_steps=100, hold=0.5, floor=0.1)
        >>> round(float(s(10)), 4), round(float(s(75)), 5), round(float(s(100)), 4)
        (0.01, 0.0055, 0.001)
    """

    def __init__(self, lr: float, total_steps: int, hold: float = 0.5, floor: float = 0.1):
        super().__init__()
        self.lr, self.total_steps, self.hold, self.floor = float(lr), int(total_steps), float(hold), float(floor)

    def __call__(self, step):
        start = float(round(self.total_steps * self.hold))
        t = tf.cast(step, tf.float64)
        p = tf.clip_by_value((t - start) / max(self.total_steps - start, 1.0), 0.0, 1.0)
        decayed = self.lr * (self.floor + (1 - self.floor) * 0.5 * (1 + tf.cos(np.pi * p)))
        held = tf.logical_or(t < start, self.total_steps <= start)
        return tf.cast(tf.where(held, tf.constant(self.lr, tf.float64), decayed), tf.float32)

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "hold": self.hold, "floor": self.floor}


class RateInLogs(keras.callbacks.Callback):
    """Per epoch: the optimizer's last rate as ``logs["lr"]`` (the history's ``lr`` column)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = current_rate(self.model.optimizer)


class RatePerStep(keras.callbacks.Callback):
    """Before every training step: the optimizer's rate from ``schedule(step)``, any callable from
    step to rate (a :class:`HoldThenCosine` too), for schedules that cannot run inside the
    optimizer; per epoch: the last rate as ``logs["lr"]``. The optimizer needs a float rate."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        optimizer.learning_rate.assign(float(self.schedule(int(optimizer.iterations.numpy()))))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = current_rate(self.model.optimizer)
