"""The Python API: model in, a new model of the same kind out, never the input changed."""

import numpy as np
import pytest
import tf_keras as keras

import tfopt
from tests.conftest import python_c
from tfopt.errors import TfoptError
from tfopt.steps.prune import erk_sparsities
from tfopt.tflite import VerificationFailed, predict


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype("float32")[..., None]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], d.target[order].astype("int32")
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


DATA, HELD = digits()


def accuracy(model, data=HELD):
    return float(np.mean(model.predict(data[0], verbose=0).argmax(1) == data[1]))


def snapshot(model):
    return [w.copy() for w in model.get_weights()]


def unchanged(model, before) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.fixture(scope="module")
def trained():
    """A small functional CNN with BatchNorm and dropout, trained on the digits (≈ 96%)."""
    return train_cnn()


def train_cnn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="act1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(32, activation="relu", name="fc1")(h)
    h = keras.layers.Dropout(0.2, name="drop")(h)
    out = keras.layers.Dense(10, activation="softmax", name="fc2")(h)
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(*DATA, epochs=12, batch_size=32, verbose=0)
    return model


def still_usable(model):
    """The input model still predicts and trains after an API call."""
    model.fit(DATA[0][:64], DATA[1][:64], epochs=1, verbose=0)


def test_importing_tfopt_and_its_api_names_imports_no_tensorflow():
    res = python_c("import sys, tfopt; tfopt.prune; tfopt.to_tflite; tfopt.load_model; "
                   "from tfopt.config.step_registry import STEPS; STEPS.names(); "
                   "print('tensorflow' in sys.modules, 'tf_keras' in sys.modules)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False"]


def test_prune_returns_a_sparse_fine_tuned_model_and_leaves_the_input_alone(trained):
    before, base = snapshot(trained), accuracy(trained)
    pruned = tfopt.prune(trained, DATA, sparsity=0.6, epochs=2)
    assert unchanged(trained, before)
    assert isinstance(pruned, keras.Model) and pruned is not trained
    names = ("conv1", "conv2", "fc1", "fc2")
    expected = erk_sparsities({n: [trained.get_layer(n).kernel.shape] for n in names}, 0.6)
    kernels = [pruned.get_layer(n).kernel.numpy() for n in names]
    for name, k in zip(names, kernels):
        assert np.mean(k == 0) == pytest.approx(expected[name], abs=0.01), name
    assert sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.6, abs=0.01)
    assert {type(layer).__name__ for layer in pruned.layers} == {type(layer).__name__ for layer in trained.layers}
    assert accuracy(pruned) >= base - 0.03
    still_usable(trained)


def test_default_prune_keeps_the_accuracy_where_the_old_defaults_lost_it():
    """50% sparsity in 2 epochs on a small BatchNorm CNN: the defaults (the full rate held until pruning ends, then
    cosine to a tenth; BatchNorm statistics re-estimated) against the old ones (a tenth of the rate, cosine-decayed
    to zero from the first step, no re-estimation)."""
    from tfopt.config.fine_tune import FineTuneSettings
    from tfopt.config.steps import PruneConfig
    from tfopt.export import plain_copy
    from tfopt.steps import STEPS

    trained = train_cnn()  # its own copy: other tests fit the shared one
    base = accuracy(trained)
    new = accuracy(tfopt.prune(trained, DATA, sparsity=0.5, epochs=2))
    old, _ = STEPS["prune"].run(plain_copy(trained), DATA, PruneConfig(sparsity=0.5),
                                FineTuneSettings(epochs=2, lr=1e-4), hold=0.0, floor=0.0, bn_batches=0, verbose=0,
                                log=lambda *_: None)
    assert base - new <= 0.005 + 1e-9, (base, new)
    assert base - accuracy(old) > base - new + 0.01, (base, accuracy(old), new)


