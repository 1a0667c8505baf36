"""The recipe's ``optimize:`` and ``export:`` sections. Imports no TensorFlow.

Each key matches a command-line option of ``tfopt prune``, ``cluster``, ``quantize`` and
``export``; the command takes the recipe's values as defaults and its options win.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import (ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from tfopt.config.choices import CLUSTER_INITS, CRITERIA, PRUNE_CRITERIA, QUANTIZE_MODES, TFLITE_MODES
from tfopt.errors import TfoptError
from tfopt.config.registry import Config
from tfopt.config.step_registry import STEPS
from tfopt.config.validation import did_you_mean, format_validation_errors, validated


#: How a default computed from the recipe is written in help texts and docs (``[default: ...]``).
RECIPE_LR = "the recipe's train.lr.initial"
RECIPE_BATCH = "the recipe's train.batch_size"


def _check_ratios(v: dict, what: str) -> dict:
    bad = {k: r for k, r in v.items() if not 0 <= r < 1}
    if bad:
        raise ValueError(f"{what} must be in [0, 1); got {bad}")
    return v


class StepConfig(Config):
    """A step's settings: validated once, at the edge, then frozen, so a configured step travels as is."""

    model_config = ConfigDict(**Config.model_config, frozen=True)


class Distill(StepConfig):
    """Knowledge distillation in a step's fine-tune: the model learns from the step's input model,
    or from ``teacher`` (a chain of steps can learn from the model it started from)."""

    distill: bool = Field(False, description="learn from the input model's softened outputs (knowledge distillation)")
    teacher: Optional[str] = Field(None, description="distil from this run directory or model file instead of the "
                                                     "input model (implies distill)",
                                   json_schema_extra={"metavar": "RUN|MODEL"})
    temperature: PositiveFloat = Field(4.0, description="with distill: softening temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="with distill: weight of the teacher's soft targets")

    @model_validator(mode="before")
    @classmethod
    def _teacher_distils(cls, data):
        if isinstance(data, dict) and data.get("teacher") is not None:
            data = {**data, "distill": True}
        return data


class FineTune(Distill):
    epochs: PositiveInt = Field(2, description="fine-tune epochs")
    lr: Optional[PositiveFloat] = Field(None, description="peak rate, held while the step works, then cosine-decayed "
                                                          "to a tenth", json_schema_extra={"shown_default": RECIPE_LR})
    batch_size: Optional[PositiveInt] = Field(None, description="fine-tune batch size",
                                              json_schema_extra={"shown_default": RECIPE_BATCH})


#: Settings of the fine-tune itself, which :func:`tfopt.steps.settings.fine_tune_from_recipe` reads.
FINE_TUNE_FIELDS = ("epochs", "lr", "batch_size", "distill", "teacher", "temperature", "alpha")


class PruneConfig(FineTune):
    """Magnitude pruning with TFMOT's prune_low_magnitude, then strip_pruning."""

    sparsity: float = Field(0.8, gt=0, lt=1, description="target fraction of zero weights")
    allocation: Literal["erk", "er", "uniform"] = Field(
        "erk", description="how sparsity is spread over the layers without their own target: erk prunes small "
                           "layers (a first conv) less and large ones more, for the same overall sparsity; er "
                           "counts only a kernel's channels, so convolutions keep more and a large dense head "
                           "loses more than under erk; uniform prunes each layer to sparsity")
    schedule: Literal["polynomial", "constant"] = Field("polynomial", description="how the sparsity rises")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="polynomial schedule start")
    begin_step: int = Field(0, ge=0, description="first pruning step")
    end_step: Optional[int] = Field(None, ge=1, description="last pruning step",
                                    json_schema_extra={"shown_default": "half of the fine-tune steps"})
    frequency: Optional[PositiveInt] = Field(None, description="steps between pruning updates",
                                             json_schema_extra={"shown_default": "what fits the fine-tune's steps"})
    per_layer: dict[str, float] = Field(default_factory=dict, description="per-layer target sparsity",
                                        json_schema_extra={"metavar": "NAME=VALUE"})
    skip: list[str] = Field(default_factory=list, description="layers left dense")
    m_by_n: Optional[tuple[PositiveInt, PositiveInt]] = Field(None, description="m:n sparsity: at most m non-zero weights in every n, e.g. [2, 4]")
    block: PositiveInt = Field(1, le=64, description="dense kernels are pruned in runs of this many consecutive inputs "
                                                     "of one unit, the order TFLite stores them in, so gzip "
                                                     "codes a kept run once (convolutions stay per weight)")
    criterion: Literal[PRUNE_CRITERIA] = Field(
        "magnitude", description="how a layer's weights are ranked: magnitude, or activation (magnitude times the "
                                 "root-mean-square of the input each weight reads, over probe_samples training "
                                 "images: weights on inputs that are rarely non-zero, such as an image's border "
                                 "pixels, go first)")
    probe_samples: PositiveInt = Field(1024, description="training images for the activation criterion")
    force: bool = Field(False, description="go on when the preflight says the target is out of reach")

    RENAMED: ClassVar[dict] = {"layers": "per_layer", "probe": "probe_samples"}

    @field_validator("per_layer")
    @classmethod
    def _ratios(cls, v):
        return _check_ratios(v, "per-layer sparsity")

    @field_validator("m_by_n")
    @classmethod
    def _m_by_n(cls, v):
        if v is not None and v[0] >= v[1]:
            raise ValueError("m_by_n needs m < n, e.g. [2, 4]")
        return v

    @field_validator("block")
    @classmethod
    def _block_or_m_by_n(cls, v, info):
        if v > 1 and info.data.get("m_by_n") is not None:
            raise ValueError("block and m_by_n are two patterns of zeros: choose one")
        return v

    @field_validator("criterion")
    @classmethod
    def _single_weights(cls, v, info):
        if v == "activation" and (info.data.get("m_by_n") is not None or info.data.get("block", 1) > 1):
            raise ValueError("the activation criterion ranks single weights: not with block or m_by_n")
        return v


