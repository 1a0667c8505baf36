"""BatchNorm folding over many random builder architectures: equal outputs, plain reloads."""

import numpy as np
import pytest
import tf_keras as keras

from tfopt import layer_kinds
from tfopt.errors import TfoptError
from tfopt.models.builder import build_model
from tfopt.config.recipe import Model
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


# ---- structured channel pruning --------------------------------------------------------------

from tfopt.models.stats import model_stats  # noqa: E402
from tfopt.surgery.channels import masked_copy, plan_channels, prune_channels  # noqa: E402


def lenet(shape=(12, 12, 1)):
    return build_model(Model.model_validate({"layers": [
        {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "valid", "activation": "relu"},
        {"type": "max_pool"},
        {"type": "conv2d", "filters": 12, "kernel_size": 3, "padding": "valid", "batch_norm": True,
         "activation": "relu"},
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "relu"},
        {"type": "dropout", "rate": 0.2},
        {"type": "dense", "units": 3, "activation": "softmax"}]}), shape)


def test_channel_pruning_params_and_macs_equal_the_formula():
    model = lenet()
    randomize_bn(model, 0)
    pruned, report = prune_channels(model, ratio=0.5)
    assert report["kept"] == {"conv1": 4, "conv2": 6, "fc1": 5}
    assert report["protected"] == {"fc2": "fc2 is a model output"}
    c1, c2, f1 = 4, 6, 5
    params = (9 * 1 * c1 + c1) + (9 * c1 * c2) + 4 * c2 + (3 * 3 * c2 * f1 + f1) + (f1 * 3 + 3)
    macs = 10 * 10 * 9 * 1 * c1 + 3 * 3 * 9 * c1 * c2 + 3 * 3 * c2 * f1 + f1 * 3
    stats = model_stats(pruned)
    assert (stats["params"], stats["macs"]) == (params, macs)