def test_prune_takes_a_dataset_with_one_hot_labels_and_per_layer_targets(trained):
    import tensorflow as tf

    x, y = DATA
    ds = tf.data.Dataset.from_tensor_slices((x, np.eye(10, dtype="float32")[y]))  # unbatched, one-hot
    pruned = tfopt.prune(trained, ds, sparsity=0.5, per_layer={"fc1": 0.9}, skip=["fc2"], epochs=1,
                         validation_data=(HELD[0], np.eye(10, dtype="float32")[HELD[1]]))
    assert np.mean(pruned.get_layer("fc1").kernel.numpy() == 0) == pytest.approx(0.9, abs=0.01)
    # the 50% is spread over the layers without a target of their own: conv1 and conv2
    rest = erk_sparsities({n: [trained.get_layer(n).kernel.shape] for n in ("conv1", "conv2")}, 0.5)
    assert np.mean(pruned.get_layer("conv2").kernel.numpy() == 0) == pytest.approx(rest["conv2"], abs=0.01)
    assert np.count_nonzero(pruned.get_layer("fc2").kernel.numpy() == 0) == 0
    assert accuracy(pruned) > 0.85


@pytest.mark.slow
def test_block_pruning_zeroes_runs_of_consecutive_inputs_and_gzips_smaller(trained):
    import gzip

    targets = dict(per_layer={"conv2": 0.8, "fc1": 0.8}, skip=("conv1", "fc2"), epochs=2)
    pruned = tfopt.prune(trained, DATA, block=4, **targets)
    fc1 = pruned.get_layer("fc1").kernel.numpy()  # (256 inputs, 32 units)
    runs = (fc1 != 0).T.reshape(32, 64, 4)  # TFLite's order: each unit's inputs in a row, cut in fours
    assert np.all(runs.all(axis=2) | ~runs.any(axis=2))  # a run is kept or zeroed whole
    assert np.mean(fc1 == 0) == pytest.approx(0.8, abs=0.01)
    conv2 = pruned.get_layer("conv2").kernel.numpy()
    assert np.mean(conv2 == 0) == pytest.approx(0.8, abs=0.01)  # convolutions stay per weight
    assert not np.all((conv2 != 0).reshape(-1, 4).all(axis=1) | (conv2 == 0).reshape(-1, 4).all(axis=1))
    per_weight = tfopt.prune(trained, DATA, **targets)
    from tfopt.tflite import convert

    kb = {name: len(gzip.compress(convert(m, "int8", representative=DATA[0][:200]), 9))
          for name, m in (("block", pruned), ("weight", per_weight))}
    assert kb["block"] < kb["weight"], kb
    assert accuracy(pruned) > 0.85, (accuracy(pruned), accuracy(per_weight))
    with pytest.raises(TfoptError, match="block and m_by_n are two patterns of zeros: choose one"):
        tfopt.prune(trained, DATA, m_by_n=(2, 4), block=4)


def test_activation_criterion_ranks_weights_by_magnitude_times_input_rms():
    from tfopt.steps.prune import input_scales

    keras.utils.set_random_seed(0)
    mlp = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(name="flatten"),
                            keras.layers.Dense(32, activation="relu", name="fc1"),
                            keras.layers.Dense(10, activation="softmax", name="fc2")])
    mlp.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    mlp.fit(*DATA, epochs=10, batch_size=32, verbose=0)
    flat = DATA[0].reshape(len(DATA[0]), -1)
    rms = np.sqrt(np.mean(flat.astype(np.float64) ** 2, axis=0))
    scales = input_scales(mlp, DATA[0])
    np.testing.assert_allclose(scales["fc1"]["kernel"][:, 0], rms / rms.mean(), rtol=1e-5)
    assert scales["fc1"]["kernel"].shape == (64, 1) and scales["fc2"]["kernel"].shape == (32, 1)
    dead = rms == 0  # pixels blank in every training image (the digits' left and right edges)
    assert dead.sum() >= 3
    before = snapshot(mlp)
    kw = dict(per_layer={"fc1": 0.75}, skip=("fc2",), epochs=3)
    by_activation = tfopt.prune(mlp, DATA, criterion="activation", probe_samples=len(DATA[0]), **kw)
    by_magnitude = tfopt.prune(mlp, DATA, **kw)
    assert unchanged(mlp, before)
    a, m = by_activation.get_layer("fc1").kernel.numpy(), by_magnitude.get_layer("fc1").kernel.numpy()
    assert np.mean(a == 0) == pytest.approx(0.75, abs=0.01) and np.mean(m == 0) == pytest.approx(0.75, abs=0.01)
    assert np.count_nonzero(a[dead]) == 0  # scored zero: pruned first
    assert np.count_nonzero(m[dead]) > 0  # their initial values survive magnitude pruning
    assert accuracy(by_activation) > 0.85, (accuracy(by_activation), accuracy(by_magnitude))
    with pytest.raises(TfoptError, match="prune.criterion: .*the activation criterion ranks single weights: not "
                                         "with block or m_by_n"):
        tfopt.prune(mlp, DATA, criterion="activation", block=4)