class StructuredConfig(FineTune):
    """Channel pruning: whole filters and units removed, every dependent layer updated."""

    ratio: float = Field(0.5, ge=0, lt=1, description="fraction of channels removed per layer")
    per_layer: dict[str, float] = Field(default_factory=dict, description="per-layer ratio",
                                        json_schema_extra={"metavar": "NAME=VALUE"})
    criterion: Literal[CRITERIA] = Field(
        "l1", description="how channels are ranked (activation and taylor run probe_samples training images)")
    probe_samples: PositiveInt = Field(256, description="training images for the activation and taylor criteria")
    rounds: PositiveInt = Field(1, description="prune then fine-tune this many times, reaching ratio at the end")
    min_channels: PositiveInt = Field(1, description="channels always kept per layer")
    skip: list[str] = Field(default_factory=list, description="layers whose channels stay")

    RENAMED: ClassVar[dict] = {"protect": "skip", "probe": "probe_samples"}

    @field_validator("per_layer")
    @classmethod
    def _ratios(cls, v):
        return _check_ratios(v, "per-layer ratios")


class ClusterConfig(FineTune):
    """Weight clustering with TFMOT's cluster_weights, then strip_clustering."""

    epochs: PositiveInt = Field(1, description="fine-tune epochs")
    clusters: int = Field(16, ge=2, le=256, description="shared values per kernel")
    init: Literal[CLUSTER_INITS] = Field(
        "kmeans_plus_plus", description="centroid initialization")
    skip: list[str] = Field(default_factory=list, description="layers left unclustered")
    preserve_sparsity: Optional[bool] = Field(
        None, description="keep a pruned kernel's zeros (zero becomes one of its values)",
        json_schema_extra={"shown_default": "for kernels at least 10% zero"})


class QuantizeConfig(FineTune):
    """Post-training quantization (dynamic, float16, int8) or quantization-aware training (qat)."""

    epochs: PositiveInt = Field(1, description="fine-tune epochs (qat)")
    mode: Literal[QUANTIZE_MODES] = Field(
        "int8", description="dynamic-range, float16 or full-integer post-training, or quantization-aware training")
    int8_io: bool = Field(False, description="int8 input and output instead of float (int8 and qat)")
    representative_samples: PositiveInt = Field(500, description="training images used to calibrate int8")


class RemoveConfig(Distill):
    """Layer removal: named layers or residual blocks taken out and rewired, then a fine-tune."""

    layers: list[str] = Field(default_factory=list, description="layers or blocks to remove, e.g. [conv3, block2]")
    epochs: NonNegativeInt = Field(1, description="fine-tune epochs after the removal (0: none)")
    lr: Optional[PositiveFloat] = Field(None, description="fine-tune rate",
                                        json_schema_extra={"shown_default": RECIPE_LR})
    batch_size: Optional[PositiveInt] = Field(None, description="fine-tune batch size",
                                              json_schema_extra={"shown_default": RECIPE_BATCH})
    analyze: bool = Field(False, description="measure the model without each removable layer or block")
    analyze_epochs: NonNegativeInt = Field(0, description="fine-tune epochs per analyzed candidate")
    max_drop: Optional[float] = Field(None, ge=0, le=100, allow_inf_nan=False,
                                      description="with analyze: remove the most within this many points")

    RENAMED: ClassVar[dict] = {"budget": "max_drop"}


