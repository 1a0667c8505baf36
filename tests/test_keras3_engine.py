"""The Keras 3-native engine: counted sparsity, distinct values, grid weights, distillation loss.

Every family of tests/keras3_families.py is pruned; the rest runs on a few of them. The JAX
test runs in a subprocess with KERAS_BACKEND=jax set for it alone.
"""

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras3_families as families  # noqa: E402
from tfopt.engines import keras3  # noqa: E402
from tfopt.engines.keras3.losses import head_kinds, infer_losses  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAST = {"epochs": 2, "batch_size": 16}


@pytest.fixture(autouse=True)
def _keras_seed():
    keras.utils.set_random_seed(0)


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def expected_sparsity(model, sparsity):
    """The counted sparsity pruning must reach: round(s_l * n_l) zeros per variable (ERK)."""
    entries = keras3.select_weights(model)
    finals = keras3.allocate(entries, sparsity, "erk")
    return sum(round(s * e.size) for s, e in zip(finals, entries)) / sum(e.size for e in entries)


# --- what gets compressed -------------------------------------------------------------------

def test_selection_reaches_inner_layers_and_skips_biases_and_norms():
    model, _ = families.transformer()
    table = keras3.select_weights(model)
    paths = [e.path for e in table]
    entries = {"/".join(e.path.split("/")[-2:]): e for e in table}
    assert {"query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"} <= set(entries)
    assert sum(p.endswith("/kernel") for p in paths) == len(paths) == 7
    assert not any("layer_normalization" in p or p.endswith("bias") for p in paths)
    query = entries["query/kernel"]
    assert (query.layer_class, query.input_axis, query.output_axes) == ("EinsumDense", 0, (1, 2))
    assert entries["attention_output/kernel"].output_axes == (2,)

    model, _ = families.bilstm()
    rules = sorted(e.rule for e in keras3.select_weights(model))
    assert rules == ["Dense.kernel"] + ["LSTMCell.kernel"] * 2 + ["LSTMCell.recurrent_kernel"] * 2


def test_selection_custom_layer_default_include_and_skip():
    model, _ = families.custom_layer()
    assert [(e.path, e.rule) for e in keras3.select_weights(model)][0] == ("own/w", "custom")
    assert [e.path for e in keras3.select_weights(model, include=["own/w*"])] == ["own/w"]
    assert [e.layer_name for e in keras3.select_weights(model, skip=["own"])] == [model.layers[-1].name]
    with pytest.raises(ValueError, match="'own/ww' matches no trainable variable.*Did you mean"):
        keras3.select_weights(model, include=["own/ww"])


# --- pruning --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_prune_every_family(name):
    model, data = families.FAMILIES[name]()
    before, environment = _weights(model), dict(os.environ)
    pruned = keras3.prune(model, data, sparsity=0.5, **FAST)
    entries = keras3.select_weights(pruned)
    counted = keras3.sparsity_of(entries)
    assert abs(counted - 0.5) <= 0.02, counted
    assert counted == pytest.approx(expected_sparsity(model, 0.5), abs=1e-9)
    assert _same(before, model.get_weights()), "the input model changed"
    assert type(pruned) is type(model) and pruned is not model
    assert all(e.variable.constraint is None for e in entries)
    assert dict(os.environ) == environment
    assert (keras.backend.floatx(), keras.config.image_data_format()) == ("float32", "channels_last")
    biases = [w for w in pruned.weights if w.path.endswith("bias")]
    assert all(keras3.sparsity_of([b]) < 0.5 for b in biases)


def test_polynomial_schedule_is_tfmot_formula():
    schedule = keras3.Schedule("polynomial", begin_step=2, end_step=12, frequency=3, initial_sparsity=0.1)
    for step in range(0, 16):
        p = min(max((step - 2) / 10, 0.0), 1.0)
        expected = 0.8 + (0.1 - 0.8) * (1 - p) ** 3
        assert float(schedule.sparsity(step, 0.8)) == pytest.approx(expected, abs=1e-6)
    updates = [s for s in range(16) if bool(schedule.is_update(s))]
    assert updates == [2, 5, 8, 11, 12]