@pytest.mark.parametrize("seed", range(10))
def test_channel_pruning_equals_the_masked_original(seed, tmp_path):
    cfg = random_architecture(seed)
    model = build_model(cfg, (8, 8, 3))
    randomize_bn(model, seed)
    ratio = [0.25, 0.5, 0.75][seed % 3]
    criterion = ["l1", "l2"][seed % 2]
    pruned, report = prune_channels(model, ratio=ratio, criterion=criterion)
    plan = plan_channels(model, ratio=ratio, criterion=criterion)
    x = np.random.default_rng(seed).normal(size=(5, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked_copy(model, plan["keep"]).predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert model_stats(pruned)["macs"] <= model_stats(model)["macs"]
    pruned.save(tmp_path / "p.keras")
    again = keras.models.load_model(tmp_path / "p.keras")
    assert all(type(layer).__module__.startswith("tf_keras") for layer in again.layers)
    np.testing.assert_allclose(again.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6)


def test_bn_gamma_criterion_keeps_the_largest_scales():
    model = lenet()
    bn = model.get_layer("bn1")
    g, b, m, v = bn.get_weights()
    g = np.array([0.1, 5, 0.2, 4, 0.3, 3, 0.4, 2, 0.5, 1, 0.6, 0.7], "float32")
    bn.set_weights([g, b, m, v])
    plan = plan_channels(model, ratio=0.5, criterion="bn_gamma", protect=["conv1", "fc1"])
    assert plan["keep"]["conv2"].tolist() == [1, 3, 5, 7, 9, 11]
    with pytest.raises(TfoptError, match="criterion bn_gamma: conv1 has no BatchNorm with a scale after it"):
        plan_channels(model, ratio=0.5, criterion="bn_gamma")


def test_refusals_name_the_layers():
    model = lenet()
    with pytest.raises(TfoptError, match=r"'conv3' is not a conv, separable conv or dense layer of this model "
                                         r"\(did you mean 'conv2'\?\); those are: conv1, conv2, fc1, fc2"):
        prune_channels(model, protect=["conv3"])
    residual = build_model(Model.model_validate({"layers": [
        {"type": "conv2d", "filters": 4}, {"type": "residual", "filters": 4},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 2}]}), (8, 8, 1))
    _, report = prune_channels(residual, ratio=0.5)
    # conv1 and block1_conv2 meet in block1_add: one group, the same channels leave both
    assert report["kept"] == {"conv1": 2, "block1_conv2": 2, "block1_conv1": 2}
    from_input = build_model(Model.model_validate({"layers": [
        {"type": "residual", "filters": 3}, {"type": "global_avg_pool"}, {"type": "dense", "units": 2}]}), (8, 8, 3))
    _, report = prune_channels(from_input, ratio=0.5)
    assert report["protected"]["block1_conv2"] == "its channels meet input in block1_add, which cannot be pruned"


def test_residual_groups_share_their_channels():
    model = resnet()
    randomize_bn(model, 3)
    pruned, report = prune_channels(model, ratio=0.5)
    plan = plan_channels(model, ratio=0.5)
    assert report["kept"]["conv1"] == report["kept"]["block1_conv2"] == 2
    assert report["kept"]["block2_conv2"] == report["kept"]["block2_proj"] == report["kept"]["conv2"] == 4
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked_copy(model, plan["keep"]).predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_activation_and_taylor_scores_match_a_hand_computation():
    import tensorflow as tf

    from tfopt.surgery.channels import data_scores, trace

    model = lenet()
    randomize_bn(model, 1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 12, 12, 1)).astype("float32")
    y = rng.integers(0, 3, 16)
    groups = trace(model)
    act = data_scores(model, {"conv2": groups["conv2"]}, "activation", (x, y))["conv2"]
    tay = data_scores(model, {"conv2": groups["conv2"]}, "taylor", (x, y))["conv2"]
    probe = keras.Model(model.inputs, [model.get_layer("act1").output, model.output])
    with tf.GradientTape() as tape:
        a, pred = probe(x, training=False)
        tape.watch(a)
        loss = keras.losses.SparseCategoricalCrossentropy()(y, pred)
    g = tape.gradient(loss, a)
    np.testing.assert_allclose(act, np.abs(a.numpy()).mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(tay, np.abs((a * g).numpy().mean(axis=(0, 1, 2))), rtol=1e-4, atol=1e-9)
    pruned, report = prune_channels(model, ratio=0.5, criterion="taylor", data=(x, y))
    assert report["keep"]["conv2"].tolist() == sorted(np.argsort(-tay, kind="stable")[:6].tolist())
    with pytest.raises(TfoptError, match=r"criterion taylor ranks channels on data: pass a batch of \(x, y\)"):
        prune_channels(model, ratio=0.5, criterion="taylor")


def test_rounds_reach_the_ratio(tmp_path):
    from tfopt.steps.source import load_source
    from tfopt.steps.structured import run_structured
    from tfopt.config.recipe import validate
    from tfopt.training.run import fit
    from tests.conftest import tiny_recipe_dict

    data = tiny_recipe_dict(**{"train.epochs": 2, "name": "r"})
    data["model"]["layers"] = [{"type": "conv2d", "filters": 16, "batch_norm": True, "activation": "relu"},
                               {"type": "global_avg_pool"}, {"type": "dense", "units": 4, "activation": "softmax"}]
    run = fit(validate(data), output=tmp_path, log=lambda *_: None).run_dir
    lines = []
    path, metrics = run_structured(load_source(run), {"ratio": 0.75, "rounds": 2, "epochs": 1,
                                                               "criterion": "activation"},
                                            output=tmp_path, log=lines.append)
    assert [ln.split(":")[0] for ln in lines if ln.startswith("round ")] == ["round 1/2", "round 2/2"]
    assert metrics["channels"]["kept"] == {"conv1": 4}  # 16 -> 8 -> 4
    assert keras.models.load_model(path / "model.keras").get_layer("conv1").filters == 4


# ---- layer and block removal ------------------------------------------------------------------

from tfopt.surgery.remove import candidates, remove_layers  # noqa: E402


def resnet():
    return build_model(Model.model_validate({"layers": [
        {"type": "conv2d", "filters": 4, "batch_norm": True, "activation": "relu"},
        {"type": "residual", "filters": 4}, {"type": "residual", "filters": 8, "strides": 2},
        {"type": "conv2d", "filters": 8, "batch_norm": True, "activation": "relu"},
        {"type": "dropout", "rate": 0.3},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 3, "activation": "softmax"}]}), (8, 8, 1))


