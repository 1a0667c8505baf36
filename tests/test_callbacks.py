"""Callbacks inside tf_keras and Keras 3 fits, checked against hand-computed numbers."""

import importlib
import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import python_c
from tfopt.callbacks import GradientNormMonitor, LRFinder, WeightStatsMonitor, find_lr

WORLDS = ["tf_keras", "keras"]


def data(n=64, d=(6, 6, 1), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *d)).astype("float32")
    y = (x.reshape(n, -1).sum(axis=1) > 0).astype("int32") + (x[:, 0, 0, 0] > 1).astype("int32")
    return x, np.minimum(y, classes - 1)


def cnn(km, classes=3, act="relu"):
    L = km.layers
    return km.Sequential([km.Input((6, 6, 1)), L.Conv2D(4, 3, activation=act, name="conv1"),
                          L.Flatten(name="flat"), L.Dense(8, activation=act, name="fc1"),
                          L.Dense(classes, activation="softmax", name="fc2")])


def compiled(world, lr=0.05, **kw):
    km = importlib.import_module(world)
    km.utils.set_random_seed(0)
    m = cnn(km, **kw)
    m.compile(km.optimizers.SGD(lr), "sparse_categorical_crossentropy")
    return km, m


def manual_layer_norms(model, x, y):
    with tf.GradientTape() as tape:
        pred = model(x, training=False)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, tf.math.log(pred)))
    grads = tape.gradient(loss, model.trainable_weights)
    out = {}
    for layer in model.layers:
        sq = sum(float(tf.reduce_sum(g ** 2)) for g, v in zip(grads, model.trainable_weights)
                 if any(v is w for w in layer.trainable_weights))
        if layer.trainable_weights:
            out[layer.name] = np.sqrt(sq)
    return out


@pytest.mark.parametrize("world", WORLDS)
def test_gradient_norms_match_a_hand_computed_tape(world, tmp_path):
    km, m = compiled(world)
    x, y = data()
    probe = (x[:16], y[:16])
    mon = GradientNormMonitor(probe, every_n_steps=1, csv_path=tmp_path / "g.csv", log_dir=tmp_path / "tb",
                              plot_path=tmp_path / "g.png", verbose=0)
    hist = m.fit(x, y, batch_size=16, epochs=2, callbacks=[mon], verbose=0, shuffle=False)
    assert [r["step"] for r in mon.records] == list(range(8))
    last = mon.records[-1]
    expected = manual_layer_norms(m, *probe)
    for name, norm in expected.items():
        assert last["layers"][name]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert last["grad_norm"] == pytest.approx(np.sqrt(sum(v ** 2 for v in expected.values())), rel=1e-4)
    for name in expected:
        vals = last["layers"][name]
        assert 0 <= vals["grad_min_abs"] <= vals["grad_max_abs"] and 0 < vals["update_ratio"] < 1
    assert 0 <= last["layers"]["fc1"]["dead_fraction"] <= 1
    assert hist.history["grad_norm"][-1] == pytest.approx(last["grad_norm"])
    assert hist.history["grad_norm/conv1"][-1] == pytest.approx(last["layers"]["conv1"]["grad_norm"])
    rows = (tmp_path / "g.csv").read_text().splitlines()
    assert rows[0] == "step,layer,grad_norm,grad_min_abs,grad_max_abs,update_ratio,dead_fraction"
    assert len(rows) == 1 + 8 * (1 + 3)  # global + conv1, fc1, fc2 per check
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")) and (tmp_path / "g.png").stat().st_size > 0


@pytest.mark.parametrize("world", WORLDS)
def test_probe_defaults_to_the_first_training_batch(world):
    km, m = compiled(world)
    x, y = data()
    mon = GradientNormMonitor(every_n_steps=3, verbose=0)
    m.fit(x, y, batch_size=16, epochs=1, callbacks=[mon], verbose=0, shuffle=False)
    np.testing.assert_array_equal(mon.probe_batch[0], x[:16])
    assert [r["step"] for r in mon.records] == [0, 3]
    assert type(m).train_step is not None and "train_step" not in vars(m)


@pytest.mark.parametrize("world", WORLDS)
def test_exploding_gradients_stop_before_weights_go_non_finite(world):
    km, m = compiled(world, lr=1e3)
    x, y = data(n=256)
    mon = GradientNormMonitor((x[:32], y[:32]), every_n_steps=1, stop_on_explosion=True, verbose=0)
    m.fit(x, y, batch_size=16, epochs=3, callbacks=[mon], verbose=0)
    alert = mon.alerts[0]
    record = next(r for r in mon.records if r["step"] == alert["step"])
    norms = {k: v["grad_norm"] for k, v in record["layers"].items() if "grad_norm" in v}
    assert alert["kind"] == "exploding" and alert["layer"] == max(norms, key=norms.get)
    assert alert["message"].startswith(f"exploding gradients in layer '{alert['layer']}' (norm ")
    assert "global_clipnorm=" in alert["message"] and alert["message"].endswith("Training stopped.")
    assert record["grad_norm"] > 1e3
    assert len(mon.records) < 3 * 16, "training should have stopped early"
    assert all(np.isfinite(w).all() for w in m.get_weights())


