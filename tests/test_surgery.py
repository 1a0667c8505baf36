"""BatchNorm folding over many random builder architectures: equal outputs, plain reloads."""

import numpy as np
import pytest
import tf_keras as keras

from tfopt.errors import TfoptError
from tfopt.models.builder import build_model
from tfopt.recipe import Model
from tfopt.surgery.fold_bn import fold_batchnorm


def random_architecture(seed):
    rng = np.random.default_rng(seed)
    acts = ["relu", "relu6", "leaky_relu", "swish", "tanh", "linear"]
    layers = []
    for _ in range(rng.integers(2, 5)):
        kind = rng.choice(["conv", "dw", "sep", "res", "bn_after_pool"])
        act = str(rng.choice(acts))
        if kind == "conv":
            layers.append({"type": "conv2d", "filters": int(rng.integers(2, 9)), "kernel_size": int(rng.choice([1, 3])),
                           "batch_norm": bool(rng.random() < 0.8), "activation": act,
                           "use_bias": bool(rng.random() < 0.5)})
        elif kind == "dw":
            layers.append({"type": "depthwise_conv2d", "depth_multiplier": int(rng.integers(1, 3)),
                           "batch_norm": True, "activation": act})
        elif kind == "sep":
            layers.append({"type": "separable_conv2d", "filters": int(rng.integers(2, 9)), "batch_norm": True,
                           "activation": act})
        elif kind == "res":
            layers.append({"type": "residual", "filters": int(rng.integers(2, 9)), "strides": int(rng.choice([1, 2]))})
        else:
            layers += [{"type": "max_pool", "pool_size": 1}, {"type": "batch_norm"}]
    layers += [{"type": "global_avg_pool"}, {"type": "dense", "units": 6, "batch_norm": True, "activation": "relu"},
               {"type": "dense", "units": 3, "activation": "softmax"}]
    return Model.model_validate({"layers": layers})


def randomize_bn(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.3, b.shape),
                               rng.normal(0, 0.3, m.shape), rng.uniform(0.3, 2.0, v.shape)])


@pytest.mark.parametrize("seed", range(12))
def test_folding_keeps_outputs_and_reloads_plain(seed, tmp_path):
    model = build_model(random_architecture(seed), (8, 8, 3))
    randomize_bn(model, seed)
    before = [w.copy() for w in model.get_weights()]
    folded, report = fold_batchnorm(model)
    x = np.random.default_rng(seed).normal(size=(6, 8, 8, 3)).astype("float32")
    ref, got = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "input model mutated"
    n_bn = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    n_left = sum(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert n_left == n_bn - len(report["folded"]) == len(report["kept"])
    assert folded.count_params() < model.count_params() or n_bn == 0
    folded.save(tmp_path / "f.keras")
    again = keras.models.load_model(tmp_path / "f.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), got, rtol=1e-6)


def test_standalone_bn_after_pooling_is_kept_with_a_reason():
    model = build_model(Model.model_validate({"layers": [
        {"type": "conv2d", "filters": 4, "activation": "relu"}, {"type": "max_pool"}, {"type": "batch_norm"},
        {"type": "flatten"}, {"type": "dense", "units": 2}]}), (8, 8, 1))
    _, report = fold_batchnorm(model)
    assert report == {"folded": [], "kept": [("bn1", "follows MaxPooling2D")]}


def test_subclassed_models_are_refused():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Tiny()
    m(np.zeros((1, 3), "float32"))
    with pytest.raises(TfoptError, match="is subclassed; surgery needs a Sequential or functional model"):
        fold_batchnorm(m)