class DownsampleConfig(Distill):
    """Downsampling: a convolution's stride multiplied, so every later layer works on smaller maps, then a
    fine-tune."""

    layer: Optional[str] = Field(None, description="the convolution whose stride grows",
                                 json_schema_extra={"metavar": "CONV",
                                                    "shown_default": "the first stride-1 conv at the input's size"})
    factor: int = Field(2, ge=2, le=4, description="what its stride is multiplied by")
    epochs: NonNegativeInt = Field(2, description="fine-tune epochs after the change (0: none)")
    lr: Optional[PositiveFloat] = Field(None, description="fine-tune rate",
                                        json_schema_extra={"shown_default": RECIPE_LR})
    batch_size: Optional[PositiveInt] = Field(None, description="fine-tune batch size",
                                              json_schema_extra={"shown_default": RECIPE_BATCH})


class FoldPoolConfig(StepConfig):
    """Pool folding: each 2×2 max-pool after a stride-1 conv becomes part of a stride-2 conv."""

    layers: Optional[list[str]] = Field(None, description="only the pools after these convs",
                                        json_schema_extra={"metavar": "CONV",
                                                           "shown_default": "every one that can be folded"})
    measure: Optional[bool] = Field(None, description="time both float32 TFLite files (1 thread) and report the "
                                                      "change", json_schema_extra={"shown_default": "on"})


class ChainDistill(StepConfig):
    """Knowledge distillation for every fine-tune of ``optimize.steps``: each step learns from the
    model the chain starts from, or from ``teacher``."""

    teacher: Optional[str] = Field(None, description="a run directory or model file to learn from instead of the "
                                                     "chain's input model", json_schema_extra={"metavar": "RUN|MODEL"})
    temperature: PositiveFloat = Field(4.0, description="softening temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the teacher's soft targets")