def test_prune_channels_makes_a_smaller_model(trained):
    before = snapshot(trained)
    slim = tfopt.prune_channels(trained, DATA, ratio=0.5, epochs=1)
    assert unchanged(trained, before)
    assert slim.get_layer("conv1").filters == 8 and slim.get_layer("conv2").filters == 8
    assert slim.get_layer("fc1").units == 16 and slim.get_layer("fc2").units == 10
    assert slim.count_params() < 0.5 * trained.count_params()
    assert accuracy(slim) > 0.8
    # no fine-tune, a weight criterion: no data needed, outputs equal the masked original's
    bare = tfopt.prune_channels(trained, ratio=0.25, epochs=0)
    assert bare.get_layer("conv1").filters == 12
    still_usable(trained)


def test_fold_batchnorm_keeps_the_outputs(trained):
    before = snapshot(trained)
    folded = tfopt.fold_batchnorm(trained, HELD)
    assert unchanged(trained, before)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    ref, got = trained.predict(HELD[0], verbose=0), folded.predict(HELD[0], verbose=0)
    assert np.max(np.abs(ref - got)) < 1e-5


def test_remove_layers_rewires_and_fine_tunes(trained):
    before = snapshot(trained)
    fewer = tfopt.remove_layers(trained, ["conv2"], DATA, epochs=1)
    assert unchanged(trained, before)
    names = [layer.name for layer in fewer.layers]
    assert "conv2" not in names and "conv1" in names
    assert fewer.count_params() == trained.count_params() - 16 * 16 * 9 - 16
    with pytest.raises(TfoptError, match="no layer or block 'conv9' in this model"):
        tfopt.remove_layers(trained, ["conv9"], epochs=0)


def test_cluster_limits_unique_values(trained):
    before = snapshot(trained)
    clustered = tfopt.cluster(trained, DATA, clusters=8, epochs=1)
    assert unchanged(trained, before)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        assert len(np.unique(clustered.get_layer(name).kernel.numpy())) <= 8
    assert accuracy(clustered) > 0.85


