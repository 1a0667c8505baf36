"""Importing TFMOT without changing the user's process.

Importing TFMOT sets ``TF_USE_LEGACY_KERAS=1`` and pins ``tf.keras`` to tf_keras for the rest
of the process; :func:`import_tfmot` imports it inside :func:`legacy_keras`, which puts both
back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import sys

LEGACY_VAR = "TF_USE_LEGACY_KERAS"


def _keras_loaders():
    """Every ``keras`` attribute of a loaded TensorFlow module, with a snapshot of the loaders
    that have not yet decided between Keras 3 and tf_keras."""
    from tensorflow.python.util.lazy_loader import KerasLazyLoader

    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "tensorflow" or name.startswith("tensorflow.")):
            continue
        value = getattr(module, "__dict__", {}).get("keras")
        if isinstance(value, KerasLazyLoader):
            fresh = not value.__dict__.get("_tfll_initialized", False)
            found.append((module, value, dict(value.__dict__) if fresh else None))
    return found


@contextlib.contextmanager
def legacy_keras():
    """Run a block with ``TF_USE_LEGACY_KERAS=1`` (what TFMOT needs while it imports), then
    put the process back: the variable as it was, and every ``tf.keras`` that had not been
    resolved yet unresolved again, so it still follows the user's environment."""
    import tensorflow  # noqa: F401  (its lazy loaders must exist before the snapshot)

    saved = os.environ.get(LEGACY_VAR)
    loaders = _keras_loaders()
    os.environ[LEGACY_VAR] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(LEGACY_VAR, None)
        else:
            os.environ[LEGACY_VAR] = saved
        for module, loader, snapshot in loaders:
            if snapshot is not None:
                loader.__dict__.clear()
                loader.__dict__.update(snapshot)
            module.__dict__["keras"] = loader


def import_tfmot():
    """``tensorflow_model_optimization``, imported without changing the user's process.

    Example:
        >>> tfmot = import_tfmot()
        >>> pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    """
    if "tensorflow_model_optimization" not in sys.modules:
        with legacy_keras():
            import tensorflow_model_optimization  # noqa: F401
    return sys.modules["tensorflow_model_optimization"]