def test_allocation_reaches_the_target_and_honours_targets():
    model, _ = families.cnn2d()
    entries = keras3.select_weights(model)
    sizes = np.array([e.size for e in entries])
    for allocation in ("erk", "er", "uniform"):
        finals = np.array(keras3.allocate(entries, 0.7, allocation))
        assert float((finals * sizes).sum() / sizes.sum()) == pytest.approx(0.7, abs=1e-6)
    head = entries[-1].layer_name
    finals = keras3.allocate(entries, 0.7, "erk", targets={head: 0.0})
    assert finals[-1] == 0.0
    assert float((np.array(finals[:-1]) * sizes[:-1]).sum() / sizes[:-1].sum()) == pytest.approx(0.7, abs=1e-6)


def test_pruned_weights_never_come_back_and_sparsity_ramps():
    model, data = families.nested()
    watch = _ShapeWatch((16, 16))
    keras3.prune(model, data, sparsity=0.8, allocation="uniform", frequency=1, end_step=8,
                 callbacks=[watch], epochs=3, batch_size=16)
    masks = watch.zeros
    assert len(masks) == 12
    ramp = [m.mean() for m in masks]
    assert all(b >= a for a, b in zip(ramp, ramp[1:])) and ramp[0] < 0.1 and ramp[-1] == pytest.approx(0.8, abs=0.01)
    assert all(np.all(b[a]) for a, b in zip(masks, masks[1:])), "a pruned weight came back"


