"""Every compression and surgery step, registered once in :data:`STEPS`.

Each step is a library function, model in, ``(new model, report)`` out (:mod:`prune`,
:mod:`structured`, :mod:`cluster`, :mod:`quantize`, :mod:`remove`, :mod:`fold`); its command
and recipe adapters live in :mod:`commands`, which registers the built-in steps. The CLI,
``tune``, ``report`` and ``optimize`` read :data:`STEPS`.

TFMOT is imported only inside the functions that run it: importing it sets
``TF_USE_LEGACY_KERAS`` for the whole process. Nothing here imports TensorFlow at module level.
"""

from tfopt.steps import commands as _builtin  # noqa: F401  registers the built-in steps
from tfopt.config.step_registry import STEPS, Step, get, register

__all__ = ["STEPS", "Step", "get", "register"]
