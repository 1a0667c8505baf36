"""The layer table: every layer tfopt meets has one entry; unknown classes are refused by name."""

import numpy as np
import pytest
import tf_keras as keras

import tfopt
from tfopt import layer_kinds
from tfopt.errors import TfoptError
from tfopt.models.stats import model_stats


def test_every_layer_of_the_reference_networks_is_known():
    for build in (keras.applications.MobileNetV2, keras.applications.MobileNetV3Small):
        model = build(input_shape=(96, 96, 3), alpha=0.35 if build is keras.applications.MobileNetV2 else 0.75,
                      weights=None, include_preprocessing=True) if build is keras.applications.MobileNetV3Small \
            else build(input_shape=(96, 96, 3), alpha=0.35, weights=None)
        roles = {layer_kinds.role(layer) for layer in model.layers}
        assert roles <= set(layer_kinds.ROLES)
        assert {"producer", "transparent", "coupled"} <= roles


def test_mac_formulas():
    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(16, 3, padding="same")(inp)
    dw = keras.layers.DepthwiseConv2D(3, padding="valid")(conv)
    sep = keras.layers.SeparableConv2D(8, 3, padding="same", depth_multiplier=2)(dw)
    flat = keras.layers.Flatten()(sep)
    out = keras.layers.Dense(10)(flat)
    model = keras.Model(inp, out)
    macs = {layer.name: layer_kinds.macs(layer) for layer in model.layers}
    c, d, s, f = (layer.name for layer in model.layers[1:5])
    assert macs[c] == 8 * 8 * 3 * 3 * 3 * 16
    assert macs[d] == 6 * 6 * 3 * 3 * 16
    assert macs[s] == 6 * 6 * 3 * 3 * 32 + 6 * 6 * 32 * 8
    assert macs[model.layers[-1].name] == 6 * 6 * 8 * 10
    assert macs[f] == 0
    assert model_stats(model)["macs"] == sum(macs.values())



def test_mac_formulas_of_one_and_three_dimensional_convolutions():
    seq = keras.Input((20, 3))
    c1 = keras.layers.Conv1D(8, 5, padding="valid")(seq)
    d1 = keras.layers.DepthwiseConv1D(3, padding="same")(c1)
    vol = keras.Input((6, 6, 6, 2))
    c3 = keras.layers.Conv3D(4, (3, 2, 1), padding="valid")(vol)
    model = keras.Model([seq, vol], [d1, c3])
    macs = {type(layer).__name__: layer_kinds.macs(layer) for layer in model.layers}
    assert macs["Conv1D"] == 16 * 5 * 3 * 8
    assert macs["DepthwiseConv1D"] == 16 * 3 * 8
    assert macs["Conv3D"] == (4 * 5 * 6) * (3 * 2 * 1) * 2 * 4
    roles = {type(layer).__name__: layer_kinds.role(layer) for layer in model.layers}
    assert (roles["Conv1D"], roles["Conv3D"], roles["DepthwiseConv1D"]) == ("producer", "producer", "transparent")


def test_tensorflow_op_layers_are_followed_when_they_work_value_by_value():
    import tensorflow as tf

    inp = keras.Input((4, 4, 6))
    hard_swish = inp * tf.nn.relu6(inp + 3.0) / 6.0  # three op layers with scalars, one joining two tensors
    shifted = inp + tf.constant(np.arange(6, dtype="float32"))  # a per-channel constant
    sliced = inp[..., :3]
    model = keras.Model(inp, [hard_swish, shifted, sliced])
    roles = {layer.name: layer_kinds.role(layer) for layer in model.layers[1:]}
    assert sorted(roles.values()) == ["blocking", "blocking", "coupled", "transparent", "transparent",
                                      "transparent"]
    assert roles[model.layers[-1].name] == "blocking"  # the slice

def test_roles_follow_the_settings():
    inp = keras.Input((4, 4, 6))
    keep = keras.layers.Reshape((16, 6))(inp)
    move = keras.layers.Reshape((4, 24))(inp)
    dw1 = keras.layers.DepthwiseConv2D(3, depth_multiplier=1)(inp)
    dw2 = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(inp)
    cat = keras.layers.Concatenate()([inp, inp])
    cat1 = keras.layers.Concatenate(axis=1)([inp, inp])
    scalar = keras.layers.Rescaling(1 / 255)(inp)
    model = keras.Model(inp, [keep, move, dw1, dw2, cat, cat1, scalar])
    got = [layer_kinds.role(layer) for layer in model.layers[1:]]
    assert got == ["transparent", "blocking", "transparent", "blocking", "concat", "blocking", "transparent"]
    assert [layer_kinds.is_foldable(layer) for layer in model.layers[3:5]] == [True, True]
    names = [[w.name.split("/")[-1] for w in layer_kinds.prunable_weights(layer)] for layer in model.layers[3:5]]
    assert names == [["depthwise_kernel:0"], ["depthwise_kernel:0"]]


class Scale(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def test_an_unknown_layer_is_refused_by_name_before_any_work():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3)(inp)
    h = Scale(name="my_scale")(h)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    with pytest.raises(layer_kinds.UnknownLayer, match="layer 'my_scale' is a Scale, which tfopt does not know"):
        model_stats(model)
    x, y = np.zeros((8, 8, 8, 1), "float32"), np.zeros(8, "int32")
    for call in (lambda: tfopt.prune(model, (x, y), epochs=1), lambda: tfopt.prune_channels(model, epochs=0),
                 lambda: tfopt.fold_batchnorm(model)):
        with pytest.raises(TfoptError, match="layer 'my_scale' is a Scale"):
            call()


def test_tfmot_wrappers_are_looked_through():
    import tensorflow_model_optimization as tfmot

    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp)))
    model = keras.Model(inp, out)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model)
    assert model_stats(wrapped)["macs"] == model_stats(model)["macs"]
    qat = tfmot.quantization.keras.quantize_model(model)
    assert model_stats(qat)["macs"] == model_stats(model)["macs"]