class _ShapeWatch(keras.callbacks.Callback):
    """Records, after each batch, where the trained model's variable of a shape is zero."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.zeros = shape, []

    def on_train_batch_end(self, batch, logs=None):
        variable = next(v for v in self.model.weights if tuple(v.shape) == self.shape)
        self.zeros.append(_numpy(variable) == 0)


def test_m_by_n_and_blocks():
    model, data = families.nested()
    pruned = keras3.prune(model, data, m_by_n=(2, 4), **FAST)
    for entry in keras3.select_weights(pruned):
        value = np.moveaxis(_numpy(entry.variable), entry.input_axis, -1)
        groups = value[..., : value.shape[-1] // 4 * 4].reshape(-1, 4)
        assert np.all((groups == 0).sum(-1) >= 2), entry.path
    blocked = keras3.prune(model, data, sparsity=0.5, allocation="uniform", block=4, **FAST)
    for entry in keras3.select_weights(blocked):
        value = np.moveaxis(_numpy(entry.variable), entry.input_axis, -1)
        blocks = value.reshape(-1, value.shape[-1] // 4, 4)
        zero_blocks = np.all(blocks == 0, -1)
        assert zero_blocks.mean() == pytest.approx(0.5, abs=0.02), entry.path
        assert (value == 0).mean() == pytest.approx(zero_blocks.mean(), abs=1e-6)


# --- clustering -----------------------------------------------------------------------------

def _distinct(entry):
    return np.unique(_numpy(entry.variable)).size


def test_cluster_pruned_model_keeps_zeros_and_four_values():
    model, data = families.cnn2d()
    pruned = keras3.prune(model, data, sparsity=0.5, **FAST)
    before = _weights(pruned)
    clustered = keras3.cluster(pruned, data, clusters=4, **FAST)
    assert _same(before, pruned.get_weights()) and type(clustered) is keras.Sequential
    for old, new in zip(keras3.select_weights(pruned), keras3.select_weights(clustered)):
        assert _distinct(new) <= 4, new.path
        was_zero = _numpy(old.variable) == 0
        if was_zero.mean() >= 0.1:
            assert np.all(_numpy(new.variable)[was_zero] == 0), new.path
    assert keras3.sparsity_of(keras3.select_weights(clustered)) >= 0.49


@pytest.mark.parametrize("name", ["subclassed", "custom_layer", "embedding"])
def test_cluster_families(name):
    model, data = families.FAMILIES[name]()
    clustered = keras3.cluster(model, data, clusters=4, init="linear", **FAST)
    assert type(clustered) is type(model)
    assert all(_distinct(e) <= 4 for e in keras3.select_weights(clustered))


def test_cluster_variable_smaller_than_cluster_count():
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(3, activation="softmax")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).random((32, 8), dtype="float32")
    clustered = keras3.cluster(model, (x, np.arange(32) % 3), clusters=32, epochs=1)
    (entry,) = keras3.select_weights(clustered)
    assert _distinct(entry) <= 24
    assert np.all(np.isfinite(_numpy(entry.variable)))


def test_kmeans_counts():
    values = np.r_[np.zeros(5), np.full(5, 3.0), [10.0, 10.2]]
    for init in ("kmeans++", "linear"):
        centroids, labels = keras3.clustering.kmeans_1d(values, 3, init)
        assert np.allclose(centroids, [0.0, 3.0, 10.1]) and np.array_equal(labels, [0] * 5 + [1] * 5 + [2] * 2)
    centroids, labels, zero = keras3.clustering.assign_clusters(
        np.array([0.0, 0.0, 1.0, 2.0, 3.0, -1.0]), 3, preserve_zeros=True)
    assert zero is not None and centroids[zero] == 0.0 and np.all(labels[:2] == zero)
    assert len(centroids) == 3


# --- quantization-aware fine-tune ------------------------------------------------------------

@pytest.mark.parametrize("name", ["cnn2d", "transformer"])
def test_quantize_aware_weights_are_int8_representable(name):
    model, data = families.FAMILIES[name]()
    before = _weights(model)
    ready = keras3.quantize_aware(model, data, bits=8, **FAST)
    assert _same(before, model.get_weights())
    for entry in keras3.select_weights(ready):
        assert keras3.quantization_error(_numpy(entry.variable), entry) <= 1e-3, entry.path
        assert keras3.quantization_error(_numpy(entry.variable), entry, bits=4) > 1e-3
    moved = [not np.array_equal(_numpy(a.variable), _numpy(b.variable))
             for a, b in zip(keras3.select_weights(model), keras3.select_weights(ready))]
    assert all(moved)


def test_quantize_aware_per_tensor_and_pruned_zeros():
    model, data = families.nested()
    pruned = keras3.prune(model, data, sparsity=0.5, allocation="uniform", **FAST)
    ready = keras3.quantize_aware(pruned, data, bits=4, per_channel=False, **FAST)
    for old, new in zip(keras3.select_weights(pruned), keras3.select_weights(ready)):
        assert keras3.quantization_error(_numpy(new.variable), new, bits=4, per_channel=False) <= 1e-3
        assert np.all(_numpy(new.variable)[_numpy(old.variable) == 0] == 0)


# --- distillation and losses ----------------------------------------------------------------

def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(teacher_p, student_p, t):
    lt = _log_softmax(np.log(np.maximum(teacher_p, 1e-30)) / t)
    ls = _log_softmax(np.log(np.maximum(student_p, 1e-30)) / t)
    return t * t * np.mean(np.sum(np.exp(lt) * (lt - ls), -1))


def _sparse_ce(p, y):
    return float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1 - 1e-7))))


def test_distillation_loss_is_the_formula_on_one_batch():
    model, (x, y) = families.subclassed()
    teacher = families.SubclassedNet(units=8)
    teacher(x[:2])
    t, alpha = 3.0, 0.3
    history = _fit_one_batch(model, (x, y), teacher, t, alpha)
    p_s, p_t = np.asarray(model(x)), np.asarray(teacher(x))
    expected = alpha * _kl(p_t, p_s, t) + (1 - alpha) * _sparse_ce(p_s, y)
    assert history == pytest.approx(expected, rel=1e-4)


def test_distillation_two_heads_mixes_kl_and_mse():
    model, (x, y) = families.two_heads()
    teacher, _ = families.two_heads()
    t, alpha = 2.0, 0.6
    history = _fit_one_batch(model, (x, y), teacher, t, alpha)
    (ps, vs), (pt, vt) = [[np.asarray(o) for o in m(x)] for m in (model, teacher)]
    task = _sparse_ce(ps, y["label"]) + float(np.mean((vs - y["value"]) ** 2))
    distill = _kl(pt, ps, t) + float(np.mean((vs - vt) ** 2))
    assert history == pytest.approx(alpha * distill + (1 - alpha) * task, rel=1e-4)


def _fit_one_batch(model, data, teacher, temperature, alpha):
    """The loss ``fit`` reports for one full batch with a zero learning rate."""
    session = keras3.training.Session(model, data, keras3.FineTune(
        epochs=1, batch_size=len(data[0]), optimizer=keras.optimizers.SGD(0.0), teacher=teacher,
        temperature=temperature, alpha=alpha))
    return float(session.fit().history["loss"][0])


def test_head_kinds_and_inferred_losses():
    model, (x, y) = families.two_heads()
    kinds, prediction = head_kinds(model, x[:8], None)
    assert kinds == ["softmax", "regression"]
    named = dict(zip(model.output_names, kinds))
    losses = infer_losses(named, {k: v[:8] for k, v in y.items()}, dict(zip(model.output_names, prediction)))
    assert isinstance(losses["label"], keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(losses["value"], keras.losses.MeanSquaredError)
    p = np.full((4, 3), 1 / 3, "float32")
    assert isinstance(keras3.infer_loss("softmax", np.eye(3)[[0, 1, 2, 0]], p), keras.losses.CategoricalCrossentropy)
    assert isinstance(keras3.infer_loss("sigmoid", np.ones((4, 1)), p[:, :1]), keras.losses.BinaryCrossentropy)
    subclassed, (xs, ys) = families.subclassed()
    assert head_kinds(subclassed, xs[:8], ys[:8])[0] == "softmax"


def test_compiled_loss_is_the_task_loss():
    model, data = families.nested()
    own = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    model.compile(optimizer="sgd", loss=own)
    session = keras3.training.Session(model, (data[0], np.eye(4)[data[1]]), keras3.FineTune())
    assert session.trainer.loss is own and session.model.compiled


# --- data forms and copies ------------------------------------------------------------------

def test_dict_inputs_and_dataset():
    import tensorflow as tf

    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1, activation="sigmoid")(hidden))
    rng = np.random.default_rng(0)
    x = {"a": rng.random((64, 4), dtype="float32"), "b": rng.random((64, 4), dtype="float32")}
    y = (x["a"].sum(1, keepdims=True) > 2).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    pruned = keras3.prune(model, dataset, sparsity=0.5, allocation="uniform", epochs=2)
    assert keras3.sparsity_of(keras3.select_weights(pruned)) == pytest.approx(0.5, abs=0.02)
    assert head_kinds(model, {k: v[:4] for k, v in x.items()}, None)[0] == "sigmoid"


class _Unsaveable(keras.layers.Layer):
    def __init__(self, units):
        super().__init__()
        self.units, self.lock = units, threading.Lock()

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units))

    def call(self, inputs):
        return keras.ops.matmul(inputs, self.w)


def test_copy_refuses_in_one_paragraph():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, _Unsaveable(3)(inputs))
    with pytest.raises(keras3.CopyError) as info:
        keras3.copy_model(model)
    message = str(info.value)
    assert "Functional" in message and "register_keras_serializable" in message
    assert "_Unsaveable (lacks its own get_config() and @keras.saving.register_keras_serializable())" in message
    assert "\n" not in message


def test_copy_subclassed_is_same_class_and_outputs():
    model, (x, _) = families.subclassed()
    copied = keras3.copy_model(model, sample=x[:4])
    assert type(copied) is families.SubclassedNet and copied is not model
    np.testing.assert_allclose(np.asarray(copied(x[:4])), np.asarray(model(x[:4])), atol=1e-6)


def test_unknown_settings_are_named():
    model, data = families.nested()
    with pytest.raises(TypeError, match="'epoch'.*Did you mean 'epochs'"):
        keras3.prune(model, data, epoch=1)
    with pytest.raises(ValueError, match="Unknown optimizer 'adma'. Did you mean .*'adam'"):
        keras3.prune(model, data, optimizer="adma")


# --- JAX ------------------------------------------------------------------------------------

_JAX_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
import keras, numpy as np
import keras3_families as families
from tfopt.engines import keras3
out = {"backend": keras.backend.backend()}
for name in ("nested", "subclassed"):
    model, data = families.FAMILIES[name]()
    pruned = keras3.prune(model, data, sparsity=0.5, epochs=2, batch_size=16)
    clustered = keras3.cluster(pruned, data, clusters=4, epochs=1, batch_size=16)
    zeros_kept = all(
        bool(np.all(np.asarray(c.variable)[np.asarray(p.variable) == 0] == 0))
        for p, c in zip(keras3.select_weights(pruned), keras3.select_weights(clustered))
        if np.mean(np.asarray(p.variable) == 0) >= 0.1)
    out[name] = {"class": type(pruned).__name__,
                 "sparsity": keras3.sparsity_of(keras3.select_weights(pruned)),
                 "distinct": max(np.unique(np.asarray(e.variable)).size for e in keras3.select_weights(clustered)),
                 "zeros_kept": zeros_kept}
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_prunes_and_clusters_the_same():
    environment = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    for name, cls in (("nested", "Functional"), ("subclassed", "SubclassedNet")):
        model, _ = families.FAMILIES[name]()
        assert result[name]["class"] == cls
        assert result[name]["sparsity"] == pytest.approx(expected_sparsity(model, 0.5), abs=1e-9)
        assert result[name]["distinct"] <= 4 and result[name]["zeros_kept"]


def _full_and_mixed(model, x, float_ops):
    """The int8 files of ``model`` without and with ``float_ops``, unverified, and ``input_types(file, op)``:
    the dtypes of the inputs of the file's ops of type ``op``, as a list."""
    import tfopt
    from tfopt.tflite import interpreter

    loose = dict(min_agreement=0, min_snr=0)
    full = tfopt.to_tflite(model, "int8", data=x, **loose)
    mixed = tfopt.to_tflite(model, "int8", data=x, float_ops=float_ops, **loose)

    def input_types(content, op):
        it, _ = interpreter(content, builtin=True)
        dtypes = {t["index"]: t["dtype"].__name__ for t in it.get_tensor_details()}
        return [dtypes[i] for d in it._get_ops_details() if d["op_name"] == op for i in d["inputs"] if i >= 0]

    return full, mixed, input_types