def test_removing_dropout_changes_nothing_at_inference_and_reloads(tmp_path):
    model = resnet()
    smaller, removed = remove_layers(model, ["dropout1"])
    assert removed == ["dropout1"] and "dropout1" not in [layer.name for layer in smaller.layers]
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(smaller.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    smaller.save(tmp_path / "s.keras")
    assert len(keras.models.load_model(tmp_path / "s.keras").layers) == len(model.layers) - 1


def test_identity_block_and_shape_keeping_conv_are_removable():
    model = resnet()
    assert candidates(model) == ["conv2", "block1"]
    smaller, removed = remove_layers(model, ["block1", "conv2"])
    block1 = {layer.name for layer in model.layers if layer.name.startswith("block1_")}
    assert set(removed) == block1 | {"conv2", "bn2", "act2"}
    assert smaller.count_params() < model.count_params()
    # without block1, block2 reads conv1's activation directly
    assert smaller.get_layer("block2_conv1").inbound_nodes[0].inbound_layers.name == "act1"


def test_impossible_removals_are_refused_with_shapes():
    model = resnet()
    with pytest.raises(TfoptError, match=r"cannot remove block2_conv1 through block2_out: it maps 8×8×4 "
                                         r"to 4×4×8, and the layers after it expect 4×4×8; only layers \(or blocks\) "
                                         r"that keep the shape"):
        remove_layers(model, ["block2"])
    with pytest.raises(TfoptError, match="cannot remove fc1: it is the model's output"):
        remove_layers(model, ["fc1"])
    with pytest.raises(TfoptError, match=r"no layer or block 'blok1' in this model \(did you mean 'block1'\?\)"):
        remove_layers(model, ["blok1"])


def inverted_residuals():
    return build_model(Model.model_validate({"layers": [
        {"type": "conv2d", "filters": 8, "batch_norm": True, "activation": "relu6"},
        {"type": "inverted_residual", "filters": 8, "squeeze_excite": 0.25},
        {"type": "inverted_residual", "filters": 12, "strides": 2},
        {"type": "global_avg_pool"}, {"type": "dense", "units": 3, "activation": "softmax"}]}), (8, 8, 1))


def test_an_inverted_residual_block_goes_as_a_whole_and_leaves_its_shortcut():
    from tfopt.search.measure import removable_layers
    from tfopt.surgery.remove import residual_blocks

    model = inverted_residuals()
    block = [layer.name for layer in model.layers if layer.name.startswith("ir1_")]
    assert len(block) == 16  # expand, depthwise, squeeze-excite and projection change widths inside the block
    assert residual_blocks(model) == ["ir1"] and "ir1" in candidates(model)
    assert removable_layers(model) == ["ir1", "ir1_dw"]
    smaller, removed = remove_layers(model, ["ir1"])
    assert removed == block
    assert smaller.get_layer("ir2_expand").inbound_nodes[0].inbound_layers.name == "act1"
    # the same function as the model whose branch adds zero
    zeroed = keras.models.clone_model(model)
    zeroed.set_weights(model.get_weights())
    bn = zeroed.get_layer("ir1_project_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([0 * gamma, 0 * beta, mean, var])
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(smaller.predict(x, verbose=0), zeroed.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(TfoptError, match=r"cannot remove ir2_expand through ir2_project_bn: it maps "
                                         r"8×8×8 to 4×4×12"):
        remove_layers(model, ["ir2"])


def test_residual_blocks_of_keras_applications_are_named_by_their_prefix():
    from tfopt.surgery.remove import residual_blocks

    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None)
    blocks = residual_blocks(model)
    assert blocks == ["block_2", "block_4", "block_5", "block_7", "block_8", "block_9", "block_11", "block_12",
                      "block_14", "block_15"]
    smaller, removed = remove_layers(model, ["block_5"])
    assert removed == [layer.name for layer in model.layers if layer.name.startswith("block_5_")]
    assert smaller.get_layer("block_6_expand").inbound_nodes[0].inbound_layers.name == "block_4_add"


def test_analyze_with_budget_picks_and_writes(tmp_path):
    from tests.conftest import tiny_recipe_dict
    from tfopt.steps.remove import analyze_removals, run_remove
    from tfopt.steps.source import load_source
    from tfopt.config.recipe import validate
    from tfopt.training.run import fit

    data = tiny_recipe_dict(**{"train.epochs": 2, "name": "res"})
    data["model"]["layers"] = [{"type": "conv2d", "filters": 4, "batch_norm": True, "activation": "relu"},
                               {"type": "residual", "filters": 4}, {"type": "global_avg_pool"},
                               {"type": "dense", "units": 4, "activation": "softmax"}]
    run = fit(validate(data), output=tmp_path, log=lambda *_: None).run_dir
    lines = []
    path, metrics = run_remove(load_source(run), {"analyze": True, "max_drop": 100.0, "epochs": 0},
                                        output=tmp_path, log=lines.append)
    assert "within a 100-point budget: remove block1" in lines
    assert metrics["requested"] == ["block1"] and metrics["macs"] < metrics["macs_before"]
    assert (path / "analysis.csv").read_text().splitlines()[0] == \
        "candidate,layers,accuracy,drop_points,params_saved,macs_saved"
    assert (path / "analysis.png").stat().st_size > 0
    assert not any(layer.name.startswith("block1") for layer in keras.models.load_model(path / "model.keras").layers)
    from tfopt.data.pipeline import load_splits

    src = load_source(run)
    splits = load_splits(src.recipe.data, src.recipe.seed)
    plain = analyze_removals(src.model, splits, lambda *_: None)
    tuned = analyze_removals(src.model, splits, lambda *_: None, src.recipe, epochs=2)
    assert [r["candidate"] for r in tuned] == ["block1"] and 0 <= tuned[0]["accuracy"] <= 1
    assert tuned[0]["macs_saved"] == plain[0]["macs_saved"]
    assert src.model.get_weights()[0].tolist() == load_source(run).model.get_weights()[0].tolist()


@pytest.mark.parametrize("name", ["quickstart", "lenet5_mnist", "vgg_fashion", "resnet_small", "separable_digits"])
def test_surgery_on_every_bundled_architecture(name):
    from tfopt.config.recipe import load_recipe

    r = load_recipe(f"recipes/{name}.yaml")
    model = build_model(r.model, r.input_shape())
    randomize_bn(model, 7)
    x = np.random.default_rng(7).normal(size=(3, *r.input_shape())).astype("float32")
    ref = model.predict(x, verbose=0)
    folded, _ = fold_batchnorm(model)
    np.testing.assert_allclose(folded.predict(x, verbose=0), ref, rtol=1e-4, atol=1e-6)
    pruned, report = prune_channels(model, ratio=0.5)
    plan = plan_channels(model, ratio=0.5)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked_copy(model, plan["keep"]).predict(x, verbose=0),
                               rtol=1e-4, atol=1e-6)
    assert model_stats(pruned)["macs"] < 0.5 * model_stats(model)["macs"]
    assert set(report["protected"]) == {model.layers[-1].name}  # only the output layer stays whole


# ---- channel tracing through transparent layers and concatenations ---------------------------

def _check_masked(model, ratio=0.5, seed=0, shape=None):
    """Prune, compare with the masked original, reload; returns the report."""
    randomize_bn(model, seed)
    pruned, report = prune_channels(model, ratio=ratio)
    plan = plan_channels(model, ratio=ratio)
    x = np.random.default_rng(seed).normal(size=(3, *(shape or model.input_shape[1:]))).astype("float32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked_copy(model, plan["keep"]).predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)
    assert model_stats(pruned)["macs"] < model_stats(model)["macs"]
    return pruned, report


def test_transparent_layers_are_traced_through():
    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(6.0, name="relu")(x)
    x = L.ZeroPadding2D(1, name="pad")(x)
    x = L.DepthwiseConv2D(3, name="dw")(x)
    x = L.Rescaling(0.5, offset=1.0, name="scale")(x)
    x = L.UpSampling2D(name="up")(x)
    x = L.Cropping2D(2, name="crop")(x)
    x = L.Conv2D(6, 1, name="c2")(x)
    g = L.GlobalAveragePooling2D(name="gap")(x)
    g = L.Reshape((1, 1, 6), name="to_map")(g)  # keeps the channel axis: traced, its shape follows
    y = L.Conv2D(4, 1, name="c3")(g)
    y = L.Reshape((2, 2), name="fold")(y)  # changes the channel axis: c3 stays whole
    model = keras.Model(inp, L.Flatten(name="flat")(y))
    pruned, report = _check_masked(model)
    assert report["kept"] == {"c1": 4, "c2": 3}
    assert report["protected"] == {"c3": "its channels reach fold (Reshape)"}
    assert pruned.get_layer("to_map").target_shape == (1, 1, 3)
    assert pruned.get_layer("dw").get_weights()[0].shape == (3, 3, 4, 1)


def test_concatenations_are_pruned_with_the_concatenated_index_mapping(tmp_path):
    L = keras.layers
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(6, 3, padding="same", name="a")(inp)
    b = L.ReLU(name="b_relu")(L.Conv2D(4, 3, padding="same", name="b")(inp))
    cat = L.Concatenate(name="cat")([a, inp, b])  # the raw input's 2 channels stay
    x = L.BatchNormalization(name="cat_bn")(cat)
    s = L.Conv2D(5, 1, name="sink")(x)
    f = L.Dense(3, name="head")(L.Flatten(name="flat")(x))
    model = keras.Model(inp, [s, f])
    model.get_layer("a").set_weights([np.arange(6, dtype="float32")[None, None, None, :] * np.ones((3, 3, 2, 6)),
                                      np.zeros(6, "float32")])
    plan = plan_channels(model, ratio=0.5)
    assert plan["keep"]["a"].tolist() == [3, 4, 5]  # l1: the largest filters
    concat = plan["groups"].concats["cat"]
    assert [n for _, n in concat.parts] == [6, 2, 4]
    kept = concat.kept(plan["keep"]).tolist()
    assert kept == [3, 4, 5, 6, 7] + [8 + i for i in plan["keep"]["b"]]
    randomize_bn(model, 1)
    pruned, report = prune_channels(model, ratio=0.5)
    x = np.random.default_rng(1).normal(size=(3, 6, 6, 2)).astype("float32")
    masked = masked_copy(model, plan["keep"])
    for got, ref in zip(pruned.predict(x, verbose=0), masked.predict(x, verbose=0)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert report["kept"] == {"a": 3, "b": 2}
    assert pruned.get_layer("sink").get_weights()[0].shape == (1, 1, 7, 5)
    assert pruned.get_layer("head").get_weights()[0].shape == (36 * 7, 3)
    assert pruned.get_layer("cat_bn").get_weights()[0].shape == (7,)
    pruned.save(tmp_path / "p.keras")
    again = keras.models.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0)[0], pruned.predict(x, verbose=0)[0], rtol=1e-6)


def test_a_concatenation_that_reaches_the_output_protects_its_inputs():
    L = keras.layers
    inp = keras.Input((4, 4, 1))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    model = keras.Model(inp, L.Concatenate(name="cat")([a, b]))
    _, report = prune_channels(model, ratio=0.5)
    why = "its channels reach cat whose output cannot be pruned (cat is a model output)"
    assert report["protected"] == {"a": why, "b": why}



def test_a_layer_feeding_an_output_layer_keeps_at_least_the_output_layers_width():
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    model = keras.Model(inp, L.Conv2D(6, 1, activation="softmax", name="seg")(x))
    pruned, report = _check_masked(model)
    assert report["kept"] == {"c1": 4}
    assert report["protected"]["c2"] == ("it feeds the output layer seg, of 6 channels: fewer channels here would "
                                         "narrow what the output is computed from below its own width")
    assert pruned.get_layer("c2").filters == 4

    dense = keras.Sequential([keras.Input((16,)), L.Dense(12, activation="relu", name="d1"),
                              L.Dense(8, activation="softmax", name="out")])
    _, report = _check_masked(dense)
    assert report["kept"] == {"d1": 8}
    assert report["limited"] == {"d1": "keeps 8 of 12 channels: it feeds the output layer out, of 8 channels"}
    _, report = prune_channels(dense, per_layer={"d1": 0.5})  # a ratio of its own is taken as given
    assert report["kept"] == {"d1": 6} and report["limited"] == {}


def test_one_dimensional_convolutions_are_pruned_and_folded():
    L = keras.layers
    model = keras.Sequential([keras.Input((24, 3)), L.Conv1D(8, 5, name="c1"), L.BatchNormalization(name="bn1"),
                              L.ReLU(name="r1"), L.MaxPooling1D(2, name="pool"), L.DepthwiseConv1D(3, name="dw"),
                              L.Conv1D(6, 3, padding="same", name="c2"), L.Flatten(name="flat"),
                              L.Dense(3, name="head")])
    pruned, report = _check_masked(model)
    assert isinstance(pruned, keras.Sequential)  # a Sequential stays a Sequential
    assert report["kept"] == {"c1": 4, "c2": 3}
    assert pruned.get_layer("dw").get_weights()[0].shape == (3, 4, 1)
    assert pruned.get_layer("head").get_weights()[0].shape == (8 * 3, 3)
    stats = model_stats(pruned)
    assert stats["macs"] == 20 * 5 * 3 * 4 + 8 * 3 * 4 + 8 * 3 * 4 * 3 + 24 * 3
    folded, fold_report = fold_batchnorm(model)
    x = np.random.default_rng(0).normal(size=(3, 24, 3)).astype("float32")
    assert fold_report["folded"] == [("bn1", "c1")]
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_channels_are_followed_through_tensorflow_op_layers():
    import tensorflow as tf

    L = keras.layers
    inp = keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, padding="same", name="c1")(inp))
    x = x * tf.nn.relu6(x + 3.0) / 6.0  # hard-swish as TensorFlow ops, as in tf_keras's MobileNetV3
    y = L.Conv2D(6, 1, name="c2")(x)
    z = L.Conv2D(4, 1, name="c3")(y + tf.constant(np.arange(6, dtype="float32")))  # a per-channel constant
    model = keras.Model(inp, L.Flatten(name="flat")(z))
    pruned, report = _check_masked(model)
    assert report["kept"] == {"c1": 4}
    assert report["protected"]["c2"] == "its channels reach tf.__operators__.add_1 (TFOpLambda)"
    assert pruned.get_layer("c2").get_weights()[0].shape == (1, 1, 4, 6)
    folded, fold_report = fold_batchnorm(model)
    assert fold_report["folded"] == [("bn", "c1")]


