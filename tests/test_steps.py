"""Compression on tiny synthetic data: every mode, the preflight, TFLite verification, the CLI."""

import copy
import hashlib
import json

import numpy as np
import pytest
import tf_keras as keras
import yaml
from click.testing import CliRunner

from tests.conftest import SMALL_CNN, tiny_recipe_dict
from tfopt.cli import cli
from tfopt.errors import TfoptError
from tfopt.config.steps import PruneConfig
from tfopt.steps.cluster import run_cluster
from tfopt.steps.prune import PreflightError, erk_sparsities, plan_schedule, polynomial_sparsity, preflight_message
from tfopt.steps.prune import run_prune
from tfopt.steps.quantize import run_quantize
from tfopt.steps.settings import fine_tune_from_recipe
from tfopt.steps.source import load_source
from tfopt.tflite import VerificationFailed

STOCK = {"InputLayer", "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Flatten", "Dense"}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tfopt.config.recipe import validate
    from tfopt.training.run import fit

    out = tmp_path_factory.mktemp("runs")
    data = tiny_recipe_dict(**{"train.epochs": 8, "name": "base", "data.noise": 0.3, "data.test_samples": 400})
    data["model"]["layers"] = copy.deepcopy(SMALL_CNN)
    fit(validate(data), output=out, log=quiet)
    return out / "base"


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kernel_sparsity(model, name):
    k = model.get_layer(name).kernel.numpy()
    return float(np.mean(k == 0))


def test_prune_reaches_target_counted_from_weights_and_leaves_source_alone(base_run, tmp_path):
    before = digest(base_run / "model.keras")
    path, metrics = run_prune(load_source(base_run), {"sparsity": 0.6, "epochs": 2}, output=tmp_path,
                                       log=quiet)
    assert digest(base_run / "model.keras") == before
    model = keras.models.load_model(path / "model.keras")  # no custom objects needed
    assert {type(layer).__name__ for layer in model.layers} <= STOCK
    # erk spreads the 60%: the small conv1 less, the large fc1 more, 60% of all kernel weights
    expected = erk_sparsities({n: [model.get_layer(n).kernel.shape] for n in ("conv1", "fc1", "fc2")}, 0.6)
    assert expected["conv1"] < 0.6 < expected["fc1"]
    for name in ("conv1", "fc1", "fc2"):
        assert kernel_sparsity(model, name) == pytest.approx(expected[name], abs=0.02)
        assert metrics["per_layer_sparsity"][name]["sparsity"] == pytest.approx(kernel_sparsity(model, name))
    assert metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert metrics["nonzero_params"] < metrics["params"]
    assert yaml.safe_load((path / "recipe.yaml").read_text())["optimize"]["prune"]["sparsity"] == 0.6
    assert json.loads((path / "metrics.json").read_text())["source"] == str(base_run)


def test_uniform_allocation_prunes_every_layer_to_the_target(base_run, tmp_path):
    path, _ = run_prune(load_source(base_run), {"sparsity": 0.6, "allocation": "uniform", "epochs": 1},
                                 output=tmp_path, log=quiet)
    model = keras.models.load_model(path / "model.keras")
    for name in ("conv1", "fc1", "fc2"):
        assert kernel_sparsity(model, name) == pytest.approx(0.6, abs=0.02)


def test_erk_allocation_keeps_the_overall_target():
    shapes = {"conv1": [(3, 3, 1, 12)], "conv2": [(3, 3, 12, 24)], "fc1": [(1176, 1024)], "fc2": [(1024, 10)]}
    for target in (0.5, 0.8, 0.95):
        s = erk_sparsities(shapes, target)
        sizes = {k: int(np.prod(v[0])) for k, v in shapes.items()}
        assert sum(s[k] * sizes[k] for k in s) / sum(sizes.values()) == pytest.approx(target, rel=1e-9)
        assert s["conv1"] <= s["conv2"] < s["fc1"] and all(0 <= v < 1 for v in s.values())
        # density proportional to sum(dims) / prod(dims) among the layers that are not dense
        pruned = [k for k in s if s[k] > 0]
        ratios = {k: (1 - s[k]) / (sum(shapes[k][0]) / sizes[k]) for k in pruned}
        assert max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-9)
    assert erk_sparsities(shapes, 0.5)["conv1"] == 0.0  # would pass density 1: kept dense, the others make up


