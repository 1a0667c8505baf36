"""Recipe settings for how a fit runs: ``train.compile`` and ``train.distribute``. Imports no TensorFlow."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, PositiveInt

from tfopt.registry import Config


class Compile(Config):
    """``train.compile``: XLA and steps per execution, or ``auto`` to let a short timed probe choose."""

    jit: Union[Literal["auto"], bool] = Field("auto", description="XLA compilation: auto | true | false")
    steps_per_execution: Union[Literal["auto"], PositiveInt] = Field(
        "auto", description="training steps per compiled call: auto | N"
    )


Distribute = Literal["none", "mirrored", "multi_worker"]
