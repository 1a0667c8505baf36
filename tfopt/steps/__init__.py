"""Every compression and surgery step, registered once in :data:`STEPS`.

One module per step holds its library function (model in, ``(new model, report)`` out), its
command and chain adapters and its registration: :mod:`structured`, :mod:`prune`,
:mod:`cluster`, :mod:`quantize` (and export), :mod:`remove`, :mod:`fold` (BatchNorm and pool
folding). :mod:`settings` builds a step's config and fine-tune settings from a recipe, :mod:`runs`
writes the new run directory. The CLI, ``tune``, ``report`` and ``optimize`` read :data:`STEPS`.

TFMOT is imported only inside the functions that run it: importing it sets
``TF_USE_LEGACY_KERAS`` for the whole process. Nothing here imports TensorFlow at module level.
"""

# imported in this order, the steps register in it: the order of chains' choices and of the help
from tfopt.steps import structured, prune, cluster, quantize, remove, fold  # noqa: F401, I001
from tfopt.config.step_registry import STEPS, Step, get, register

__all__ = ["STEPS", "Step", "get", "register"]
