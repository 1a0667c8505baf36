"""Recipe settings for how a fit runs: ``train.compile`` and ``train.distribute``. Imports no TensorFlow."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, PositiveInt

from tfopt.config.registry import Config


class Compile(Config):
    """``train.compile``: XLA, steps per execution and precision, or ``auto`` to let a short timed
    probe choose."""

    jit: Union[Literal["auto"], bool] = Field("auto", description="XLA compilation: auto | true | false")
    steps_per_execution: Union[Literal["auto"], PositiveInt] = Field(
        "auto", description="training steps per compiled call: auto | N"
    )
    precision: Literal["auto", "float32", "mixed_bfloat16"] = Field(
        "auto", description="compute precision of training: auto | float32 | mixed_bfloat16 (bfloat16 math, "
                            "float32 weights; the saved model is float32)")


Distribute = Literal["none", "mirrored", "multi_worker"]