def test_concatenations_of_concatenations_are_pruned():
    L = keras.layers
    inp = keras.Input((6, 6, 2))
    x = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    for i in range(3):  # DenseNet: each block concatenates its new channels onto everything before
        h = L.Conv2D(4, 1, name=f"grow{i}")(L.ReLU(name=f"relu{i}")(L.BatchNormalization(name=f"bn{i}")(x)))
        x = L.Concatenate(name=f"cat{i}")([x, h])
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(x))
    pruned, report = _check_masked(keras.Model(inp, out))
    assert report["kept"] == {"stem": 3, "grow0": 2, "grow1": 2, "grow2": 2}
    assert pruned.get_layer("grow2").get_weights()[0].shape == (1, 1, 3 + 2 + 2, 2)
    assert pruned.get_layer("head").get_weights()[0].shape == (3 + 2 * 3, 3)
    assert set(report["protected"]) == {"head"}




@pytest.mark.parametrize("rnn, gates", [("LSTM", 4), ("GRU", 3), ("SimpleRNN", 1)])
def test_recurrent_units_are_pruned_with_their_gates_and_recurrent_rows(rnn, gates):
    L = keras.layers
    inp = keras.Input((7, 5))
    x = L.Conv1D(6, 3, padding="same", name="conv")(inp)
    x = getattr(L, rnn)(8, return_sequences=True, name="r1")(x)
    x = getattr(L, rnn)(6, name="r2")(x)
    pruned, report = _check_masked(keras.Model(inp, L.Dense(3, name="head")(x)))
    assert report["kept"] == {"conv": 3, "r1": 4, "r2": 3}
    kernel, recurrent = pruned.get_layer("r1").get_weights()[:2]
    assert kernel.shape == (3, gates * 4) and recurrent.shape == (4, gates * 4)
    assert pruned.get_layer("head").get_weights()[0].shape == (3, 3)
    assert model_stats(pruned)["macs"] == 7 * 5 * 3 * 3 + 7 * (3 + 4) * gates * 4 + 7 * (4 + 3) * gates * 3 + 3 * 3



