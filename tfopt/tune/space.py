"""A recipe with tune specs: find them, validate them, and make concrete recipes from values.

Each tune spec stands where a value would. The search space is checked before any trial:
the specs themselves, the recipe with every spec at its default, and each spec's extreme or
listed values with the others at their defaults, so a value the schema refuses (filters: 0,
an unknown optimizer) is reported by its dotted key up front. A combination of values that
is only impossible together (say, too many stride-2 layers) fails its own trial, with the
reason, and the search goes on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pydantic import BaseModel, ValidationError

from tfopt.errors import RecipeError
from tfopt.config.validation import did_you_mean
from tfopt.config.recipe import read_recipe_data, validate
from tfopt.config.validation import format_validation_errors
from tfopt.steps import STEPS
from tfopt.config.tune import KEY, SIZE_METRICS, SPECS, TuneConfig, find_specs, label

RESERVED = {"trial", "status", "budget", "continues", "score", "loss", "accuracy", "lr", "epochs", "epochs_trained",
            "seconds", "error", *SIZE_METRICS}


class _Holder(BaseModel):
    spec: SPECS.union()


def set_path(data: dict, path: str, value) -> dict:
    """A copy of ``data`` with the value at dotted ``path`` replaced."""
    data = copy.deepcopy(data)
    node, parts = data, path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _dotted_keys(data, path="") -> list[str]:
    """Dotted paths of mapping keys that themselves hold a '.', which a dotted path cannot address."""
    found = []
    if isinstance(data, dict):
        for k, v in data.items():
            key = str(k)
            here = f"{path}.{key}" if path else key
            if "." in key:
                found.append(here)
            found += _dotted_keys(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += _dotted_keys(v, f"{path}.{i}")
    return found


def parse_specs(raw: dict[str, dict], data: dict | None = None) -> tuple[dict, list]:
    """Validate raw specs; returns ``({path: Spec}, problems)``."""
    specs, problems = {}, []
    dotted = _dotted_keys(data) if data is not None else []
    for path, node in raw.items():
        clash = next((d for d in dotted if path == d or path.startswith(d + ".")), None)
        if clash:
            problems.append((clash, "a tune spec sits under a key whose name holds a '.'; keys in a search "
                                    "recipe cannot contain '.' (nest the parts as mappings instead)"))
            continue
        nested = find_specs({"x": {k: v for k, v in node.items() if k != KEY}})
        if nested:
            problems.append((path, "tune specs cannot be nested; declare one tune spec per value"))
            continue
        try:
            specs[path] = _Holder.model_validate({"spec": node}).spec
        except ValidationError as exc:
            for key, msg in format_validation_errors(exc, {"spec": node}, _Holder):
                sub = key.removeprefix("spec").lstrip(".")
                problems.append((f"{path}.{sub}" if sub else path, msg))
    for path, spec in specs.items():
        if spec.name and (spec.name in RESERVED or spec.name.startswith(("val_", "fit_", "test_"))):
            problems.append((f"{path}.name", f"'{spec.name}' is the name of a column trials report; choose "
                                             f"another (reserved: {', '.join(sorted(RESERVED))}, val_*, fit_*, test_*)"))
    names = [s.name or p for p, s in specs.items()]
    for path, spec in specs.items():
        if spec.name and names.count(spec.name) > 1:
            problems.append((f"{path}.name", f"the name '{spec.name}' is used by more than one tune spec"))
    return specs, problems


@dataclass
class Search:
    """A validated search: the raw recipe, its specs and the recipe at the defaults."""

    data: dict
    specs: dict
    source: str
    base: object = field(repr=False)

    @property
    def config(self) -> TuneConfig:
        return self.base.tune or TuneConfig()

    def names(self) -> dict[str, str]:
        """Hyperparameter name for each spec path."""
        return {p: s.name or p for p, s in self.specs.items()}

    def declare(self, hp) -> None:
        names = self.names()
        for path, spec in self.specs.items():
            spec.declare(hp, names[path])

    def values(self, hp_values: dict) -> dict:
        """Recipe values by path from keras-tuner's values (missing ones at their defaults)."""
        names = self.names()
        return {p: (s.decode(hp_values[names[p]]) if names[p] in hp_values else s.initial())
                for p, s in self.specs.items()}

    def concrete(self, values: dict) -> dict:
        """The raw recipe with each spec replaced by ``values[path]``."""
        data = self.data
        for path, value in values.items():
            data = set_path(data, path, value)
        return data

    def recipe(self, values: dict, source: str | None = None):
        """Validate the recipe for ``values``; raises :class:`RecipeError`."""
        return validate(self.concrete(values), source or self.source)


def _defaults(specs) -> dict:
    return {p: s.initial() for p, s in specs.items()}