def test_cluster_names_the_depthwise_kernels_tfmot_leaves_unclustered():
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 4)), keras.layers.DepthwiseConv2D(3, name="dw"),
                              keras.layers.Conv2D(6, 1, name="pw"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax", name="fc")])
    rng = np.random.default_rng(0)
    lines = []
    out = tfopt.cluster(model, (rng.random((32, 8, 8, 4), dtype="float32"), rng.integers(0, 3, 32)), clusters=4,
                        epochs=1, log=lines.append)
    assert [len(np.unique(out.get_layer(n).kernel.numpy())) for n in ("pw", "fc")] == [4, 4]
    assert len(np.unique(out.get_layer("dw").depthwise_kernel.numpy())) == 36
    assert "left unclustered (TFMOT's clustering does not take their kernels, e.g. a depthwise kernel): dw" in lines


@pytest.mark.slow
def test_int8_of_a_clustered_model_keeps_its_shared_values_as_shared_codes(trained):
    import gzip

    from ai_edge_litert.interpreter import Interpreter

    from tfopt.tflite import accuracy as file_accuracy, convert, shared_dense_values

    clustered = tfopt.cluster(trained, DATA, clusters=8, epochs=1)
    assert shared_dense_values(clustered) and not shared_dense_values(trained)
    rep = DATA[0][:200]
    files = {per_tensor: convert(clustered, "int8", representative=rep, dense_per_tensor=per_tensor)
             for per_tensor in (False, True)}
    assert convert(clustered, "int8", representative=rep) == files[True]  # the default for a clustered model

    def fc1_codes(content):
        it = Interpreter(model_content=content)
        (t,) = [t for t in it.get_tensor_details() if tuple(t["shape"]) == (32, 256) and t["dtype"] == np.int8]
        return it.get_tensor(t["index"]), t["quantization_parameters"]["scales"]

    codes, scales = fc1_codes(files[True])
    assert len(np.unique(codes)) == 8 and len(scales) == 1  # 8 values, one scale: 8 codes
    codes, scales = fc1_codes(files[False])
    # one scale per unit: each unit codes the shared values on its own grid, so the file holds as many
    # codes as there are distinct (value, scale) roundings (8 only when every unit has the same scale)
    values = np.unique(clustered.get_layer("fc1").kernel.numpy())
    expected = {int(code) for s in np.unique(scales) for code in np.clip(np.round(values / s), -127, 127)}
    assert len(scales) == 32 and set(np.unique(codes).tolist()) <= expected
    assert len(np.unique(codes)) > 8 or len(np.unique(scales)) == 1
    gz = {k: len(gzip.compress(v, 9)) for k, v in files.items()}
    assert gz[True] < gz[False], gz
    acc = {k: file_accuracy(v, *HELD) for k, v in files.items()}
    assert abs(acc[True] - acc[False]) <= 0.01, acc


def test_per_kernel_dense_scales_give_way_where_they_change_predictions():
    from tfopt.tflite import convert, shared_dense_values

    # a clustered head (7 values): units 0-4 read input 0 (always 0 here) with weights ±1, units
    # 5-9 read the other inputs with ±0.01 and ±0.006. One scale for the kernel (1/127) maps 0.01
    # and 0.006 to the same code; one per unit keeps them apart.
    rng = np.random.default_rng(0)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(inp))
    kernel = np.zeros((16, 10), "float32")
    kernel[0, :5] = rng.choice([-1.0, 1.0], 5)
    kernel[1:, 5:] = rng.choice([-0.01, -0.006, 0.006, 0.01], (15, 5))
    model.get_layer("head").set_weights([kernel, np.zeros(10, "float32")])
    x = rng.normal(size=(500, 16)).astype("float32")
    x[:, 0] = 0
    assert shared_dense_values(model)
    per_kernel, per_unit = (convert(model, "int8", representative=x, dense_per_tensor=v) for v in (True, False))
    ref = model.predict(x, verbose=0).argmax(1)
    agree = {k: np.mean(predict(v, x).argmax(1) == ref) for k, v in (("kernel", per_kernel), ("unit", per_unit))}
    assert agree["kernel"] < agree["unit"] - 0.002, agree
    assert convert(model, "int8", representative=x) == per_unit


@pytest.mark.slow
def test_clustering_a_pruned_model_keeps_its_zeros(trained):
    pruned = tfopt.prune(trained, DATA, sparsity=0.7, epochs=2, allocation="uniform")
    zeros = {n: np.mean(pruned.get_layer(n).kernel.numpy() == 0) for n in ("conv2", "fc1")}
    kept = tfopt.cluster(pruned, DATA, clusters=4, epochs=1)
    for name, before in zeros.items():
        k = kept.get_layer(name).kernel.numpy()
        assert before == pytest.approx(0.7, abs=0.01)
        assert np.mean(k == 0) >= before - 1e-9 and len(np.unique(k)) <= 4  # zero is one of the 4 values
    assert accuracy(kept) > 0.85
    # quantization-aware training keeps both: sparsity- and cluster-preserving QAT
    from tfopt.steps.quantize import scheme_for

    assert scheme_for(kept) == "pcqat"
    assert {type(layer).__name__ for layer in tfopt.wrap_for_qat(kept).layers} >= {"QuantizeWrapperV2"}


@pytest.mark.slow
def test_qat_keeps_the_zeros_of_pruned_layers_beside_unpruned_ones(trained):
    pruned = tfopt.prune(trained, DATA, sparsity=0.7, epochs=2, allocation="uniform", skip=("conv1", "fc2"))
    kept = tfopt.cluster(pruned, DATA, clusters=4, epochs=1)
    assert np.mean(kept.get_layer("conv1").kernel.numpy() == 0) == 0  # unpruned layers beside pruned ones
    qat = tfopt.quantize_aware(kept, DATA, epochs=1, lr=1e-3)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tfopt.to_tflite(qat, mode="int8", data=HELD[0]))
    it.allocate_tensors()
    def kernel(shape):
        (t,) = [t for t in it.get_tensor_details() if tuple(t["shape"]) == shape and t["dtype"] == np.int8]
        return it.get_tensor(t["index"])

    fc1, conv2 = kernel((32, 256)), kernel((16, 3, 3, 16))
    assert np.mean(fc1 == 0) == pytest.approx(0.7, abs=0.01) and len(np.unique(fc1)) <= 4
    assert np.mean(conv2 == 0) == pytest.approx(0.7, abs=0.01)


