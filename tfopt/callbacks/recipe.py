"""The Keras callbacks of a recipe's ``callbacks:`` list, built for one ``tfopt fit`` run.

Each config class of :data:`tfopt.config.callbacks.CALLBACKS` has its builder here, keyed by
the class; a class without one is refused, never skipped in silence. ``learning_rate_decay``
and ``lr_finder`` build nothing for ``tfopt fit``: the first replaces ``train.lr`` (the run
follows its policy), the second holds the settings of ``tfopt lr-find``.
"""

from __future__ import annotations

from pathlib import Path

from tfopt.callbacks.gradients import GradientNormMonitor
from tfopt.callbacks.weights import WeightStatsMonitor
from tfopt.config.callbacks import (GradientNormMonitorConfig, LearningRateDecayConfig, LRFinderConfig,
                                    WeightStatsMonitorConfig)
from tfopt.errors import TfoptError


def gradient_norm_monitor(cfg: GradientNormMonitorConfig, run_dir: Path, probe) -> GradientNormMonitor:
    """The monitor on the first ``cfg.probe_samples`` of ``probe``, writing into ``run_dir``."""
    args = cfg.model_dump(exclude={"name", "probe_samples", "csv", "tensorboard", "plot"})
    x, y = probe
    return GradientNormMonitor(
        (x[: cfg.probe_samples], y[: cfg.probe_samples]), **args,
        csv_path=str(run_dir / "gradients.csv") if cfg.csv else None,
        log_dir=str(run_dir / "logs" / "gradients") if cfg.tensorboard else None,
        plot_path=str(run_dir / "gradients.png") if cfg.plot else None,
    )


def weight_stats_monitor(cfg: WeightStatsMonitorConfig, run_dir: Path, probe) -> WeightStatsMonitor:
    """The monitor writing ``weights.csv`` into ``run_dir`` (it needs no probe)."""
    return WeightStatsMonitor(near_zero=cfg.near_zero, every_n_steps=cfg.every_n_steps,
                              csv_path=str(run_dir / "weights.csv") if cfg.csv else None, verbose=cfg.verbose)


BUILDERS = {
    GradientNormMonitorConfig: gradient_norm_monitor,
    WeightStatsMonitorConfig: weight_stats_monitor,
}
NOT_IN_FIT = (LearningRateDecayConfig, LRFinderConfig)


def build_callback(cfg, run_dir: Path, probe):
    """The Keras callback of one ``callbacks:`` entry, or None for an entry ``tfopt fit`` does not run.

    Args:
        cfg: a validated config of :data:`tfopt.config.callbacks.CALLBACKS`.
        run_dir: the run directory its files go into.
        probe: ``(x, y)`` arrays from the training data, for callbacks that watch a fixed batch.

    Raises:
        TfoptError: ``cfg``'s class has no builder in :data:`BUILDERS`.
    """
    builder = BUILDERS.get(type(cfg))
    if builder is not None:
        return builder(cfg, run_dir, probe)
    if isinstance(cfg, NOT_IN_FIT):
        return None
    raise TfoptError(f"callback '{getattr(cfg, 'name', type(cfg).__name__)}' ({type(cfg).__name__}) has no "
                     f"builder in tfopt.callbacks.recipe.BUILDERS; register one there to use it in tfopt fit.")


def recipe_callbacks(configs, run_dir: Path, probe) -> list:
    """The callbacks ``tfopt fit`` adds for ``configs`` (a recipe's ``callbacks:``), in order."""
    built = (build_callback(cfg, run_dir, probe) for cfg in configs)
    return [cb for cb in built if cb is not None]