@pytest.mark.parametrize("world", WORLDS)
def test_vanishing_gradients_in_a_deep_sigmoid_mlp(world):
    km = importlib.import_module(world)
    km.utils.set_random_seed(0)
    L = km.layers
    layers = [km.Input((16,))] + [L.Dense(16, activation="sigmoid", name=f"d{i}") for i in range(1, 15)]
    m = km.Sequential(layers + [L.Dense(2, activation="softmax", name="out")])
    m.compile(km.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    mon = GradientNormMonitor((x[:32], y[:32]), every_n_steps=1, vanishing_threshold=1e-6, vanishing_patience=3,
                              verbose=0)
    m.fit(x, y, batch_size=16, epochs=1, callbacks=[mon], verbose=0)
    flagged = [a["layer"] for a in mon.alerts if a["kind"] == "vanishing"]
    assert flagged[:2] == ["d1", "d2"] and "out" not in flagged
    first = next(a for a in mon.alerts if a["layer"] == "d1")
    assert first["step"] == 2 and "norm below 1e-06 for 3 checks in a row" in first["message"]


def test_nonfinite_gradients_stop_training():
    km, m = compiled("tf_keras")
    x, y = data()
    x_bad = x.copy()
    x_bad[0, 0, 0, 0] = np.nan
    mon = GradientNormMonitor((x_bad[:8], y[:8]), every_n_steps=1, verbose=0)
    m.fit(x, y, batch_size=16, epochs=2, callbacks=[mon], verbose=0)
    assert mon.alerts[0]["kind"] == "nonfinite" and len(mon.records) == 1


@pytest.mark.parametrize("world", WORLDS)
def test_lr_finder_restores_weights_and_suggests_within_range(world):
    km, m = compiled(world)
    km2 = km
    m.compile(km2.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x, y = data(n=256)
    m.fit(x[:32], y[:32], epochs=1, verbose=0)  # the optimizer now has state worth keeping
    before_w = [w.copy() for w in m.get_weights()]
    before_opt = [v.numpy().copy() for v in m.optimizer.variables]
    finder = find_lr(m, x, y, batch_size=16, min_lr=1e-5, max_lr=10.0, num_steps=40)
    s = finder.suggestion()
    assert finder.min_lr <= s["lr"] <= s["max_lr"] and s["rule"] == "steepest"
    assert finder.lrs[0] == pytest.approx(1e-5) and finder.lrs[1] / finder.lrs[0] == pytest.approx(10 ** (6 / 39))
    for a, b in zip(before_w, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(before_opt, m.optimizer.variables):
        np.testing.assert_array_equal(a, v.numpy())


def test_lr_finder_min_div_10_rule():
    f = LRFinder(1e-4, 1.0, num_steps=10, rule="min_div_10")
    f.lrs = [f.rate(i) for i in range(10)]
    f.smoothed = f.losses = [5, 4, 3, 2, 1, 0.5, 0.7, 2, 5, 9]
    assert f.suggestion()["lr"] == pytest.approx(f.rate(5) / 10)
    with pytest.raises(ValueError, match="rule must be one of steepest, min_div_10; got 'best'"):
        LRFinder(rule="best")


@pytest.mark.parametrize("world", WORLDS)
def test_weight_stats_counts_zeros(world, tmp_path):
    km, m = compiled(world, lr=0.0)
    w = m.get_layer("fc1").get_weights()
    w[0][:10] = 0.0
    w[0][10:12] = 1e-4
    m.get_layer("fc1").set_weights(w)
    mon = WeightStatsMonitor(near_zero=1e-3, csv_path=tmp_path / "w.csv")
    x, y = data()
    hist = m.fit(x, y, batch_size=32, epochs=1, callbacks=[mon], verbose=0)
    fc1 = mon.records[-1]["layers"]["fc1"]
    n = w[0].size
    assert fc1["zero_fraction"] == pytest.approx(10 * 8 / n)
    assert fc1["near_zero_fraction"] >= 12 * 8 / n
    assert hist.history["sparsity/fc1"][0] == pytest.approx(80 / n)
    assert (tmp_path / "w.csv").read_text().splitlines()[0] == "epoch,layer,weight_norm,zero_fraction,near_zero_fraction,params"


def test_every_callback_has_a_json_config():
    from tfopt.callbacks import LearningRateDecay

    for cb in (GradientNormMonitor(every_n_steps=5), LRFinder(), WeightStatsMonitor(), LearningRateDecay("cosine")):
        cfg = cb.get_config()
        assert json.loads(json.dumps(cfg)) == cfg
    assert GradientNormMonitor(every_n_steps=5).get_config()["every_n_steps"] == 5


def test_importing_callbacks_leaves_tf_keras_alone():
    code = ("import os, sys, tensorflow as tf; import tfopt.callbacks; "
            "assert 'tensorflow_model_optimization' not in sys.modules; "
            "assert 'TF_USE_LEGACY_KERAS' not in os.environ; "
            "print(tf.keras.__version__)")
    out = python_c(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("3."), out.stdout


def test_dead_relus_are_flagged():
    km = importlib.import_module("tf_keras")
    L = km.layers
    m = km.Sequential([km.Input((6, 6, 1)), L.Flatten(), L.Dense(8, activation="relu", name="dead",
                                                                  bias_initializer=km.initializers.Constant(-100.0)),
                       L.Dense(3, activation="softmax", name="out")])
    m.compile(km.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    x, y = data()
    mon = GradientNormMonitor((x[:16], y[:16]), every_n_steps=1, verbose=0)
    m.fit(x, y, batch_size=16, epochs=1, callbacks=[mon], verbose=0)
    alert = next(a for a in mon.alerts if a["layer"] == "dead" and "dead ReLUs" in a["message"])
    assert alert["message"].startswith("100% of the units of 'dead' output zero on the whole probe batch")
    assert mon.records[0]["layers"]["dead"]["dead_fraction"] == 1.0


# ----------------------------------------------------------------------------------------
# BatchNormRefresh


def bn_model(km):
    L = km.layers
    return km.Sequential([km.Input((6, 6, 1)), L.Conv2D(4, 3, use_bias=False, name="conv"),
                          L.BatchNormalization(name="bn"), L.ReLU(), L.Flatten(), L.Dropout(0.5, name="drop"),
                          L.Dense(3, activation="softmax", name="fc")])


@pytest.mark.parametrize("world", WORLDS)
def test_refresh_batch_norm_sets_the_statistics_of_the_layer_inputs(world):
    from tfopt.callbacks import refresh_batch_norm

    km = importlib.import_module(world)
    model = bn_model(km)
    bn, conv = model.get_layer("bn"), model.get_layer("conv")
    bn.moving_mean.assign(np.full(4, 5.0, np.float32))
    bn.moving_variance.assign(np.full(4, 100.0, np.float32))
    kernel = conv.get_weights()[0].copy()
    x, _ = data(n=96)
    assert refresh_batch_norm(model, x, batch_size=32, batches=10) == 3
    feats = np.asarray(conv(x)).reshape(-1, 4)
    np.testing.assert_allclose(bn.moving_mean.numpy(), feats.mean(0), rtol=1e-4, atol=1e-5)
    # batch variances are Bessel-corrected per batch of 32 × 16 positions
    np.testing.assert_allclose(bn.moving_variance.numpy(), feats.var(0), rtol=5e-3)
    np.testing.assert_array_equal(conv.get_weights()[0], kernel)
    assert float(bn.momentum) == 0.99 and float(model.get_layer("drop").rate) == 0.5
    assert refresh_batch_norm(cnn(km), x) == 0  # no BatchNormalization: nothing to do


def test_batch_norm_refresh_callback_leaves_statistics_that_match_the_final_weights():
    import tf_keras as km

    from tfopt.callbacks import BatchNormRefresh, refresh_batch_norm

    x, y = data(n=256)

    def trained(callbacks):
        km.utils.set_random_seed(0)
        model = bn_model(km)
        model.compile(km.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=32, epochs=2, validation_data=(x[:64], y[:64]), verbose=0,
                  callbacks=callbacks)
        stats = [v.numpy().copy() for v in (model.get_layer("bn").moving_mean, model.get_layer("bn").moving_variance)]
        refresh_batch_norm(model, x[:128], batch_size=32, batches=4)
        fresh = [model.get_layer("bn").moving_mean.numpy(), model.get_layer("bn").moving_variance.numpy()]
        return stats, fresh

    stats, fresh = trained([BatchNormRefresh(x[:128], batch_size=32, batches=4)])
    for a, b in zip(stats, fresh):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    stale, fresh = trained([])  # 16 steps of momentum 0.99 leave the moving averages near their start
    assert np.abs(stale[1] - fresh[1]).max() > 0.1 * np.abs(fresh[1]).max()