def test_int8_keeps_the_named_op_types_in_float_and_the_rest_int8():
    import keras

    import tfopt
    from tfopt.errors import TfoptError
    from tfopt.tflite import TRANSFORMER_FLOAT_OPS, predict

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 16))
    h = keras.layers.LayerNormalization(name="ln")(inp)
    h = keras.layers.MultiHeadAttention(2, 8, name="mha")(h, h)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(0).normal(size=(200, 8, 16)).astype("float32")
    full, mixed, input_types = _full_and_mixed(model, x, TRANSFORMER_FLOAT_OPS)
    for op in ("MEAN", "RSQRT", "BATCH_MATMUL"):
        assert set(input_types(full, op)) <= {"int8", "int32"} and "float32" in input_types(mixed, op), op
    assert "int8" in input_types(mixed, "FULLY_CONNECTED") and "float32" not in input_types(mixed, "FULLY_CONNECTED")
    reference = model.predict(x, verbose=0)
    errors = {k: float(np.abs(predict(c, x) - reference).max()) for k, c in (("full", full), ("mixed", mixed))}
    assert max(errors.values()) < 0.05, errors  # probabilities: both files stay near the model
    with pytest.raises(TfoptError, match="to_tflite: 'LAYER_NORM' in float_ops is not a TFLite op type"):
        tfopt.to_tflite(model, "int8", data=x, float_ops=["LAYER_NORM"])
    with pytest.raises(TfoptError, match="float_ops keeps op types in float inside an int8 file; mode is float16"):
        tfopt.to_tflite(model, "float16", data=x, float_ops=["MEAN"])


