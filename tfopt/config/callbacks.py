"""The recipe's ``callbacks:`` list: callbacks named with their arguments. Imports no TensorFlow.

Outputs (CSV, TensorBoard, PNG) go into the run directory. ``learning_rate_decay`` takes
the same keys as ``train.lr`` and replaces it (give one or the other). ``lr_finder`` holds the
settings of ``tfopt lr-find RECIPE``; ``tfopt fit`` does not run it.

Example:
    callbacks:
      - {name: gradient_norm_monitor, every_n_steps: 100}
      - weight_stats_monitor
      - {name: lr_finder, min_lr: 1.0e-6, max_lr: 1.0, num_steps: 100}
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt

from tfopt.config.registry import Config, Registry
from tfopt.config.schedules import LRPolicy

CALLBACKS = Registry("callback")


class CallbackConfig(Config):
    """An entry of the recipe's ``callbacks:`` list; :func:`tfopt.callbacks.recipe.build_callback`
    builds its Keras callback."""


@CALLBACKS.register
class LearningRateDecayConfig(LRPolicy):
    """See :class:`tfopt.callbacks.LearningRateDecay`; the keys are those of ``train.lr``."""

    name: Literal["learning_rate_decay"] = "learning_rate_decay"

    def policy(self) -> LRPolicy:
        """The learning-rate policy ``tfopt fit`` follows in place of ``train.lr``."""
        return LRPolicy(**self.model_dump(exclude={"name"}))


@CALLBACKS.register
class LRFinderConfig(CallbackConfig):
    """Settings of ``tfopt lr-find``; see :class:`tfopt.callbacks.LRFinder`."""

    name: Literal["lr_finder"] = "lr_finder"
    min_lr: PositiveFloat = 1e-6
    max_lr: PositiveFloat = 1.0
    num_steps: int = Field(100, ge=5)
    smoothing: float = Field(0.9, ge=0, lt=1)
    diverge_factor: float = Field(4.0, gt=1)
    rule: Literal["steepest", "min_div_10"] = "steepest"


@CALLBACKS.register
class GradientNormMonitorConfig(CallbackConfig):
    """See :class:`tfopt.callbacks.GradientNormMonitor`; the probe is the first ``probe_samples`` training images."""

    name: Literal["gradient_norm_monitor"] = "gradient_norm_monitor"
    every_n_steps: PositiveInt = 100
    probe_samples: PositiveInt = 64
    vanishing_threshold: PositiveFloat = 1e-6
    vanishing_patience: PositiveInt = 3
    dead_relu_threshold: float = Field(0.9, gt=0, le=1)
    exploding_threshold: PositiveFloat = 1e3
    growth_factor: float = Field(100.0, gt=1)
    stop_on_explosion: bool = False
    stop_on_nonfinite: bool = True
    csv: bool = Field(True, description="write gradients.csv in the run directory")
    tensorboard: bool = Field(True, description="write scalars under logs/gradients")
    plot: bool = Field(True, description="write gradients.png")
    verbose: Literal[0, 1] = 1


@CALLBACKS.register
class WeightStatsMonitorConfig(CallbackConfig):
    """See :class:`tfopt.callbacks.WeightStatsMonitor`."""

    name: Literal["weight_stats_monitor"] = "weight_stats_monitor"
    near_zero: PositiveFloat = 1e-3
    every_n_steps: Optional[PositiveInt] = None
    csv: bool = Field(True, description="write weights.csv in the run directory")
    verbose: Literal[0, 1] = 0
