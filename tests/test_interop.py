"""Keras 3 <-> tf_keras conversion: exact outputs, refusals by name, files of either kind, a clean process."""

import json
import textwrap

import keras
import numpy as np
import pytest

from tests.conftest import python_c
from tfopt import interop
from tfopt.errors import TfoptError
from tfopt.interop import from_tf_keras, load_model, max_relative_difference, model_kind, save_like, to_tf_keras
from tfopt.interop import convert as interop_convert
from tfopt.interop.builder import Builder
from tfopt.models.builder import build_model
from tfopt.config.layers import ACTIVATIONS
from tfopt.config.recipe import Model


def randomize(model, seed=0, bn_only=False):
    """Random weights everywhere, BN statistics included, so a wrong mapping shows in the outputs.

    ``bn_only``: mild BN statistics only, for deep networks whose initial weights would turn
    float32 rounding into large differences once every layer is random.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if bn_only:
            if type(layer).__name__ == "BatchNormalization":
                g, b, m, v = layer.get_weights()
                layer.set_weights([rng.uniform(0.8, 1.2, g.shape).astype("float32"),
                                   rng.normal(0, 0.1, b.shape).astype("float32"),
                                   rng.normal(0, 0.1, m.shape).astype("float32"),
                                   rng.uniform(0.8, 1.2, v.shape).astype("float32")])
            continue
        w = []
        for var in layer.weights:
            positive = any(k in var.name for k in ("gamma", "variance"))
            w.append(rng.uniform(0.5, 1.5, var.shape) if positive else rng.normal(0, 0.4, var.shape))
        if w:
            layer.set_weights([a.astype("float32") for a in w])


def outputs(model, x):
    y = model(x, training=False)
    return [np.asarray(t) for t in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]


def assert_same(a, b, x):
    for ya, yb in zip(outputs(a, x), outputs(b, x)):
        assert ya.shape == yb.shape
        assert max_relative_difference(ya, yb) <= 1e-5


def builder_model():
    """Every layer type and activation the recipe builder emits, in one tf_keras model."""
    layers = [{"type": "conv2d", "filters": 6, "batch_norm": True, "activation": "relu6"},
              {"type": "depthwise_conv2d", "depth_multiplier": 2, "batch_norm": True, "activation": "leaky_relu"},
              {"type": "separable_conv2d", "filters": 5, "activation": "swish", "kernel_regularizer": {"l2": 1e-4}},
              {"type": "residual", "filters": 5}, {"type": "residual", "filters": 7, "strides": 2},
              {"type": "spatial_dropout", "rate": 0.1}, {"type": "batch_norm", "center": False},
              {"type": "max_pool", "pool_size": 1}, {"type": "avg_pool", "pool_size": 2, "padding": "same"}]
    layers += [{"type": "activation", "activation": a} for a in ACTIVATIONS if a != "softmax"]
    layers += [{"type": "conv2d", "filters": 4, "activation": "elu", "kernel_size": 1}, {"type": "flatten"},
               {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 8, "activation": "gelu"},
               {"type": "dense", "units": 3, "activation": "softmax"}]
    return build_model(Model.model_validate({"layers": layers}), (8, 8, 3))


def test_every_builder_layer_round_trips_through_keras3():
    model = builder_model()
    randomize(model)
    x = np.random.default_rng(1).normal(size=(5, 8, 8, 3)).astype("float32")
    k3 = from_tf_keras(model, "keras3")
    assert model_kind(k3) == "keras3" and all(type(layer).__module__.startswith("keras.") for layer in k3.layers)
    back = to_tf_keras(k3)
    assert model_kind(back) == "tf_keras"
    assert_same(model, k3, x)
    assert_same(model, back, x)
    # the same layers, names and weights, except the composite leaky_relu/relu6 activations stay stock layers
    assert [layer.name for layer in back.layers] == [layer.name for layer in model.layers]
    assert [type(layer).__name__ for layer in back.layers] == [type(layer).__name__ for layer in model.layers]
    assert back.get_layer("sepconv1").depthwise_regularizer.l2 == pytest.approx(1e-4)
    assert from_tf_keras(model, "tf_keras") is model and to_tf_keras(model) is model


def keras3_graph():
    """A Keras 3 functional model with the layers MobileNet/ResNet-style graphs use, and scalar ops."""
    L = keras.layers
    inp = keras.Input((10, 10, 3), name="image")
    x = L.Rescaling(1 / 127.5, offset=-1, name="rescale")(inp)
    x = L.ZeroPadding2D(((1, 0), (0, 1)), name="pad")(x)
    x = L.Conv2D(8, 3, strides=2, name="conv")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu6")(x)
    a = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    a = L.Activation("hard_silu", name="hswish")(a)
    b = L.Conv2D(8, 1, activation="hard_sigmoid", name="pw")(x)
    s = L.ReLU(6.0, name="hs_relu")(b + 3.0) * (1.0 / 6.0)
    x = L.Add(name="sum")([a, s])
    c = L.Concatenate(name="cat")([x, L.LeakyReLU(negative_slope=0.1, name="leaky")(x)])
    c = L.UpSampling2D(name="up")(c)
    c = L.Cropping2D(1, name="crop")(c)
    c = L.Reshape((8, 8, 2, 8), name="split")(c)
    c = L.Reshape((8, 8, 16), name="merge")(c)
    g = L.GlobalAveragePooling2D(name="gap")(c)
    out1 = L.Dense(4, activation="softmax", name="probs")(L.Dropout(0.3, name="drop")(g))
    out2 = L.Dense(2, name="logits")(g)
    return keras.Model(inp, [out1, out2], name="graph")


def test_keras3_graph_converts_exactly_and_back():
    model = keras3_graph()
    randomize(model, 2)
    x = np.random.default_rng(2).uniform(0, 255, size=(4, 10, 10, 3)).astype("float32")
    tk = to_tf_keras(model)
    assert all(type(layer).__module__.startswith("tf_keras") for layer in tk.layers)
    names = {layer.name for layer in tk.layers}
    assert {"rescale", "pad", "conv", "bn", "relu6", "dw", "hswish", "pw", "sum", "cat", "leaky", "up", "crop",
            "split", "merge", "gap", "probs", "logits"} <= names
    assert tk.get_layer("leaky").alpha == pytest.approx(0.1)
    assert tk.get_layer("relu6").max_value == 6.0
    assert_same(model, tk, x)
    back = from_tf_keras(tk, "keras3")
    assert_same(model, back, x)


def test_sequential_and_nested_models_convert():
    L = keras.layers
    seq = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="tanh", name="d1"), L.Dense(2, name="d2")],
                           name="seq")
    inner = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(3, 3, padding="same", name="inner_conv"),
                              L.BatchNormalization(name="inner_bn")], name="inner")
    inp = keras.Input((4, 4, 2))
    nested = keras.Model(inp, L.Dense(2, name="head")(L.Flatten(name="flat")(inner(inp, training=False))))
    for model, shape in [(seq, (3, 6)), (nested, (3, 4, 4, 2))]:
        randomize(model, 3)
        x = np.random.default_rng(3).normal(size=shape).astype("float32")
        tk = to_tf_keras(model)
        assert_same(model, tk, x)
    assert [layer.name for layer in to_tf_keras(nested).layers][1:] == ["inner_conv", "inner_bn", "flat", "head"]


class Scale(keras.layers.Layer):
    def call(self, x):
        return 2 * x


class MyDense(keras.layers.Dense):
    pass


def test_lambda_and_custom_layers_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(interop_convert, "Builder", None)  # building anything would fail with a TypeError
    inp = keras.Input((4,))
    x = keras.layers.Lambda(lambda t: t * 2, name="double")(inp)
    x = Scale(name="scale")(x)
    model = keras.Model(inp, MyDense(2, name="mine")(x))
    with pytest.raises(TfoptError) as err:
        to_tf_keras(model)
    msg = str(err.value)
    assert msg.startswith(f"model '{model.name}' cannot be converted from keras3 to tf_keras: ")
    assert "layer 'double' (Lambda) runs arbitrary Python code; replace it with built-in layers" in msg
    assert f"layer 'scale' (Scale from {__name__}) is not a built-in layer tfopt can convert" in msg
    assert f"layer 'mine' (MyDense from {__name__}) is not a built-in layer" in msg
    assert msg.endswith("tfopt converts built-in layers only: rebuild these parts from built-in layers "
                        "(keras.layers), or convert the model yourself.")


def test_a_conversion_that_changes_the_outputs_is_refused(monkeypatch):
    inp = keras.Input((3, 3, 2))
    model = keras.Model(inp, keras.layers.Activation("hard_silu", name="hs")(inp), name="hs_model")
    monkeypatch.setattr(Builder, "post_activation", lambda self, name, post, x: x)  # drop hard_silu
    with pytest.raises(TfoptError, match=r"model 'hs_model': the converted model's outputs differ from the "
                                         r"original's by [\d.]+ \(relative to the largest output\), more than the "
                                         r"allowed 1e-05"):
        to_tf_keras(model)


def test_unknown_model_kinds_and_subclassed_models_are_refused():
    with pytest.raises(TfoptError, match="expected a Keras model .* but received str"):
        to_tf_keras("model.keras")

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TfoptError, match="is subclassed; tfopt converts Sequential and functional models only"):
        to_tf_keras(Sub())


@pytest.mark.slow
def test_files_load_as_the_kind_they_were_saved_from(tmp_path):
    model = keras3_graph()
    randomize(model, 4)
    x = np.random.default_rng(4).normal(size=(2, 10, 10, 3)).astype("float32")
    model.save(tmp_path / "k3.keras")
    loaded = load_model(tmp_path / "k3.keras")
    assert model_kind(loaded) == "keras3"
    tk, kind = interop.load_as_tf_keras(tmp_path / "k3.keras")
    assert kind == "keras3" and model_kind(tk) == "tf_keras"
    assert_same(model, tk, x)
    save_like(tk, "keras3", tmp_path / "out.keras")
    again = keras.saving.load_model(tmp_path / "out.keras")
    assert_same(model, again, x)
    save_like(tk, "tf_keras", tmp_path / "tk.keras")
    assert model_kind(load_model(tmp_path / "tk.keras")) == "tf_keras"
    from tfopt.export import load_keras

    via_export = load_keras(tmp_path / "k3.keras")  # what report, fit --resume and tune read files with
    assert model_kind(via_export) == "tf_keras"
    assert_same(model, via_export, x)
    (tmp_path / "bad.keras").write_bytes(b"not a model")
    with pytest.raises(TfoptError, match=r"bad.keras: not a loadable tf_keras model \("):
        load_model(tmp_path / "bad.keras")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0", "ResNet50"])
def test_keras_applications_convert_exactly(name):
    kw = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(keras.applications, name)(input_shape=(64, 64, 3), weights=None, classifier_activation=None,
                                              **kw)
    randomize(model, 5, bn_only=True)
    x = np.random.default_rng(5).uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    tk = to_tf_keras(model)
    assert_same(model, tk, x)
    assert_same(model, from_tf_keras(tk, "keras3"), x)


def test_a_normalization_layer_converts_with_its_statistics():
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(np.random.default_rng(0).normal(3.0, 2.0, size=(64, 5, 5, 3)).astype("float32"))
    inp = keras.Input((5, 5, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(norm(inp)))
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(2, 5, 5, 3)).astype("float32")
    tk = to_tf_keras(model)
    assert [type(layer).__name__ for layer in tk.layers][1] == "Normalization"
    assert_same(model, tk, x)
    assert_same(model, from_tf_keras(tk, "keras3"), x)


def test_convnext_layer_scales_convert_both_ways():
    from keras.src.applications.convnext import LayerScale

    inp = keras.Input((4, 4, 3))
    scaled = LayerScale(0.5, 6, name="scale")(keras.layers.Conv2D(6, 1, name="conv")(inp))
    model = keras.Model(inp, keras.layers.Add(name="add")([scaled, keras.layers.Conv2D(6, 1, name="skip")(inp)]))
    model.get_layer("scale").set_weights([np.arange(6, dtype="float32")])
    x = np.random.default_rng(2).normal(size=(2, 4, 4, 3)).astype("float32")
    tk = to_tf_keras(model)
    assert type(tk.get_layer("scale")).__module__ == "tf_keras.src.applications.convnext"
    assert tk.get_layer("scale").get_weights()[0].tolist() == list(range(6))
    assert_same(model, tk, x)
    assert_same(model, from_tf_keras(tk, "keras3"), x)


def test_recurrent_embedding_einsum_and_attention_layers_convert_both_ways():
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(30, 8)(tokens)
    x = x + keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    x = keras.layers.GRU(5, return_sequences=True)(keras.layers.LSTM(6, return_sequences=True)(x))
    x = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True))(x)
    x = keras.layers.EinsumDense("ab,bc->ac", output_shape=5, bias_axes="c")(keras.layers.SimpleRNN(4)(x))
    model = keras.Model(tokens, keras.layers.Dense(3)(x))
    x = np.random.default_rng(3).integers(0, 30, size=(2, 6)).astype("int32")
    tk = to_tf_keras(model)
    assert [type(layer).__name__ for layer in tk.layers][1:] == ["Embedding", "MultiHeadAttention", "Add", "LSTM",
                                                                 "GRU", "Bidirectional", "SimpleRNN", "EinsumDense",
                                                                 "Dense"]
    assert_same(model, tk, x)
    assert_same(model, from_tf_keras(tk, "keras3"), x)


def test_the_users_process_is_left_as_it_was():
    code = textwrap.dedent("""
        import json, os
        import numpy as np
        import tensorflow as tf
        import tfopt
        import keras
        from tfopt.interop import from_tf_keras, import_tfmot, to_tf_keras
        tf_keras_model_before = tf.keras.Model
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])
        x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
        y = np.random.default_rng(1).integers(0, 2, 32)
        back = from_tf_keras(to_tf_keras(m), "keras3")
        # the public API, each call on the user's Keras 3 model
        api = [tfopt.prune(m, (x, y), sparsity=0.5, epochs=2, batch_size=8), tfopt.prune_channels(m, (x, y), ratio=0.3, epochs=1),
               tfopt.cluster(m, (x, y), clusters=4, epochs=1), tfopt.fold_batchnorm(m)]
        blob = tfopt.to_tflite(m, mode="float32", data=x)
        tfmot = import_tfmot()
        import tensorflow_model_optimization  # the user's own import is the same module, no new side effect
        pruned = tfmot.sparsity.keras.prune_low_magnitude(to_tf_keras(m))
        after = {"env": os.environ.get("TF_USE_LEGACY_KERAS"), "tf_keras_version": tf.keras.version(),
                 "tf_keras_is_keras3": tf.keras.Model is keras.Model,
                 "tf_keras_unchanged": tf.keras.Model is tf_keras_model_before,
                 "api_kinds": sorted({tfopt.model_kind(a) for a in api}), "tflite": len(blob) > 0}
        back.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        hist = back.fit(x, y, epochs=2, verbose=0)
        after["fit_losses"] = len(hist.history["loss"])
        after["pruned_kind"] = type(pruned).__module__.split(".")[0]
        print(json.dumps(after))
    """)
    proc = python_c(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"env": None, "tf_keras_version": keras.__version__, "tf_keras_is_keras3": True,
                      "tf_keras_unchanged": True, "api_kinds": ["keras3"], "tflite": True, "fit_losses": 2,
                      "pruned_kind": "tf_keras"}, proc.stderr[-3000:]


DIGITS_RECIPE = """
name: digits3
seed: 0
data: {name: digits, validation_split: 0.1, normalize: scale}
model:
  layers:
    - {type: conv2d, filters: 8, activation: relu}
    - {type: flatten}
    - {type: dense, units: 10, activation: softmax}
