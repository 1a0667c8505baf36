"""The fine-tune settings that travel with a configured step.

A step is called as ``function(model, data, config, fine_tune, log=...)``: ``config`` is its
frozen, validated settings (a pydantic config of :mod:`tfopt.config.steps`, or a plugin's), and
``fine_tune`` one :class:`FineTuneSettings`, built once at the edge (the CLI from a recipe, the
public API from its keyword arguments, the search from its own settings) and passed down as is.
Imports no TensorFlow: the objects it may hold (a teacher model, a loss, a dataset) are opaque here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class FineTuneSettings:
    """How a step fine-tunes the model it changed.

    Attributes:
        epochs: passes over the training data (0: no fine-tune, for steps that allow it).
        lr: the peak rate, held while the step works, then cosine-decayed; None: 1e-3.
        batch_size: for arrays and unbatched datasets; None: 32.
        loss: None (the model's compiled loss, else inferred), a name, a tfopt loss config or a loss.
        optimizer: a name, ``{"name": ..., **kwargs}``, a tfopt optimizer config or an optimizer.
        metrics: None: accuracy for classification losses.
        validation_data: evaluated after each epoch, like ``data``.
        teacher: a model to distil from, or its stored outputs
            (:class:`tfopt.distill.TeacherTargets`); None: no distillation.
        temperature: the softening temperature of distillation.
        alpha: the weight of the teacher's soft targets.
        seed: seeds shuffling and initialisation.
    """

    epochs: int = 2
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    loss: Any = None
    optimizer: Any = "adam"
    metrics: Any = None
    validation_data: Any = None
    teacher: Any = None
    temperature: float = 4.0
    alpha: float = 0.9
    seed: int = 0

    def replace(self, **changes) -> "FineTuneSettings":
        """A copy with ``changes``; a None value keeps the current one."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def distils(self) -> bool:
        return self.teacher is not None
