"""Downsampling earlier: a convolution's stride multiplied, checked by shapes, MACs and numbers."""

import re

import numpy as np
import pytest
import tf_keras as keras

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.errors import TfoptError
from tfopt.models.stats import model_stats
from tfopt.steps import STEPS
from tfopt.surgery.stride import downsample_points, downsampled, full_resolution_convs

L = keras.layers


def net(flatten=False):
    inp = keras.Input((12, 12, 1))
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="stem")(inp)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Add(name="add")([x, L.Conv2D(6, 1, name="pw")(y)])
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="down")(x)
    x = L.Flatten()(x) if flatten else L.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, L.Dense(4, activation="softmax", name="head")(x))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5 for w in model.get_weights()])
    return model


def images(n=16):
    return np.random.default_rng(1).random((n, 12, 12, 1), dtype=np.float32)


def test_the_convs_at_the_inputs_size_are_found_in_graph_order():
    assert full_resolution_convs(net()) == ["stem", "dw", "pw"]


def test_the_stem_at_stride_2_computes_every_other_position_of_the_original():
    m = net()
    new = downsampled(m, "stem")
    assert new.get_layer("stem").strides == (2, 2) and m.get_layer("stem").strides == (1, 1)
    assert all(np.array_equal(a, b) for a, b in zip(new.get_weights(), m.get_weights()))
    assert new.get_layer("down").output_shape == (None, 3, 3, 8) and new.output_shape == m.output_shape
    x = images()
    before = keras.Model(m.input, m.get_layer("stem").output).predict(x, verbose=0)
    after = keras.Model(new.input, new.get_layer("stem").output).predict(x, verbose=0)
    # TensorFlow pads "same" at stride 2 on an even size at the bottom and right only
    np.testing.assert_allclose(after, before[:, 1::2, 1::2, :], rtol=1e-5, atol=1e-6)
    macs = {k: model_stats(v)["macs"] for k, v in (("before", m), ("after", new))}
    assert macs["after"] < 0.3 * macs["before"]


def test_a_graph_that_cannot_take_smaller_maps_is_refused_naming_the_layer():
    with pytest.raises(TfoptError, match=r"downsample: with 'stem' at stride 2, layer 'head' cannot take the smaller"):
        downsampled(net(flatten=True), "stem")
    with pytest.raises(TfoptError, match=r"downsample: 'add' \(Add\) is not a Conv2D, DepthwiseConv2D or "):
        downsampled(net(), "add")
    with pytest.raises(TfoptError, match=r"downsample: the model has no layer 'nope'"):
        downsampled(net(), "nope")
    # a dense prediction: the output would shrink
    inp = keras.Input((12, 12, 1))
    seg = keras.Model(inp, L.Conv2D(3, 1, name="logits")(L.Conv2D(4, 3, padding="same", name="c")(inp)))
    with pytest.raises(TfoptError, match=r"the output 'logits' would change shape from \(None, 12, 12, 3\) to "
                                         r"\(None, 6, 6, 3\)"):
        downsampled(seg, "c")
    # a conv whose map becomes too small: Keras' own reason, without its header
    inp = keras.Input((6, 6, 1))
    x = L.Conv2D(4, 3, padding="same", name="c")(inp)
    tiny = keras.Model(inp, L.GlobalAveragePooling2D()(L.Conv2D(4, 5, name="valid5")(x)))
    with pytest.raises(TfoptError) as info:
        downsampled(tiny, "c")
    assert "layer 'valid5' cannot take the smaller maps" in str(info.value)
    assert "Exception encountered" not in str(info.value)
    # inputs of any size: nothing to downsample, and a named layer is refused
    inp = keras.Input((None, None, 1))
    anysize = keras.Model(inp, L.GlobalAveragePooling2D()(L.Conv2D(4, 3, padding="same", name="c")(inp)))
    assert full_resolution_convs(anysize) == []
    with pytest.raises(TfoptError, match="takes inputs of any height and width"):
        downsampled(anysize, "c")


def test_the_step_downsamples_the_first_conv_and_fine_tunes():
    m = net()
    x = images(64)
    y = np.arange(64) % 4
    lines = []
    new, report = STEPS["downsample"].run(m, (x, y), {}, FineTuneSettings(epochs=1, batch_size=32), log=lines.append)
    assert report["layer"] == "stem" and report["strides"] == [2, 2]
    assert report["macs_after"] == model_stats(new)["macs"] < report["macs_before"] == model_stats(m)["macs"]
    assert len(report["history"]) == 1 and m.get_layer("stem").strides == (1, 1)
    assert lines[0].startswith(f"stem at stride 2: {report['macs_before']:,} -> {report['macs_after']:,} MACs")
    with pytest.raises(TfoptError, match="downsample: 2 fine-tune epoch"):
        STEPS["downsample"].run(m, None, {}, FineTuneSettings(epochs=2))


