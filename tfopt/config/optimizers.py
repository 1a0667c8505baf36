"""Optimizer configs: recipe keys match tf_keras constructor arguments.

The learning rate is not set here: it belongs to ``train.lr`` (see :mod:`tfopt.config.schedules`).
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, PositiveFloat, model_validator

from tfopt.config.registry import Config, Registry

OPTIMIZERS = Registry("optimizer")


class Optimizer(Config):
    clipvalue: Optional[PositiveFloat] = Field(None, description="clip each gradient element to ±value")
    clipnorm: Optional[PositiveFloat] = Field(None, description="clip each gradient tensor's norm")
    global_clipnorm: Optional[PositiveFloat] = Field(None, description="clip the global norm")

    @model_validator(mode="after")
    def _one_clip(self):
        given = [k for k in ("clipvalue", "clipnorm", "global_clipnorm") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of clipvalue, clipnorm, global_clipnorm; got {', '.join(given)}")
        return self

    _keras_class: ClassVar[str] = ""

    def build(self, learning_rate: float):
        """A new tf_keras optimizer with these settings."""
        import tf_keras

        kwargs = self.model_dump(exclude={"name"}, exclude_none=True)
        return getattr(tf_keras.optimizers, self._keras_class)(learning_rate=learning_rate, **kwargs)


@OPTIMIZERS.register
class SGD(Optimizer):
    name: Literal["sgd"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    _keras_class: ClassVar[str] = "SGD"


@OPTIMIZERS.register
class Adagrad(Optimizer):
    name: Literal["adagrad"] = "adagrad"
    initial_accumulator_value: float = Field(0.1, ge=0)
    epsilon: PositiveFloat = 1e-7
    _keras_class: ClassVar[str] = "Adagrad"


@OPTIMIZERS.register
class RMSprop(Optimizer):
    name: Literal["rmsprop"] = "rmsprop"
    rho: float = Field(0.9, gt=0, lt=1)
    momentum: float = Field(0.0, ge=0, lt=1)
    epsilon: PositiveFloat = 1e-7
    centered: bool = False
    _keras_class: ClassVar[str] = "RMSprop"


class _AdamFamily(Optimizer):
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.999, ge=0, lt=1)
    epsilon: PositiveFloat = 1e-7


@OPTIMIZERS.register
class Adam(_AdamFamily):
    name: Literal["adam"] = "adam"
    amsgrad: bool = False
    _keras_class: ClassVar[str] = "Adam"


@OPTIMIZERS.register
class AdamW(_AdamFamily):
    name: Literal["adamw"] = "adamw"
    weight_decay: float = Field(0.004, ge=0)
    amsgrad: bool = False
    _keras_class: ClassVar[str] = "AdamW"


@OPTIMIZERS.register
class Nadam(_AdamFamily):
    name: Literal["nadam"] = "nadam"
    _keras_class: ClassVar[str] = "Nadam"
