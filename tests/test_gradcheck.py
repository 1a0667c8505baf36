"""gradcheck: passes for every builder layer type, fails for a deliberately wrong gradient."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfopt import finite_diff as gc
from tfopt.models.builder import build_model
from tfopt.config.layers import ACTIVATIONS
from tfopt.config.recipe import Model


def batch(shape=(8, 8, 2), n=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, classes, n)


def test_passes_for_every_layer_type():
    cfg = Model.model_validate({"kernel_regularizer": {"l2": 1e-3}, "layers": [
        {"type": "conv2d", "filters": 4, "batch_norm": True, "activation": "relu"},
        {"type": "depthwise_conv2d", "activation": "relu6"},
        {"type": "separable_conv2d", "filters": 4, "activation": "leaky_relu"},
        {"type": "residual", "filters": 6, "strides": 2},
        {"type": "residual", "filters": 6},
        {"type": "spatial_dropout", "rate": 0.2},
        {"type": "avg_pool"},
        {"type": "batch_norm"},
        {"type": "max_pool", "pool_size": 1},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 5, "activation": "tanh"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ]})
    model = build_model(cfg, (8, 8, 2))
    for layer in model.layers:  # non-trivial BN statistics, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma * 1.3, beta + 0.1, mean + 0.2, var * 0.7])
    result = gc.gradcheck(model, *batch())
    assert result.passed, result.table()
    checked = {c.layer for c in result.layers}
    assert {"conv1", "bn1", "dwconv1", "sepconv1", "block1_conv1", "block1_proj", "block2_bn2", "bn2", "fc1",
            "fc2"} <= checked
    assert max(c.max_rel_error for c in result.layers) < 1e-5


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_passes_for_every_activation(activation):
    cfg = Model.model_validate({"layers": [{"type": "conv2d", "filters": 3, "activation": activation},
                                           {"type": "global_avg_pool"}, {"type": "dense", "units": 3}]})
    result = gc.gradcheck(build_model(cfg, (5, 5, 1)), *batch((5, 5, 1)))
    assert result.passed, result.table()


@keras.utils.register_keras_serializable("tests")
class WrongGradScale(keras.layers.Layer):
    """y = x · w, with a custom gradient for w that is twice too large."""

    def build(self, shape):
        self.w = self.add_weight(name="w", shape=(shape[-1],), initializer="ones")

    def call(self, x):
        @tf.custom_gradient
        def scale(x, w):
            def grad(dy):
                return dy * w, 2.0 * tf.reduce_sum(dy * x, axis=0)
            return x * w, grad

        return scale(x, self.w)


def test_fails_for_a_wrong_custom_gradient():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(4, name="fc1")(inputs)
    h = WrongGradScale(name="wrong")(h)
    out = keras.layers.Dense(3, name="fc2")(h)
    model = keras.Model(inputs, out)
    x, y = batch((6,))
    result = gc.gradcheck(model, x, y)
    assert not result.passed and result.failures() == ["wrong"]
    bad = next(c for c in result.layers if c.layer == "wrong")
    assert bad.max_rel_error == pytest.approx(0.5, rel=1e-3)  # 2g vs g: |2g − g| / 2g
    assert result.table().splitlines()[-1] == "gradient check FAILED in wrong (threshold 0.0001, eps 1e-05, float64)"


def test_model_is_left_unchanged():
    cfg = Model.model_validate({"layers": [{"type": "flatten"}, {"type": "dense", "units": 3}]})
    model = build_model(cfg, (2, 2, 1))
    before = [w.copy() for w in model.get_weights()]
    gc.gradcheck(model, *batch((2, 2, 1)))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.layers[-1].kernel.dtype == tf.float32