def test_er_allocation_counts_only_a_kernels_channels():
    # the Fashion-MNIST CNN: ERK prunes the 3x3 convolutions harder than the dense head; ER the reverse
    shapes = {"conv2": [(3, 3, 32, 64)], "conv3": [(3, 3, 64, 128)], "fc1": [(1152, 256)], "fc2": [(256, 10)]}
    sizes = {k: int(np.prod(v[0])) for k, v in shapes.items()}
    for target in (0.8, 0.9, 0.95):
        er = erk_sparsities(shapes, target, kernel=False)
        assert sum(er[k] * sizes[k] for k in er) / sum(sizes.values()) == pytest.approx(target, rel=1e-9)
        # density proportional to (c_in + c_out) / (c_in * c_out) among the layers that are not dense
        pruned = [k for k in er if er[k] > 0]
        ratios = {k: (1 - er[k]) / (sum(shapes[k][0][-2:]) / np.prod(shapes[k][0][-2:])) for k in pruned}
        assert len(pruned) >= 3 and max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-9)
        erk = erk_sparsities(shapes, target)
        assert er["conv3"] < er["fc1"] and erk["conv3"] > erk["fc1"]
    assert erk_sparsities(shapes, 0.9, kernel=False)["conv3"] == pytest.approx(0.7859, abs=1e-4)
    # dense layers have no spatial dims: ER and ERK agree
    dense = {"fc1": [(784, 300)], "fc2": [(300, 100)], "fc3": [(100, 10)]}
    assert erk_sparsities(dense, 0.95, kernel=False) == erk_sparsities(dense, 0.95)


def test_er_allocation_of_the_prune_step():
    import tfopt

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
                          keras.layers.Conv2D(16, 3, activation="relu", name="conv2"), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax", name="fc")])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 256)
    shapes = {n: [m.get_layer(n).kernel.shape] for n in ("conv1", "conv2", "fc")}
    expected = erk_sparsities(shapes, 0.7, kernel=False)
    assert expected["conv2"] < erk_sparsities(shapes, 0.7)["conv2"]  # the convolution keeps more under er
    pruned = tfopt.prune(m, (x, y), sparsity=0.7, allocation="er", epochs=1, batch_size=32)
    for name in ("conv1", "conv2", "fc"):
        assert kernel_sparsity(pruned, name) == pytest.approx(expected[name], abs=0.01)
    assert not any((m.get_layer(n).kernel.numpy() == 0).any() for n in ("conv2", "fc"))  # the input is untouched


def test_per_layer_overrides_and_skip(base_run, tmp_path):
    path, _ = run_prune(load_source(base_run), {"sparsity": 0.5, "per_layer": {"fc1": 0.8}, "skip": ["fc2"],
                                                         "epochs": 2}, output=tmp_path, log=quiet)
    model = keras.models.load_model(path / "model.keras")
    assert kernel_sparsity(model, "fc1") == pytest.approx(0.8, abs=0.02)
    assert kernel_sparsity(model, "conv1") == pytest.approx(0.5, abs=0.03)
    assert kernel_sparsity(model, "fc2") == 0.0
    with pytest.raises(TfoptError, match=r"skip: 'fc3' is not a prunable layer of this model \(did you mean 'fc2'\?\)"):
        run_prune(load_source(base_run), {"skip": ["fc3"]}, output=tmp_path, log=quiet)


