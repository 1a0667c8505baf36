"""The recipe: schema, loading, ``--set`` overrides and validation. Imports no TensorFlow.

A recipe is YAML with the sections ``name``, ``seed``, ``data``, ``model``, ``train`` and
``output``. Every problem is reported at once, by file and dotted key::

    recipe.yaml: 2 problem(s) in the recipe:
      train.optimizer.name: unknown optimizer 'adma' (did you mean 'adam'?); available: sgd, ...
      model.layers.0.filters: Input should be greater than 0 (got -3)
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, PositiveInt, ValidationError, field_validator

from tfopt.config.callbacks import CALLBACKS
from tfopt.config.data import DATASETS
from tfopt.errors import RecipeError
from tfopt.config.limits import MAX_DEPTH, MAX_LAYERS, MAX_SEED, YamlLimitError, load_yaml, read_text
from tfopt.config.losses import LOSSES, METRICS
from tfopt.config.layers import INITIALIZERS, LAYERS, Initializer, Regularizer, layer_names, plan
from tfopt.config.steps import Export, Optimize
from tfopt.config.optimizers import OPTIMIZERS
from tfopt.config.registry import Config
from tfopt.config.validation import format_validation_errors
from tfopt.config.schedules import LRPolicy
from tfopt.config.train import Compile, Distribute
from tfopt.config.tune import TuneConfig, find_specs

KNOWN_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10}
RUN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class Model(Config):
    """The network: an ordered list of layers plus recipe-wide layer defaults."""

    input_shape: Optional[tuple[PositiveInt, PositiveInt, PositiveInt]] = Field(
        None, description="default: the data's image shape"
    )
    kernel_initializer: Initializer = "glorot_uniform"
    kernel_regularizer: Optional[Regularizer] = Field(None, description="default for every conv/dense kernel")
    bias_regularizer: Optional[Regularizer] = Field(None, description="default for every bias")
    layers: list[LAYERS.union()] = Field(min_length=1)

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_count_within_limit(cls, v):
        if isinstance(v, list) and len(v) > MAX_LAYERS:
            raise ValueError(f"{len(v):,} layers are over the limit of {MAX_LAYERS:,} (limit: layers after repeat)")
        return v


class Monitor(Config):
    monitor: str = "val_loss"
    mode: Literal["auto", "min", "max"] = "auto"

    def direction(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "max" if ("acc" in self.monitor or self.monitor.endswith("auc")) else "min"


class EarlyStopping(Monitor):
    patience: PositiveInt = 5
    min_delta: float = Field(0.0, ge=0)
    restore_best_weights: bool = True


class Train(Config):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 64
    loss: LOSSES.union() = Field(default_factory=lambda: LOSSES.get("sparse_categorical_crossentropy"))
    metrics: list[METRICS.union()] = Field(default_factory=lambda: [METRICS.get("accuracy")])
    optimizer: OPTIMIZERS.union() = Field(default_factory=lambda: OPTIMIZERS.get("adam"))
    lr: LRPolicy = Field(default_factory=LRPolicy)
    early_stopping: Optional[EarlyStopping] = None
    checkpoint: Monitor = Field(default_factory=Monitor, description="what 'best' means for best.keras")
    restore_best: bool = Field(False, description="finish with the best checkpoint's weights")
    stop_on_nan: bool = True
    batch_norm_refresh: int = Field(
        25, ge=0, description="before each validation, re-estimate BatchNormalization's moving statistics from this "
                              "many training batches with the current weights (0: keep the moving averages)")
    verbose: Literal["auto", 0, 1, 2] = "auto"
    compile: Compile = Field(default_factory=Compile)
    distribute: Distribute = Field("none", description="none | mirrored (local devices) | multi_worker (TF_CONFIG)")


class Output(Config):
    dir: str = "saved_models"
    run_name: Optional[str] = Field(None, description="default: the recipe's name; one plain folder name")
    tensorboard: bool = True
    saved_model: bool = True
    plot: bool = True

    _run_name = field_validator("run_name")(lambda cls, v: check_run_name(v))


def check_run_name(v):
    """A run or recipe name must be one plain folder name: it is joined to the output folder."""
    if v is not None and not re.fullmatch(RUN_NAME, v):
        why = (" (it would write outside the output folder)" if v.startswith((".", "/", "~")) or "/" in v or "\\" in v
               else "")
        raise ValueError(f"'{v}' is not a plain folder name{why}: use letters, digits, '_', '-' and '.', starting "
                         f"with a letter or digit, at most 128 characters")
    return v


class Recipe(Config):
    name: str
    seed: int = Field(0, ge=0, le=MAX_SEED)
    data: DATASETS.union()
    model: Model
    train: Train = Field(default_factory=Train)
    callbacks: list[CALLBACKS.union()] = Field(default_factory=list)
    optimize: Optimize = Field(default_factory=Optimize)
    export: Export = Field(default_factory=Export)
    output: Output = Field(default_factory=Output)
    tune: Optional[TuneConfig] = Field(None, description="how `tfopt tune` searches the tune specs")

    _name = field_validator("name")(lambda cls, v: check_run_name(v))

    def input_shape(self):
        return self.model.input_shape or self.data.input_shape()

    def lr_policy(self) -> LRPolicy:
        """``train.lr``, or the ``learning_rate_decay`` callback entry that replaces it."""
        entry = self.callback("learning_rate_decay")
        return entry.policy() if entry else self.train.lr

    def callback(self, name):
        return next((c for c in self.callbacks if c.name == name), None)

    def run_name(self) -> str:
        return self.output.run_name or self.name

    def to_yaml(self) -> str:
        """The resolved recipe, every default filled in; it loads back to an equal recipe."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------------------
