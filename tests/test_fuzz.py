"""Property-based fuzzing of recipes and ``--set``: bad input never gives a traceback.

Every example mutates a bundled recipe (deleted and unknown keys, type changes, misspelt
names, out-of-range numbers, tune specs, aliases, broken YAML, odd encodings) or adds
``--set`` overrides, runs ``tfopt validate`` in-process and asserts: exit status 0 or 2, no
exception escapes, and every schema problem is named by its dotted key. A second property
builds a sample of the recipes validate accepted: none may fail at build time.

``TFOPT_FUZZ_EXAMPLES`` sets the number of examples (default 300; ``make test-slow`` runs
5,000 in ``test_fuzz_validate_many``).
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfopt.cli import cli
from tfopt.errors import RecipeError
from tfopt.config.recipe import bundled_recipes, read_recipe_data, validate
from tfopt.tune.space import find_specs, search_from_data

EXAMPLES = int(os.environ.get("TFOPT_FUZZ_EXAMPLES", "300"))
RECIPES = {name: path.read_text() for name, path in bundled_recipes().items()}
NAMES = sorted(RECIPES)

# Problems about the file as a whole carry no key; every other problem line starts "  key: ".
FILE_LEVEL = ("invalid YAML", "the recipe file", "a recipe must be a YAML mapping", "the YAML stands for",
              "an alias at line", "the key '", "nesting deeper", "--set ", "no tune specs found")

WORDS = ["relu", "adam", "conv2d", "dense", "cosine", "accuracy", "same", "digits", "mnist", "max_pool", "int8",
         "step", "auto", "linear", "he_normal", "val_accuracy", "random", "hyperband"]
ODD_NUMBERS = [0, -1, -0.5, 1, 2**31, 2**63, 10**30, 1e308, 1e-308, math.inf, -math.inf, math.nan, 0.999999,
               1.5, 7, 3.0]
ODD_VALUES = ODD_NUMBERS + [True, False, None, "", "x", "1e20", "0x10", [], {}, [1], [1, 2, 3], {"a": 1},
                            "a\x00b", "é", "-x", "..", "/abs", "bn1", "input"]
SPECS = [
    {"tune": "int", "min": 1, "max": 4},
    {"tune": "int", "min": 1, "max": 10**9},
    {"tune": "float", "min": 1e-4, "max": 1e-1, "sampling": "log"},
    {"tune": "float", "min": 0, "max": 1, "sampling": "log"},
    {"tune": "choice", "values": [16, 32]},
    {"tune": "choice", "values": ["adam", {"name": "sgd", "momentum": 0.9}]},
    {"tune": "choice", "values": [1]},
    {"tune": "bool"},
    {"tune": "nope"},
    {"tune": "int", "min": 5, "max": 1},
]


def _paths(node, prefix=()):
    """Every path to a value in a nested mapping/list."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _misspell(word: str, draw) -> str:
    if len(word) < 2:
        return word + "x"
    i = draw(st.integers(0, len(word) - 2))
    return word[:i] + word[i + 1] + word[i] + word[i + 2:] if word[i] != word[i + 1] else word + "e"


