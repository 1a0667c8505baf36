"""Every layer, activation, initializer and regularizer the builder supports, checked by numbers."""

import numpy as np
import pytest
import tf_keras as keras

from tfopt.errors import ShapeError
from tfopt.models.builder import build_model
from tfopt.config.layers import ACTIVATIONS, INITIALIZERS
from tfopt.models.stats import model_stats
from tfopt.config.recipe import Model


def build(layers, shape=(8, 8, 3), **model_kw):
    return build_model(Model.model_validate({"layers": layers, **model_kw}), shape)


def by_name(model):
    return {layer.name: layer for layer in model.layers}


def test_conv_variants_params_macs_and_names():
    m = build([
        {"type": "conv2d", "filters": 4, "kernel_size": 3, "strides": 2, "padding": "valid", "dilation_rate": 1},
        {"type": "depthwise_conv2d", "depth_multiplier": 2, "use_bias": False},
        {"type": "separable_conv2d", "filters": 5, "kernel_size": [1, 3], "dilation_rate": 1},
        {"type": "conv2d", "filters": 2, "dilation_rate": 2, "use_bias": False},
    ])
    L = by_name(m)
    assert list(L) == ["input", "conv1", "dwconv1", "sepconv1", "conv2"]
    assert L["conv1"].output_shape == (None, 3, 3, 4)
    assert L["conv1"].count_params() == 3 * 3 * 3 * 4 + 4
    assert L["dwconv1"].count_params() == 3 * 3 * 4 * 2
    assert L["sepconv1"].count_params() == 1 * 3 * 8 + 8 * 5 + 5
    assert L["conv2"].count_params() == 3 * 3 * 5 * 2 and L["conv2"].dilation_rate == (2, 2)
    assert model_stats(m)["macs"] == (3 * 3 * 27 * 4) + (3 * 3 * 9 * 8) + (3 * 3 * 3 * 8 + 9 * 8 * 5) + (9 * 45 * 2)


def test_pools_flatten_dense_dropout_bn():
    m = build([
        {"type": "conv2d", "filters": 4, "batch_norm": True, "activation": "relu"},
        {"type": "max_pool"}, {"type": "avg_pool", "pool_size": 2, "strides": 1},
        {"type": "spatial_dropout", "rate": 0.2}, {"type": "batch_norm", "momentum": 0.9},
        {"type": "flatten"}, {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 6, "batch_norm": True, "activation": "tanh"},
        {"type": "dense", "units": 3, "activation": "softmax"},
    ])
    L = by_name(m)
    assert list(L) == ["input", "conv1", "bn1", "act1", "pool1", "pool2", "sdrop1", "bn2", "flatten1",
                       "dropout1", "fc1", "bn3", "act2", "fc2"]
    assert L["conv1"].use_bias is False and L["fc2"].use_bias is True
    assert L["pool2"].output_shape == (None, 3, 3, 4)
    assert L["bn2"].momentum == 0.9 and L["sdrop1"].rate == 0.2
    assert L["fc1"].count_params() == 36 * 6
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(m.predict(x, verbose=0).sum(axis=1), 1.0, rtol=1e-5)


def test_global_avg_pool_and_residual_shortcuts():
    m = build([
        {"type": "conv2d", "filters": 8},
        {"type": "residual", "filters": 8},
        {"type": "residual", "filters": 16, "strides": 2},
        {"type": "global_avg_pool"},
        {"type": "dense", "units": 2},
    ])
    names = [layer.name for layer in m.layers]
    assert "block1_proj" not in names and "block2_proj" in names
    assert isinstance(by_name(m)["block1_add"], keras.layers.Add)
    # identity shortcut: block1_add takes conv1's output directly
    inbound = [t.node.layer.name for t in by_name(m)["block1_add"].input]
    assert inbound == ["block1_bn2", "conv1"]
    assert m.output_shape == (None, 2)