def test_quantize_aware_then_int8_tflite_agrees(trained):
    before = snapshot(trained)
    qat = tfopt.quantize_aware(trained, DATA, epochs=1)
    assert unchanged(trained, before)
    blob = tfopt.to_tflite(qat, mode="int8", data=HELD[0])
    got = predict(blob, HELD[0])
    assert np.mean(got.argmax(1) == qat.predict(HELD[0], verbose=0).argmax(1)) >= 0.99
    with pytest.raises(TfoptError, match="a quantization-aware model converts to int8, not float16"):
        tfopt.to_tflite(qat, mode="float16")


def test_qat_folds_the_batchnorm_after_a_conv_into_it(trained):
    from ai_edge_litert.interpreter import Interpreter

    qat = tfopt.quantize_aware(trained, DATA, epochs=1)
    assert "quant_bn1" in {layer.name for layer in qat.layers}
    it = Interpreter(model_content=tfopt.to_tflite(qat, mode="int8", data=HELD[0]))
    ops = [op["op_name"] for op in it._get_ops_details()]
    # bn1 is inside the first CONV_2D: no float multiply and add between a dequantize and a quantize
    assert "MUL" not in ops and "ADD" not in ops
    assert ops.count("QUANTIZE") == 1 and ops.count("DEQUANTIZE") == 1


def test_the_batchnorms_qat_folds_follow_a_linear_conv_or_dense_they_alone_read():
    from tfopt.steps.quantize import foldable_batchnorms

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 3, padding="same", name="conv_a")(inp))
    d = L.BatchNormalization(name="bn_dw")(L.DepthwiseConv2D(3, padding="same", name="dw")(L.ReLU()(a)))
    b = L.BatchNormalization(name="bn_relu")(L.Conv2D(4, 1, activation="relu", name="conv_relu")(d))
    c = L.Conv2D(4, 1, name="conv_shared")(b)
    s = L.BatchNormalization(name="bn_add")(L.Add()([L.BatchNormalization(name="bn_shared")(c), c]))
    f = L.BatchNormalization(name="bn_fc")(L.Dense(5, name="fc")(L.GlobalAveragePooling2D()(s)))
    model = keras.Model(inp, L.Softmax()(f))
    assert foldable_batchnorms(model) == {"bn_a", "bn_dw", "bn_fc"}
    # a conv called twice (a shared layer) has two readers: its BatchNormalization stays as it is
    shared = L.Conv2D(3, 1, name="conv_twice")
    twice = L.BatchNormalization(name="bn_twice")(shared(inp))
    model = keras.Model(inp, L.Add()([twice, shared(L.ReLU()(inp))]))
    assert foldable_batchnorms(model) == set()


def test_to_tflite_is_verified_on_the_data(trained):
    blob = tfopt.to_tflite(trained, mode="int8", data=HELD)
    assert isinstance(blob, bytes)
    got, ref = predict(blob, HELD[0]), trained.predict(HELD[0], verbose=0)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.99
    f32 = tfopt.to_tflite(trained)  # no data: converted, not verified
    assert np.max(np.abs(predict(f32, HELD[0]) - ref)) < 1e-5
    with pytest.raises(VerificationFailed, match=r"dynamic: top-1 agreement with the model .* \(threshold 101.00%\)"):
        tfopt.to_tflite(trained, mode="dynamic", data=HELD[0], min_agreement=1.01)
    with pytest.raises(TfoptError, match="int8 calibrates on training images: pass data=x"):
        tfopt.to_tflite(trained, mode="int8")
    with pytest.raises(TfoptError, match=r"unknown mode 'int4'.*available: float32, dynamic, float16, int8"):
        tfopt.to_tflite(trained, mode="int4")


def test_bad_arguments_raise_tfopt_errors_by_name(trained):
    with pytest.raises(TfoptError, match=r"prune.sparsity: Input should be less than 1"):
        tfopt.prune(trained, DATA, sparsity=1.5)
    with pytest.raises(TfoptError, match=r"x and y differ in length \(1400 images, 10 labels\)"):
        tfopt.prune(trained, (DATA[0], DATA[1][:10]))
    with pytest.raises(TfoptError, match=r"skip: 'fc3' is not a prunable layer of this model \(did you mean"):
        tfopt.prune(trained, DATA, skip=["fc3"])
    with pytest.raises(TfoptError, match="expected a Keras model"):
        tfopt.prune("model.keras", DATA)
    with pytest.raises(TfoptError, match=r"prune: unknown keyword argument 'epoch' \(did you mean 'epochs'\?\)"):
        tfopt.prune(trained, DATA, epoch=1)
    with pytest.raises(TfoptError, match=r"cluster: unknown keyword argument 'cluster' \(did you mean 'clusters'\?\)"):
        tfopt.cluster(trained, DATA, cluster=4)