def test_two_four_sparsity(base_run, tmp_path):
    path, _ = run_prune(load_source(base_run), {"m_by_n": [2, 4], "epochs": 1}, output=tmp_path, log=quiet)
    k = keras.models.load_model(path / "model.keras").get_layer("fc1").kernel.numpy()  # (in, out)
    groups = (k.T.reshape(k.shape[1], -1, 4) != 0).sum(axis=2)
    assert groups.max() <= 2 and float(np.mean(k == 0)) == pytest.approx(0.5)


def test_preflight_math_and_refusal(base_run, tmp_path):
    plan = plan_schedule(PruneConfig(sparsity=0.8), 0.8, total_steps=40)
    assert plan.ok and plan.last_update == plan.end <= 39 and plan.reached == pytest.approx(0.8)
    # TFMOT's defaults on a short fine-tune: end_step 1000, frequency 100 -> only step 0 prunes
    late = plan_schedule(PruneConfig(sparsity=0.8, end_step=1000, frequency=100), 0.8, total_steps=40)
    assert late.last_update == 0 and late.reached == 0.0 and not late.ok
    mid = plan_schedule(PruneConfig(sparsity=0.8, end_step=100, frequency=10), 0.8, total_steps=45)
    assert mid.last_update == 40 and mid.reached == pytest.approx(polynomial_sparsity(40, 0, 0.8, 0, 100))
    assert preflight_message(late, 1, 40).startswith(
        "pruning preflight: the schedule reaches only 0.0% sparsity, not the 80.0% target, within the fine-tune "
        "budget of 1 epoch(s) × 40 steps = 40 steps")
    src = load_source(base_run)
    with pytest.raises(PreflightError, match="or pass --force to go on anyway"):
        run_prune(src, {"end_step": 1000, "frequency": 100, "epochs": 1}, output=tmp_path, log=quiet)
    assert not list(tmp_path.iterdir()), "a refused run writes nothing"
    lines = []
    path, metrics = run_prune(src, {"end_step": 1000, "frequency": 100, "epochs": 1, "force": True},
                                       output=tmp_path, log=lines.append)
    assert any(line.startswith("warning: pruning preflight") for line in lines)
    assert metrics["sparsity"] < 0.05  # what TFMOT really did: next to nothing


def test_cluster_limits_unique_values(base_run, tmp_path):
    path, metrics = run_cluster(load_source(base_run), {"clusters": 6, "epochs": 1}, output=tmp_path,
                                         log=quiet)
    model = keras.models.load_model(path / "model.keras")
    for name in ("conv1", "fc1", "fc2"):
        assert len(np.unique(model.get_layer(name).kernel.numpy())) <= 6
        assert metrics["unique_values"][name] <= 6


@pytest.mark.parametrize("mode,io", [("dynamic", False), ("float16", False), ("int8", False), ("int8", True)])
def test_post_training_quantization_is_verified(base_run, tmp_path, mode, io):
    from tfopt.data.pipeline import load_splits
    from tfopt.tflite import predict

    path, metrics = run_quantize(load_source(base_run), {"mode": mode, "int8_io": io}, output=tmp_path,
                                          log=quiet)
    v = metrics["tflite"][f"model_{mode}.tflite"]
    assert v["agreement"] >= 0.99 and v["samples"] == 400
    src = load_source(base_run)
    s = load_splits(src.recipe.data, src.recipe.seed)
    got = predict((path / f"model_{mode}.tflite").read_bytes(), s.x_test)
    ref = src.model.predict(s.x_test, verbose=0)
    tol = {"float16": 1e-2, "dynamic": 0.05, "int8": 0.05}[mode]
    assert np.max(np.abs(got - ref)) < tol
    assert np.max(np.abs(got - ref)) == pytest.approx(v["max_abs_diff"], abs=1e-5)


