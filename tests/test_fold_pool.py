"""Pool folding: a conv and its 2×2 max-pool as one stride-2 conv; the same outputs in Keras and TFLite."""

import numpy as np
import pytest
import tf_keras as keras

import tfopt
from tfopt.errors import TfoptError
from tfopt.surgery.fold_pool import fold_pools, folded_weights
from tfopt.tflite import convert, predict

L = keras.layers


def lenet(c1=4, act="relu", padding="valid", shape=(28, 28, 1)):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(shape),
        L.Conv2D(c1, 5, activation=act, padding=padding, name="conv1"), L.MaxPooling2D(name="pool1"),
        L.Conv2D(6, 3, activation="relu", name="conv2"), L.MaxPooling2D(name="pool2"),
        L.Flatten(name="flatten"), L.Dense(10, name="fc"),
    ])


def functional(model):
    """The graph view the surgery functions take (the API makes it from a Sequential model)."""
    return keras.Model(model.inputs, model.outputs)


def images(shape=(28, 28, 1), n=32):
    return np.random.default_rng(1).random((n, *shape), np.float32)


def test_folded_weights_shift_the_kernel_into_four_groups():
    kernel = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2) + 1
    out, bias = folded_weights(kernel, np.array([0.5, -1.0], np.float32))
    assert out.shape == (3, 4, 1, 8)
    np.testing.assert_array_equal(bias, [0.5, -1.0] * 4)
    # group 3 (one row down, one column right): the kernel at [1:, 1:], zeros in row 0 and column 0
    np.testing.assert_array_equal(out[1:, 1:, :, 6:8], kernel)
    assert not out[0, :, :, 6:8].any() and not out[:, 0, :, 6:8].any()
    # every group holds the kernel's weights once
    assert [float(out[..., g * 2:(g + 1) * 2].sum()) for g in range(4)] == [float(kernel.sum())] * 4


@pytest.mark.parametrize("act,padding,shape", [("relu", "valid", (28, 28, 1)), ("tanh", "same", (9, 11, 3)),
                                               ("linear", "same", (8, 8, 2))])
def test_folding_keeps_the_outputs_in_keras_and_tflite(act, padding, shape):
    model = lenet(act=act, padding=padding, shape=shape)
    x = images(shape)
    before = [w.copy() for w in model.get_weights()]
    folded = tfopt.fold_pool(model, x)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "input model mutated"
    conv = folded.get_layer("conv1")
    assert (conv.filters, tuple(conv.kernel_size), tuple(conv.strides), conv.padding) == (16, (6, 6), (2, 2), "valid")
    assert folded.get_layer("conv2").filters == 24  # its pool folded too
    ref = model.predict(x, verbose=0)
    np.testing.assert_allclose(folded.predict(x, verbose=0), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predict(convert(folded), x), ref, rtol=1e-4, atol=1e-4)


def test_only_the_named_convs_and_what_is_kept_is_said():
    model = lenet()
    folded, report = fold_pools(functional(model), ["conv1"])
    assert report["folded"] == [("pool1", "conv1")]
    assert report["kept"] == [("pool2", "conv2 was not asked for")]
    assert folded.get_layer("conv2").filters == 6


def test_any_elementwise_activation_and_a_batchnorm_in_between():
    """The activations run on each filter group before the max, as they ran before the pool: swish
    folds; softmax (over the channels) does not."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((12, 12, 2)),
        L.Conv2D(6, 3, padding="same", name="conv1"), L.BatchNormalization(name="bn1"), L.ReLU(name="act1"),
        L.MaxPooling2D(name="pool1"),
        L.Conv2D(5, 3, activation="swish", name="conv2"), L.MaxPooling2D(name="pool2"),
        L.Conv2D(3, 1, activation="softmax", name="conv3"), L.MaxPooling2D(name="pool3"),
        L.Flatten(), L.Dense(4),
    ])
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn1")
    bn.set_weights([rng.uniform(-1.5, 1.5, 6), rng.normal(0, 0.3, 6), rng.normal(0, 0.3, 6), rng.uniform(0.3, 2, 6)])
    folded, report = fold_pools(functional(model))
    assert report == {"folded": [("pool1", "conv1"), ("pool2", "conv2")], "batchnorm_folded": [("bn1", "conv1")],
                      "kept": [("pool3", "conv3's activation 'softmax' mixes its channels")]}
    x = images((12, 12, 2))
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    for name, message in (
            ("conv3", "conv3's activation 'softmax' mixes its channels"),
            ("act1", "pool1 folds into conv1, not into ReLU act1"),
            ("bn1", "bn1 is a BatchNorm, folded into conv1 first: name conv1")):
        with pytest.raises(TfoptError) as err:
            tfopt.fold_pool(model, x, layers=[name])
        assert str(err.value) == f"fold_pool: cannot fold a pool into '{name}': {message}"


def test_a_conv_whose_output_is_also_a_model_output_is_kept():
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 1))
    conv = L.Conv2D(4, 3, activation="relu", name="conv1")(inp)
    out = L.Dense(3, name="fc")(L.Flatten()(L.MaxPooling2D(name="pool1")(conv)))
    model = keras.Model(inp, [out, conv])
    _, report = fold_pools(model)
    assert report["folded"] == [] and report["kept"] == [("pool1", "conv1's output is a model output")]


def test_an_exact_fold_of_outputs_near_zero_is_accepted():
    """Float rounding of a logit near zero is not a change: differences count against the largest output."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 1)), L.Conv2D(32, 5, activation="relu"), L.MaxPooling2D(),
                              L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(100)])
    x = np.random.default_rng(0).random((64, 32, 32, 1), np.float32)
    folded = tfopt.fold_pool(model, x)
    assert np.max(np.abs(folded.predict(x, verbose=0) - model.predict(x, verbose=0))) < 1e-5


def test_a_model_without_a_foldable_pool_is_refused():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, strides=2, name="conv1"),
                              L.MaxPooling2D(name="pool1"), L.Flatten(), L.Dense(3)])
    with pytest.raises(TfoptError) as err:
        tfopt.fold_pool(model)
    assert str(err.value) == "fold_pool: no max-pool could be folded (pool1: conv1 has strides, dilation or groups)"


def test_a_keras3_model_gets_a_keras3_model_back():
    import keras as k3

    k3.utils.set_random_seed(0)
    model = k3.Sequential([k3.Input((28, 28, 1)), k3.layers.Conv2D(4, 5, activation="relu", name="conv1"),
                           k3.layers.MaxPooling2D(name="pool1"), k3.layers.Flatten(), k3.layers.Dense(10)])
    x = images()
    folded = tfopt.fold_pool(model, x)
    assert tfopt.model_kind(folded) == "keras3"
    assert [layer.name for layer in folded.layers][1:4] == ["conv1", "pool1_groups", "pool1"]
    np.testing.assert_allclose(np.asarray(folded.predict(x, verbose=0)), np.asarray(model.predict(x, verbose=0)),
                               rtol=1e-5, atol=1e-5)


def test_measure_times_both_float32_files():
    lines = []
    tfopt.fold_pool(lenet(), images(), layers=["conv1"], measure=True, log=lines.append)
    timed = [line for line in lines if line.startswith("float32 TFLite, 1 thread: ")]
    assert len(timed) == 1 and " µs before, " in timed[0] and " µs after (" in timed[0]