def test_sequential_models_work(trained):
    keras.utils.set_random_seed(1)
    seq = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="c"),
                            keras.layers.Flatten(), keras.layers.Dense(10, name="d")])  # logits
    seq.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seq.fit(*DATA, epochs=5, verbose=0)
    before, base = snapshot(seq), accuracy(seq)
    pruned = tfopt.prune(seq, DATA, sparsity=0.5, epochs=2, allocation="uniform")
    assert unchanged(seq, before)
    assert np.mean(pruned.get_layer("d").kernel.numpy() == 0) == pytest.approx(0.5, abs=0.01)
    assert np.mean(pruned.get_layer("c").kernel.numpy() == 0) == pytest.approx(0.5, abs=0.02)
    assert accuracy(pruned) >= base - 0.03  # logits: the loss was inferred with from_logits


def test_own_training_loop_with_wrap_and_strip(trained):
    x, y = DATA
    wrapped = tfopt.wrap_for_pruning(trained, total_steps=44, sparsity=0.7)
    wrapped.compile("adam", "sparse_categorical_crossentropy")
    wrapped.fit(x, y, batch_size=32, epochs=1, callbacks=tfopt.pruning_callbacks(), verbose=0)
    plain = tfopt.strip(wrapped)
    assert np.mean(plain.get_layer("fc1").kernel.numpy() == 0) == pytest.approx(0.7, abs=0.01)
    assert "PruneLowMagnitude" not in {type(layer).__name__ for layer in plain.layers}
    with pytest.raises(TfoptError, match="pruning preflight: the schedule reaches only"):
        tfopt.wrap_for_pruning(trained, total_steps=40, end_step=1000, frequency=100)