train: {epochs: 1, batch_size: 32}
output: {tensorboard: false, saved_model: false, plot: false}
"""


@pytest.fixture(scope="module")
def keras3_digits(tmp_path_factory):
    """A plain Keras 3 model trained on the bundled digits, saved as ``.keras``, and a recipe for its data."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    d = load_digits()
    x, y = d.images[..., None].astype("float32") / 16.0, d.target
    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", activation="relu"),
                              L.MaxPooling2D(), L.Conv2D(32, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
                              L.Flatten(), L.Dense(32, activation="relu"), L.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # no string metrics: see DESIGN.md
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("k3")
    model.save(folder / "digits.keras")
    (folder / "digits.yaml").write_text(DIGITS_RECIPE)
    return folder, model, x, y


class _Result:
    def __init__(self, res):
        self.returncode, self.stdout, self.stderr = res.exit_code, res.output, ""


def tfopt_cli(*args):
    """The command line, in this process (a fresh interpreter is tested by the Keras 3 user script)."""
    from click.testing import CliRunner

    from tfopt.cli import cli

    return _Result(CliRunner().invoke(cli, [str(a) for a in args]))


@pytest.mark.slow
def test_cli_prunes_and_quantizes_a_keras3_file(keras3_digits, tmp_path):
    folder, model, x, y = keras3_digits
    res = tfopt_cli("prune", folder / "digits.keras", "--recipe", folder / "digits.yaml", "--sparsity", "0.75",
                    "--epochs", "2", "--output", tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    out = tmp_path / "digits-pruned" / "model.keras"
    pruned = keras.saving.load_model(out)  # written as Keras 3, like its input
    assert model_kind(pruned) == "keras3"
    kernels = [layer.kernel.numpy() for layer in pruned.layers if type(layer).__name__ in ("Conv2D", "Dense")]
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert 0.7 <= zeros <= 0.8
    acc = float(np.mean(pruned.predict(x, verbose=0).argmax(1) == y))
    assert acc > 0.8
    res = tfopt_cli("quantize", folder / "digits.keras", "--recipe", folder / "digits.yaml", "--mode", "int8",
                    "--output", tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    run = tmp_path / "digits-int8"
    tflite = list(run.glob("*.tflite"))
    assert len(tflite) == 1 and tflite[0].stat().st_size > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["source"] == str(folder / "digits.keras")
    assert model_kind(keras.saving.load_model(run / "model.keras")) == "keras3"
    # a run directory written for a Keras 3 input is itself a valid SOURCE
    res = tfopt_cli("fold-bn", tmp_path / "digits-pruned", "--output", tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert model_kind(load_model(tmp_path / "digits-pruned-folded" / "model.keras")) == "keras3"


def test_rounding_the_original_itself_amplifies_is_not_a_conversion_error():
    """Outputs that cancel (a - b of two large inputs) move by 1e-4 when an input moves by one ulp; a
    conversion off by that much is as exact as float32 allows, one off by 1% is refused."""
    from tfopt.interop import ROUNDING_FACTOR, verify

    def difference_model(w, name):
        inp = keras.Input((2,))
        out = keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(w), name="d")(inp)
        return keras.Model(inp, out, name=name)

    x = np.array([[1000.0 + 1.5, 1000.0], [2000.0 + 2.0, 2000.0]], np.float32)
    original = difference_model([[1.0], [-1.0]], "cancel")
    close = difference_model([[1.0], [-1.0000001]], "close")
    assert verify(original, close, sample=x) > 1e-5  # above the fixed limit, within the rounding floor
    assert ROUNDING_FACTOR == 4.0
    with pytest.raises(TfoptError, match=r"more than the allowed 1e-05 and more than 4× the [\d.e-]+ that a "
                                         r"one-ulp change of the input or of the weights makes"):
        verify(original, difference_model([[1.0], [-1.01]], "off"), sample=x)


def test_a_tf_keras_model_with_convnexts_unregistered_layers_is_copied_and_loaded(tmp_path):
    """tf_keras's ConvNeXt layers (LayerScale, StochasticDepth) are not registered for
    deserialization; a plain copy and a saved file of a model holding them still rebuild, with the
    same outputs."""
    import tf_keras
    from tf_keras.src.applications.convnext import LayerScale, StochasticDepth

    from tfopt.interop import load_as_tf_keras, plain_copy

    inp = tf_keras.Input((4, 4, 8))
    h = LayerScale(1e-1, 8, name="scale")(tf_keras.layers.Dense(8, name="d")(inp))
    out = tf_keras.layers.Add()([inp, StochasticDepth(0.1, name="drop")(h)])
    model = tf_keras.Model(inp, out)
    model.get_layer("scale").set_weights([np.arange(8, dtype="float32")])
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
    copy = plain_copy(model)
    model.save(tmp_path / "m.keras")
    loaded = load_as_tf_keras(tmp_path / "m.keras")[0]
    for other in (copy, loaded):
        assert type(other.get_layer("scale")) is LayerScale
        np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