def test_attention_loses_whole_heads_and_the_feed_forward_its_units():
    L = keras.layers
    inp = keras.Input((6, 8))
    att = L.MultiHeadAttention(num_heads=4, key_dim=3, name="mha")(inp, inp)
    x = L.LayerNormalization(name="ln1")(L.Add(name="add1")([inp, att]))
    f = L.Dense(8, name="ffn2")(L.Dense(16, activation="relu", name="ffn1")(x))
    x = L.LayerNormalization(name="ln2")(L.Add(name="add2")([x, f]))
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="gap")(x)))
    mha, scale = model.get_layer("mha"), 1 + np.arange(4, dtype="float32")
    weights = mha.get_weights()  # query, key and value kernels (8, heads, 3); output kernel (heads, 3, 8)
    for i in (0, 2, 4):
        weights[i] = np.abs(weights[i]) * scale[None, :, None]  # head h's weights grow with h
    weights[6] = np.abs(weights[6]) * scale[:, None, None]
    mha.set_weights(weights)
    pruned, report = _check_masked(model)
    assert report["kept"] == {"ffn1": 8, "mha": 2}
    assert plan_channels(model, ratio=0.5)["keep"]["mha"].tolist() == [2, 3]  # l1: the largest heads
    assert report["protected"] == {"ffn2": "its channels reach ln2 (LayerNormalization)",
                                   "head": "head is a model output"}
    shapes = [tuple(w.shape) for w in pruned.get_layer("mha").weights]
    assert shapes == [(8, 2, 3), (2, 3)] * 3 + [(2, 3, 8), (8,)]


