"""The recipe's ``callbacks:`` list: callbacks named with their arguments. Imports no TensorFlow.

Outputs (CSV, TensorBoard, PNG) go into the run directory. The learning-rate schedule is
``train.lr``, not a callback entry.

Example:
    callbacks:
      - {name: gradient_norm_monitor, every_n_steps: 100}
      - weight_stats_monitor
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveFloat, PositiveInt

from tfopt.registry import Config, Registry

CALLBACKS = Registry("callback")


class CallbackConfig(Config):
    def build(self, run_dir, probe):  # pragma: no cover
        raise NotImplementedError


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

    def build(self, run_dir, probe):
        from tfopt.callbacks import GradientNormMonitor

        args = self.model_dump(exclude={"name", "probe_samples", "csv", "tensorboard", "plot"})
        x, y = probe
        return GradientNormMonitor(
            (x[: self.probe_samples], y[: self.probe_samples]), **args,
            csv_path=str(run_dir / "gradients.csv") if self.csv else None,
            log_dir=str(run_dir / "logs" / "gradients") if self.tensorboard else None,
            plot_path=str(run_dir / "gradients.png") if self.plot else None,
        )


@CALLBACKS.register
class WeightStatsMonitorConfig(CallbackConfig):
    """See :class:`tfopt.callbacks.WeightStatsMonitor`."""

    name: Literal["weight_stats_monitor"] = "weight_stats_monitor"
    near_zero: PositiveFloat = 1e-3
    every_n_steps: Optional[PositiveInt] = None
    csv: bool = Field(True, description="write weights.csv in the run directory")
    verbose: Literal[0, 1] = 0

    def build(self, run_dir, probe):
        from tfopt.callbacks import WeightStatsMonitor

        return WeightStatsMonitor(near_zero=self.near_zero, every_n_steps=self.every_n_steps,
                                  csv_path=str(run_dir / "weights.csv") if self.csv else None, verbose=self.verbose)
