"""The CLI through click's CliRunner, and start-up without TensorFlow."""

import json

import yaml
from click.testing import CliRunner

from tests.conftest import REPO, python_c, tiny_recipe_dict
from tfopt.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write(tmp_path, data, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_help_and_validate_do_not_import_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from tfopt.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(cli, ['validate', 'recipes/quickstart.yaml']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(cli, ['recipes']); assert r.exit_code == 0; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    out = python_c(code)
    assert out.returncode == 0, out.stderr


def test_validate_ok_and_errors(tmp_path):
    ok = run("validate", REPO / "recipes/quickstart.yaml")
    assert ok.exit_code == 0 and ok.output.endswith("OK (quickstart: 7 layers, data digits, input 8×8×1)\n")
    bad = write(tmp_path, tiny_recipe_dict(**{"train.optimizer": "adma"}))
    res = run("validate", bad)
    assert res.exit_code == 2
    assert "train.optimizer.name: unknown optimizer 'adma' (did you mean 'adam'?)" in res.output
    assert "Traceback" not in res.output
    res = run("validate", bad, "--set", "train.optimizer=adam", "--set", "train.epochs=-1")
    assert res.exit_code == 2 and "train.epochs: Input should be greater than 0 (got -1)" in res.output


def test_missing_recipe_and_invalid_yaml_exit_2(tmp_path):
    res = run("fit", tmp_path / "none.yaml")
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "recipe file not found" in res.output
    p = tmp_path / "bad.yaml"
    p.write_text("name: [x\n")
    res = run("validate", p)
    assert res.exit_code == 2 and "invalid YAML at line 2, column 1" in res.output


def test_recipes_lists_each_bundled_recipe():
    res = run("recipes")
    lines = res.output.splitlines()
    assert res.exit_code == 0 and len(lines) >= 5
    assert lines[[ln.split()[0] for ln in lines].index("quickstart.yaml")].split(None, 1)[1].startswith("Quickstart:")


def test_summary_prints_layers_and_totals():
    res = run("summary", REPO / "recipes/quickstart.yaml")
    assert res.exit_code == 0
    assert [ln.split()[0] for ln in res.output.splitlines()[2:5]] == ["input", "conv1", "bn1"]
    assert "total: 24,282 parameters (24,058 trainable)" in res.output


def test_fit_with_set_and_output(tmp_path):
    p = write(tmp_path, tiny_recipe_dict())
    res = run("fit", p, "--set", "train.epochs=2", "--set", "name=cli_run", "--output", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == f"run written to {tmp_path / 'out' / 'cli_run'}"
    metrics = json.loads((tmp_path / "out" / "cli_run" / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    again = run("fit", p, "--set", "train.epochs=2", "--set", "name=cli_run", "--output", tmp_path / "out")
    assert again.exit_code == 2 and "already exists and holds an earlier run" in again.output


def test_missing_dataset_exits_2_without_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    p = write(tmp_path, tiny_recipe_dict(**{"data": {"name": "mnist", "path": str(tmp_path / "x")},
                                            "model.layers": [{"type": "flatten"}, {"type": "dense", "units": 10}]}))
    res = run("fit", p, "--output", tmp_path / "out")
    assert res.exit_code == 2 and "mnist: dataset files not found" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_unwritable_output_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = run("fit", write(tmp_path, tiny_recipe_dict()), "--output", blocker / "sub")
    assert res.exit_code == 2 and "cannot write the run directory" in res.output


def test_gradcheck_command_passes_on_a_bundled_recipe():
    res = run("gradcheck", REPO / "recipes/resnet_small.yaml", "--entries", "4")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["layer", "entries", "kinks", "max", "rel.", "error", "result"]
    assert lines[-1] == "gradient check passed (threshold 0.0001, eps 1e-05, float64)"


def test_lr_find_command(tmp_path):
    res = run("lr-find", REPO / "recipes/quickstart.yaml", "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1",
              "--plot", tmp_path / "lr.png")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("suggested learning rate: "))
    lr = float(line.split()[3])
    assert 1e-5 <= lr <= 1 and "rule 'steepest'" in line
    assert (tmp_path / "lr.png").stat().st_size > 0
    bad = run("lr-find", REPO / "recipes/quickstart.yaml", "--min-lr", "1", "--max-lr", "0.1")
    assert bad.exit_code == 2 and "lr-find: need 0 < min_lr < max_lr; got 1.0 and 0.1" in bad.output
