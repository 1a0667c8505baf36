"""Every compression and surgery step, registered once in :data:`STEPS`.

One module per step holds its library function (model in, ``(new model, report)`` out) and its
command and chain adapters: :mod:`structured`, :mod:`prune`, :mod:`cluster`, :mod:`quantize` (and
export), :mod:`remove`, :mod:`fold` (BatchNorm and pool folding); :mod:`builtin` registers them by
name, so reading the registry imports none of them. :mod:`settings` builds a step's config and fine-tune settings from a recipe, :mod:`runs`
writes the new run directory. The CLI, ``tune``, ``report`` and ``optimize`` read :data:`STEPS`.

TFMOT is imported only inside the functions that run it: importing it sets
``TF_USE_LEGACY_KERAS`` for the whole process. Nothing here imports TensorFlow at module level.
"""

from tfopt.steps import builtin  # noqa: F401  registers the built-in steps
from tfopt.config.step_registry import STEPS, Step, get, register

__all__ = ["STEPS", "Step", "get", "register"]