# Loading


def parse_yaml(text: str, source: str):
    """A recipe mapping from YAML text, within :mod:`tfopt.config.limits`; raises :class:`RecipeError`."""
    try:
        data = load_yaml(text)
    except YamlLimitError as exc:
        raise RecipeError(source, [(None, str(exc))]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "nesting depth" in problem:
            problem += f" (limit: nesting depth {MAX_DEPTH})"
        raise RecipeError(source, [(None, f"invalid YAML{where}: {problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [(None, f"a recipe must be a YAML mapping; got {type(data).__name__}")])
    return data


def apply_overrides(data: dict, overrides, source: str) -> dict:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    data = copy.deepcopy(data)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append((None, f"--set '{item}': expected KEY=VALUE, e.g. train.epochs=3"))
            continue
        try:
            value = load_yaml(raw) if raw.strip() else raw
        except YamlLimitError as exc:
            problems.append((key, f"--set value: {exc}"))
            continue
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        node = data
        try:
            for i, part in enumerate(parts[:-1]):
                node = _child(node, part, parts[i + 1])
            _assign(node, parts[-1], value)
        except (KeyError, IndexError, TypeError) as exc:
            problems.append((key, f"--set cannot reach this key: {exc.args[0]}"))
    if problems:
        raise RecipeError(source, problems)
    return data


def _child(node, part, next_part):
    if isinstance(node, list):
        idx = _index(node, part)
        return node[idx]
    if not isinstance(node, dict):
        raise TypeError(f"'{part}' is inside a value that is not a mapping")
    current = node.get(part)
    if isinstance(current, str):
        node[part] = current = {"name": current}
    elif current is None:
        node[part] = current = {}
    return current


def _assign(node, part, value):
    if isinstance(node, list):
        node[_index(node, part)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise TypeError(f"'{part}' is inside a value that is not a mapping")


def _index(node, part):
    if not part.lstrip("-").isdigit():
        raise TypeError(f"'{part}' is not a list index")
    idx = int(part)
    if not -len(node) <= idx < len(node):
        raise IndexError(f"index {idx} is out of range for a list of {len(node)}")
    return idx


def validate(data: dict, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping; raise :class:`RecipeError` listing every problem.

    A recipe with tune specs is refused here: it is a search space, not one recipe
    (see :mod:`tfopt.tune.space`).
    """
    specs = find_specs(data)
    if specs:
        raise RecipeError(source, [(path, "is a tune spec; this command needs one value here. Run `tfopt tune` "
                                          "and use the best recipe it writes, or fix the value with "
                                          f"--set {path}=VALUE") for path in specs])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, format_validation_errors(exc, data, Recipe)) from None
    problems = _cross_checks(recipe)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def _cross_checks(recipe: Recipe):
    problems = []
    has_val = recipe.data.validation_split > 0
    monitored = [("train.checkpoint.monitor", recipe.train.checkpoint.monitor)]
    if recipe.train.early_stopping:
        monitored.append(("train.early_stopping.monitor", recipe.train.early_stopping.monitor))
    if recipe.train.lr.plateau:
        monitored.append(("train.lr.plateau.monitor", recipe.train.lr.plateau.monitor))
    for key, monitor in monitored:
        if monitor.startswith("val_") and not has_val:
            problems.append((key, f"monitors '{monitor}' but data.validation_split is 0; "
                                  f"monitor '{monitor[4:]}' or hold out validation data"))
    metrics = [m.name if m.name != "top_k" else f"top_{m.k}" for m in recipe.train.metrics]
    for i, m in enumerate(metrics):
        if m in metrics[:i]:
            problems.append((f"train.metrics.{i}", f"'{m}' is already listed at train.metrics.{metrics.index(m)}; "
                                                   f"list each metric once"))
    names = [c.name for c in recipe.callbacks]
    for name in set(names):
        if names.count(name) > 1:
            problems.append((f"callbacks.{names.index(name)}.name", f"'{name}' is listed {names.count(name)} times"))
    if "learning_rate_decay" in names and "lr" in recipe.train.model_fields_set:
        problems.append((f"callbacks.{names.index('learning_rate_decay')}",
                         "learning_rate_decay replaces train.lr; give the schedule in one place, not both"))
    try:
        layer_names(recipe.model.layers)
    except ValueError as exc:
        key, _, msg = str(exc).partition(": ")
        return problems + [(key, msg)]
    shape = recipe.input_shape()
    if shape is not None:
        try:
            steps = plan(recipe.model.layers, shape)
        except ValueError as exc:
            key, _, msg = str(exc).partition(": ")
            problems.append((key, msg))
        else:
            classes = KNOWN_CLASSES.get(recipe.data.name) or getattr(recipe.data, "classes", None)
            out = steps[-1][3]
            if classes and out != (classes,):
                problems.append((f"model.layers.{len(steps) - 1}",
                                 f"the model ends with shape {'×'.join(map(str, out))} but "
                                 f"{recipe.data.name} has {classes} classes; end with dense units: {classes}"))
    return problems


def load_recipe(path, overrides=()) -> Recipe:
    """Read, override and validate a recipe file.

    Args:
        path: a recipe file, or the name of a bundled recipe (``tfopt recipes`` lists them).
        overrides: ``"dotted.key=value"`` strings applied before validation.

    Returns:
        The validated :class:`Recipe`.

    Raises:
        RecipeError: a file that is missing or unusable (not UTF-8 text, over the size limit), or
            every problem of the recipe at once, each with its dotted key.

    Example:
        >>> r = load_recipe("recipes/quickstart.yaml", ["train.epochs=3"])
        >>> r.train.epochs
        3
    """
    return validate(read_recipe_data(path, overrides), str(path))


def read_recipe_data(path, overrides=()) -> dict:
    """The raw mapping of a recipe file, ``name`` defaulted to the file's stem, overrides applied."""
    source = str(path)
    if "\x00" in source:
        raise RecipeError(repr(source), [(None, "the recipe path contains a NUL byte")])
    p = bundled_or_path(path)
    try:
        text = read_text(p)
    except FileNotFoundError:
        hint = ""
        bundled = bundled_recipes()
        if p.name in bundled or f"{p.name}.yaml" in bundled:
            hint = f"; a bundled recipe has this name: {bundled.get(p.name) or bundled[p.name + '.yaml']}"
        raise RecipeError(source, [(None, f"recipe file not found{hint}")]) from None
    except YamlLimitError as exc:
        raise RecipeError(source, [(None, f"the recipe file {exc}")]) from None
    data = parse_yaml(text, source)
    data.setdefault("name", p.stem)
    return apply_overrides(data, overrides, source)


def bundled_or_path(path) -> Path:
    """``path``, or the bundled recipe it names when it is a bare name (``quickstart``,
    ``search/digits_hyperband``: no ``.yaml`` suffix) and no such file exists here."""
    p = Path(path)
    if p.suffix or p.exists() or p.is_absolute():
        return p
    return bundled_recipes().get(f"{p}.yaml", p)


def bundled_recipes(searches: bool = True) -> dict[str, Path]:
    """Bundled recipe files by file name; the searches (for ``tfopt tune``) as ``search/<name>``."""
    root = Path(__file__).resolve().parent.parent / "recipes"  # tfopt/recipes, inside the package
    found = {p.name: p for p in sorted(root.glob("*.yaml"))}
    if searches:
        found.update({f"search/{p.name}": p for p in sorted(root.glob("search/*.yaml"))})
    return found


def recipe_headline(path: Path) -> str:
    """The first comment line of a recipe file: what it shows."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


__all__ = ["Recipe", "load_recipe", "validate", "apply_overrides", "parse_yaml", "INITIALIZERS"]
