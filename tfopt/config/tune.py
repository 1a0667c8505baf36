"""Tune specs (``{tune: float|int|choice|bool, ...}`` in place of a recipe value) and the
recipe's ``tune:`` section. Imports no TensorFlow and no keras-tuner.

Example, in a recipe::

    train:
      lr: {initial: {tune: float, min: 1e-4, max: 1e-1, sampling: log}}
    model:
      layers:
        - {type: conv2d, filters: {tune: choice, values: [16, 32, 64]}}
    tune: {algorithm: hyperband, objective: val_accuracy}
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from tfopt.config.limits import MAX_CHOICES
from tfopt.config.registry import Config, Registry

SPECS = Registry("tune kind", key="tune")
#: The key that marks a mapping in a recipe as a tune spec: ``filters: {tune: choice, values: [8, 16]}``.
KEY = "tune"
SIZE_METRICS = ("tflite_kb", "latency_ms", "params", "macs")


class Spec(Config):
    name: Optional[str] = Field(None, description="short name for tables; default: the dotted key")

    def candidates(self) -> list:
        """Values checked against the recipe schema before a search starts."""
        raise NotImplementedError

    def initial(self):
        raise NotImplementedError

    def declare(self, hp, name: str):
        raise NotImplementedError

    def decode(self, value):
        return value


class _Range(Spec):
    sampling: Literal["linear", "log", "reverse_log"] = "linear"

    @model_validator(mode="after")
    def _bounds(self):
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.sampling != "linear" and self.min <= 0:
            raise ValueError(f"sampling: {self.sampling} needs min > 0 (got {self.min})")
        if self.default is not None and not self.min <= self.default <= self.max:
            raise ValueError(f"default {self.default} is outside [{self.min}, {self.max}]")
        return self

    def candidates(self):
        return [self.min, self.max]

    def initial(self):
        return self.default if self.default is not None else self.min


@SPECS.register
class FloatSpec(_Range):
    """A real number in ``[min, max]``; ``sampling: log`` for rates and strengths."""

    tune: Literal["float"] = "float"
    min: float
    max: float
    step: Optional[PositiveFloat] = None
    default: Optional[float] = None

    def declare(self, hp, name):
        return hp.Float(name, self.min, self.max, step=self.step, sampling=self.sampling, default=self.initial())


@SPECS.register
class IntSpec(_Range):
    """An integer in ``[min, max]`` (both included), every ``step``."""

    tune: Literal["int"] = "int"
    min: int
    max: int
    step: PositiveInt = 1
    default: Optional[int] = None

    def declare(self, hp, name):
        return hp.Int(name, self.min, self.max, step=self.step, sampling=self.sampling, default=self.initial())


def label(value) -> str:
    """A one-line YAML rendering, used as the keras-tuner value of a non-scalar choice."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


@SPECS.register
class ChoiceSpec(Spec):
    """One of ``values``: numbers, strings, booleans, or whole mappings such as optimizers."""

    tune: Literal["choice"] = "choice"
    values: list[Any] = Field(min_length=2, max_length=MAX_CHOICES)
    default: Any = None

    @field_validator("values", mode="before")
    @classmethod
    def _not_too_many(cls, v):
        if isinstance(v, list) and len(v) > MAX_CHOICES:
            raise ValueError(f"{len(v):,} values, over the limit of {MAX_CHOICES:,} (limit: values in one tune "
                             f"choice); use {{tune: int}} or {{tune: float}} for a range")
        return v

    @field_validator("values")
    @classmethod
    def _unique(cls, v):
        counts = Counter(label(x) for x in v)
        dups = sorted(x for x, n in counts.items() if n > 1)
        if dups:
            raise ValueError(f"values must be distinct; repeated: {', '.join(dups)}")
        return v

    @model_validator(mode="after")
    def _default_listed(self):
        if self.default is not None and label(self.default) not in [label(x) for x in self.values]:
            raise ValueError(f"default {self.default!r} is not one of values")
        return self

    def _kind(self):
        """keras-tuner takes only all-int, all-float, all-str or all-bool choices; others go by label."""
        if all(isinstance(v, bool) for v in self.values):
            return "bool"
        if all(isinstance(v, int) and not isinstance(v, bool) for v in self.values):
            return "int"
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values):
            return "float"
        if all(isinstance(v, str) for v in self.values):
            return "str"
        return "label"

    def _encode(self, v):
        kind = self._kind()
        return label(v) if kind == "label" else float(v) if kind == "float" else v

    def candidates(self):
        return list(self.values)

    def initial(self):
        return self.default if self.default is not None else self.values[0]

    def declare(self, hp, name):
        if self._kind() == "bool":
            return hp.Boolean(name, default=self.initial())
        return hp.Choice(name, [self._encode(v) for v in self.values], ordered=self._kind() in ("int", "float"),
                         default=self._encode(self.initial()))

    def decode(self, value):
        for v in self.values:
            if self._encode(v) == value:
                return v
        raise KeyError(f"{value!r} is not one of {self.values!r}")