class _Search:
    """What the downsample stage reads of a running search."""

    def __init__(self, model, start):
        from tfopt.search.candidates import Standings

        self.model, self.lines, self.planned = model, [], []
        self.standings = Standings("latency", 0.5)
        self.standings.base_chain = lambda: start

    def keras_model(self, chain):
        return self.model

    def retrain_rate(self):
        return {"lr": 3e-3}

    def log(self, line):
        self.lines.append(line)

    def stage(self, name, ladders):
        self.planned.append((name, ladders))
        return True


def test_the_search_downsamples_the_best_chain_and_the_input_model_at_the_retraining_rate():
    from tfopt.search.candidates import ChainStep, chain_key
    from tfopt.search.stages import PLANS, STAGES

    assert PLANS["latency"].index("downsample") > PLANS["latency"].index("remove")
    assert "downsample" in PLANS["macs"] and "downsample" not in PLANS["size"]
    start = [ChainStep("structured", {"ratio": 0.0, "per_layer": {"stem": 0.5}}, label=1)]
    search = _Search(net(), start)
    assert STAGES["downsample"](search, {}) is True
    [(name, ladders)] = search.planned
    assert name == "downsample" and [chain_key(ladder[0]) for ladder in ladders] == ["ch1+ds-stem", "ds-stem"]
    assert all(ladder[0][-1].fine_tune == {"lr": 3e-3} for ladder in ladders)
    # a graph that cannot take smaller maps: nothing planned, and the log says why
    search = _Search(net(flatten=True), [])
    assert STAGES["downsample"](search, {}) is True and search.planned == []
    assert search.lines == ["downsample: with 'stem' at stride 2, layer 'head' cannot take the "
                            "smaller maps (Layer head weight shape (72, 4) is not compatible with provided weight "
                            "shape (288, 4).)"]


def stages_net():
    """Full resolution 16×16: stem, dw1 (no shortcut), pw1 (1×1); 8×8: a residual dw, then conv8."""
    inp = keras.Input((16, 16, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw1")(x)
    x = L.Conv2D(12, 1, name="pw1")(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", name="down")(x)
    x = L.Add(name="res")([x, L.DepthwiseConv2D(3, padding="same", name="dw_res")(x)])
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv8")(x)
    return keras.Model(inp, L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(x)))


def test_the_downsample_points_are_a_late_conv_then_the_last_and_first_at_full_size_mildest_first():
    m = stages_net()
    points, refusals = downsample_points(m)
    assert points == ["conv8", "dw1", "stem"]
    assert refusals == ["downsample: with 'dw_res' at stride 2, layer 'res' cannot take the smaller maps "
                        "(Inputs have incompatible shapes. Received shapes (8, 8, 12) and (4, 4, 12))"]
    macs = [model_stats(downsampled(m, p))["macs"] for p in points]
    assert model_stats(m)["macs"] > macs[0] > macs[1] > macs[2]
    # maps too small for a late point, and one conv at full size: that conv alone
    inp = keras.Input((6, 6, 1))
    x = L.Conv2D(4, 3, padding="same", name="c")(inp)
    x = L.Conv2D(4, 3, strides=2, padding="same", name="s")(x)
    x = L.Conv2D(4, 3, padding="same", name="c3")(x)
    small = keras.Model(inp, L.GlobalAveragePooling2D()(x))
    assert downsample_points(small) == (["c"], [])


@pytest.mark.slow
def test_a_macs_search_measures_the_downsampled_chains(tmp_path):
    import csv

    from sklearn.datasets import load_digits

    from tfopt.search.engine import optimize

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inp)
    h = L.Conv2D(24, 3, padding="same", activation="relu", name="conv2")(h)
    m = keras.Model(inp, L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(h)))
    m.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    m.fit(x[:1300], y[:1300], epochs=15, batch_size=32, verbose=0)
    optimize(m, (x[:1300], y[:1300]), validation_data=(x[1300:], y[1300:]), max_drop=50.0, target="macs",
             out=tmp_path / "s", epochs=1, max_candidates=12, levels=(10.0,), log=lambda *_: None)
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "s" / "candidates.csv"))}
    down = [r for r in rows.values() if r["stage"] == "downsample"]
    assert {re.search(r"ds-[a-z0-9]+", r["id"]).group(0) for r in down} == {"ds-conv2", "ds-stem"}
    assert not any(r["error"] for r in down)
    base = rows["base+int8"]
    assert all(int(r["macs"]) < 0.3 * int(base["macs"]) for r in down if r["id"].startswith("ds-stem"))
