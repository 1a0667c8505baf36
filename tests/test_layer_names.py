"""Layer names: what `tfopt validate` accepts, TensorFlow accepts as the root of a name scope."""

import re

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from tfopt.config.recipe import validate
from tfopt.errors import RecipeError

#: TensorFlow's rule for a root name scope (tensorflow/python/framework/ops.py).
TF_ROOT_SCOPE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def recipe_with(name: str) -> dict:
    return {"name": "names", "data": {"name": "synthetic"},
            "model": {"layers": [{"type": "flatten"}, {"type": "dense", "units": 4, "name": name},
                                 {"type": "dense", "units": 10, "activation": "softmax"}]}}


def accepted(name: str) -> bool:
    try:
        validate(recipe_with(name))
        return True
    except RecipeError:
        return False


@pytest.mark.parametrize("name", ["_x", "_", "-a", "a/b", "a b", "é", ""])
def test_names_tensorflow_refuses_are_refused_naming_the_key(name):
    with pytest.raises(RecipeError) as info:
        validate(recipe_with(name))
    assert "model.layers.1.name" in str(info.value)


def test_the_refusal_says_what_a_name_may_hold():
    with pytest.raises(RecipeError) as info:
        validate(recipe_with("_x"))
    assert ("'_x' is not a usable layer name: use ASCII letters, digits, '_' and '-', starting with a letter or "
            "a digit (at most 64 characters)") in str(info.value)


@pytest.mark.parametrize("name", ["x", "fc_1", "3x3", "a-b_c"])
def test_plain_names_pass(name):
    assert accepted(name)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12))
def test_every_accepted_name_is_a_valid_tensorflow_root_scope(name):
    if accepted(name):
        assert TF_ROOT_SCOPE.match(name), name