@st.composite
def mutated(draw):
    """``(text_or_bytes, overrides)`` for one example."""
    name = draw(st.sampled_from(NAMES))
    text = RECIPES[name]
    data = yaml.safe_load(text)
    overrides = []
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        op = draw(st.sampled_from(["delete", "unknown", "retype", "misspell", "number", "spec", "dotted",
                                   "set", "set_bad"]))
        path = draw(st.sampled_from(paths))
        parent, key = _get(data, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "unknown":
            node = _get(data, path) if isinstance(_get(data, path), dict) else parent
            if isinstance(node, dict):
                node[draw(st.sampled_from(["epoch", "filter", "lr_rate", "x", "train.epochs", "tune", "typ"]))] = 1
        elif op == "retype":
            # a copy: a later mutation must not change the shared list (hypothesis replays draws)
            parent[key] = copy.deepcopy(draw(st.sampled_from(ODD_VALUES)))
        elif op == "misspell":
            value = _get(data, path)
            parent[key] = _misspell(value, draw) if isinstance(value, str) else draw(st.sampled_from(WORDS))
        elif op == "number":
            parent[key] = draw(st.sampled_from(ODD_NUMBERS))
        elif op == "spec":
            parent[key] = copy.deepcopy(draw(st.sampled_from(SPECS)))
        elif op == "dotted":
            data[".".join(map(str, path))] = draw(st.sampled_from(ODD_VALUES[:6]))
        elif op == "set":
            value = draw(st.sampled_from(["3", "0", "-1", "true", "1e308", ".inf", "[1, 2]", "{name: adam}",
                                          "'x'", "", "{a: &x [*x]}", "[", "relu", "null"]))
            overrides.append(f"{'.'.join(map(str, path))}={value}")
        else:
            overrides.append(draw(st.sampled_from(["noequals", "=3", "a..b=1", "model.layers.99.filters=3",
                                                   "train.epochs.x=1", "seed=2**32"])))
        if not isinstance(data, dict) or not data:
            break
    out = yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if isinstance(data, dict) else "[]"
    form = draw(st.sampled_from(["plain"] * 6 + ["truncate", "junk", "utf16", "latin1", "alias", "laughs", "deep",
                                                 "dupkey"]))
    if form == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif form == "junk":
        i = draw(st.integers(0, len(out)))
        out = out[:i] + draw(st.sampled_from(["\t", ":", "{", "]", "- ", "&a ", "*b", "!!python/object ", "%"])) + out[i:]
    elif form == "utf16":
        return out.encode("utf-16"), overrides
    elif form == "latin1":
        return ("# caf\xe9\n" + out).encode("latin-1"), overrides
    elif form == "alias":
        out += "extra_anchor: &x {k: [1, 2]}\nalias_use: *x\n"
    elif form == "laughs":
        out = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else '1, 1, 1, 1, 1, 1, 1, 1, 1'}]\n"
                      for i in range(8)) + out
    elif form == "deep":
        out += "deep: " + "[" * 300 + "]" * 300 + "\n"
    elif form == "dupkey":
        out += "seed: 1\nseed: 2\n"
    return out, overrides


def _check(tmp_path, content, overrides):
    """``tfopt validate`` exits 0 or 2 without a traceback, and names every schema problem by key."""
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    result = CliRunner().invoke(cli, ["validate", str(path)] + [f"--set={o}" for o in overrides])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output}")
    assert "Traceback" not in result.output
    try:
        data = read_recipe_data(path, overrides)
        search_from_data(data, str(path)) if find_specs(data) else validate(data, str(path))
    except RecipeError as exc:
        assert result.exit_code == 2
        for key, msg in exc.problems:
            assert key or msg.startswith(FILE_LEVEL), f"a schema problem without its key: {msg!r}"
    else:
        assert result.exit_code == 0, result.output


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(example=mutated())
def test_fuzz_validate(tmp_path, example):
    _check(tmp_path, *example)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(example=mutated())
def test_fuzz_validate_many(tmp_path, example):
    _check(tmp_path, *example)


@st.composite
def value_mutated(draw):
    """A bundled recipe with one to three values changed (keys kept), as a mapping."""
    name = draw(st.sampled_from([n for n in NAMES if not n.startswith("search/")]))
    data = yaml.safe_load(RECIPES[name])
    data.setdefault("name", "fuzz")
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data.get("model", {}), ("model",)) if len(p) > 1]
        path = draw(st.sampled_from(paths))
        parent = _get(data, path[:-1])
        if isinstance(parent, dict) and path[-1] in ("type", "name"):
            continue
        parent[path[-1]] = draw(st.sampled_from([1, 2, 3, 5, 7, 16, 64, 0.5, "valid", "same", [2, 1], [1, 3],
                                                 "relu6", "leaky_relu", True, False, "projection", "identity"]))
    return data


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=value_mutated())
def test_validated_recipes_build(data):
    """A recipe validate accepts builds: shape, name and value problems are all caught up front."""
    from tfopt.models.builder import build_model

    try:
        recipe = validate(data, "fuzz")
    except RecipeError:
        return
    shape = recipe.input_shape()
    if shape is None:
        return
    model = build_model(recipe.model, shape, name=recipe.name)
    assert model.output_shape[1:] == (10,)
