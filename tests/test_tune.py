"""`tfopt tune`: tune-spec validation, each algorithm, the best-recipe round trip, resume, and a
loopback chief/worker search."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, python_c, tiny_recipe_dict
from tfopt.errors import RecipeError, RunDirError
from tfopt.tune.space import find_specs, search_from_data


def _search_dict(tmp_path, algorithm="random", **tune):
    data = tiny_recipe_dict()
    data["model"]["layers"][0]["filters"] = {"tune": "choice", "values": [2, 4, 8]}
    data["train"]["lr"]["initial"] = {"tune": "float", "min": 1e-3, "max": 5e-2, "sampling": "log"}
    data["output"]["dir"] = str(tmp_path)
    data["tune"] = {"algorithm": algorithm, **tune}
    return data


def _problems(data):
    with pytest.raises(RecipeError) as err:
        search_from_data(data, "r.yaml")
    return err.value.problems


def _rows(folder):
    with open(folder / "trials.csv") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------
# Validation (no TensorFlow needed)


def test_find_specs_keys_every_spec_by_dotted_path(tmp_path):
    data = _search_dict(tmp_path)
    data["train"]["optimizer"] = {"tune": "choice", "values": ["adam", {"name": "sgd", "momentum": 0.9}]}
    assert sorted(find_specs(data)) == ["model.layers.0.filters", "train.lr.initial", "train.optimizer"]


def test_spec_errors_name_the_dotted_key(tmp_path):
    data = _search_dict(tmp_path)
    data["model"]["layers"][0]["filters"] = {"tune": "choise", "values": [2, 4]}
    data["train"]["lr"]["initial"] = {"tune": "float", "min": 0.0, "max": 0.1, "sampling": "log"}
    data["train"]["batch_size"] = {"tune": "int", "min": 64, "max": 16}
    data["model"]["layers"][3]["units"] = {"tune": "choice", "values": [4, 4]}
    data["model"]["layers"][1]["pool_size"] = {"tune": "int", "min": 1, "max": 2, "name": "val_pool"}
    assert sorted(_problems(data)) == sorted([
        ("model.layers.1.pool_size.name", "'val_pool' is the name of a column trials report; choose another "
                                          "(reserved: accuracy, budget, continues, epochs, epochs_trained, error, "
                                          "latency_ms, loss, lr, macs, params, score, seconds, status, tflite_kb, "
                                          "trial, val_*, fit_*, test_*)"),
        ("model.layers.0.filters.tune", "unknown tune kind 'choise' (did you mean 'choice'?); "
                                        "available: float, int, choice, bool"),
        ("train.lr.initial", "sampling: log needs min > 0 (got 0.0)"),
        ("train.batch_size", "min (64) must be below max (16)"),
        ("model.layers.3.units.values", "values must be distinct; repeated: 4 (got [4, 4])"),
    ])


def test_a_value_the_schema_refuses_is_reported_at_its_spec(tmp_path):
    data = _search_dict(tmp_path)
    data["model"]["layers"][0]["filters"] = {"tune": "choice", "values": [0, 4]}
    data["train"]["optimizer"] = {"tune": "choice", "values": ["adam", "adma"]}
    assert _problems(data) == [
        ("model.layers.0.filters", "the value 0 makes the recipe invalid: Input should be greater than 0 (got 0)"),
        ("train.optimizer", "the value 'adma' makes the recipe invalid: train.optimizer.name: unknown optimizer "
                            "'adma' (did you mean 'adam'?); available: sgd, adagrad, rmsprop, adam, adamw, nadam"),
    ]


def test_a_value_that_breaks_the_shapes_is_reported(tmp_path):
    data = _search_dict(tmp_path)
    data["model"]["layers"][0]["repeat"] = {"tune": "int", "min": 1, "max": 9}
    data["model"]["layers"][0]["padding"] = "valid"
    (key, msg), = _problems(data)
    assert key == "model.layers.0.repeat"
    assert msg.startswith("the value 9 makes the recipe invalid: model.layers.0: conv")


def test_objective_and_tune_section_errors(tmp_path):
    data = _search_dict(tmp_path, objective="val_acc")
    assert _problems(data) == [("tune.objective.metric", "'val_acc' is not a metric a trial reports; choose one "
                                "of loss, accuracy, val_loss, val_accuracy, tflite_kb, latency_ms, params, macs")]
    data = _search_dict(tmp_path, algorithm="hyperband")
    data["train"]["epochs"] = {"tune": "int", "min": 2, "max": 4}
    assert _problems(data) == [("train.epochs", "hyperband sets each trial's epochs itself (up to train.epochs); "
                                                "give train.epochs a value")]
    data = _search_dict(tmp_path, algorithm="grid")
    assert _problems(data)[0][0] == "tune.algorithm"


def test_a_recipe_without_specs_is_not_a_search(tmp_path):
    data = tiny_recipe_dict()
    assert _problems(data) == [(None, "no tune specs found: give at least one value as a spec, e.g. "
                                      "train.lr.initial: {tune: float, min: 1e-4, max: 1e-1, sampling: log}")]


def test_fit_refuses_a_search_and_validate_accepts_it(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(_search_dict(tmp_path)))
    cmd = [sys.executable, "-m", "tfopt.cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run([*cmd, "validate", str(path)], capture_output=True, text=True, env=env, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "search space of 2 tune specs (random)" in ok.stdout
    bad = subprocess.run([*cmd, "fit", str(path)], capture_output=True, text=True, env=env, cwd=REPO)
    assert bad.returncode == 2
    assert "model.layers.0.filters: is a tune spec; this command needs one value here" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_search_validation_imports_neither_tensorflow_nor_keras_tuner():
    code = ("import sys; from tfopt.tune.space import load_search; "
            "s = load_search('recipes/search/digits_hyperband.yaml'); assert len(s.specs) == 7; "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'keras_tuner') if m in sys.modules]; "
            "assert not bad, bad")
    out = python_c(code)
    assert out.returncode == 0, out.stderr


def test_choice_of_mappings_and_weighted_objective():
    from tfopt.config.tune import ChoiceSpec, Objective

    spec = ChoiceSpec(tune="choice", values=["adam", {"name": "sgd", "momentum": 0.9}])
    assert spec.decode("{momentum: 0.9, name: sgd}") == {"name": "sgd", "momentum": 0.9}
    assert spec.decode("adam") == "adam"
    obj = Objective(metric="val_accuracy", penalty={"tflite_kb": 0.002})
    assert obj.score({"val_accuracy": 0.95, "tflite_kb": 10.0}) == pytest.approx(0.93)
    low = Objective(metric="val_loss", penalty={"latency_ms": 0.5})
    assert low.resolved_direction() == "min"
    assert low.score({"val_loss": 0.2, "latency_ms": 0.4}) == pytest.approx(0.4)


def test_repeat_expands_to_shape_keeping_copies():
    from tfopt.models.builder import build_model
    from tfopt.config.recipe import validate

    data = tiny_recipe_dict()
    data["model"]["layers"][0].update(repeat=3, strides=2, padding="same")
    model = build_model(validate(data).model, (8, 8, 1))
    convs = [layer for layer in model.layers if layer.name.startswith("conv")]
    assert [c.name for c in convs] == ["conv1", "conv2", "conv3"]
    assert [c.strides for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert model.get_layer("conv3").output_shape == (None, 4, 4, 4)


# ----------------------------------------------------------------------------------------
# Searches


def _tune(data, **kw):
    from tfopt.tune.tuner import tune

    return tune(search_from_data(data, "search.yaml"), log=lambda *_: None, **kw)


def test_random_search_writes_table_plot_and_a_runnable_best_recipe(tmp_path):
    from tfopt.config.recipe import load_recipe
    from tfopt.training.run import fit

    summary = _tune(_search_dict(tmp_path, max_trials=3))
    folder = Path(summary["folder"])
    rows = _rows(folder)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    for r in rows:
        assert r["model.layers.0.filters"] in ("2", "4", "8")
        assert 1e-3 <= float(r["train.lr.initial"]) <= 5e-2
        assert float(r["score"]) == float(r["val_accuracy"])
    best = max(rows, key=lambda r: float(r["score"]))
    assert summary["best_trial"] == best["trial"]
    assert summary["total_epochs_trained"] == 9
    assert (folder / "objective.png").stat().st_size > 1000
    # The round trip: `tfopt fit best.yaml` reproduces the best trial's validation accuracy.
    recipe = load_recipe(folder / "best.yaml")
    assert recipe.model.layers[0].filters == int(best["model.layers.0.filters"])
    assert recipe.train.lr.initial == float(best["train.lr.initial"])
    assert recipe.tune is None
    result = fit(recipe, output=tmp_path / "refit", log=lambda *_: None)
    val_samples = result.metrics["val_samples"]
    assert abs(result.history[-1]["val_accuracy"] - float(best["val_accuracy"])) <= 1 / val_samples


@pytest.mark.slow
def test_bayesian_search_completes_its_trials(tmp_path):
    summary = _tune(_search_dict(tmp_path, "bayesian", max_trials=3, num_initial_points=2))
    rows = _rows(Path(summary["folder"]))
    assert summary["algorithm"] == "bayesian"
    assert len(rows) == 3 and all(r["status"] == "COMPLETED" for r in rows)
    assert all(1e-3 <= float(r["train.lr.initial"]) <= 5e-2 for r in rows)
    assert summary["best_score"] == max(float(r["score"]) for r in rows)


@pytest.mark.slow
def test_hyperband_honours_each_trials_epoch_budget(tmp_path):
    data = _search_dict(tmp_path, algorithm="hyperband", factor=3)
    data["train"]["epochs"] = 3
    summary = _tune(data)
    folder = Path(summary["folder"])
    rows = _rows(folder)
    assert rows and all(r["status"] == "COMPLETED" for r in rows)
    continued = [r for r in rows if r["continues"]]
    assert continued, "hyperband continued no trial"
    for r in rows:
        start, stop = (int(x) for x in r["budget"].split("→"))
        assert int(float(r["epochs"])) == stop
        assert int(float(r["epochs_trained"])) == stop - start
        history = (folder / f"trial_{r['trial']}" / "run" / "history.csv").read_text().splitlines()
        assert len(history) - 1 == stop
    for r in continued:
        parent = next(p for p in rows if p["trial"] == r["continues"])
        assert r["train.lr.initial"] == parent["train.lr.initial"]
        first = (folder / f"trial_{r['trial']}" / "run" / "history.csv").read_text().splitlines()[1]
        assert first == (folder / f"trial_{parent['trial']}" / "run" / "history.csv").read_text().splitlines()[1]
    assert summary["total_epochs_trained"] == sum(int(float(r["epochs_trained"])) for r in rows)
    assert summary["total_epochs_trained"] < sum(int(float(r["epochs"])) for r in rows)


@pytest.mark.slow
def test_an_interrupted_search_resumes_where_it_stopped(tmp_path, monkeypatch):
    import tf_keras

    from tfopt.tune import trial as trial_module
    from tfopt.tune.tuner import SearchInterrupted

    data = _search_dict(tmp_path, max_trials=3)
    real_fit, calls = trial_module.fit, []

    class Stop(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                raise KeyboardInterrupt

    def interrupting_fit(recipe, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second trial stops after its second epoch
            kw["callbacks"] = [Stop()]
        return real_fit(recipe, **kw)

    monkeypatch.setattr(trial_module, "fit", interrupting_fit)
    with pytest.raises(SearchInterrupted, match="--resume"):
        _tune(data)
    partial = tmp_path / "tiny-tune.partial"
    before = _rows(partial)
    assert [(r["trial"], r["status"]) for r in before] == [("0", "COMPLETED")]
    with pytest.raises(RunDirError, match="--resume"):
        _tune(data)
    monkeypatch.setattr(trial_module, "fit", real_fit)
    summary = _tune(data, resume=True)
    rows = _rows(Path(summary["folder"]))
    assert [(r["trial"], r["status"]) for r in rows] == [("0", "COMPLETED"), ("1", "COMPLETED"), ("2", "COMPLETED")]
    assert rows[0]["score"] == before[0]["score"]
    assert int(float(rows[1]["epochs_trained"])) == 1  # epochs 1-2 were kept from before the interruption
    assert int(float(rows[1]["epochs"])) == 3
    assert summary["total_epochs_trained"] == 7


@pytest.mark.slow
def test_compressed_trials_are_scored_on_the_compressed_model(tmp_path):
    data = _search_dict(tmp_path, max_trials=2, compress=["prune", "quantize"],
                        objective={"metric": "val_accuracy", "penalty": {"tflite_kb": 0.01}})
    data["optimize"] = {"prune": {"sparsity": {"tune": "choice", "values": [0.5, 0.75]}, "epochs": 2, "force": True},
                        "quantize": {"mode": "dynamic"}}
    summary = _tune(data)
    folder = Path(summary["folder"])
    for r in _rows(folder):
        assert r["status"] == "COMPLETED"
        assert float(r["score"]) == pytest.approx(float(r["val_accuracy"]) - 0.01 * float(r["tflite_kb"]))
        assert 0 < float(r["tflite_kb"]) < 10
        assert "fit_val_accuracy" in r
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["optimize"]["prune"]["sparsity"] in (0.5, 0.75)
    assert "tune" not in best
    assert json.loads((folder / "summary.json").read_text())["best_values"]["optimize.prune.sparsity"] in (0.5, 0.75)


@pytest.mark.slow
def test_loopback_chief_and_two_workers(tmp_path):
    data = _search_dict(tmp_path, max_trials=4)
    data["train"]["epochs"] = 2
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": port, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "tfopt.cli", "tune", str(path)]
    procs = {tid: subprocess.Popen(cmd, env={**env, "KERASTUNER_TUNER_ID": tid}, cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for tid in ("chief", "tuner0", "tuner1")}
    out = {}
    for tid, p in procs.items():
        out[tid] = p.communicate(timeout=240)[0]
        assert p.returncode == 0, out[tid][-2000:]
    rows = _rows(tmp_path / "tiny-tune")
    assert [r["status"] for r in rows] == ["COMPLETED"] * 4
    ran = {tid: {line.split()[1] for line in out[tid].splitlines()
                 if line.startswith("trial ") and f"({tid})" in line} for tid in ("tuner0", "tuner1")}
    assert ran["tuner0"] and ran["tuner1"], ran
    assert not ran["tuner0"] & ran["tuner1"]
    assert ran["tuner0"] | ran["tuner1"] == {r["trial"] for r in rows}
    for tid, trials in ran.items():
        for t in trials:
            assert (tmp_path / f"tiny-tune-{tid}" / f"trial_{t}" / "run" / "model.keras").is_file()
    assert (tmp_path / "tiny-tune" / "best.yaml").is_file()
    assert "serving the random oracle" in out["chief"]


@pytest.mark.slow
def test_an_impossible_combination_fails_its_trial_and_the_search_goes_on(tmp_path):
    data = _search_dict(tmp_path, max_trials=8, max_consecutive_failed_trials=8)
    data["model"]["layers"] = [
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": "valid", "activation": "relu",
         "repeat": {"tune": "int", "min": 1, "max": 3}},
        {"type": "conv2d", "filters": 4, "padding": "valid", "kernel_size": {"tune": "choice", "values": [1, 5, 6]}},
        {"type": "flatten"},
        {"type": "dense", "units": 4, "activation": "softmax"},
    ]
    search = search_from_data(data, "search.yaml")  # each value alone is fine
    assert sorted(search.specs) == ["model.layers.0.repeat", "model.layers.1.kernel_size", "train.lr.initial"]
    summary = _tune(data)
    rows = _rows(Path(summary["folder"]))
    assert len(rows) == 8
    for r in rows:
        side = 8 - 2 * int(r["model.layers.0.repeat"])
        possible = side - int(r["model.layers.1.kernel_size"]) + 1 > 0
        assert r["status"] == ("COMPLETED" if possible else "FAILED"), r
        if not possible:
            assert "conv" in r["error"] and "model.layers.1" in r["error"], r["error"]
    assert {r["status"] for r in rows} == {"COMPLETED", "FAILED"}


def test_a_missing_dataset_stops_the_search_before_it_starts(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tfopt.cli import cli

    monkeypatch.setenv("TFOPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    data = _search_dict(tmp_path / "out")
    data["data"] = {"name": "mnist", "path": str(tmp_path / "x")}
    data["model"]["layers"] = [{"type": "flatten"}, {"type": "dense", "units": 10}]
    data["train"]["lr"]["initial"] = {"tune": "float", "min": 1e-3, "max": 1e-2}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(cli, ["tune", str(path)])
    assert res.exit_code == 2, res.output
    assert "mnist: dataset files not found" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_refusals_before_any_work(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tfopt.cli import cli

    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(_search_dict(tmp_path)))
    (tmp_path / "tiny-tune").mkdir()
    res = CliRunner().invoke(cli, ["tune", str(path)])
    assert res.exit_code == 2
    assert f"{tmp_path / 'tiny-tune'} already exists and holds an earlier run; pass --overwrite" in res.output
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    res = CliRunner().invoke(cli, ["tune", str(path)])
    assert res.exit_code == 2
    assert "distributed search: KERASTUNER_ORACLE_IP is set but KERASTUNER_ORACLE_PORT is not" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["search.yaml", "tiny-tune"]