def _objective_problems(recipe, cfg: TuneConfig, specs) -> list:
    problems = []
    obj = cfg.objective
    metrics = ["loss"] + [m.name if m.name != "top_k" else f"top_{m.k}_accuracy" for m in recipe.train.metrics]
    logged = metrics + [f"val_{m}" for m in metrics]
    if recipe.callback("gradient_norm_monitor"):
        logged.append("grad_norm")  # the monitor puts the last global gradient norm in the epoch's logs
    allowed = logged + list(SIZE_METRICS)
    problems += compress_problems(cfg)
    if recipe.train.distribute != "none":
        problems.append(("train.distribute", f"'{recipe.train.distribute}' is refused in a search: a distributed "
                                             "search already runs one trial per worker (KERASTUNER_TUNER_ID), and "
                                             "each trial trains in one process; leave train.distribute at none"))
    if cfg.compress:
        allowed = ["val_accuracy", *SIZE_METRICS, *(f"fit_{m}" for m in logged)]
        if recipe.data.validation_split == 0:
            problems.append(("tune.compress", "a compressed trial is scored on the validation split, but "
                                              "data.validation_split is 0"))
    if obj.metric not in allowed:
        why = " (after tune.compress the trial is scored on its compressed model)" if cfg.compress else ""
        problems.append(("tune.objective.metric", f"'{obj.metric}' is not a metric a trial reports{why}; "
                                                  f"choose one of {', '.join(allowed)}"))
    elif obj.metric.startswith("val_") and recipe.data.validation_split == 0:
        problems.append(("tune.objective.metric", f"'{obj.metric}' needs validation data but "
                                                  f"data.validation_split is 0"))
    if cfg.algorithm == "hyperband" and "train.epochs" in specs:
        problems.append(("train.epochs", "hyperband sets each trial's epochs itself (up to train.epochs); "
                                         "give train.epochs a value"))
    return problems


def compress_problems(cfg: TuneConfig) -> list:
    """``tune.compress`` entries that name no chainable registered step."""
    allowed = [s.name for s in STEPS if s.chain]
    return [(f"tune.compress.{i}", f"unknown step '{name}'{did_you_mean(name, allowed)}; available: "
                                   f"{', '.join(allowed)}") for i, name in enumerate(cfg.compress) if name not in allowed]


def search_from_data(data: dict, source: str) -> Search:
    """Validate a raw recipe holding tune specs; raise :class:`RecipeError` listing every problem."""
    specs, problems = parse_specs(find_specs(data), data)
    if problems:
        raise RecipeError(source, problems)
    if not specs:
        raise RecipeError(source, [(None, "no tune specs found: give at least one value as a spec, e.g. "
                                          "train.lr.initial: {tune: float, min: 1e-4, max: 1e-1, sampling: log}")])
    defaults = _defaults(specs)
    probe = Search(data, specs, source, None)
    checks = {(path, label(v)): (v, _check(probe, {**defaults, path: v})[1])
              for path, spec in specs.items() for v in spec.candidates()[:32]}
    # First the values the schema refuses outright, keyed at their own spec.
    problems = [(path, _refused(v, key, path, msg)) for (path, _), (v, found) in checks.items()
                for key, msg in found if _under(key, path)]
    if not problems:
        base, base_problems = _check(probe, defaults)
        problems = list(base_problems)
        for (path, _), (v, found) in checks.items():
            problems += [(path, _refused(v, key, path, msg)) for key, msg in found if (key, msg) not in base_problems]
        if base is not None:
            problems += _objective_problems(base, base.tune or TuneConfig(), specs)
    if problems:
        raise RecipeError(source, list(dict.fromkeys(problems)))
    return Search(data, specs, source, base)


def _under(key, path) -> bool:
    return bool(key) and (key == path or key.startswith(path + "."))


def _check(search: Search, values: dict):
    try:
        return search.recipe(values), []
    except RecipeError as exc:
        return None, exc.problems


def _refused(value, key, path, msg) -> str:
    return f"the value {value!r} makes the recipe invalid: " + (f"{key}: {msg}" if key and key != path else msg)


def load_search(path, overrides=()) -> Search:
    """Read a recipe file that declares a search space (see :func:`search_from_data`)."""
    data = read_recipe_data(path, overrides)
    return search_from_data(data, str(path))


def check_file(path, overrides=()) -> str:
    """``tfopt validate``: check a recipe file (a search space when it holds tune specs: the
    specs, and each of their values with the others at their defaults) without importing
    TensorFlow. Returns the one-line summary; raises :class:`RecipeError` listing every problem."""
    data = read_recipe_data(path, overrides)
    if find_specs(data):
        search = search_from_data(data, path)
        r, extra = search.base, f", search space of {len(search.specs)} tune specs ({search.config.algorithm})"
    else:
        r, extra = validate(data, path), ""
        if r.tune is not None and compress_problems(r.tune):
            raise RecipeError(path, compress_problems(r.tune))
    shape = r.input_shape()
    return (f"{path}: OK ({r.name}: {len(r.model.layers)} layers, data {r.data.name}"
            + (f", input {'×'.join(map(str, shape))}" if shape else "") + extra + ")")
