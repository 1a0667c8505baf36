"""LearningRateDecay: drive the optimizer's rate from a schedule, per step or per epoch."""

from __future__ import annotations

from tf_keras.callbacks import Callback

from tfopt.errors import TfoptError
from tfopt.config.registry import Config
from tfopt.config.schedules import SCHEDULES, LRPolicy, Plateau, PlateauTracker


def get_lr(optimizer) -> float:
    return float(_lr_variable(optimizer).numpy())


def set_lr(optimizer, value: float) -> None:
    _lr_variable(optimizer).assign(value)


def _lr_variable(optimizer):
    lr = optimizer.learning_rate
    if not hasattr(lr, "assign"):
        raise TfoptError(
            f"the optimizer's learning_rate is a {type(lr).__name__}, not a variable; build the "
            f"optimizer with a float rate and give the schedule to LearningRateDecay instead"
        )
    return lr


class LearningRateDecay(Callback):
    """Set the learning rate from a schedule at every step (or epoch), with optional warm-up
    and reduce-on-plateau; writes the current rate to ``logs["lr"]``.

    Args:
        schedule: a schedule name (``"cosine"``), a dict (``{"name": "step", "step_size": 3}``),
            a schedule config, an :class:`~tfopt.config.schedules.LRPolicy`, or any callable mapping
            the step index to a rate (a ``tf_keras`` LearningRateSchedule works).
        per: ``"step"`` or ``"epoch"``: the unit of the schedule's index and arguments.
        initial_lr: the peak rate; default: the optimizer's rate when training starts.
        warmup: linear warm-up length, in units of ``per``.
        warmup_start: where warm-up starts, as a fraction of ``initial_lr``.
        plateau: reduce-on-plateau settings (``{"monitor": "val_loss", "factor": 0.5,
            "patience": 3}``); its factor multiplies the scheduled rate.
        verbose: print the rate whenever a plateau cuts it.
    """

    def __init__(self, schedule="constant", per="step", initial_lr=None, warmup=0, warmup_start=0.0,
                 plateau=None, verbose=0):
        super().__init__()
        self.initial_lr = initial_lr
        self.verbose = verbose
        self._callable = None
        if isinstance(schedule, LRPolicy):
            self.policy = schedule
        elif callable(schedule) and not isinstance(schedule, Config):
            self._callable = schedule
            self.policy = LRPolicy(per=per, warmup=warmup, warmup_start=warmup_start, plateau=plateau)
        else:
            self.policy = LRPolicy(
                initial=initial_lr or 1.0, schedule=SCHEDULES.get(schedule), per=per, warmup=warmup,
                warmup_start=warmup_start, plateau=Plateau.model_validate(plateau) if isinstance(plateau, dict) else plateau,
            )
        self.factor = 1.0
        self._plateau = PlateauTracker(self.policy.plateau)
        self._epoch = 0
        self._steps = 1
        self._total = 1

    # -- schedule --------------------------------------------------------------------
    def rate_at(self, t: float) -> float:
        """The rate at step (or epoch) ``t``, plateau factor included."""
        if self._callable is not None:
            if t < self.policy.warmup:
                base = float(self._callable(self.policy.warmup))
                return base * (self.policy.warmup_start + (1 - self.policy.warmup_start) * t / self.policy.warmup)
            value = float(self._callable(t - self.policy.warmup))
        else:
            value = self.policy.rate(t, self._total)
        plateau = self.policy.plateau
        return max(value * self.factor, plateau.min_lr if plateau else 0.0)

    def on_train_begin(self, logs=None):
        if self.initial_lr is None and self._callable is None:
            self.policy = self.policy.model_copy(update={"initial": get_lr(self.model.optimizer)})
            self.initial_lr = self.policy.initial
        self._steps = int(self.params.get("steps") or 1)
        epochs = int(self.params.get("epochs") or 1)
        self._total = epochs * self._steps if self.policy.per == "step" else epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.policy.per == "epoch":
            set_lr(self.model.optimizer, self.rate_at(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        if self.policy.per == "step":
            set_lr(self.model.optimizer, self.rate_at(self._epoch * self._steps + batch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = get_lr(self.model.optimizer)
        if self.policy.plateau is not None:
            self._plateau_step((logs or {}).get(self.policy.plateau.monitor), epoch)

    def _plateau_step(self, value, epoch):
        if self._plateau.update(value):
            self.factor *= self.policy.plateau.factor
            if self.verbose:
                print(self._plateau.message(epoch, self.factor))

    # -- persistence -------------------------------------------------------------------
    def get_state(self) -> dict:
        """Plateau state, for checkpoints; :meth:`set_state` restores it."""
        return self._plateau.get_state(self.factor)

    def set_state(self, state: dict) -> None:
        self.factor = self._plateau.set_state(state)

    def get_config(self) -> dict:
        if self._callable is not None:
            schedule = getattr(self._callable, "get_config", lambda: repr(self._callable))()
        else:
            schedule = self.policy.schedule.model_dump()
        return {
            "schedule": schedule,
            "per": self.policy.per,
            "initial_lr": self.initial_lr,
            "warmup": self.policy.warmup,
            "warmup_start": self.policy.warmup_start,
            "plateau": self.policy.plateau.model_dump() if self.policy.plateau else None,
            "verbose": self.verbose,
        }
