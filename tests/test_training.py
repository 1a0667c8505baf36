"""Training runs: artifacts, refusal to overwrite, resume after interruption, divergence, optimizers."""

import time
import json

import numpy as np
import pytest
import tf_keras as keras
import yaml

from tfopt.errors import RunDirError
from tfopt.export import load_keras
from tfopt.config.optimizers import OPTIMIZERS
from tfopt.rundir import atomic_write_text
from tfopt.training.run import Diverged, Interrupted, fit


def test_fit_writes_a_complete_run(tiny_recipe, tmp_path):
    r = tiny_recipe(**{"output.plot": True, "output.saved_model": True, "train.epochs": 4})
    res = fit(r, output=tmp_path, log=lambda *_: None)
    run = tmp_path / "tiny"
    assert res.run_dir == run and not (tmp_path / "tiny.partial").exists()
    for name in ("model.keras", "saved_model/saved_model.pb", "recipe.yaml", "metrics.json", "history.csv",
                 "training.png", "checkpoints/best.keras", "checkpoints/last.keras"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.6  # 4 classes: chance is 0.25
    assert metrics["params"] == res.model.count_params() and metrics["epochs"] == 4
    assert set(metrics["versions"]) == {"python", "tensorflow", "tf_keras", "numpy", "tfopt"}
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["optimizer"]["beta_1"] == 0.9
    rows = (run / "history.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "loss", "accuracy"] and len(rows) == 5
    # the saved model reloads without custom objects and predicts like the trained one
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(load_keras(run / "model.keras").predict(x, verbose=0),
                               res.model.predict(x, verbose=0), rtol=1e-5)
    import tensorflow as tf

    serve = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(serve(input=tf.constant(x))["output"].numpy(), res.model.predict(x, verbose=0),
                               rtol=1e-5)


def test_same_seed_reproduces_the_run(tiny_recipe, tmp_path):
    a = fit(tiny_recipe(), output=tmp_path / "a", log=lambda *_: None).metrics
    b = fit(tiny_recipe(), output=tmp_path / "b", log=lambda *_: None).metrics
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)


def test_existing_run_is_never_overwritten_unless_asked(tiny_recipe, tmp_path):
    fit(tiny_recipe(), output=tmp_path, log=lambda *_: None)
    marker = tmp_path / "tiny" / "keep.txt"
    marker.write_text("earlier run")
    with pytest.raises(RunDirError, match="already exists and holds an earlier run; pass --overwrite"):
        fit(tiny_recipe(), output=tmp_path, log=lambda *_: None)
    assert marker.read_text() == "earlier run"
    fit(tiny_recipe(), output=tmp_path, overwrite=True, log=lambda *_: None)
    assert not marker.exists() and (tmp_path / "tiny" / "metrics.json").exists()


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_after_interruption(tiny_recipe, tmp_path):
    r = tiny_recipe(**{"train.epochs": 5})
    with pytest.raises(Interrupted, match="Continue with the same command plus --resume"):
        fit(r, output=tmp_path, callbacks=[_InterruptAt(3)], log=lambda *_: None)
    partial = tmp_path / "tiny.partial"
    assert not (tmp_path / "tiny").exists(), "an interrupted run must not look complete"
    state = json.loads((partial / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    saved = load_keras(partial / "checkpoints" / "last.keras")
    lines = []
    res = fit(r, output=tmp_path, resume=True, log=lines.append)
    assert lines[0] == f"resuming {partial} after epoch 3"
    history = (tmp_path / "tiny" / "history.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in history] == [1, 2, 3, 4, 5]
    assert res.metrics["epochs"] == 5
    # training continued from the checkpoint's weights, not from scratch
    assert not np.allclose(saved.get_weights()[0], res.model.get_weights()[0])


def test_resume_refuses_a_changed_recipe_and_a_missing_run(tiny_recipe, tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        fit(tiny_recipe(), output=tmp_path, resume=True, log=lambda *_: None)
    with pytest.raises(Interrupted):
        fit(tiny_recipe(), output=tmp_path, callbacks=[_InterruptAt(1)], log=lambda *_: None)
    with pytest.raises(RunDirError, match=r"the recipe differs from the interrupted run's \(train.batch_size\)"):
        fit(tiny_recipe(**{"train.batch_size": 16}), output=tmp_path, resume=True, log=lambda *_: None)
    with pytest.raises(RunDirError, match="holds an interrupted run; pass --resume"):
        fit(tiny_recipe(), output=tmp_path, log=lambda *_: None)


def test_divergence_stops_and_keeps_last_finite_checkpoint(tiny_recipe, tmp_path):
    r = tiny_recipe(**{
        "model.layers": [{"type": "flatten"}, {"type": "dense", "units": 4}],
        "train.loss": "mse", "train.optimizer": "sgd", "train.epochs": 4,
        "train.lr": {"per": "epoch", "schedule": {"name": "piecewise", "boundaries": [0], "values": [1e-3, 1e6]}},
    })
    with pytest.raises(Diverged, match=r"training diverged: the loss became NaN or infinite in epoch 2\."):
        fit(r, output=tmp_path, log=lambda *_: None)
    ckpt = tmp_path / "tiny.partial" / "checkpoints"
    assert json.loads((ckpt / "state.json").read_text())["epochs_done"] == 1
    assert all(np.isfinite(w).all() for w in load_keras(ckpt / "last.keras").get_weights())


def test_atomic_write_keeps_old_content_when_writing_fails(tmp_path, monkeypatch):
    p = tmp_path / "metrics.json"
    p.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("tfopt.rundir.os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["metrics.json"]


def test_unwritable_output_is_a_clear_error(tiny_recipe, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunDirError, match="cannot write the run directory"):
        fit(tiny_recipe(), output=blocker / "sub", log=lambda *_: None)


@pytest.mark.parametrize("name,cls", [("sgd", "SGD"), ("adagrad", "Adagrad"), ("rmsprop", "RMSprop"),
                                      ("adam", "Adam"), ("adamw", "AdamW"), ("nadam", "Nadam")])
def test_each_optimizer_builds_its_keras_class(name, cls):
    opt = OPTIMIZERS.get(name).build(0.05)
    assert type(opt).__name__ == cls and float(opt.learning_rate.numpy()) == pytest.approx(0.05)


def _one_step(cfg, grad, lr=0.1, steps=1):
    import tensorflow as tf

    var = tf.Variable(np.zeros(len(grad), "float32"))
    opt = OPTIMIZERS.get(cfg).build(lr)
    for _ in range(steps):
        opt.apply_gradients([(tf.constant(grad, tf.float32), var)])
    return var.numpy()


def test_sgd_momentum_and_nesterov_formulas():
    g = np.array([1.0, -2.0])
    # momentum 0.9: v1 = -lr·g, v2 = 0.9·v1 − lr·g → w2 = v1 + v2 = −lr·g·(1 + 1.9)
    np.testing.assert_allclose(_one_step({"name": "sgd", "momentum": 0.9}, g, steps=2), -0.1 * g * 2.9, rtol=1e-6)
    # nesterov: w1 = −lr·g·(1 + m)
    np.testing.assert_allclose(_one_step({"name": "sgd", "momentum": 0.9, "nesterov": True}, g), -0.1 * g * 1.9,
                               rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    g = np.array([3.0, -0.5])
    np.testing.assert_allclose(_one_step("adam", g), -0.1 * np.sign(g), rtol=1e-4)


def test_gradient_clipping_by_value_norm_and_global_norm():
    g = np.array([3.0, -4.0])
    np.testing.assert_allclose(_one_step({"name": "sgd", "clipvalue": 1.0}, g), [-0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(_one_step({"name": "sgd", "clipnorm": 1.0}, g), -0.1 * g / 5, rtol=1e-6)
    np.testing.assert_allclose(_one_step({"name": "sgd", "global_clipnorm": 2.5}, g), -0.1 * g / 2, rtol=1e-6)


def test_one_hot_loss_top_k_plateau_and_early_stopping(tiny_recipe, tmp_path):
    r = tiny_recipe(**{
        "train.loss": {"name": "categorical_crossentropy", "label_smoothing": 0.1},
        "train.metrics": ["accuracy", {"name": "top_k", "k": 2}],
        "train.lr": {"initial": 0.01, "per": "epoch", "plateau": {"monitor": "val_loss", "patience": 1}},
        "train.early_stopping": {"monitor": "val_accuracy", "patience": 1, "min_delta": 0.5},
        "train.epochs": 6,
    })
    res = fit(r, output=tmp_path, log=lambda *_: None)
    m = res.metrics
    from tfopt.data.pipeline import load_splits

    s = load_splits(r.data, r.seed)
    probs = res.model.predict(s.x_test, verbose=0)
    top2 = np.argsort(probs, axis=1)[:, -2:]
    assert m["test_top_2_accuracy"] == pytest.approx(np.mean([y in row for y, row in zip(s.y_test, top2)]))
    assert m["test_accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == s.y_test))
    # min_delta 0.5 can never be met: early stopping ends the run after patience + 1 epochs
    assert m["epochs"] == 2
    header = (tmp_path / "tiny" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"top_2_accuracy", "val_top_2_accuracy", "lr"} <= set(header)


def test_recipe_callbacks_write_into_the_run(tiny_recipe, tmp_path):
    r = tiny_recipe(callbacks=[{"name": "gradient_norm_monitor", "every_n_steps": 2, "verbose": 0},
                               "weight_stats_monitor"])
    fit(r, output=tmp_path, log=lambda *_: None)
    run = tmp_path / "tiny"
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm", "grad_norm/conv1", "grad_norm/fc1", "sparsity", "sparsity/fc1"} <= set(header)
    rows = (run / "gradients.csv").read_text().splitlines()
    steps_per_epoch = 5  # 144 training samples / 32
    checks = len(range(0, 3 * steps_per_epoch, 2))
    assert len(rows) == 1 + checks * (1 + 3 + 1)  # global; conv1, bn1, fc1; act1 (dead-ReLU fraction)
    assert (run / "gradients.png").exists() and (run / "weights.csv").exists()


def test_unknown_callback_name_is_a_recipe_error():
    from tfopt.errors import RecipeError
    from tfopt.config.recipe import validate

    from tests.conftest import tiny_recipe_dict

    with pytest.raises(RecipeError) as info:
        validate(tiny_recipe_dict(callbacks=[{"name": "gradient_monitor"}]))
    assert info.value.problems == [("callbacks.0.name", "unknown callback 'gradient_monitor' (did you mean "
                                    "'gradient_norm_monitor'?); available: learning_rate_decay, lr_finder, "
                                    "gradient_norm_monitor, weight_stats_monitor")]


def test_learning_rate_decay_entry_replaces_train_lr(tiny_recipe, tmp_path):
    from tests.conftest import tiny_recipe_dict
    from tfopt.errors import RecipeError
    from tfopt.config.recipe import validate

    data = tiny_recipe_dict(callbacks=[{"name": "learning_rate_decay", "initial": 0.02, "per": "epoch",
                                        "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}}])
    with pytest.raises(RecipeError, match="learning_rate_decay replaces train.lr"):
        validate(data)
    del data["train"]["lr"]
    r = validate(data)
    fit(r, output=tmp_path, log=lambda *_: None)
    lrs = [float(row.split(",")[-1]) for row in (tmp_path / "tiny" / "history.csv").read_text().splitlines()[1:]]
    header = (tmp_path / "tiny" / "history.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "lr" and lrs == pytest.approx([0.02, 0.01, 0.005])


def _steps(cfg, grads, w0, lr=0.1):
    import tensorflow as tf

    var = tf.Variable(np.array(w0, "float32"))
    opt = OPTIMIZERS.get(cfg).build(lr)
    for g in grads:
        opt.apply_gradients([(tf.constant(g, tf.float32), var)])
    return var.numpy().astype("float64")


def test_adagrad_rmsprop_adamw_nadam_formulas():
    g1, g2 = np.array([0.5, -2.0]), np.array([1.5, 1.0])
    lr, eps = 0.1, 1e-7
    # Adagrad: a = 0.1 + Σg²; w -= lr·g/√(a + ε) each step
    a1 = 0.1 + g1 ** 2
    a2 = a1 + g2 ** 2
    w = -lr * g1 / np.sqrt(a1 + eps) - lr * g2 / np.sqrt(a2 + eps)
    np.testing.assert_allclose(_steps("adagrad", [g1, g2], [0, 0]), w, rtol=1e-5)
    # RMSprop: v = ρ·v + (1 − ρ)·g²; w -= lr·g/(√v + ε)
    v1 = 0.1 * g1 ** 2
    v2 = 0.9 * v1 + 0.1 * g2 ** 2
    w = -lr * g1 / (np.sqrt(v1) + eps) - lr * g2 / (np.sqrt(v2) + eps)
    np.testing.assert_allclose(_steps("rmsprop", [g1, g2], [0, 0]), w, rtol=1e-5)
    # AdamW: decoupled decay w -= lr·wd·w, then the Adam step (first step: lr·sign(g))
    w0 = np.array([1.0, -3.0])
    expected = w0 - lr * 0.004 * w0 - lr * g1 / (np.abs(g1) + eps * np.sqrt(1 - 0.999))
    np.testing.assert_allclose(_steps({"name": "adamw", "weight_decay": 0.004}, [g1], w0), expected, rtol=1e-5)


def test_nadam_formula_two_steps():
    b1, b2, eps, lr = 0.9, 0.999, 1e-7, 0.1
    grads = [np.array([0.5, -2.0]), np.array([1.5, 1.0])]
    m = v = np.zeros(2)
    w = np.zeros(2)
    u_product = 1.0
    for t, g in enumerate(grads, start=1):
        # momentum schedule as tf_keras implements it: 0.96^t (the paper has 0.96^(0.004·t))
        u_t = b1 * (1 - 0.5 * 0.96 ** t)
        u_t1 = b1 * (1 - 0.5 * 0.96 ** (t + 1))
        u_product *= u_t
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat = u_t1 * m / (1 - u_product * u_t1) + (1 - u_t) * g / (1 - u_product)
        v_hat = v / (1 - b2 ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(_steps("nadam", grads, [0, 0]), w, rtol=1e-5)


# -- schedules inside the optimizer, compile settings, training time over resumes ------------------------

class _SlowEpochs(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_epoch_end(self, epoch, logs=None):
        import time

        time.sleep(self.seconds)


def test_resume_keeps_the_plateau_state_and_adds_up_fit_seconds(tiny_recipe, tmp_path):
    import time

    # min_delta 10 is never met: after the first epoch the plateau cuts the factor every epoch
    r = tiny_recipe(**{"train.epochs": 5, "train.lr": {"initial": 0.01, "per": "epoch", "plateau": {
        "monitor": "val_loss", "patience": 1, "factor": 0.5, "min_delta": 10.0}}})
    whole = fit(r, output=tmp_path / "whole", log=lambda *_: None).history
    with pytest.raises(Interrupted):
        fit(r, output=tmp_path, callbacks=[_SlowEpochs(0.3), _InterruptAt(2)], log=lambda *_: None)
    state = json.loads((tmp_path / "tiny.partial" / "checkpoints" / "state.json").read_text())
    assert state["lr_state"]["factor"] == 0.5 and state["fit_seconds"] >= 0.6
    t0 = time.perf_counter()
    res = fit(r, output=tmp_path, resume=True, callbacks=[_SlowEpochs(0.3)], log=lambda *_: None)
    second = time.perf_counter() - t0
    # the rate continues where the interrupted run left it: the same per-epoch rates as one whole run
    assert [h["lr"] for h in res.history] == pytest.approx([h["lr"] for h in whole], rel=1e-6)
    assert [h["lr"] for h in whole] == pytest.approx([0.01, 0.01, 0.005, 0.0025, 0.00125], rel=1e-6)
    # fit_seconds counts both stretches: the first (≥ 0.6 s of sleeps) and the second (≥ 0.9 s)
    assert state["fit_seconds"] + 0.9 <= res.metrics["fit_seconds"] <= state["fit_seconds"] + second


@pytest.mark.slow
def test_jit_and_steps_per_execution_agree_with_plain_compile(tiny_recipe, tmp_path):
    plain = fit(tiny_recipe(**{"train.compile": {"jit": False, "steps_per_execution": 1, "precision": "float32"}}),
                output=tmp_path / "plain", log=lambda *_: None)
    spe = fit(tiny_recipe(**{"train.compile": {"jit": False, "steps_per_execution": 5, "precision": "float32"}}),
              output=tmp_path / "spe", log=lambda *_: None)
    xla = fit(tiny_recipe(**{"train.compile": {"jit": True, "steps_per_execution": 4, "precision": "float32"}}),
              output=tmp_path / "xla", log=lambda *_: None)
    assert spe.model._steps_per_execution.numpy() == 5 and xla.model.jit_compile and not plain.model.jit_compile
    assert spe.metrics["compile"] == {"jit": False, "steps_per_execution": 5, "precision": "float32",
                                      "source": "recipe", "probe_ms_per_step": {}, "probe_seconds": 0.0}
    # the same steps in the same order: only floating-point rounding may differ
    assert spe.metrics["test_loss"] == pytest.approx(plain.metrics["test_loss"], rel=1e-4)
    assert xla.metrics["test_loss"] == pytest.approx(plain.metrics["test_loss"], rel=2e-2)
    for run in (spe, xla):
        assert abs(run.metrics["test_accuracy"] - plain.metrics["test_accuracy"]) <= 1 / 64 + 1e-9
        np.testing.assert_allclose([h["loss"] for h in run.history], [h["loss"] for h in plain.history], rtol=2e-2)


def test_bfloat16_training_agrees_with_float32_and_saves_a_float32_model(tiny_recipe, tmp_path):
    from tfopt.export import load_keras

    f32 = fit(tiny_recipe(**{"train.compile": {"jit": False, "steps_per_execution": 1, "precision": "float32"}}),
              output=tmp_path / "f32", log=lambda *_: None)
    bf16 = fit(tiny_recipe(**{"train.compile": {"jit": False, "steps_per_execution": 1,
                                                "precision": "mixed_bfloat16"}}),
               output=tmp_path / "bf16", log=lambda *_: None)
    assert bf16.metrics["compile"]["precision"] == "mixed_bfloat16"
    saved = load_keras(tmp_path / "bf16" / "tiny" / "model.keras")
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    assert abs(bf16.metrics["test_accuracy"] - f32.metrics["test_accuracy"]) <= 2 / 64 + 1e-9
    np.testing.assert_allclose([h["loss"] for h in bf16.history], [h["loss"] for h in f32.history], rtol=0.1)


@pytest.mark.slow
def test_auto_compile_probes_and_records_its_choice(tiny_recipe, tmp_path, monkeypatch):
    from tfopt.training import compile as probe

    monkeypatch.setattr(probe, "MIN_STEPS_TO_PROBE", 0)
    lines = []
    res = fit(tiny_recipe(), output=tmp_path, log=lines.append)
    c = json.loads((tmp_path / "tiny" / "metrics.json").read_text())["compile"]
    assert c["source"] == "auto (probe)" and c["probe_seconds"] > 0
    best = "float32" if "float32,jit=on,spe=5" in c["probe_ms_per_step"] else "mixed_bfloat16"
    assert set(c["probe_ms_per_step"]) == {"float32,jit=off,spe=5", "mixed_bfloat16,jit=off,spe=5",
                                           f"{best},jit=on,spe=5"}
    chosen = c["probe_ms_per_step"][probe.label(c["precision"], c["jit"], c["steps_per_execution"])]
    assert chosen <= min(c["probe_ms_per_step"].values()) * (1 + probe.TIE) + 1e-3
    assert res.model.jit_compile == c["jit"] and res.model._steps_per_execution.numpy() == c["steps_per_execution"]
    assert {layer.dtype_policy.name for layer in res.model.layers} == {"float32"}  # the run's model is float32
    assert any(line.startswith(f"compile: jit={'on' if c['jit'] else 'off'}, steps_per_execution=") for line in lines)
    # the same model again: the probe's choice comes from the cache, no probe runs
    again = json.loads(fit(tiny_recipe(), output=tmp_path / "again", log=lambda *_: None).run_dir.joinpath(
        "metrics.json").read_text())["compile"]
    assert again["source"].startswith("auto (probe of ") and again["source"].endswith(", cached)")
    assert again["probe_seconds"] == 0 and again["probe_ms_per_step"] == c["probe_ms_per_step"]
    assert (again["jit"], again["precision"], again["steps_per_execution"]) == \
        (c["jit"], c["precision"], c["steps_per_execution"])
    # a short run is not probed; a callback with batch hooks keeps one step per execution
    monkeypatch.setattr(probe, "MIN_STEPS_TO_PROBE", 10_000)
    r = tiny_recipe(callbacks=[{"name": "gradient_norm_monitor", "every_n_steps": 2, "verbose": 0}])
    m = fit(r, output=tmp_path / "b", log=lambda *_: None).metrics["compile"]
    assert (m["jit"], m["steps_per_execution"], m["probe_ms_per_step"]) == (False, 1, {})
    m = fit(tiny_recipe(), output=tmp_path / "c", log=lambda *_: None).metrics["compile"]
    assert (m["jit"], m["steps_per_execution"], m["precision"]) == (False, 5, "float32")
    assert "too short to probe" in m["source"]


def test_the_compile_probe_stops_timing_a_candidate_already_slower_than_the_fastest():
    from tfopt.training import compile as probe

    calls = []

    class Slow:
        def make_train_function(self, force=False):
            def step(it):
                calls.append(1)
                time.sleep(0.01)
                return {"loss": 0.0}
            return step

    class Data:
        def repeat(self):
            return [0]

    per_step = probe._time_candidate(lambda *a: Slow(), Data(), "mixed_bfloat16", False, 1, 8, fastest=1e-4)
    assert len(calls) == 2 and per_step > 1e-4 * probe.GIVE_UP  # the warm-up and one timed call
    calls.clear()
    probe._time_candidate(lambda *a: Slow(), Data(), "float32", False, 1, 8)
    assert len(calls) == 1 + 2 * 8  # no rival yet: timed in full, twice


@pytest.mark.parametrize("batches", [2, 0])
def test_fit_leaves_batch_norm_statistics_of_the_final_weights_unless_told_not_to(tiny_recipe, tmp_path, batches):
    from tfopt.callbacks import refresh_batch_norm
    from tfopt.data.pipeline import load_splits

    recipe = tiny_recipe(**{"train.batch_norm_refresh": batches, "train.lr": {"initial": 0.05}})
    res = fit(recipe, output=tmp_path, log=lambda *_: None)
    bn = res.model.get_layer("bn1")
    kept = [bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()]
    x = load_splits(recipe.data, recipe.seed).x_train
    refresh_batch_norm(res.model, x[:64], batch_size=32, batches=2)
    gap = np.abs(kept[1] - bn.moving_variance.numpy()).max() / np.abs(bn.moving_variance.numpy()).max()
    if batches:
        np.testing.assert_allclose(kept[0], bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        assert gap < 1e-5
    else:  # 15 steps of momentum 0.99: the moving variance stays near its initial 1
        assert gap > 0.05