@SPECS.register
class BoolSpec(Spec):
    """True or false, e.g. ``batch_norm``."""

    tune: Literal["bool"] = "bool"
    default: bool = False

    def candidates(self):
        return [False, True]

    def initial(self):
        return self.default

    def declare(self, hp, name):
        return hp.Boolean(name, default=self.default)


class Objective(Config):
    """What a search maximises or minimises.

    ``score = metric - Σ penalty[k] · k`` for ``direction: max`` (``+`` for ``min``), where
    ``k`` is one of ``tflite_kb`` (gzip -9 of the trial's .tflite, 1 kB = 1000 bytes),
    ``latency_ms`` (single-thread LiteRT median), ``params`` or ``macs``.
    """

    metric: str = "val_accuracy"
    direction: Literal["auto", "min", "max"] = "auto"
    penalty: dict[Literal[SIZE_METRICS], NonNegativeFloat] = Field(default_factory=dict)

    def resolved_direction(self) -> str:
        if self.direction != "auto":
            return self.direction
        if "acc" in self.metric or self.metric.endswith("auc"):
            return "max"
        return "min"

    def score(self, values: dict) -> float:
        sign = -1.0 if self.resolved_direction() == "max" else 1.0
        return float(values[self.metric]) + sign * sum(w * float(values[k]) for k, w in self.penalty.items())

    def needs(self) -> set:
        return {self.metric, *self.penalty} & set(SIZE_METRICS)


class TuneConfig(Config):
    """The ``tune:`` section: how ``tfopt tune`` searches the space the tune specs declare."""

    algorithm: Literal["random", "bayesian", "hyperband"] = "random"
    max_trials: Optional[PositiveInt] = Field(None, description="default: 10; hyperband: its brackets decide")
    objective: Union[str, Objective] = Field(default_factory=Objective)
    compress: list[str] = Field(default_factory=list,
                                description="registered steps applied to each trained trial before it is scored")
    factor: int = Field(3, ge=2, description="hyperband: keep 1/factor of the trials per round")
    hyperband_iterations: PositiveInt = 1
    num_initial_points: Optional[PositiveInt] = Field(None, description="bayesian: random trials first")
    seed: Optional[NonNegativeInt] = Field(None, description="the oracle's seed, so a search repeats; default: the recipe's")
    max_retries_per_trial: NonNegativeInt = 0
    max_consecutive_failed_trials: PositiveInt = 3

    @field_validator("objective")
    @classmethod
    def _objective(cls, v):
        return Objective(metric=v) if isinstance(v, str) else v

    @field_validator("compress")
    @classmethod
    def _once(cls, v):
        dups = sorted({s for s in v if v.count(s) > 1})
        if dups:
            raise ValueError(f"each step may appear once; repeated: {', '.join(dups)}")
        return v

    def trials(self) -> Optional[int]:
        if self.max_trials is not None:
            return self.max_trials
        return None if self.algorithm == "hyperband" else 10


def find_specs(data: dict) -> dict[str, dict]:
    """Every ``{tune: ...}`` mapping in a raw recipe, by dotted key (the ``tune:`` section aside)."""
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            if path and KEY in node:
                found[path] = node
                return
            for k, v in node.items():
                if path or k != KEY:
                    walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}")

    walk(data, "")
    return found