@pytest.mark.slow
def test_qat_and_pqat(base_run, tmp_path):
    path, metrics = run_quantize(load_source(base_run), {"mode": "qat", "epochs": 1}, output=tmp_path,
                                          log=quiet)
    from ai_edge_litert.interpreter import Interpreter

    assert metrics["scheme"] == "qat" and (path / "model_int8.tflite").exists()
    details = Interpreter(model_path=str(path / "model_int8.tflite")).get_tensor_details()
    kernels = [t for t in details if "MatMul" in t["name"] or "Conv2D" in t["name"]]
    assert kernels and all(t["dtype"] in (np.int8, np.int32) for t in kernels if len(t["shape"]) >= 2)
    assert metrics["tflite"]["model_int8.tflite"]["agreement"] >= 0.99
    pruned, _ = run_prune(load_source(base_run), {"sparsity": 0.6, "epochs": 3}, output=tmp_path, log=quiet)
    path, pm = run_quantize(load_source(pruned), {"mode": "qat", "epochs": 2}, output=tmp_path, log=quiet)
    assert pm["scheme"] == "pqat" and pm["tflite"]["model_int8.tflite"]["agreement"] >= 0.99


def test_verification_fails_for_a_mismatched_tflite(base_run, tmp_path, monkeypatch):
    from tfopt.steps import quantize as q
    from tfopt.tflite import convert

    other = keras.models.clone_model(load_source(base_run).model)  # same shape, fresh random weights
    monkeypatch.setattr(q, "post_training", lambda *a, **k: convert(other, "float32"))
    with pytest.raises(VerificationFailed, match=r"TFLite verification failed: float16: top-1 agreement with Keras"):
        run_quantize(load_source(base_run), {"mode": "float16"}, output=tmp_path, log=quiet)
    assert not (tmp_path / "base-float16").exists()


def test_xnnpack_failure_falls_back_to_builtin_kernels(base_run, monkeypatch):
    from ai_edge_litert import interpreter as litert

    from tfopt import tflite

    real = litert.Interpreter
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs.get("experimental_op_resolver_type"))
        if len(calls) == 1:
            raise RuntimeError("failed to create XNNPACK runtime")
        return real(*args, **kwargs)

    monkeypatch.setattr(litert, "Interpreter", flaky)
    lines = []
    content = tflite.convert(load_source(base_run).model, "float32")
    _, delegate = tflite.interpreter(content, log=lines.append)
    assert delegate == "builtin" and calls[1] == litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    assert lines[0].startswith("XNNPACK could not prepare the model (failed to create XNNPACK runtime)")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_errors_corrupt_model_and_mismatched_recipe(base_run, tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict()))
    res = run("prune", bad, "--recipe", recipe)
    assert res.exit_code == 2 and "bad.keras is not a model file: it is a text file" in res.output
    assert "Traceback" not in res.output
    other = tmp_path / "o.yaml"
    other.write_text(yaml.safe_dump(tiny_recipe_dict(**{"data.shape": [6, 6, 1]})))
    res = run("quantize", base_run / "model.keras", "--recipe", other)
    assert res.exit_code == 2
    assert "the model takes 8×8×1 inputs but the recipe's data 'synthetic' gives 6×6×1 images" in res.output
    res = run("prune", base_run / "model.keras")
    assert res.exit_code == 2 and "pass --recipe RECIPE" in res.output
    res = run("prune", base_run, "--sparsity", "1.5")
    assert res.exit_code == 2 and "--sparsity: Input should be less than 1 (got 1.5)" in res.output
    res = run("prune", base_run, "--block", "4", "--m-by-n", "2:4")
    assert res.exit_code == 2 and "--block: block and m_by_n are two patterns of zeros" in res.output


