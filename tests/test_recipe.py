"""Recipe schema: every problem reported at once, by dotted key, with exact messages."""


import pytest
import yaml

from tests.conftest import python_c, tiny_recipe_dict
from tfopt.errors import RecipeError
from tfopt.config.recipe import Recipe, apply_overrides, load_recipe, validate


def problems(data):
    with pytest.raises(RecipeError) as info:
        validate(data, "r.yaml")
    return dict(info.value.problems)


def test_unknown_optimizer_suggests_the_closest_name():
    got = problems(tiny_recipe_dict(**{"train.optimizer": {"name": "adma"}}))
    assert got == {"train.optimizer.name": "unknown optimizer 'adma' (did you mean 'adam'?); "
                   "available: sgd, adagrad, rmsprop, adam, adamw, nadam"}


def test_all_problems_are_reported_at_once_with_dotted_keys():
    data = tiny_recipe_dict(**{"train.epochs": 0, "train.batch_sise": 8, "train.lr": {"initial": -1}})
    data["model"]["layers"][0]["filters"] = "many"
    data["model"]["layers"][1]["type"] = "maxpool"
    got = problems(data)
    assert set(got) == {"train.epochs", "train.batch_sise", "train.lr.initial",
                        "model.layers.0.filters", "model.layers.1.type"}
    assert got["train.epochs"] == "Input should be greater than 0 (got 0)"
    assert got["train.batch_sise"].startswith("unknown key 'batch_sise' (did you mean 'batch_size'?); allowed here:")
    assert got["model.layers.1.type"].startswith("unknown layer type 'maxpool' (did you mean 'max_pool'?)")
    assert "(got 'many')" in got["model.layers.0.filters"]


def test_error_message_names_the_file():
    with pytest.raises(RecipeError) as info:
        validate(tiny_recipe_dict(**{"seed": -1}), "recipes/x.yaml")
    assert str(info.value).splitlines()[0] == "recipes/x.yaml: 1 problem(s) in the recipe:"
    assert str(info.value).splitlines()[1] == "  seed: Input should be greater than or equal to 0 (got -1)"


def test_schedule_and_layer_args_are_checked():
    got = problems(tiny_recipe_dict(**{"train.lr": {"schedule": {"name": "piecewise", "boundaries": [5, 2],
                                                                  "values": [0.1, 0.01, 0.001]}}}))
    assert got == {"train.lr.schedule": "boundaries must increase strictly; got [5, 2]"}
    got = problems(tiny_recipe_dict(**{"train.optimizer": {"name": "sgd", "clipnorm": 1, "clipvalue": 1}}))
    assert got == {"train.optimizer": "give at most one of clipvalue, clipnorm, global_clipnorm; got clipvalue, clipnorm"}


def test_too_many_pools_is_a_shape_error_naming_the_layer():
    data = tiny_recipe_dict()
    data["model"]["layers"][1:1] = [{"type": "max_pool"}] * 3
    got = problems(data)
    assert got == {"model.layers.4": "pool4 (max_pool) receives 1×1×4, smaller than its 2×2 pooling window; "
                   "too many pooling or strided layers for this input, or use padding: same"}


def test_output_must_match_known_class_count():
    data = tiny_recipe_dict()
    data["model"]["layers"][-1]["units"] = 7
    assert problems(data)["model.layers.3"].startswith("the model ends with shape 7 but synthetic has 4 classes")


def test_val_monitor_without_validation_data():
    got = problems(tiny_recipe_dict(**{"data.validation_split": 0}))
    assert got["train.checkpoint.monitor"].startswith("monitors 'val_loss' but data.validation_split is 0")


def test_invalid_yaml_reports_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata:\n  name: digits\n  validation_split: [0.1\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    (key, msg), = info.value.problems
    assert key is None and msg.startswith("invalid YAML at line 5, column 1:")


def test_missing_recipe_file_mentions_bundled_name():
    with pytest.raises(RecipeError) as info:
        load_recipe("quickstart.yaml")
    assert "recipe file not found; a bundled recipe has this name:" in str(info.value)


def test_set_overrides_are_parsed_and_validated(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(tiny_recipe_dict()))
    r = load_recipe(p, ["train.epochs=7", "train.optimizer.momentum=0.5", "train.optimizer.name=sgd",
                        "model.layers.0.filters=6", "data.augment={translate: 0.1}"])
    assert (r.train.epochs, r.train.optimizer.name, r.train.optimizer.momentum) == (7, "sgd", 0.5)
    assert r.model.layers[0].filters == 6 and r.data.augment.translate == 0.1
    with pytest.raises(RecipeError) as info:
        load_recipe(p, ["train.epochs=zero", "model.layers.9.filters=3", "oops"])
    got = info.value.problems
    assert ("model.layers.9.filters", "--set cannot reach this key: index 9 is out of range for a list of 4") in got
    assert (None, "--set 'oops': expected KEY=VALUE, e.g. train.epochs=3") in got


def test_resolved_recipe_round_trips_with_defaults_filled():
    r = validate(tiny_recipe_dict())
    text = r.to_yaml()
    again = validate(yaml.safe_load(text))
    assert again == r
    dumped = yaml.safe_load(text)
    assert dumped["train"]["optimizer"] == {"clipvalue": None, "clipnorm": None, "global_clipnorm": None,
                                            "name": "adam", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07,
                                            "amsgrad": False}
    assert dumped["model"]["kernel_initializer"] == "glorot_uniform"


def test_bundled_recipes_validate():
    from tfopt.config.recipe import bundled_recipes, recipe_headline

    from tfopt.tune.space import load_search

    found = bundled_recipes()
    assert "quickstart.yaml" in found and len(found) >= 6
    assert "search/digits_hyperband.yaml" in found
    for name, path in found.items():
        if name.startswith("search/"):
            assert load_search(path).specs, name
        else:
            assert isinstance(load_recipe(path), Recipe)
        assert recipe_headline(path), f"{path.name} lacks a header comment"


def test_validation_imports_no_tensorflow():
    code = ("import sys; from tfopt.config.recipe import load_recipe; "
            "load_recipe('recipes/quickstart.yaml'); "
            "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules, 'TF imported'")
    out = python_c(code)
    assert out.returncode == 0, out.stderr


def test_apply_overrides_does_not_mutate_input():
    data = tiny_recipe_dict()
    apply_overrides(data, ["train.epochs=9"], "r")
    assert data["train"]["epochs"] == 3