def test_transposed_convolutions_lose_filters_and_input_channels():
    L = keras.layers
    inp = keras.Input((8, 8, 1))
    skip = L.Conv2D(6, 3, padding="same", activation="relu", name="enc")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="mid")(L.MaxPooling2D(name="pool")(skip))
    up = L.Conv2DTranspose(6, 2, strides=2, name="up")(x)
    up = L.BatchNormalization(name="up_bn")(up)
    x = L.Concatenate(name="cat")([up, skip])
    out = L.Conv2D(2, 1, activation="softmax", name="seg")(L.Conv2D(4, 3, padding="same", name="dec")(x))
    pruned, report = _check_masked(keras.Model(inp, out))
    assert report["kept"] == {"enc": 3, "mid": 4, "up": 3, "dec": 2}
    assert [tuple(w.shape) for w in pruned.get_layer("up").weights] == [(2, 2, 3, 4), (3,)]
    assert [tuple(w.shape) for w in pruned.get_layer("dec").weights] == [(3, 3, 6, 2), (2,)]


def test_einsum_dense_layers_lose_channels_like_dense_ones():
    L = keras.layers
    inp = keras.Input((6, 4))  # a patch embedding whose bias is a learned position embedding (6 × 8)
    x = L.EinsumDense("abc,cd->abd", output_shape=(6, 8), bias_axes="bd", activation="relu", name="embed")(inp)
    x = L.Dense(5, activation="relu", name="ffn")(x)
    x = L.EinsumDense("...b,bc->...c", output_shape=4, bias_axes="c", name="proj")(x)
    x = L.EinsumDense("abc,cd->abd", output_shape=(6, 4), name="mix")(x)  # no bias
    odd = L.EinsumDense("abc,bd->acd", output_shape=(4, 3), name="odd")(x)  # sums over positions: blocks
    model = keras.Model(inp, L.Dense(3, name="head")(L.Flatten(name="flat")(odd)))
    pruned, report = _check_masked(model)
    assert report["kept"] == {"embed": 4, "ffn": 2, "proj": 2}
    assert report["protected"]["mix"] == "its channels reach odd (EinsumDense)"
    assert [tuple(w.shape) for w in pruned.get_layer("embed").weights] == [(4, 4), (6, 4)]
    assert [tuple(w.shape) for w in pruned.get_layer("proj").weights] == [(2, 2), (2,)]
    assert [tuple(w.shape) for w in pruned.get_layer("mix").weights] == [(2, 4)]
    assert layer_kinds.macs(model.get_layer("embed")) == 6 * 4 * 8


def test_both_directions_of_a_bidirectional_layer_lose_half_their_units():
    L = keras.layers
    inp = keras.Input((7, 5))
    x = L.Bidirectional(L.LSTM(6, return_sequences=True), name="bi1")(L.Conv1D(6, 3, name="conv")(inp))
    x = L.Bidirectional(L.GRU(4), name="bi2")(x)
    pruned, report = _check_masked(keras.Model(inp, L.Dense(3, name="head")(x)))
    assert report["kept"] == {"conv": 3, "bi1": 6, "bi2": 4}
    bi1 = pruned.get_layer("bi1")
    assert (bi1.forward_layer.units, bi1.backward_layer.units) == (3, 3)
    assert [tuple(w.shape) for w in bi1.weights] == [(3, 12), (3, 12), (12,)] * 2
    assert pruned.get_layer("head").get_weights()[0].shape == (4, 3)