def test_identity_shortcut_that_cannot_match_is_refused():
    with pytest.raises(ShapeError) as info:
        build([{"type": "residual", "filters": 8, "shortcut": "identity"}])
    assert str(info.value).startswith("model.layers.0: block1 (residual) identity shortcut needs stride 1 and "
                                      "3 filters to match its input 8×8×3")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation(activation):
    m = build([{"type": "flatten"}, {"type": "dense", "units": 4, "activation": activation,
                                     "kernel_initializer": "glorot_uniform"}], shape=(1, 1, 4))
    dense = by_name(m)["fc1"]
    x = np.linspace(-3, 3, 8, dtype="float32").reshape(2, 1, 1, 4)
    z = x.reshape(2, 4) @ dense.kernel.numpy() + dense.bias.numpy()
    expected = {
        "relu": np.maximum(z, 0), "relu6": np.clip(z, 0, 6), "leaky_relu": np.where(z > 0, z, 0.2 * z),
        "elu": np.where(z > 0, z, np.expm1(z)), "sigmoid": 1 / (1 + np.exp(-z)), "tanh": np.tanh(z),
        "selu": 1.0507009873554805 * np.where(z > 0, z, 1.6732632423543772 * np.expm1(z)),
        "swish": z / (1 + np.exp(-z)), "linear": z,
        "hard_sigmoid": np.clip(z + 3, 0, 6) / 6, "hard_swish": z * np.clip(z + 3, 0, 6) / 6,
        "softmax": np.exp(z) / np.exp(z).sum(axis=1, keepdims=True),
        "gelu": 0.5 * z * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2))),
    }[activation]
    np.testing.assert_allclose(m.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", INITIALIZERS)
def test_initializers_have_the_right_scale(name):
    fan_in, fan_out = 400, 300
    m = build([{"type": "flatten"}, {"type": "dense", "units": fan_out, "kernel_initializer": name}],
              shape=(1, 1, fan_in))
    std = by_name(m)["fc1"].kernel.numpy().std()
    scale = {"he": 2 / fan_in, "glorot": 2 / (fan_in + fan_out), "lecun": 1 / fan_in}[name.split("_")[0]]
    assert std == pytest.approx(np.sqrt(scale), rel=0.05)


def test_regularizers_default_and_per_layer_override():
    m = build([
        {"type": "conv2d", "filters": 2},
        {"type": "conv2d", "filters": 2, "kernel_regularizer": {"l1": 0.01, "l2": 0.0}},
        {"type": "conv2d", "filters": 2, "kernel_regularizer": {"l2": 0}},
        {"type": "flatten"}, {"type": "dense", "units": 2},
    ], kernel_regularizer={"l2": 0.001}, bias_regularizer={"l1": 0.5})
    L = by_name(m)
    for layer in m.layers:
        if getattr(layer, "bias", None) is not None:
            layer.bias.assign(np.full(layer.bias.shape, 0.1, "float32"))
    w = {n: L[n].kernel.numpy() for n in ("conv1", "conv2", "conv3", "fc1")}
    expected = (0.001 * (np.sum(w["conv1"] ** 2) + np.sum(w["fc1"] ** 2)) + 0.01 * np.abs(w["conv2"]).sum()
                + 0.5 * 0.1 * 2 * 4)
    assert float(sum(m.losses)) == pytest.approx(expected, rel=1e-5)
    assert L["conv3"].kernel_regularizer is None


def test_dense_on_images_and_conv_on_flat_are_shape_errors():
    with pytest.raises(ShapeError, match=r"model.layers.0: fc1 \(dense\) needs a flat input but receives 8×8×3"):
        build([{"type": "dense", "units": 2}])
    with pytest.raises(ShapeError, match=r"conv1 \(conv2d\) needs an image-shaped input"):
        build([{"type": "flatten"}, {"type": "conv2d", "filters": 2}])


def test_saved_model_reloads_without_custom_objects(tmp_path):
    m = build([{"type": "conv2d", "filters": 4, "activation": "leaky_relu"},
               {"type": "separable_conv2d", "filters": 4, "batch_norm": True, "activation": "relu6"},
               {"type": "residual", "filters": 8, "strides": 2, "activation": "swish"},
               {"type": "global_avg_pool"}, {"type": "dense", "units": 3, "activation": "softmax"}])
    m.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6)


def test_summary_table_lists_layers_and_totals():
    from tfopt.models.stats import summary_table

    text = summary_table(build([{"type": "conv2d", "filters": 4}, {"type": "flatten"},
                                {"type": "dense", "units": 2}]))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "params", "MACs"]
    assert lines[3].split() == ["conv1", "Conv2D", "8×8×4", "112", "6.91k"]
    assert lines[-1] == "total: 626 parameters (626 trainable), 7.42k MACs per sample (7,424)"


def test_inverted_residual_blocks_with_squeeze_excite_and_hard_swish(tmp_path):
    m = build([
        {"type": "conv2d", "filters": 8, "batch_norm": True, "activation": "hard_swish"},
        {"type": "inverted_residual", "filters": 8, "expansion": 1},
        {"type": "inverted_residual", "filters": 12, "expanded": 24, "strides": 2, "squeeze_excite": 0.25,
         "activation": "hard_swish", "kernel_size": 5},
        {"type": "inverted_residual", "filters": 12, "repeat": 2},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 3, "activation": "softmax"},
    ])
    L = by_name(m)
    # expansion 1: no expansion conv; the first block keeps the shape, so it adds its input
    assert "ir1_expand" not in L and type(L["ir1_add"]).__name__ == "Add"
    assert L["ir2_expand"].filters == 24 and L["ir2_dw"].kernel_size == (5, 5) and L["ir2_dw"].strides == (2, 2)
    assert L["ir2_se_reduce"].filters == 8 and L["ir2_se_expand"].filters == 24 and "ir2_add" not in L
    assert L["ir3_expand"].filters == 72 and L["ir4_dw"].strides == (1, 1) and "ir3_add" in L and "ir4_add" in L
    assert L["ir2_project"].output_shape == (None, 4, 4, 12)
    assert L["ir2_project"].count_params() == 24 * 12 and not L["ir2_project"].use_bias
    # the hard swish after conv1's BatchNorm is x * relu6(x + 3) / 6, from stock layers
    probe = keras.Model(m.input, [L["bn1"].output, L["act1"].output])
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32") * 4
    z, act = probe.predict(x, verbose=0)
    np.testing.assert_allclose(act, z * np.clip(z + 3, 0, 6) / 6, rtol=1e-5, atol=1e-6)
    # in this form the TFLite converter fuses each hard swish into one op
    from ai_edge_litert.interpreter import Interpreter

    from tfopt.tflite import convert

    ops = [d["op_name"] for d in Interpreter(model_content=convert(m, "float32"))._get_ops_details()]
    assert ops.count("HARD_SWISH") == 3 and "MINIMUM" not in ops  # after conv1, ir2_expand and ir2_dw
    m.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6)


def test_a_name_an_inverted_residual_gives_inside_itself_is_refused():
    with pytest.raises(Exception, match="ir1_dw_bn"):
        build([{"type": "conv2d", "filters": 4, "name": "ir1_dw_bn"}, {"type": "inverted_residual", "filters": 4}])