def test_int8_of_a_recurrent_layer_keeps_its_gate_and_state_arithmetic_in_float():
    import keras

    from tfopt.tflite import RECURRENT_FLOAT_OPS, predict

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 5)), keras.layers.LSTM(8, name="lstm"),
                              keras.layers.Dense(3, activation="softmax", name="head")])
    x = np.random.default_rng(0).normal(size=(200, 6, 5)).astype("float32")
    full, mixed, input_types = _full_and_mixed(model, x, RECURRENT_FLOAT_OPS)
    for op in RECURRENT_FLOAT_OPS:
        assert input_types(full, op) and set(input_types(full, op)) <= {"int8", "int32"}, op
        assert input_types(mixed, op) and set(input_types(mixed, op)) == {"float32"}, op
    assert "int8" in input_types(mixed, "FULLY_CONNECTED") and "float32" not in input_types(mixed, "FULLY_CONNECTED")
    reference = model.predict(x, verbose=0)
    errors = {k: float(np.abs(predict(c, x) - reference).max()) for k, c in (("full", full), ("mixed", mixed))}
    assert errors["mixed"] < 0.05, errors


def test_both_conversion_attempts_are_named_when_they_fail_differently(monkeypatch):
    import keras

    from tfopt.engines.keras3 import litert
    from tfopt.errors import TfoptError

    def failing(model, serve, specs, mode, representative, int8_io, unroll, float_ops=()):
        raise ValueError("unrolling needs a length") if unroll else RuntimeError("TensorListReserve")

    monkeypatch.setattr(litert, "_convert", failing)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="tiny")
    with pytest.raises(TfoptError) as info:
        litert.convert(model, "float32", x=np.zeros((2, 4), "float32"))
    assert ("could not turn the model 'tiny' (Sequential) into a float32 TFLite file (unrolled: ValueError: unrolling "
            "needs a length; as it is: RuntimeError: TensorListReserve)") in str(info.value)