def test_an_embedding_loses_dimensions_and_its_readers_their_rows():
    L = keras.layers
    inp = keras.Input((10,), dtype="int32")
    x = L.GlobalAveragePooling1D(name="gap")(L.Embedding(40, 8, name="emb")(inp))
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    pruned, report = prune_channels(model, ratio=0.5)
    plan = plan_channels(model, ratio=0.5)
    x = np.random.default_rng(0).integers(0, 40, size=(4, 10)).astype("int32")
    np.testing.assert_allclose(pruned.predict(x, verbose=0), masked_copy(model, plan["keep"]).predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
    assert report["kept"] == {"emb": 4} and pruned.get_layer("emb").get_weights()[0].shape == (40, 4)

def test_a_nested_model_is_pruned_and_folded_in_the_outer_graph():
    import tfopt
    from tfopt.surgery.graph import inline_nested

    L = keras.layers
    stem = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(8, 3, padding="same", name="c1"),
                             L.BatchNormalization(name="bn1"), L.ReLU(name="r1")], name="stem")
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="c2")(stem(inp))
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(x)))
    randomize_bn(stem, 2)
    flat = inline_nested(model)
    assert [layer.name for layer in flat.layers[1:]] == ["c1", "bn1", "r1", "c2", "gap", "head"]
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(flat.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    _, report = _check_masked(flat)
    assert report["kept"] == {"c1": 4, "c2": 3}
    smaller = tfopt.prune_channels(model, epochs=0)  # the public function takes the nested model
    assert smaller.count_params() < model.count_params()
    folded = tfopt.fold_batchnorm(model)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)

@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0",
                                  "ResNet50", "DenseNet121", "ConvNeXtTiny"])
def test_tf_keras_applications_have_their_groups_cut(name):
    """tf_keras's own applications (TensorFlow-op layers in MobileNetV3's hard-swish and ConvNeXt's
    residuals, EfficientNet's Normalization, DenseNet's chained concatenations, ConvNeXt's nested
    stem, grouped convs and layer scales): folded, pruned at 0.5 with the masked-original check.
    Every group but the classifier is cut, except in ConvNeXt, whose residual streams are
    normalized by LayerNormalization across their channels and are kept whole, named."""
    from tfopt.interop import max_relative_difference
    from tfopt.surgery.graph import inline_nested

    kw = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(keras.applications, name)(input_shape=(64, 64, 3), weights=None, classifier_activation=None,
                                              **kw)
    model = inline_nested(model)
    x = np.random.default_rng(3).uniform(0, 255, size=(4, 64, 64, 3)).astype("float32")
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn in bns:
        bn.momentum = 0.99
    folded, fold_report = fold_batchnorm(model)
    assert len(fold_report["folded"]) + len(fold_report["kept"]) == len(bns)
    assert {why.split()[1] for _, why in fold_report["kept"]} <= {"Concatenate", "MaxPooling2D", "AveragePooling2D"}
    assert max_relative_difference(folded.predict(x, verbose=0), model.predict(x, verbose=0)) <= 3e-4
    plan = plan_channels(folded, ratio=0.5)
    pruned, report = prune_channels(folded, ratio=0.5)
    ref = masked_copy(folded, plan["keep"]).predict(x, verbose=0)
    assert max_relative_difference(pruned.predict(x, verbose=0), ref) <= 1e-4
    outputs = [n for n, why in report["protected"].items() if why == f"{folded.layers[-1].name} is a model output"]
    reasons = {why for n, why in report["protected"].items() if n not in outputs}
    assert len(outputs) == 1  # the classifier
    if name == "ConvNeXtTiny":
        assert len(plan["keep"]) == 18 and len(plan["groups"]) == 24  # the 18 blocks' inner (4x) groups
        assert all(why.endswith("(LayerNormalization)") for why in reasons), reasons
        assert model_stats(pruned)["macs"] < 0.6 * model_stats(folded)["macs"]
    else:
        assert len(plan["keep"]) == len(plan["groups"]) - 1 and not reasons
        # the layer the 1000-class classifier reads keeps 1000 channels where it has more (1280, 1024): MobileNetV2
        # at alpha 0.35 spends a fifth of its MACs in that classifier
        assert len(report["limited"]) <= 1
        assert all(why.startswith("keeps 1000 of ") for why in report["limited"].values()), report["limited"]
        assert model_stats(pruned)["macs"] < (0.45 if report["limited"] else 0.4) * model_stats(folded)["macs"]


@pytest.mark.slow
@pytest.mark.parametrize("name, cut, groups", [("MobileNetV3Large", 30, 31), ("EfficientNetB0", 40, 41),
                                               ("DenseNet121", 120, 121), ("ConvNeXtTiny", 18, 24)])
