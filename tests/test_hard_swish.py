"""int8 files write the hard swish as x · relu6(x + 3), its division moved into the layers reading it."""

from collections import Counter

import numpy as np
import pytest
import tf_keras as keras

from tfopt import tflite
from tfopt.config.recipe import Model
from tfopt.models.builder import activation, build_model
from tfopt.surgery.hard_swish import defer_hard_swish_scale

L = keras.layers


def ops(content: bytes) -> Counter:
    from ai_edge_litert.interpreter import Interpreter

    return Counter(d["op_name"] for d in Interpreter(model_content=content)._get_ops_details())


def randomized(model, seed=0):
    """Non-trivial BatchNorm statistics, so that a wrong scale shows in the outputs."""
    rng = np.random.default_rng(seed)
    model.set_weights([w if w.ndim > 1 else rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


def mobilenet_v3_like():
    """Hard swish after a conv, inside inverted residuals (before a depthwise conv, and before a
    squeeze-excite whose gate multiplies it), and before the pooled head."""
    return randomized(build_model(Model.model_validate({"layers": [
        {"type": "conv2d", "filters": 8, "strides": 2, "batch_norm": True, "activation": "hard_swish"},
        {"type": "inverted_residual", "filters": 8, "expansion": 1},
        {"type": "inverted_residual", "filters": 12, "expanded": 24, "strides": 2, "squeeze_excite": 0.25,
         "activation": "hard_swish", "kernel_size": 5},
        {"type": "inverted_residual", "filters": 12, "expanded": 36, "squeeze_excite": 0.25,
         "activation": "hard_swish"},
        {"type": "conv2d", "filters": 48, "kernel_size": 1, "batch_norm": True, "activation": "hard_swish"},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 5, "activation": "softmax"},
    ]}), (16, 16, 1)))


def images(n=64, shape=(16, 16, 1)):
    return np.random.default_rng(1).normal(size=(n, *shape)).astype("float32") * 2


def test_every_hard_swish_of_a_mobilenet_v3_block_moves_its_division_and_computes_the_same():
    m = mobilenet_v3_like()
    before = [w.copy() for w in m.get_weights()]
    new, moved = defer_hard_swish_scale(m)
    # conv1's hard swish (act1) stays: ir1 keeps the shape, so its shortcut adds act1's output
    assert moved == ["act2_scale", "ir2_dw_act_scale", "ir2_expand_act_scale", "ir3_dw_act_scale",
                     "ir3_expand_act_scale"]
    x = images()
    np.testing.assert_allclose(new.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert len(new.layers) == len(m.layers) - 5
    # the input model is untouched
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    assert sum(1 for layer in m.layers if type(layer) is L.Rescaling) > sum(
        1 for layer in new.layers if type(layer) is L.Rescaling)


def test_the_int8_file_keeps_only_the_hard_swish_that_could_not_move_and_agrees_with_the_model():
    m = mobilenet_v3_like()
    x = images()
    int8, f32 = tflite.convert(m, "int8", x), tflite.convert(m, "float32")
    assert ops(int8)["HARD_SWISH"] == 1  # act1, read by ir1's shortcut
    assert ops(f32)["HARD_SWISH"] == 6  # float32 keeps the fused op, which XNNPACK runs
    reference = m.predict(x, verbose=0)
    assert np.mean(tflite.predict(int8, x).argmax(-1) == reference.argmax(-1)) >= 0.95
    assert np.abs(tflite.predict(int8, x) - reference).max() < 0.1


def small(build):
    inp = keras.Input((8, 8, 2))
    return randomized(keras.Model(inp, build(inp)))


def test_a_hard_swish_read_by_an_add_or_an_output_keeps_its_division():
    # read by a residual Add: the other branch does not carry the factor
    def residual(x):
        y = L.Conv2D(4, 1, name="c1")(x)
        h = activation(y, "hard_swish", "hs")
        return L.Conv2D(3, 1, name="head")(L.Add()([h, L.Conv2D(4, 1)(x)]))

    def at_output(x):
        return activation(L.Conv2D(4, 1)(x), "hard_swish", "hs")

    for build in (residual, at_output):
        m = small(build)
        new, moved = defer_hard_swish_scale(m)
        assert moved == [] and new is m
        assert ops(tflite.convert(m, "int8", images(32, (8, 8, 2))))["HARD_SWISH"] == 1


def test_a_multiply_reached_with_the_factor_on_both_inputs_takes_only_one():
    def two(x):
        a = activation(L.Conv2D(4, 1, name="a")(x), "hard_swish", "hs_a")
        b = activation(L.Conv2D(4, 1, name="b")(x), "hard_swish", "hs_b")
        return L.GlobalAveragePooling2D()(L.Conv2D(3, 1, name="head")(L.Multiply(name="both")([a, b])))

    m = small(two)
    new, moved = defer_hard_swish_scale(m)
    assert moved == ["hs_a_scale"]
    x = images(16, (8, 8, 2))
    np.testing.assert_allclose(new.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    # the head's kernel took the factor: divided by 6
    np.testing.assert_allclose(new.get_layer("head").get_weights()[0], m.get_layer("head").get_weights()[0] / 6,
                               rtol=1e-6)


def test_one_hard_swish_reaching_both_inputs_of_a_multiply_or_a_gate_that_is_an_output_stays():
    def squared(x):
        h = activation(L.Conv2D(4, 1)(x), "hard_swish", "hs")
        return L.GlobalAveragePooling2D()(L.Conv2D(3, 1)(L.Multiply()([h, L.MaxPooling2D(1)(h)])))

    def gate_out(x):
        y = L.Conv2D(4, 1)(x)
        h = activation(y, "hard_swish", "hs")
        return [L.GlobalAveragePooling2D()(L.Conv2D(3, 1)(h)), h.node.layer.input[1].node.layer.output]

    for build in (squared, gate_out):
        m = small(build)
        new, moved = defer_hard_swish_scale(m)
        assert moved == [] and new is m, build.__name__


def test_hard_swish_kept_in_float_stays_a_hard_swish():
    m = small(lambda x: L.GlobalAveragePooling2D()(L.Conv2D(3, 1)(activation(L.Conv2D(4, 1)(x), "hard_swish", "hs"))))
    assert ops(tflite.convert(m, "int8", images(32, (8, 8, 2)), float_ops=("HARD_SWISH",)))["HARD_SWISH"] == 1


def test_a_model_without_hard_swish_is_returned_as_it_is():
    m = small(lambda x: L.Conv2D(3, 1)(L.ReLU()(L.Conv2D(4, 1)(x))))
    new, moved = defer_hard_swish_scale(m)
    assert new is m and moved == []


def test_tensorflow_op_layers_as_in_keras_applications_move_too():
    def tf_ops(x):  # keras.applications' MobileNetV3: x * (relu6(x + 3.0) * (1 / 6)), as TFOpLambda layers
        y = L.Conv2D(4, 1)(x)
        h = L.Multiply()([y, L.ReLU(6.0)(y + 3.0) * (1.0 / 6.0)])
        return L.GlobalAveragePooling2D()(L.DepthwiseConv2D(3, name="dw")(h))

    m = small(tf_ops)
    new, moved = defer_hard_swish_scale(m)
    assert len(moved) == 1 and type(m.get_layer(moved[0])).__name__ == "TFOpLambda"
    x = images(16, (8, 8, 2))
    np.testing.assert_allclose(new.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert ops(tflite.convert(m, "int8", x))["HARD_SWISH"] == 0


@pytest.mark.slow
def test_keras_applications_mobilenet_v3_small_moves_every_hard_swish():
    m = randomized(keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None,
                                                       include_preprocessing=False))
    new, moved = defer_hard_swish_scale(m)
    assert len(moved) == 19 == ops(tflite.convert(m, "float32"))["HARD_SWISH"]
    x = np.random.default_rng(2).random((8, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(new.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-4, atol=1e-7)


def test_keras3_hard_swish_activations_move_their_division_and_the_file_has_no_hard_swish():
    import keras as k3

    import tfopt

    inp = k3.Input((8, 8, 2))
    h = k3.layers.Conv2D(4, 1, activation="hard_swish", name="c1")(inp)
    h = k3.layers.Activation("hard_swish", name="hs")(k3.layers.DepthwiseConv2D(3, padding="same", name="dw")(h))
    gate = k3.layers.Conv2D(4, 1, activation="hard_sigmoid", name="se")(k3.layers.GlobalAveragePooling2D(
        keepdims=True)(h))
    out = k3.layers.Dense(3, name="head")(k3.layers.GlobalAveragePooling2D()(k3.layers.Multiply()([h, gate])))
    m = k3.Model(inp, out)
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(size=w.shape).astype("float32") for w in m.get_weights()])
    new, moved = defer_hard_swish_scale(m)
    assert moved == ["c1", "hs"] and m.get_layer("hs").get_config()["activation"] == "hard_silu"
    x = images(32, (8, 8, 2))
    np.testing.assert_allclose(new.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.get_layer("head").get_weights()[0], m.get_layer("head").get_weights()[0] / 6)
    content = tfopt.to_tflite(m, mode="int8", data=x, min_agreement=0.0, min_snr=float("-inf"))
    assert ops(content)["HARD_SWISH"] == 0 and ops(content)["MUL"] >= 2


def test_where_xnnpack_crashed_the_division_moves_into_pointwise_layers_only_then_nowhere(monkeypatch):
    def two(x):
        h = activation(L.Conv2D(4, 1)(x), "hard_swish", "to_dw")
        h = activation(L.Conv2D(4, 1)(L.DepthwiseConv2D(3, padding="same")(h)), "hard_swish", "to_pw")
        return L.GlobalAveragePooling2D()(L.Conv2D(3, 1)(h))

    m, x = small(two), images(32, (8, 8, 2))
    answers = []
    monkeypatch.setattr(tflite, "probe_xnnpack", lambda content: answers.pop(0))
    answers[:] = [False, True]  # the whole rewrite crashed XNNPACK, the pointwise one did not
    assert ops(tflite.convert(m, "int8", x))["HARD_SWISH"] == 1  # the one a depthwise conv reads
    answers[:] = [False, False]
    assert ops(tflite.convert(m, "int8", x))["HARD_SWISH"] == 2
    assert answers == []


def test_a_collapsed_range_is_widened_so_that_xnnpack_runs_the_int8_file():
    def dead_gate(x):  # a squeeze-excite whose one reduce channel is never positive, as after a channel cut
        h = L.Conv2D(8, 3, padding="same", activation="relu")(x)
        g = L.Conv2D(1, 1, activation="relu", name="reduce", bias_initializer=keras.initializers.Constant(-50.0))(
            L.GlobalAveragePooling2D(keepdims=True)(h))
        g = L.Conv2D(8, 1, activation="sigmoid", name="expand")(g)
        return L.Dense(3)(L.GlobalAveragePooling2D()(L.Multiply()([h, g])))

    inp = keras.Input((8, 8, 2))
    m = keras.Model(inp, dead_gate(inp))
    x = images(32, (8, 8, 2))
    raw = tflite._convert(m, "int8", x, False, False, False, False)
    assert tflite.interpreter(raw, 1)[1] == "builtin"  # XNNPACK refused the file
    content = tflite.convert(m, "int8", x)
    assert tflite.interpreter(content, 1)[1] == "xnnpack"
    assert tflite.widened_dead_ranges(content) == content  # nothing left to widen
    np.testing.assert_allclose(tflite.predict(content, x), m.predict(x, verbose=0), atol=0.05 * np.abs(
        m.predict(x, verbose=0)).max())


def test_the_qat_int8_file_of_hard_swish_and_squeeze_excite_blocks_is_integer_throughout():
    """The Rescaling and Multiply layers of hard swishes and squeeze-excite gates have no place in
    TFMOT's registry; their outputs are quantized too, so no op of the file reads float."""
    from ai_edge_litert.interpreter import Interpreter

    import tfopt

    x = images()
    y = np.random.default_rng(2).integers(0, 5, len(x))
    qat = tfopt.quantize_aware(mobilenet_v3_like(), (x, y), epochs=1, batch_size=16, log=lambda _line: None)
    annotated = {layer.name for layer in qat.layers if type(layer).__name__.startswith("QuantizeWrapper")}
    assert {"quant_act1_shift", "quant_act1_scale", "quant_act1", "quant_ir2_se_scale"} <= annotated
    content = tfopt.to_tflite(qat, mode="int8")
    it = Interpreter(model_content=content)
    details = it.get_tensor_details()
    found = it._get_ops_details()
    assert Counter(op["op_name"] for op in found)["QUANTIZE"] == 1
    assert Counter(op["op_name"] for op in found)["DEQUANTIZE"] == 1
    float_reads = [op["op_name"] for op in found if op["op_name"] != "DEQUANTIZE"
                   and any(details[i]["dtype"] == np.float32 for i in op["inputs"] if i >= 0)]
    assert float_reads == ["QUANTIZE"]
    got, reference = tflite.predict(content, x), qat.predict(x, verbose=0)
    assert np.mean(got.argmax(-1) == reference.argmax(-1)) >= 0.95
