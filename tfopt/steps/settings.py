"""A step's settings from a recipe, built once at the edge: its validated config (the recipe's
section with the command-line values on top), and the training pipeline with one
:class:`~tfopt.config.fine_tune.FineTuneSettings` (the recipe's loss, metrics, optimizer,
augmentation, seed and, with ``distill``, the teacher).

Imports no TensorFlow at module level: the step modules import it while the command line
builds its help.
"""

from __future__ import annotations

import dataclasses

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.step_registry import STEPS
from tfopt.data.pipeline import make_dataset
from tfopt.errors import TfoptError
from tfopt.steps.source import load_teacher
from tfopt.training import distribute
from tfopt.training.finetune import sharded

#: The recipe's initial rate is multiplied by this for fine-tunes.
RECIPE_LR_FACTOR = 1.0


def recipe_lr(recipe) -> float:
    """The default fine-tune rate for a recipe's model: the rate it started training with."""
    return recipe.lr_policy().initial * RECIPE_LR_FACTOR


def step_settings(recipe, step, given: dict):
    """The config of the registered ``step`` (a name or a :class:`~tfopt.config.step_registry.Step`):
    its recipe section (``optimize.<name>``, or ``export``) with the non-None values of ``given``
    on top, validated once; None for a step without settings."""
    step = STEPS[step] if isinstance(step, str) else step
    if step.config is None:
        return None
    base = recipe.export if step.recipe_section == "export" else getattr(recipe.optimize, step.name, None)
    return step.configure({**(base.model_dump() if base else {}), **{k: v for k, v in given.items() if v is not None}})


def fine_tune_from_recipe(recipe, splits, cfg, model=None, log=print):
    """The training pipeline and the fine-tune settings of a step from a recipe, its data splits and
    the step's config ``cfg`` (its ``epochs``, ``lr``, ``batch_size`` and distillation fields).

    The rate and batch size are the step's own, else the recipe's. With ``cfg.distill``,
    ``cfg.teacher`` (a path) or else ``model`` (the step's input) is the teacher; a fine-tune of
    more epochs than the augmentation has placements of an image learns from the teacher's
    outputs computed once (:class:`tfopt.distill.TeacherTargets`).

    Returns:
        ``(training dataset, FineTuneSettings)``.

    Raises:
        TfoptError: distillation without a model to learn from, or a teacher that does not fit.
    """
    t = recipe.train
    batch_size = cfg.batch_size or t.batch_size
    common = dict(one_hot=t.loss.one_hot, num_classes=splits.num_classes)
    train = sharded(make_dataset(splits.x_train, splits.y_train, batch_size, training=True, seed=recipe.seed,
                                 augment=recipe.data.augment, shuffle_buffer=recipe.data.shuffle_buffer, **common))
    val = sharded(make_dataset(splits.x_val, splits.y_val, batch_size, **common)) if len(splits.x_val) else None
    settings = FineTuneSettings(epochs=cfg.epochs, lr=cfg.lr or recipe_lr(recipe), batch_size=batch_size, loss=t.loss,
                                optimizer=t.optimizer, metrics=list(t.metrics), validation_data=val, seed=recipe.seed)
    if getattr(cfg, "distill", False):
        if model is None:
            raise TfoptError("distillation needs the step's input model as its teacher")
        teacher = load_teacher(cfg.teacher, model) if getattr(cfg, "teacher", None) else model
        settings = dataclasses.replace(settings, teacher=stored_teacher(teacher, recipe, splits, train, settings, log)
                                       or teacher, temperature=cfg.temperature, alpha=cfg.alpha)
    return train, settings


def stored_teacher(teacher, recipe, splits, train, settings: FineTuneSettings, log=print):
    """The teacher's outputs computed once for the fine-tune pipeline ``train``, where that takes
    fewer passes of the teacher than the fine-tune's epochs; else None (also under tf.distribute,
    whose pipeline is sharded, and for one-hot labels)."""
    if distribute.active() is not None or recipe.train.loss.one_hot:
        return None
    # distill defines a tf_keras model class at its top: imported here, when a teacher is used
    from tfopt.distill import TeacherTargets

    return TeacherTargets.build(teacher, splits.x_train, splits.y_train, source=train, augment=recipe.data.augment,
                                batch_size=settings.batch_size, seed=recipe.seed,
                                shuffle_buffer=recipe.data.shuffle_buffer, max_passes=settings.epochs - 1, log=log)


def apply_step(step, model, recipe, splits, cfg, log=print):
    """The registered ``step`` on ``model`` for a chain (``tune.compress``) or its command: its own
    ``apply``, else the step run with the recipe's fine-tune settings (a step whose config has no
    ``epochs`` gets no data).

    Returns:
        ``(model, report)``.
    """
    if step.apply is not None:
        return step.apply(model, recipe, splits, cfg, log=log)
    if cfg is not None and hasattr(cfg, "epochs"):
        data, fine_tune = fine_tune_from_recipe(recipe, splits, cfg, model, log)
        return step.run(model, data, cfg, fine_tune, log=log)
    return step.run(model, None, cfg, None, log=log)
