"""The recipe's ``optimize:`` and ``export:`` sections. Imports no TensorFlow.

Each key matches a command-line option of ``tfopt prune``, ``cluster``, ``quantize`` and
``export``; the command takes the recipe's values as defaults and its options win.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, field_validator

from tfopt.errors import TfoptError
from tfopt.registry import Config
from tfopt.validation import format_validation_errors


def _check_ratios(v: dict, what: str) -> dict:
    bad = {k: r for k, r in v.items() if not 0 <= r < 1}
    if bad:
        raise ValueError(f"{what} must be in [0, 1); got {bad}")
    return v


def validated(cls, values: dict, where: str):
    """``cls`` built from ``values`` (``None`` values dropped, so defaults apply); a problem
    raises one :class:`TfoptError` naming each key as ``<where>.<key>``."""
    data = {k: v for k, v in values.items() if v is not None}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise TfoptError("; ".join(f"{where}.{k}: {m}" for k, m in format_validation_errors(exc, data, cls))) from None


class FineTune(Config):
    epochs: PositiveInt = 2
    lr: Optional[PositiveFloat] = Field(None, description="peak rate, held while the step works, then cosine-decayed "
                                                          "to a tenth; default: train.lr.initial")
    batch_size: Optional[PositiveInt] = Field(None, description="default: train.batch_size")


class PruneConfig(FineTune):
    """Magnitude pruning with TFMOT's prune_low_magnitude, then strip_pruning."""

    sparsity: float = Field(0.8, gt=0, lt=1, description="target fraction of zero weights")
    schedule: Literal["polynomial", "constant"] = "polynomial"
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="polynomial schedule start")
    begin_step: int = Field(0, ge=0)
    end_step: Optional[int] = Field(None, ge=1, description="default: 2/3 of the fine-tune steps")
    frequency: Optional[PositiveInt] = Field(None, description="steps between pruning updates; default fits the budget")
    layers: dict[str, float] = Field(default_factory=dict, description="per-layer target sparsity")
    skip: list[str] = Field(default_factory=list, description="layers left dense")
    m_by_n: Optional[tuple[PositiveInt, PositiveInt]] = Field(None, description="structured sparsity, e.g. [2, 4]")
    force: bool = Field(False, description="go on when the preflight says the target is out of reach")

    @field_validator("layers")
    @classmethod
    def _ratios(cls, v):
        return _check_ratios(v, "per-layer sparsity")

    @field_validator("m_by_n")
    @classmethod
    def _m_by_n(cls, v):
        if v is not None and v[0] >= v[1]:
            raise ValueError("m_by_n needs m < n, e.g. [2, 4]")
        return v


class StructuredConfig(FineTune):
    """Channel pruning: whole filters and units removed, every dependent layer updated."""

    ratio: float = Field(0.5, ge=0, lt=1, description="fraction of channels removed per layer")
    per_layer: dict[str, float] = Field(default_factory=dict, description="per-layer ratio")
    criterion: Literal["l1", "l2", "bn_gamma", "activation", "taylor"] = Field(
        "l1", description="activation and taylor rank on probe_samples training images")
    probe_samples: PositiveInt = 256
    rounds: PositiveInt = Field(1, description="prune then fine-tune this many times, reaching ratio at the end")
    min_channels: PositiveInt = 1
    protect: list[str] = Field(default_factory=list, description="layers whose channels stay")

    @field_validator("per_layer")
    @classmethod
    def _ratios(cls, v):
        return _check_ratios(v, "per-layer ratios")


class ClusterConfig(FineTune):
    """Weight clustering with TFMOT's cluster_weights, then strip_clustering."""

    epochs: PositiveInt = 1
    clusters: int = Field(16, ge=2, le=256)
    init: Literal["kmeans_plus_plus", "linear", "density_based", "random"] = "kmeans_plus_plus"
    skip: list[str] = Field(default_factory=list)


class QuantizeConfig(FineTune):
    """Post-training quantization (dynamic, float16, int8) or quantization-aware training (qat)."""

    epochs: PositiveInt = 1
    mode: Literal["dynamic", "float16", "int8", "qat"] = "int8"
    int8_io: bool = Field(False, description="int8 input and output instead of float (int8 and qat)")
    representative_samples: PositiveInt = Field(500, description="training images used to calibrate int8")


class RemoveConfig(Config):
    """Layer removal: named layers or residual blocks taken out and rewired, then a fine-tune."""

    layers: list[str] = Field(default_factory=list, description="layers or blocks to remove, e.g. [conv3, block2]")
    epochs: NonNegativeInt = Field(1, description="fine-tune epochs after the removal (0: none)")
    lr: Optional[PositiveFloat] = Field(None, description="default: train.lr.initial")
    batch_size: Optional[PositiveInt] = Field(None, description="default: train.batch_size")
    analyze: bool = Field(False, description="measure the model without each removable layer or block")
    analyze_epochs: NonNegativeInt = Field(0, description="fine-tune epochs per analyzed candidate")
    budget: Optional[float] = Field(None, ge=0, description="with analyze: remove the most within this many points")


class Optimize(Config):
    prune: Optional[PruneConfig] = None
    structured: Optional[StructuredConfig] = None
    cluster: Optional[ClusterConfig] = None
    quantize: Optional[QuantizeConfig] = None
    remove: Optional[RemoveConfig] = None


class Export(Config):
    tflite: list[Literal["float32", "dynamic", "float16", "int8"]] = Field(default_factory=lambda: ["float32"])
    int8_io: bool = False
    min_agreement_float: float = Field(0.999, ge=0, le=1, description="top-1 agreement TFLite vs Keras, float modes")
    min_agreement_int8: float = Field(0.99, ge=0, le=1, description="the same for int8 and dynamic-range files")
    representative_samples: PositiveInt = 500