def test_keras3_applications_have_their_groups_cut(name, cut, groups):
    """Keras 3's applications through the door of the graph path (EfficientNet's Normalization and
    ConvNeXt's layer scales convert), pruned at 0.5 with the masked-original check, and back."""
    import keras as keras3

    from tfopt.interop import from_tf_keras, max_relative_difference
    from tfopt.kinds import enter

    k3 = getattr(keras3.applications, name)(input_shape=(64, 64, 3), weights=None, classifier_activation=None)
    kind, work = enter(k3)
    plan = plan_channels(work, ratio=0.5)
    pruned, report = prune_channels(work, ratio=0.5)
    x = np.random.default_rng(4).uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    ref = masked_copy(work, plan["keep"]).predict(x, verbose=0)
    assert max_relative_difference(pruned.predict(x, verbose=0), ref) <= 1e-4
    assert (len(plan["keep"]), len(plan["groups"])) == (cut, groups)
    back = from_tf_keras(pruned, kind)
    assert type(back).__module__.startswith("keras")
    assert max_relative_difference(np.asarray(back(x)), pruned.predict(x, verbose=0)) <= 1e-5

@pytest.mark.slow
def test_small_keras3_mobilenetv2_prunes_its_expand_layers():
    import keras as keras3

    from tfopt.interop import from_tf_keras, max_relative_difference, to_tf_keras

    k3 = keras3.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3), weights=None,
                                         classifier_activation=None)
    model = to_tf_keras(k3)
    pruned, report = _check_masked(model)
    expands = [n for n in report["channels_before"] if n.endswith("_expand")]
    assert len(expands) == 16 and all(report["kept"][n] == report["channels_before"][n] // 2 for n in expands)
    assert report["protected"] == {"predictions": "predictions is a model output"}
    assert model_stats(pruned)["macs"] < 0.4 * model_stats(model)["macs"]
    back = from_tf_keras(pruned, "keras3")
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 96, 96, 3)).astype("float32")
    assert max_relative_difference(np.asarray(back(x)), pruned.predict(x, verbose=0)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "MobileNetV3Small", "ResNet50"])
def test_keras_applications_fold_prune_and_int8_in_both_kinds(name):
    import keras as keras3

    from tfopt import tflite
    from tfopt.interop import from_tf_keras, max_relative_difference, to_tf_keras

    kw = {"alpha": 0.35} if name == "MobileNetV2" else {}
    shape = (64, 64, 3) if name == "ResNet50" else (96, 96, 3)
    k3 = getattr(keras3.applications, name)(input_shape=shape, weights=None, classifier_activation=None, **kw)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(8, *shape)).astype("float32")
    # BN statistics of this data, as after training: a default-initialized net's outputs vanish (~1e-9)
    bns = [layer for layer in k3.layers if type(layer).__name__ == "BatchNormalization"]
    for bn in bns:
        bn.momentum = 0.0
    k3(x, training=True)
    for bn in bns:
        bn.momentum = 0.99
    for kind in ("keras3", "tf_keras"):
        model = to_tf_keras(k3)
        if kind == "tf_keras":  # a tf_keras user's model: saved and reloaded as tf_keras
            model = keras.Model.from_config(model.get_config())
            model.set_weights(to_tf_keras(k3).get_weights())
        folded, fold_report = fold_batchnorm(model)
        # MobileNetV3Small moves its outputs by about 1e-5 when an input moves by one float32 ulp: folding
        # (a product of weights, rounded) stays within a few times 1e-4 of it
        assert fold_report["folded"] and max_relative_difference(folded.predict(x, verbose=0),
                                                                 model.predict(x, verbose=0)) <= 3e-4
        plan = plan_channels(folded, ratio=0.5)
        pruned, report = prune_channels(folded, ratio=0.5)
        ref = masked_copy(folded, plan["keep"]).predict(x, verbose=0)
        assert max_relative_difference(pruned.predict(x, verbose=0), ref) <= 1e-4  # before any fine-tuning
        assert set(report["protected"]) == {folded.layers[-1].name if name != "MobileNetV3Small" else "logits"}
        assert model_stats(pruned)["macs"] < 0.5 * model_stats(folded)["macs"]
        out = from_tf_keras(pruned, kind)
        assert (type(out).__module__.split(".")[0]) == ("keras" if kind == "keras3" else "tf_keras")
        blob = tflite.convert(to_tf_keras(out), "int8", representative=x)
        got = tflite.predict(blob, x)
        want = np.asarray(out(x, training=False))
        assert got.shape == want.shape
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.8  # int8 of an untrained net


def test_one_group_cuts_reuse_one_copy_and_equal_each_smaller_model():
    from tfopt.surgery.channels import one_group_cuts, trace

    model = build_model(random_architecture(3), (8, 8, 3))
    randomize_bn(model, 3)
    x = np.random.default_rng(3).normal(size=(5, 8, 8, 3)).astype("float32")
    before = [w.copy() for w in model.get_weights()]
    seen, copies = [], set()
    for name, ratio, cut in one_group_cuts(model, (0.25, 0.75)):
        smaller, _ = prune_channels(model, ratio=0.0, per_layer={name: ratio})
        np.testing.assert_allclose(cut.predict(x, verbose=0), smaller.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
        seen.append((name, ratio))
        copies.add(id(cut))
    groups = [n for n, g in trace(model).items() if not g.blocked]
    assert seen == [(n, r) for n in groups for r in (0.25, 0.75)] and len(groups) >= 2
    assert len(copies) == 1  # one copy for the whole scan
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