@pytest.mark.slow
def test_a_keras3_users_script_gets_keras3_models_back(tmp_path):
    """examples/keras3_user.py, the README's Keras 3 example, run as a user would (plain `import keras`)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "keras3_user.py"), "--json", str(out)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = json.loads(out.read_text())
    assert f["kinds"] == ["keras", "keras"]  # Keras 3 in, Keras 3 out
    assert f["sparsity"] == pytest.approx(0.8, abs=0.01)  # counted from the returned model's kernels
    assert f["params"]["slim"] < 0.5 * f["params"]["model"]
    assert f["int8_agreement"] >= 0.99
    assert f["accuracy"]["slim"] >= f["accuracy"]["model"] - 0.03


# -- Keras 3 models through the Keras 3 engine; verification by head ---------------------------


def test_verification_excuses_near_ties_and_refuses_a_broken_file_by_what_it_measured():
    from tfopt import verify

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4))
    logits[:40, 1] = logits[:40, 0] + 1e-3  # near ties: the top two a hair apart
    logits[:40, 2:] = -5.0
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    noise = rng.normal(scale=2e-3, size=ref.shape)  # a faithful int8 file's error
    got = ref + noise
    got[:40, 0], got[:40, 1] = ref[:40, 1], ref[:40, 0]  # every near tie flips: 10% disagree
    report = verify.compare([ref], [got], ["softmax"], "int8")
    (head,) = report.heads
    assert report.passed and head.excused >= 40 and head.agreement == 1.0, report.lines()
    assert f"{head.excused} near ties excused" in report.lines()[0]
    broken = verify.compare([ref], [rng.permutation(ref)], ["softmax"], "int8")
    assert not broken.passed
    with pytest.raises(VerificationFailed, match=r"int8: top-1 agreement with the model .* SNR -?[0-9.]+ dB "
                                                 r"\(threshold 20 dB\)"):
        verify.enforce(broken)
    # a map and a regression head: the SNR rule alone, each head named
    maps, values = rng.random((50, 8, 8, 3)), rng.normal(size=(50, 1))
    two = verify.compare([maps, values], [maps + 1e-3, values + 1.0], ["softmax", "regression"], "int8",
                         names=["mask", "value"])
    assert [h.passed for h in two.heads] == [True, False] and two.heads[0].agreement is None
    assert two.failures()[0].startswith("int8: head 'value': SNR")


def _keras3_regression():
    import keras as k3

    k3.utils.set_random_seed(0)
    model = k3.Sequential([k3.Input((8,)), k3.layers.Dense(32, activation="relu"), k3.layers.Dense(1)])
    x = np.random.default_rng(0).random((256, 8), dtype="float32")
    y = (x @ np.linspace(-1, 1, 8) + 3.0).astype("float32")[:, None]  # targets far outside [0, 1]
    return model, x, y


def test_a_keras3_regression_model_without_a_loss_is_fine_tuned_as_a_regression():
    model, x, y = _keras3_regression()
    pruned = tfopt.prune(model, (x, y), sparsity=0.5, epochs=8, lr=1e-2, batch_size=16)
    error = float(np.mean((pruned.predict(x, verbose=0) - y) ** 2))
    assert type(pruned) is type(model)
    assert error < 0.1 * float(np.var(y) + np.mean(y) ** 2), error  # mean squared error learned the targets
    blob = tfopt.to_tflite(pruned, mode="int8", data=x)
    assert np.mean((predict(blob, x) - pruned.predict(x, verbose=0)) ** 2) < 1e-2


def test_keras3_keywords_the_engine_cannot_honour_are_refused_by_name():
    model, x, y = _keras3_regression()
    with pytest.raises(TfoptError, match=r"prune: criterion='activation' is not available for a Keras 3 model.*"
                                         r"Use criterion='magnitude'"):
        tfopt.prune(model, (x, y), criterion="activation")
    with pytest.raises(TfoptError, match=r"cluster: init='random' is not available for a Keras 3 model.*"
                                         r"'kmeans_plus_plus' or 'linear'"):
        tfopt.cluster(model, (x, y), init="random")
    with pytest.raises(TfoptError, match=r"prune: unknown keyword argument 'epoch'"):
        tfopt.prune(model, (x, y), epoch=1)
    with pytest.raises(TfoptError, match=r"prune.sparsity: Input should be less than 1"):
        tfopt.prune(model, (x, y), sparsity=1.5)
    with pytest.raises(TfoptError, match=r"pruning preflight: end_step 100 is not before the fine-tune's last step"):
        tfopt.prune(model, (x, y), end_step=100, epochs=1)


def test_the_readme_subclassed_keras3_example():
    import keras as k3

    @k3.saving.register_keras_serializable(package="tfopt_readme")
    class Net(k3.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.hidden, self.head = k3.layers.Dense(32, activation="relu"), k3.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.head(self.hidden(x))

    k3.utils.set_random_seed(0)
    x, y = DATA[0].reshape(len(DATA[0]), -1), DATA[1]
    net = Net()
    net(x[:1])
    net.compile("adam", "sparse_categorical_crossentropy")
    net.fit(x, y, epochs=5, verbose=0)
    logs = []
    pruned = tfopt.prune(net, data=(x, y), sparsity=0.8, epochs=2, validation_data=(x[:100], y[:100]), distill=True,
                         seed=1, log=logs.append)
    assert type(pruned) is Net and any("Keras 3 engine" in line for line in logs)
    kernels = [pruned.hidden.kernel.numpy(), pruned.head.kernel.numpy()]
    assert sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.8, abs=0.01)
    blob = tfopt.to_tflite(pruned, mode="int8", data=x, log=logs.append)
    assert np.mean(predict(blob, x).argmax(1) == pruned.predict(x, verbose=0).argmax(1)) >= 0.98
    assert any(line.startswith("int8: top-1 agreement with the model") for line in logs)
    with pytest.raises(TfoptError, match=r"^prune_channels cannot take the model '\w+' \(Net\): it is subclassed\. "):
        tfopt.prune_channels(net, (x, y))


def test_a_two_headed_tf_keras_model_converts_and_is_verified_head_by_head():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inp)
    h = keras.layers.Dense(16, activation="relu")(h)
    label = keras.layers.Dense(10, activation="softmax", name="label")(h)
    value = keras.layers.Dense(1, name="value")(h)
    model = keras.Model(inp, [label, value])
    logs = []
    blob = tfopt.to_tflite(model, mode="float32", data=HELD[0], log=logs.append)
    assert isinstance(blob, bytes)
    assert [line.split(":")[1].strip() for line in logs] == ["head 'label'", "head 'value'"], logs


def test_cluster_leaves_a_kernel_with_fewer_weights_than_clusters_as_it_is():
    import tf_keras

    inp = tf_keras.Input((6,))
    hidden = tf_keras.layers.Dense(12, activation="relu", name="wide")(inp)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(1, name="small")(hidden))  # 12 weights < 16 clusters
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 1)).astype("float32"))
    clustered = tfopt.cluster(model, data, clusters=16, epochs=1, loss="mse")
    assert len(np.unique(clustered.get_layer("wide").kernel.numpy())) <= 16
    assert clustered.get_layer("small").kernel.shape == (12, 1)


def test_prune_channels_takes_a_keras3_model_with_two_heads_and_two_inputs():
    import keras as k3

    rng = np.random.default_rng(0)
    image, features = k3.Input((6, 6, 1), name="image"), k3.Input((5,), name="features")
    a = k3.layers.GlobalAveragePooling2D()(k3.layers.Conv2D(8, 3, activation="relu", name="conv")(image))
    h = k3.layers.Dense(16, activation="relu", name="hidden")(
        k3.layers.Concatenate()([a, k3.layers.Dense(6, activation="relu", name="side")(features)]))
    model = k3.Model({"image": image, "features": features},
                     {"label": k3.layers.Dense(3, activation="softmax", name="label")(h),
                      "value": k3.layers.Dense(1, name="value")(h)})
    model.compile("adam", {"label": "sparse_categorical_crossentropy", "value": "mse"})
    x = {"image": rng.random((64, 6, 6, 1), dtype="float32"), "features": rng.random((64, 5), dtype="float32")}
    y = {"label": rng.integers(0, 3, 64), "value": x["features"].sum(1, keepdims=True)}
    before = [w.copy() for w in model.get_weights()]
    unchanged = tfopt.prune_channels(model, (x, y), ratio=0.5, epochs=0)
    out = tfopt.prune_channels(model, (x, y), ratio=0.5, epochs=1, batch_size=16)
    assert {n: out.get_layer(n).get_weights()[0].shape[-1] for n in ("conv", "side", "hidden")} == \
        {"conv": 4, "side": 3, "hidden": 8}
    assert out.get_layer("hidden").get_weights()[0].shape == (7, 8)
    assert sorted(out.output_names) == ["label", "value"]
    got = out.predict(x, verbose=0)
    assert got["label"].shape == (64, 3) and got["value"].shape == (64, 1)
    assert not np.allclose(out.get_layer("value").get_weights()[0], unchanged.get_layer("value").get_weights()[0])
    assert all(np.array_equal(p, q) for p, q in zip(before, model.get_weights()))
    with pytest.raises(TfoptError) as refused:
        tfopt.prune_channels(model, (x, y), criterion="taylor")
    assert str(refused.value) == ("prune_channels: criterion 'taylor' ranks channels on data of one input and one "
                                  "output; with several inputs or outputs rank them by their weights: l1, l2 or "
                                  "bn_gamma")


def test_a_tf_keras_model_with_two_named_inputs_is_pruned_through_its_keras3_copy():
    """Data of two named inputs: prune runs the Keras 3 engine on the copy and a tf_keras model
    comes back, half of its kernels' weights zero, the input model unchanged."""
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Dense(16, activation="relu", name="d1")(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(3, activation="softmax", name="d2")(h), name="two_in")
    rng = np.random.default_rng(0)
    data = ({"a": rng.random((64, 6), dtype="float32"), "b": rng.random((64, 4), dtype="float32")},
            rng.integers(0, 3, 64))
    before = [w.copy() for w in model.get_weights()]
    lines = []
    out = tfopt.prune(model, data, sparsity=0.5, epochs=1, batch_size=16, allocation="uniform", log=lines.append)
    assert tfopt.model_kind(out) == "tf_keras"
    kernels = [out.get_layer(n).kernel.numpy() for n in ("d1", "d2")]
    assert sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels) == pytest.approx(0.5, abs=0.02)
    assert any("runs on the model's Keras 3 copy" in line for line in lines)
    assert all(np.array_equal(u, v) for u, v in zip(before, model.get_weights()))
