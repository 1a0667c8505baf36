"""Adding a step is one function plus one registration: it is then a command (with options from
its config), a ``tune.compress`` step, and a column of ``tfopt report``."""

import json
from pathlib import Path

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
from tests.toy_steps import ZeroSmallConfig, zero_small


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
    from tfopt.config.recipe import validate
    from tfopt.training.run import fit

    # the step's settings have a recipe section, optimize.zero_small, which the command reads
    fit(validate(tiny_recipe_dict(**{"name": "base", "optimize.zero_small.threshold": 0.1})), output=tmp_path,
        log=lambda *_: None)
    base = tmp_path / "base"
    res = run("zero-small", base, "--output", tmp_path)  # the threshold comes from the recipe
    assert res.exit_code == 0, res.output
    out = tmp_path / "base-zeroed"
    # the new run's recipe records the settings used
    assert yaml.safe_load((out / "recipe.yaml").read_text())["optimize"]["zero_small"]["threshold"] == 0.1
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


def test_a_registered_steps_recipe_section_is_checked_by_its_config(toy_step):
    from tfopt.config.recipe import validate

    assert validate(tiny_recipe_dict(**{"optimize.zero_small.threshold": 0.2})).optimize.zero_small.threshold == 0.2
    with pytest.raises(RecipeError) as info:
        validate(tiny_recipe_dict(**{"optimize.zero_small": {"threshold": -1, "epochz": 2},
                                     "optimize.zero_smal": {}}), "r.yaml")
    assert info.value.problems == [
        ("optimize.zero_small.threshold", "Input should be greater than 0 (got -1)"),
        ("optimize.zero_small.epochz", "unknown key 'epochz' (did you mean 'epochs'?); allowed here: alpha, "
                                       "batch_size, distill, epochs, lr, teacher, temperature, threshold"),
        ("optimize.zero_smal", "unknown key 'zero_smal' (did you mean 'zero_small'?); allowed here: cluster, "
                               "distill, downsample, fold_pool, prune, quantize, remove, steps, structured, "
                               "zero_small"),
    ]


def test_the_tfopt_command_loads_steps_named_in_tfopt_steps(tmp_path):
    import os
    import subprocess
    import sys
    import textwrap

    (tmp_path / "my_steps.py").write_text(textwrap.dedent('''
        from tests.test_extending import ZeroSmallConfig, zero_small
        from tfopt.steps import register

        register("zero_small", ZeroSmallConfig, "zeroed", zero_small)
    '''))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "TFOPT_STEPS": "my_steps"}
    res = subprocess.run([sys.executable, "-m", "tfopt.cli", "zero-small", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--threshold FLOAT" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "tfopt.cli", "--help"], cwd=tmp_path,
                         env={**env, "TFOPT_STEPS": "my_steps, no_such_module"}, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "TFOPT_STEPS: the module 'no_such_module' could not be imported (ModuleNotFoundError" in res.stderr
