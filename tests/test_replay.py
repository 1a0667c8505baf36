"""optimize.yaml is a recipe section: a recipe holding it validates, and ``tfopt replay`` runs its
chain again on the input run: the same steps and settings, the same accuracy within the
search's own noise."""

import copy
import json

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import SMALL_CNN, tiny_recipe_dict
from tfopt.cli import cli
from tfopt.config.recipe import validate
from tfopt.errors import TfoptError


def quiet(*_):
    pass


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from tfopt.training.run import fit

    out = tmp_path_factory.mktemp("replay")
    data = tiny_recipe_dict(**{"train.epochs": 8, "name": "base", "data.test_samples": 400})
    data["model"]["layers"] = copy.deepcopy(SMALL_CNN)
    fit(validate(data), output=out, log=quiet)
    res = run("optimize", out / "base", "--max-candidates", "2", "--epochs", "1", "--max-drop", "5",
              "--output", out / "search")
    assert res.exit_code == 0, res.output
    return out / "base", out / "search" / "base-optimized"


def test_a_recipe_holding_optimize_yaml_validates(searched, tmp_path):
    base, search = searched
    recipe = yaml.safe_load((base / "recipe.yaml").read_text())
    recipe["optimize"] = {**(recipe.get("optimize") or {}),
                          **yaml.safe_load((search / "optimize.yaml").read_text())["optimize"]}
    (tmp_path / "merged.yaml").write_text(yaml.safe_dump(recipe))
    res = run("validate", tmp_path / "merged.yaml")
    assert res.exit_code == 0, res.output


def test_replay_runs_the_chosen_chain_again(searched, tmp_path):
    base, search = searched
    chain = yaml.safe_load((search / "optimize.yaml").read_text())["optimize"]["steps"]
    res = run("replay", base, "--steps", search / "optimize.yaml", "--output", tmp_path)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "base-replayed" / "metrics.json").read_text())
    names = [next(iter(s)) for s in chain]
    assert len(names) >= 2 and "epochs" in chain[0][names[0]]  # a fine-tuned step, then the TFLite file
    assert metrics["steps"] == names
    for asked, used in zip(chain, metrics["replayed"]):
        ((name, settings),) = asked.items()
        assert {k: used[name][k] for k in settings} == settings, (name, settings, used[name])
    mode = "float32" if names[-1] == "export" else "int8"
    assert (tmp_path / "base-replayed" / f"model_{mode}.tflite").is_file()
    chosen = json.loads((search / "chosen" / "metrics.json").read_text())
    noise = max(0.5, 3 * chosen["selection_drop"]["standard_error_points"]) / 100
    assert abs(metrics["tflite_test_accuracy"] - chosen["chosen_test_accuracy"]) <= noise, \
        (metrics["tflite_test_accuracy"], chosen["chosen_test_accuracy"], noise)


def test_a_chain_step_with_a_bad_setting_is_named_by_its_position(tmp_path):
    data = tiny_recipe_dict()
    data["optimize"] = {"steps": [{"prune": {"sparsity": 0.5}}, {"prune": {"layers": {"fc1": 0.5}}},
                                  {"quantise": {}}], "distill": {"alpha": 2}}
    with pytest.raises(TfoptError) as err:
        validate(data)
    text = str(err.value)
    assert "optimize.steps.1.prune.layers: renamed to per_layer" in text
    assert "optimize.steps.2.quantise: unknown step 'quantise' (did you mean 'quantize'?)" in text
    assert "optimize.distill.alpha: " in text and "optimize.steps.0" not in text