def _located(exc: ValidationError, prefix: tuple) -> list:
    """``exc``'s errors, each located under ``prefix``."""
    return [{"type": e["type"], "loc": (*prefix, *e["loc"]), "input": e.get("input"),
             **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in exc.errors()]


def _chain_steps(value) -> tuple[list, list]:
    """``(steps, errors)``: each ``{name: settings}`` of ``optimize.steps`` checked by its step's
    config; an error's location is ``steps.<i>.<name>.<key>``."""
    if not isinstance(value, list):
        return value, [{"type": "list_type", "loc": ("steps",), "input": value}]
    out, errors = [], []
    names = [s.name for s in STEPS]
    for i, item in enumerate(value):
        if not (isinstance(item, dict) and len(item) == 1):
            errors.append({"type": "value_error", "loc": ("steps", i), "input": item,
                           "ctx": {"error": ValueError(f"expected one {{step: settings}} mapping, one of: "
                                                       f"{', '.join(names)}")}})
            continue
        ((name, settings),) = item.items()
        if name not in names:
            errors.append({"type": "value_error", "loc": ("steps", i, name), "input": None, "ctx": {"error": ValueError(
                f"unknown step '{name}'{did_you_mean(name, names)}; registered steps: {', '.join(names)}")}})
            continue
        if settings is not None and not isinstance(settings, dict):
            errors.append({"type": "dict_type", "loc": ("steps", i, name), "input": settings})
            continue
        config = STEPS[name].config
        renamed = getattr(config, "RENAMED", {})
        settings = dict(settings or {})
        for old in [k for k in settings if k in renamed]:
            errors.append({"type": "value_error", "loc": ("steps", i, name, old), "input": None,
                           "ctx": {"error": ValueError(f"renamed to {renamed[old]}")}})
            del settings[old]
        try:
            settings = {} if config is None else config.model_validate(settings).model_dump(
                exclude_unset=True, mode="json")
        except ValidationError as exc:
            errors += _located(exc, ("steps", i, name))
            continue
        out.append({name: settings})
    return out, errors


class Optimize(Config):
    """The settings of each step, under its name. A step registered later (see
    :func:`tfopt.steps.register`) has its section here too, checked by its own config class.

    ``steps`` is a chain to replay in order (``tfopt replay``), each ``{step name: settings}``,
    as ``tfopt optimize`` writes it to ``optimize.yaml``; ``distill`` the distillation of its
    fine-tunes."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=(), defer_build=True)

    prune: Optional[PruneConfig] = None
    structured: Optional[StructuredConfig] = None
    cluster: Optional[ClusterConfig] = None
    quantize: Optional[QuantizeConfig] = None
    remove: Optional[RemoveConfig] = None
    steps: Optional[list[dict[str, dict]]] = Field(None, description="a chain of steps to replay in order, each "
                                                                      "{step name: its settings}")
    distill: Optional[ChainDistill] = Field(None, description="distillation of the chain's fine-tunes")

    @classmethod
    def extra_keys(cls) -> list[str]:
        """The sections of registered steps beyond the built-in fields."""
        return [s.name for s in STEPS if s.config is not None and s.recipe_section == f"optimize.{s.name}"
                and s.name not in cls.model_fields]

    @classmethod
    def extra_class(cls, key: str):
        """The config class of a registered step's section."""
        return STEPS[key].config

    @model_validator(mode="before")
    @classmethod
    def _registered_sections(cls, data):
        if not isinstance(data, dict):
            return data
        out, errors, known = dict(data), [], set(cls.extra_keys())
        for key, value in data.items():
            if key == "steps" and value is not None:
                out[key], found = _chain_steps(value)
                errors += found
                continue
            if key in cls.model_fields:
                continue
            if key not in known:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
                continue
            try:
                out[key] = None if value is None else STEPS[key].config.model_validate(value)
            except ValidationError as exc:
                errors += _located(exc, (key,))
        if errors:  # the declared sections' problems too, so that all are reported at once
            for key, value in data.items():
                if key in cls.model_fields and key != "steps" and value is not None:
                    try:
                        TypeAdapter(cls.model_fields[key].annotation).validate_python(value)
                    except ValidationError as exc:
                        errors += _located(exc, (key,))
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out


class Export(StepConfig):
    tflite: list[Literal[TFLITE_MODES]] = Field(
        default_factory=lambda: ["float32"], description="TFLite files to write")
    int8_io: bool = Field(False, description="int8 input and output for int8 files")
    min_agreement_float: float = Field(0.999, ge=0, le=1, description="top-1 agreement TFLite vs Keras, float modes")
    min_agreement_int8: float = Field(0.99, ge=0, le=1, description="the same for int8 and dynamic-range files")
    representative_samples: PositiveInt = Field(500, description="training images used to calibrate int8")


def structured_token(settings: dict) -> str:
    """A channel cut's part of a candidate id: ``ch<label>`` for a rung the search numbered (its
    sweep level), else the per-layer ratios (``ch-conv160``) or the ratio in percent (``ch50``)."""
    if settings.get("label") is not None:
        return f"ch{settings['label']}"
    if settings.get("per_layer"):
        return "ch-" + "-".join(f"{name}{round(r * 100)}" for name, r in settings["per_layer"].items())
    return f"ch{round(settings.get('ratio', 0.5) * 100)}"


def prune_token(settings: dict) -> str:
    """A prune's part of a candidate id: ``p2of4`` (m:n), ``p<label>`` for a sweep level, else the
    allocation and the overall sparsity in percent (``perk90``); ``act`` appended when the
    activation criterion ranks the weights."""
    if settings.get("m_by_n"):
        m, n = settings["m_by_n"]
        return f"p{m}of{n}"
    act = "act" if settings.get("criterion") == "activation" else ""
    if settings.get("label") is not None:
        return f"p{settings['label']}{act}"
    return f"p{settings.get('allocation', 'erk')}{round(settings.get('sparsity', 0.8) * 100)}{act}"


def cluster_token(settings: dict) -> str:
    """A clustering's part of a candidate id: ``c16``."""
    return f"c{settings.get('clusters', 16)}"


def remove_token(settings: dict) -> str:
    """A layer removal's part of a candidate id: ``rm-conv3``."""
    return "rm-" + "-".join(settings.get("layers") or [])


def fold_pool_token(settings: dict) -> str:
    """A pool folding's part of a candidate id: ``fp-conv1`` (``fp-all``: every foldable pool)."""
    layers = settings.get("layers")
    return "fp-" + ("-".join(layers) if layers else "all")


def downsample_token(settings: dict) -> str:
    """A downsampling's part of a candidate id: ``ds-conv1`` (``ds3-conv1`` for a factor of 3)."""
    factor = settings.get("factor", 2)
    return f"ds{'' if factor == 2 else factor}-{settings.get('layer') or 'first'}"


#: The built-in steps' parts of candidate ids, by step name (their registrations' ``token=``).
TOKENS = {"structured": structured_token, "prune": prune_token, "cluster": cluster_token, "remove": remove_token,
          "fold_pool": fold_pool_token, "downsample": downsample_token}


def quantize_suffix(cfg) -> str:
    """The run folder suffix of ``tfopt quantize``: the mode (``int8``, ``qat``, ...)."""
    return "qat" if cfg.mode == "qat" else cfg.mode


def remove_suffix(cfg):
    """``removed``; None when the settings only analyze (no layers, no max_drop): no run is written."""
    return None if cfg.analyze and cfg.max_drop is None and not cfg.layers else "removed"
