"""Adding a step is one function plus one registration: it is then a command (with options from
its config), a ``tune.compress`` step, and a column of ``tfopt report``."""

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from pydantic import Field

from tests.conftest import tiny_recipe_dict
from tfopt.cli import cli
from tfopt.errors import RecipeError, TfoptError
from tfopt.export import load_keras
from tfopt.steps import STEPS, register
from tfopt.steps.config import FineTune


class ZeroSmallConfig(FineTune):
    threshold: float = Field(0.05, gt=0, description="kernel weights below this magnitude become zero")


def zero_small(model, data=None, *, threshold=0.05, log=print, **fit):
    """Zero every kernel weight whose magnitude is below a threshold."""
    from tfopt.export import plain_copy

    copy = plain_copy(model)
    zeroed = 0
    for layer in copy.layers:
        if hasattr(layer, "kernel"):
            k = layer.kernel.numpy()
            small = np.abs(k) < threshold
            zeroed += int(small.sum())
            layer.kernel.assign(np.where(small, 0.0, k))
    log(f"zeroed {zeroed} weights")
    return copy, {"zeroed": zeroed}


@pytest.fixture
def toy_step():
    register("zero_small", ZeroSmallConfig, "zeroed", zero_small)
    yield STEPS["zero_small"]
    STEPS.unregister("zero_small")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_registering_twice_is_refused(toy_step):
    with pytest.raises(TfoptError, match="step 'zero_small' is already registered"):
        register("zero_small", ZeroSmallConfig, "zeroed", zero_small)


def test_a_registered_step_is_a_command_with_options_from_its_config(toy_step):
    res = run("--help")
    assert "zero-small" in res.output and "Zero every kernel weight whose magnitude is below" in res.output
    res = run("zero-small", "--help")
    assert res.exit_code == 0
    assert "--threshold FLOAT" in res.output and "Kernel weights below this magnitude become zero" in res.output
    assert "--epochs INTEGER" in res.output and "--distill" in res.output


def test_a_registered_step_is_a_tune_compress_step(toy_step, tmp_path):
    from tfopt.tune.space import check_file

    data = tiny_recipe_dict()
    data["tune"] = {"compress": ["zero_small"]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    assert check_file(path).startswith(f"{path}: OK")
    data["tune"] = {"compress": ["zero_smal"]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match=r"tune.compress.0: unknown step 'zero_smal' \(did you mean 'zero_small'\?\)"):
        check_file(path)


def test_a_registered_step_runs_from_the_cli_and_shows_in_report(toy_step, tmp_path):
    from tfopt.recipe import validate
    from tfopt.training.run import fit

    fit(validate(tiny_recipe_dict(**{"name": "base"})), output=tmp_path, log=lambda *_: None)
    base = tmp_path / "base"
    res = run("zero-small", base, "--threshold", "0.1", "--output", tmp_path)
    assert res.exit_code == 0, res.output
    out = tmp_path / "base-zeroed"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == ["zero_small"]
    model, before = load_keras(out / "model.keras"), load_keras(base / "model.keras")
    counted = sum(int(np.sum(np.abs(layer.kernel.numpy()) < 0.1)) for layer in before.layers
                  if hasattr(layer, "kernel"))
    zeros = sum(int(np.sum(layer.kernel.numpy() == 0)) for layer in model.layers if hasattr(layer, "kernel"))
    assert metrics["zero_small_zeroed"] == counted == zeros > 0
    res = run("zero-small", base, "--threshold", "0.1", "--output", tmp_path)
    assert res.exit_code == 2 and "base-zeroed" in res.output  # an existing run is refused before any work
    res = run("report", base, out, "--output", tmp_path / "rep", "--runs", "5")
    assert res.exit_code == 0, res.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| base-zeroed/model.keras | zero_small |" in md
    assert "- zero_small: Zero every kernel weight whose magnitude is below a threshold." in md