def test_cli_export_and_report(base_run, tmp_path):
    res = run("export", base_run, "--tflite", "float32", "--tflite", "int8", "--output", tmp_path)
    assert res.exit_code == 0, res.output
    exported = tmp_path / "base-export"
    assert {p.name for p in exported.iterdir()} >= {"model.keras", "saved_model", "model_float32.tflite",
                                                   "model_int8.tflite", "metrics.json", "recipe.yaml"}
    res = run("report", base_run, exported, "--output", tmp_path / "rep", "--runs", "20")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    names = [r["name"] for r in data["rows"]]
    assert names == ["base/model.keras", "base-export/model.keras", "base-export/model_float32.tflite",
                     "base-export/model_int8.tflite"]
    rows = {r["name"]: r for r in data["rows"]}
    f32 = rows["base-export/model_float32.tflite"]
    assert f32["accuracy"] == pytest.approx(rows["base/model.keras"]["accuracy"])
    assert f32["latency_1"] > 0 and f32["size_gzip"] < f32["size"]
    assert (tmp_path / "rep" / "report.png").stat().st_size > 0
    assert "BatchNorm folding is already done by the TFLite converter" in (tmp_path / "rep" / "report.md").read_text()


def test_wrapped_models_keep_their_output_activation(base_run):
    import tensorflow_model_optimization as tfmot

    from tfopt.models.builder import output_activation

    model = load_source(base_run).model
    assert output_activation(model) == "softmax"
    assert output_activation(tfmot.quantization.keras.quantize_model(keras.models.clone_model(model))) == "softmax"
    assert output_activation(tfmot.sparsity.keras.prune_low_magnitude(keras.models.clone_model(model))) == "softmax"


def test_cli_fold_bn(base_run, tmp_path):
    res = run("fold-bn", base_run, "--output", tmp_path)
    assert res.exit_code == 0, res.output
    assert "  folded bn1 into conv1" in res.output
    model = keras.models.load_model(tmp_path / "base-folded" / "model.keras")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    metrics = json.loads((tmp_path / "base-folded" / "metrics.json").read_text())
    assert metrics["max_relative_output_difference"] < 1e-5 and metrics["params"] < metrics["params_before"]


