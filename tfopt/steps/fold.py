"""BatchNorm folding as a checked step: fold, then compare the outputs with the original's."""

from __future__ import annotations

import numpy as np

from tfopt.errors import TfoptError

#: Largest relative output difference a fold may cause (it is exact up to float rounding).
TOLERANCE = 1e-4


def fold(model, data=None, *, log=print, **_ignored):
    """Fold every foldable BatchNorm of ``model`` into the layer before it, in a new model.

    The outputs are compared with the original's on up to 256 images of ``data`` (``(x, y)``,
    bare ``x`` or a dataset), else on random inputs.

    Returns:
        ``(folded model, report)``: ``folded`` ``(bn, into)`` pairs, ``kept`` ``(bn, reason)``
        pairs and ``max_relative_output_difference``.

    Raises:
        TfoptError: the fold changed the outputs by more than :data:`TOLERANCE`.
    """
    from tfopt.steps.runner import sample_x
    from tfopt.steps.structured import _random_inputs
    from tfopt.surgery.fold_bn import fold_batchnorm

    folded, report = fold_batchnorm(model)
    x = sample_x(data, 256) if data is not None else _random_inputs(model, 16)
    ref = model.predict(x, batch_size=256, verbose=0)
    got = folded.predict(x, batch_size=256, verbose=0)
    rel = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-3)))
    for bn, into in report["folded"]:
        log(f"  folded {bn} into {into}")
    for bn, why in report["kept"]:
        log(f"  kept {bn}: {why}")
    log(f"{len(report['folded'])} BatchNorm layer(s) folded; outputs match the original within {rel:.2e} "
        f"(relative, on {len(ref)} {'images' if data is not None else 'random inputs'}). The TFLite converter folds "
        f"BatchNorm too: expect no TFLite speed-up from this step.")
    if rel > TOLERANCE:
        raise TfoptError(f"BatchNorm folding changed the outputs by {rel:.2e} (relative); nothing was written.")
    return folded, {**report, "max_relative_output_difference": rel}
