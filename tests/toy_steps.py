"""The toy step of the Extending docs, shared by the tests that register it."""

import numpy as np
from pydantic import Field

from tfopt.config.steps import FineTune
from tfopt.export import plain_copy


class ZeroSmallConfig(FineTune):
    threshold: float = Field(0.05, gt=0, description="kernel weights below this magnitude become zero")


def zero_small(model, data, config, fine_tune, *, log=print, **inputs):
    """Zero every kernel weight whose magnitude is below a threshold."""
    copy = plain_copy(model)
    zeroed = 0
    for layer in copy.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            small = np.abs(k) < config.threshold
            zeroed += int(small.sum())
            layer.kernel.assign(np.where(small, 0.0, k))
    log(f"zeroed {zeroed} weights")
    return copy, {"zeroed": zeroed}