def test_cli_fold_pool(base_run, tmp_path):
    res = run("fold-pool", base_run, "--output", tmp_path)
    assert res.exit_code == 0, res.output
    assert "  folded bn1 into conv1 (BatchNorm, folded first: one stood between a conv and its pool)" in res.output
    assert "  folded pool1 into conv1 (stride 2, 4 filter groups)" in res.output
    assert "float32 TFLite, 1 thread: " in res.output
    model = keras.models.load_model(tmp_path / "base-poolfolded" / "model.keras")
    assert tuple(model.get_layer("conv1").strides) == (2, 2) and model.get_layer("conv1").filters == 32
    metrics = json.loads((tmp_path / "base-poolfolded" / "metrics.json").read_text())
    source = json.loads((base_run / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(source["test_accuracy"], abs=1e-9)
    assert metrics["fold_pool_folded"] == [["pool1", "conv1"]]
    assert metrics["fold_pool_latency_us"]["after"] > 0
    res = run("fold-pool", base_run, "--layers", "fc1", "--output", tmp_path / "x")
    assert res.exit_code == 2
    assert "fold_pool: cannot fold a pool into 'fc1': no MaxPooling2D takes its output" in res.output
    assert not (tmp_path / "x").exists()


def test_cli_structured_prune(base_run, tmp_path):
    res = run("prune", base_run, "--structured", "--ratio", "0.5", "--epochs", "1", "--output", tmp_path)
    assert res.exit_code == 0, res.output
    assert "  conv1                8 -> 4 channels" in res.output
    assert "  fc2                  kept whole: fc2 is a model output" in res.output
    model = keras.models.load_model(tmp_path / "base-channels" / "model.keras")
    assert model.get_layer("conv1").filters == 4 and model.get_layer("fc1").units == 8
    metrics = json.loads((tmp_path / "base-channels" / "metrics.json").read_text())
    assert metrics["macs"] < metrics["macs_before"] and metrics["masked_check_max_abs_diff"] < 1e-4
    bad = run("prune", base_run, "--structured", "--per-layer", "conv1=1.5")
    assert bad.exit_code == 2 and "--per-layer: per-layer ratios must be in [0, 1)" in bad.output


def test_cli_remove_layers_analyze_and_budget(base_run, tmp_path):
    res = run("remove-layers", base_run, "--analyze", "--output", tmp_path)
    assert res.exit_code == 2 and "no layer or block of this model can be removed" in res.output
    res = run("remove-layers", base_run, "--layers", "conv1", "--output", tmp_path)
    assert res.exit_code == 2 and "cannot remove conv1 through act1: it maps 8×8×1 to 8×8×8" in res.output
    res = run("remove-layers", base_run, "--layers", "dropout9", "--output", tmp_path)
    assert res.exit_code == 2 and "no layer or block 'dropout9' in this model" in res.output


def test_sensitivity_sweep_writes_ratios_back(base_run, tmp_path):
    from tfopt.steps.sensitivity import choose
    from tfopt.config.recipe import load_recipe

    out = tmp_path / "tuned.yaml"
    res = run("sensitivity", base_run, "--ratios", "0.25,0.5", "--max-drop", "100", "--write", out)
    assert res.exit_code == 0, res.output
    tuned = load_recipe(out)
    assert tuned.optimize.structured.per_layer == {"conv1": 0.5, "fc1": 0.5}
    assert tuned.optimize.structured.ratio == 0.0
    lines = [ln for ln in res.output.splitlines() if "channels ratio" in ln]
    assert len(lines) == 4  # conv1 and fc1 (fc2 is the output), two ratios each
    rows = [{"layer": "a", "ratio": 0.25, "drop_points": 0.1}, {"layer": "a", "ratio": 0.5, "drop_points": 0.9},
            {"layer": "b", "ratio": 0.25, "drop_points": 2.0}]
    assert choose(rows, 0.5) == {"a": 0.25, "b": 0.0}
    again = run("sensitivity", base_run, "--mode", "sparsity", "--ratios", "0.5", "--write", out)
    assert again.exit_code == 2 and "already exists" in again.output
    sp = run("sensitivity", base_run, "--mode", "sparsity", "--ratios", "0.5", "--max-drop", "100",
             "--write", tmp_path / "sp.yaml")
    assert sp.exit_code == 0, sp.output
    assert load_recipe(tmp_path / "sp.yaml").optimize.prune.per_layer == {"conv1": 0.5, "fc1": 0.5, "fc2": 0.5}


@pytest.mark.slow
def test_cqat_keeps_clusters(base_run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    clustered, _ = run_cluster(load_source(base_run), {"clusters": 8, "epochs": 1}, output=tmp_path,
                                        log=quiet)
    path, metrics = run_quantize(load_source(clustered), {"mode": "qat", "epochs": 1}, output=tmp_path,
                                          log=quiet)
    assert metrics["scheme"] == "cqat" and metrics["tflite"]["model_int8.tflite"]["agreement"] >= 0.99
    it = Interpreter(model_path=str(path / "model_int8.tflite"))
    fc1 = next(t for t in it.get_tensor_details() if "fc1/MatMul" in t["name"] and len(t["shape"]) == 2)
    assert len(np.unique(it.get_tensor(fc1["index"]))) <= 8  # the clusters survive int8


def test_teacher_from_a_path_is_the_distillation_teacher(base_run, tmp_path):
    from tfopt.data.pipeline import load_splits
    from tfopt.distill import TeacherTargets

    source = load_source(base_run)
    student = keras.models.clone_model(source.model)
    splits = load_splits(source.recipe.data, source.recipe.seed)
    cfg = PruneConfig(teacher=str(base_run), epochs=1)
    assert cfg.distill  # a teacher implies distillation
    teacher = fine_tune_from_recipe(source.recipe, splits, cfg, student)[1].teacher
    assert teacher is not student
    for a, b in zip(teacher.get_weights(), source.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    one = PruneConfig(distill=True, epochs=1)
    assert fine_tune_from_recipe(source.recipe, splits, one, student)[1].teacher is student
    assert fine_tune_from_recipe(source.recipe, splits, PruneConfig(), student)[1].teacher is None
    # more epochs than the teacher has passes to make (one: no augmentation here): its outputs computed once
    lines = []
    data, fine_tune = fine_tune_from_recipe(source.recipe, splits, PruneConfig(distill=True, epochs=2), student,
                                            lines.append)
    stored = fine_tune.teacher
    assert isinstance(stored, TeacherTargets) and stored.model is student and stored.covers(data)
    np.testing.assert_allclose(stored.outputs[0], student.predict(splits.x_train, verbose=0), atol=1e-6)
    assert lines[0].startswith(f"teacher outputs computed once for every fine-tune: {len(splits.x_train):,} "
                               f"training images (")


def test_cli_prune_by_activation(base_run, tmp_path):
    res = run("prune", base_run, "--sparsity", "0.5", "--epochs", "1", "--criterion", "activation",
              "--probe-samples", "64", "--output", tmp_path)
    assert res.exit_code == 0, res.output
    assert "activation criterion over 64 images: " in res.output
    saved = yaml.safe_load((tmp_path / "base-pruned" / "recipe.yaml").read_text())["optimize"]["prune"]
    assert saved["criterion"] == "activation" and saved["probe_samples"] == 64
    model = keras.models.load_model(tmp_path / "base-pruned" / "model.keras")
    assert kernel_sparsity(model, "fc1") > 0.4
    bad = run("prune", base_run, "--criterion", "taylor", "--output", tmp_path / "x")
    assert bad.exit_code == 2
    assert "--criterion: " in bad.output and "'magnitude' or 'activation'" in bad.output
    assert not (tmp_path / "x").exists()


def test_cli_prune_with_a_teacher(base_run, tmp_path):
    res = run("prune", base_run, "--sparsity", "0.5", "--epochs", "1", "--teacher", base_run, "--output", tmp_path)
    assert res.exit_code == 0, res.output
    assert "distilling from the teacher (temperature 4, alpha 0.9)" in res.output
    saved = yaml.safe_load((tmp_path / "base-pruned" / "recipe.yaml").read_text())["optimize"]["prune"]
    assert saved["teacher"] == str(base_run) and saved["distill"] is True

    res = run("prune", base_run, "--teacher", tmp_path / "nowhere", "--output", tmp_path / "x")
    assert res.exit_code == 2
    assert f"teacher: {tmp_path / 'nowhere'} does not exist: give a run directory from tfopt fit or a model file." \
        in res.output
    other = keras.Sequential([keras.layers.Input(load_source(base_run).model.input_shape[1:]),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    other.save(tmp_path / "three.keras")
    res = run("cluster", base_run, "--teacher", tmp_path / "three.keras", "--output", tmp_path / "x")
    assert res.exit_code == 2
    assert (f"teacher: {tmp_path / 'three.keras'} outputs 3 where the model being optimized outputs 4; a teacher "
            f"must take the same inputs and give as many outputs.") in res.output
    assert not (tmp_path / "x").exists()


def test_a_per_step_schedule_sets_the_same_rates_as_the_one_inside_the_optimizer():
    from tfopt.config.fine_tune import FineTuneSettings
    from tfopt.training.finetune import fine_tune
    from tfopt.training.lr import HoldThenCosine

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 4)).astype("float32"), rng.integers(0, 3, 96)
    rates = []
    for schedule in (None, HoldThenCosine(0.01, 18)):  # 6 steps an epoch, 3 epochs
        inp = keras.Input((4,))
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
        rows, _ = fine_tune(model, (x, y), FineTuneSettings(epochs=3, lr=0.01, batch_size=16), lr_schedule_fn=schedule,
                            verbose=0, log=quiet)
        rates.append([r["lr"] for r in rows])
    assert rates[0] == pytest.approx(rates[1], rel=1e-6) and rates[0][0] > rates[0][-1]
