"""tfopt optimize on digits-sized models: the budget on the selection split, the files and events
of a search, resume, the stages' plans; TFLite sizes and latency."""

import csv
import json

import numpy as np
import pytest

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.registry import Config
from tfopt.distill import TeacherTargets
from tfopt.errors import TfoptError
from tfopt.search import extend, stages
from tfopt.search.candidates import COLUMNS, Candidate, ChainStep, Standings, chain_key
from tfopt.search.engine import PROBE_RATES, chosen_rate, optimize, parse_budget, probe_rates
from tfopt.search.inputs import resolution_note
from tfopt.search.inputs import weights_digest
from tfopt.search.report import paired_drop, pareto_front, recipe_steps
from tfopt.steps import STEPS, register


def quiet(*_):
    pass


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:1300], y[:1300]), (x[1300:1550], y[1300:1550]), (x[1550:], y[1550:])


def _model(train):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(64, activation="relu", name="fc1"),
        keras.layers.Dense(10, activation="softmax", name="fc2"),
    ])
    m.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    m.fit(*train, epochs=12, batch_size=32, verbose=0)
    return m


def _rows(out):
    return list(csv.DictReader(open(out / "candidates.csv")))


def _of(events, kind):
    return [e for e in events if e["event"] == kind]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    train, sel, test = _digits()
    model = _model(train)
    out = tmp_path_factory.mktemp("opt") / "search"
    events = []
    result = optimize(model, train, validation_data=sel, test_data=test, max_drop=2.0, target="size", out=out,
                      epochs=1, max_candidates=3, levels=(2.0, 10.0), log=quiet, on_event=events.append)
    return model, sel, result, out, events


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A conv, a pool and a dense head: no layer the remove stage could take out, a fast search
    for the MACs target with no sweep levels (its stages: int8, registered steps, QAT)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    train, sel, _ = _digits()
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                          keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax", name="head")])
    m.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    m.fit(*train, epochs=8, batch_size=32, verbose=0)
    return m, train, sel


def _copy(model):
    import tf_keras as keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


class ScaleConfig(Config):
    scale: float = 1.0


def scale_head(model, data, config, fine_tune, *, log=print, **inputs):
    """The last layer's weights times ``config.scale`` (0: every class equally likely)."""
    copy = _copy(model)
    head = copy.layers[-1]
    head.set_weights([w * config.scale for w in head.get_weights()])
    return copy, {"scale": config.scale}


SEEN = []


def record(model, data, config, fine_tune, *, log=print, **inputs):
    """The model unchanged; what the step was given is kept in ``SEEN``."""
    SEEN.append({"data": data, "config": config, "fine_tune": fine_tune, "inputs": inputs})
    return _copy(model), {}


@pytest.fixture
def head_step():
    register("scale_head", ScaleConfig, "scaled", scale_head, ladders={"macs": [{"scale": 1.0}, {"scale": 0.0},
                                                                                 {"scale": 0.5}]},
             token=lambda s: f"head{s['scale']:g}")
    yield STEPS["scale_head"]
    STEPS.unregister("scale_head")


@pytest.fixture
def record_step():
    SEEN.clear()
    register("record", None, "recorded", record, ladders={"macs": [{}]}, token=lambda s: "rec")
    yield SEEN
    STEPS.unregister("record")
    SEEN.clear()


# -- a size search, its files and events ----------------------------------------------------------


def test_chosen_model_meets_the_budget_on_the_selection_split(searched):
    from tfopt import tflite

    model, (xs, ys), result, out, _ = searched
    base = float(np.mean(model.predict(xs, verbose=0).argmax(1) == ys))
    acc = tflite.accuracy(result.tflite, xs, ys)
    assert acc >= base - 0.02 + 1e-9
    assert result.chosen["selection_accuracy"] == pytest.approx(acc)
    # the chosen file is smaller than the input as float32 TFLite, and on disk as written
    assert len(result.tflite) < len(tflite.convert(model, "float32"))
    assert (out / "chosen" / "model_int8.tflite").read_bytes() == result.tflite
    assert (out / "chosen" / "model.keras").is_file()
    assert 0 < result.test["chosen_test_accuracy"] <= 1
    # the drop comes with its paired standard error, counted from the images the two disagree on
    right = model.predict(xs, verbose=0).argmax(1) == ys, tflite.predict(result.tflite, xs).argmax(1) == ys
    paired = json.loads((out / "chosen" / "metrics.json").read_text())["selection_drop"]
    assert (paired["lost"], paired["won"]) == (int(np.sum(right[0] & ~right[1])), int(np.sum(~right[0] & right[1])))
    assert paired["drop_points"] == pytest.approx(result.chosen["drop_points"])
    report = (out / "report.md").read_text()
    assert f"± {paired['standard_error_points']:.2f}, the paired standard error" in report
    chosen_row = next(line for line in report.splitlines() if line.startswith(f"| {result.chosen['id']} |"))
    assert f"| {result.chosen['drop_points']:.2f} ± {paired['standard_error_points']:.2f} |" in chosen_row


def test_candidates_csv_files_and_events(searched):
    _, _, result, out, events = searched
    rows = _rows(out)
    assert list(rows[0]) == COLUMNS
    # the input as int8, then the channel sweep's levels (a second level equal to the first gives way to a
    # deeper cut, numbered on): the candidate limit of 3 stops the search
    assert [r["id"] for r in rows] == ["base+int8", "ch1+int8", "ch2+int8"]
    assert [r["stage"] for r in rows] == ["int8", "channels", "channels"]
    assert all(int(r["tflite_gzip_bytes"]) < int(r["tflite_raw_bytes"]) for r in rows if not r["error"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"## Chosen: `{result.chosen['id']}`" in (out / "report.md").read_text()
    finished = _of(events, "candidate")
    assert [(e["id"], e["stage"]) for e in finished] == [(r["id"], r["stage"]) for r in rows]
    assert [e["row"]["tflite_gzip_bytes"] for e in finished] == [int(r["tflite_gzip_bytes"]) for r in rows]
    assert [e["name"] for e in _of(events, "stage")][:2] == ["int8", "channels"]
    assert _of(events, "limit") == [{"event": "limit", "reason": "candidates"}]
    assert _of(events, "chosen") == [{"event": "chosen", "id": result.chosen["id"]}]
    assert [r["id"] for r in result.rows] == [r["id"] for r in rows]


def test_optimize_yaml_names_registered_steps_with_settings_their_configs_accept(searched):
    import yaml

    _, _, result, out, _ = searched
    section = yaml.safe_load((out / "optimize.yaml").read_text())["optimize"]
    assert section["distill"] == {"temperature": 4.0, "alpha": 0.9}
    for entry in section["steps"]:
        ((name, settings),) = entry.items()
        STEPS[name].configure(settings)  # raises on a key the step's config refuses
    assert section["steps"][-1] == {"quantize": {"mode": "int8"}}
    if result.chosen["id"] != "base+int8":
        assert list(section["steps"][0]) == ["structured"]


def test_the_search_probes_its_fine_tune_rate_and_uses_it(searched):
    import yaml

    _, _, _, out, events = searched
    probes = _of(events, "probe")
    assert 1 <= len(probes) <= len(PROBE_RATES)
    assert [p["lr"] for p in probes] == list(PROBE_RATES[:len(probes)])
    (rate,) = [e["lr"] for e in _of(events, "rate")]
    assert rate in PROBE_RATES
    state = json.loads((out / "state.json").read_text())
    assert [p["lr"] for p in state["rate_probe"]] == [p["lr"] for p in probes]
    assert chosen_rate(state["rate_probe"], 2.0)[0] == rate
    steps = yaml.safe_load((out / "optimize.yaml").read_text())["optimize"]["steps"]
    tuned = [next(iter(s.values())) for s in steps if "quantize" not in s]
    assert all(t["lr"] == rate for t in tuned)
    assert f"Fine-tune rate: {rate:g} (probed: " in (out / "report.md").read_text()


@pytest.mark.slow
def test_resume_keeps_finished_candidates_and_continues(searched, tmp_path):
    import shutil

    model, sel, _, out, first = searched
    train, _, test = _digits()
    copy = tmp_path / "search"
    shutil.copytree(out, copy)
    before = _rows(copy)
    with pytest.raises(TfoptError, match="already holds a search; pass resume=True"):
        optimize(model, train, validation_data=sel, out=copy, max_candidates=4, log=quiet)
    with pytest.raises(TfoptError, match=r"ran with other settings \(epochs 1 -> 2, levels \[2.0, 10.0\] -> "
                                         r"\[1.0, 10.0\]\); its candidates would not match"):
        optimize(model, train, validation_data=sel, max_drop=2.0, out=copy, epochs=2, max_candidates=4,
                 levels=(1.0, 10.0), resume=True, log=quiet)
    events = []
    optimize(model, train, validation_data=sel, test_data=test, max_drop=2.0, out=copy, epochs=1, max_candidates=4,
             levels=(2.0, 10.0), resume=True, log=quiet, on_event=events.append)
    after = _rows(copy)
    assert after[:3] == before  # kept as they were, not rerun
    assert len(after) == 4
    # the next stage builds on the best of the finished candidates, as it would have without the stop:
    # a deeper cut of fc1, the group holding the most kernel weights
    best = min((r for r in before if r["meets_budget"] == "True"), key=lambda r: int(r["tflite_gzip_bytes"]))

    def per_layer(row):
        return json.loads(row["steps"].split(" -> ")[0].removeprefix("structured "))["per_layer"]

    cut, was = per_layer(after[3]), {} if best["id"] == "base+int8" else per_layer(best)
    assert after[3]["stage"] == "channels" and cut.pop("fc1") > was.pop("fc1", 0.0), (after[3], best)
    assert cut == was
    assert _of(events, "resumed") == [{"event": "resumed", "rows": 3}]
    # the three finished candidates were not evaluated again, nor the rate probed again
    assert [e["id"] for e in _of(events, "candidate")] == [after[3]["id"]]
    assert not _of(events, "probe")
    assert [e["lr"] for e in _of(events, "rate")] == [e["lr"] for e in _of(first, "rate")]


@pytest.mark.parametrize("drops, chosen", [
    ((0.05,), 1e-3),                 # the first rate is harmless: nothing more is probed
    ((0.5, 0.09, 0.0), 3e-4),        # stops at the first rate within a third of the 0.3-pt budget
    ((0.5, 0.4, 0.2), 1e-4),         # none within it: the least harmful
    ((0.5, 0.15, 0.3), 3e-4),
])
def test_rate_probe_keeps_the_highest_rate_within_a_third_of_the_budget(drops, chosen):
    calls = []

    def drop_of(lr):
        calls.append(lr)
        return drops[PROBE_RATES.index(lr)]

    probe = probe_rates(drop_of, 0.3)
    assert chosen_rate(probe, 0.3)[0] == chosen
    n = next((i + 1 for i, d in enumerate(drops) if d <= 0.1), len(drops))
    assert calls == list(PROBE_RATES[:n]) and [p["lr"] for p in probe] == calls


def test_bad_target_and_budget_are_refused(tmp_path):
    with pytest.raises(TfoptError, match="target must be one of size, latency, macs; got 'speed'"):
        optimize(None, None, target="speed", out=tmp_path)
    assert parse_budget("30m") == 1800 and parse_budget("1h") == 3600 and parse_budget(90) == 90
    with pytest.raises(TfoptError, match="expected seconds or a duration such as 30m, 1h, 90s; got 'soon'"):
        optimize(None, None, time_budget="soon", out=tmp_path)


# -- the report's figures -------------------------------------------------------------------------


def test_paired_standard_error_of_a_drop():
    # 1,000 images: the input right on 990; the other file loses 6 of them and wins 2 others
    a = np.r_[np.ones(990), np.zeros(10)].astype(bool)
    b = a.copy()
    b[:6], b[990:992] = False, True
    d = paired_drop(a, b)
    assert (d["lost"], d["won"], d["drop_points"]) == (6, 2, pytest.approx(0.4))
    assert d["standard_error_points"] == pytest.approx(np.sqrt(8 - 16 / 1000) / 1000 * 100)
    assert paired_drop(a, a) == {"drop_points": 0.0, "standard_error_points": 0.0, "lost": 0, "won": 0}


def test_pareto_front_keeps_only_undominated_rows():
    rows = [{"id": "a", "s": 10, "selection_accuracy": 0.90}, {"id": "b", "s": 20, "selection_accuracy": 0.95},
            {"id": "c", "s": 30, "selection_accuracy": 0.93}, {"id": "d", "s": 5, "selection_accuracy": 0.80}]
    assert [r["id"] for r in pareto_front(rows, "s")] == ["d", "a", "b"]


def test_sparse_tflite_storage_shrinks_raw_bytes_of_a_pruned_model():
    import tf_keras as keras

    from tfopt import tflite

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    rng = np.random.default_rng(0)
    m.set_weights([w * (rng.random(w.shape) > 0.9) if w.ndim > 1 else w for w in m.get_weights()])
    x = rng.random((32, 64)).astype(np.float32)
    dense, packed = tflite.convert(m, "float32"), tflite.convert(m, "float32", sparse=True)
    assert len(packed) < 0.5 * len(dense)
    np.testing.assert_allclose(tflite.predict(packed, x), m.predict(x, verbose=0), atol=1e-5)
    sizes = tflite.sizes(dense)
    assert sizes["raw_bytes"] == len(dense) and 0 < sizes["gzip_bytes"] < len(dense)
    content, info = tflite.smallest(m, "float32", by="raw_bytes")
    assert info["sparse"] and content == packed and info["sparse_raw_bytes"] == len(packed)


def test_latency_reports_the_block_with_the_lowest_median(monkeypatch):
    import types

    from tfopt import tflite

    class Fake:
        def get_input_details(self):
            return [{"index": 0, "dtype": np.float32, "quantization": (0.0, 0)}]

        def set_tensor(self, *_):
            pass

        def invoke(self):
            pass

    monkeypatch.setattr(tflite, "interpreter", lambda content, threads, log=None: (Fake(), "none"))
    # three blocks of four runs (ns): a slow block, a fast one with one outlier, a slower one
    durations = [9000, 9000, 9500, 9000] + [3000, 3100, 8000, 3000] + [5000] * 4
    stamps = iter([t for d in durations for t in (0, d)])
    monkeypatch.setattr(tflite, "time", types.SimpleNamespace(perf_counter_ns=lambda: next(stamps)))
    got = tflite.latency_us(b"", np.zeros((8, 8, 1)), runs=4, warmup=0, repeats=3)
    assert got["median_us"] == pytest.approx(3.05)
    assert got["repeats"] == 3
    stamps = iter([t for d in durations[:4] for t in (0, d)])
    assert tflite.latency_us(b"", np.zeros((8, 8, 1)), runs=4, warmup=0)["median_us"] == pytest.approx(9.0)


def test_latency_falls_back_to_the_builtin_kernels_when_xnnpack_fails_at_the_first_run(monkeypatch):
    from tfopt import tflite

    class Fake:
        def __init__(self, fails):
            self.fails, self.runs = fails, 0

        def get_input_details(self):
            return [{"index": 0, "dtype": np.float32, "quantization": (0.0, 0)}]

        def set_tensor(self, *_):
            pass

        def invoke(self):
            if self.fails:
                raise RuntimeError("failed to create XNNPACK runtimeNode number 403 (TfLiteXNNPackDelegate) failed "
                                   "to prepare.")
            self.runs += 1

    made = []

    def interpreter(content, threads, log=None, builtin=False):
        made.append(Fake(fails=not builtin))
        return made[-1], "builtin" if builtin else "xnnpack"

    monkeypatch.setattr(tflite, "interpreter", interpreter)
    lines = []
    got = tflite.latency_us(b"", np.zeros((28, 28)), runs=5, warmup=2, log=lines.append)
    assert got["delegate"] == "builtin"
    assert [m.runs for m in made] == [0, 7]
    assert lines == ["XNNPACK could not prepare the model (failed to create XNNPACK runtimeNode number 403 "
                     "(TfLiteXNNPackDelegate) failed to prepare.); using the built-in kernels, which are slower: "
                     "latencies are not comparable with XNNPACK ones"]


def test_one_shot_magnitude_pruning_zeroes_each_layers_share():
    import tf_keras as keras

    from tfopt.steps.sensitivity import magnitude_pruned

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="conv"),
                          keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])
    before = [w.copy() for w in m.get_weights()]
    pruned = magnitude_pruned(m, {"conv": 0.5, "fc": 0.9})
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))  # the input is not changed
    conv, fc = pruned.get_layer("conv").kernel.numpy(), pruned.get_layer("fc").kernel.numpy()
    assert int((conv == 0).sum()) == 36 and int((fc == 0).sum()) == round(0.9 * 288 * 10)
    kept = np.abs(fc[fc != 0])
    assert kept.min() >= np.sort(np.abs(before[2]).ravel())[round(0.9 * 2880) - 1]


# -- searches with a registered step --------------------------------------------------------------


def test_a_ladder_ends_at_its_first_hopeless_rung_and_a_resumed_search_skips_the_same(small, head_step, tmp_path):
    model, train, sel = small
    kw = dict(validation_data=sel, max_drop=1.0, target="macs", epochs=1, lr=1e-3, levels=(), distill=False, log=quiet)
    events = []
    result = optimize(model, train, out=tmp_path / "s", on_event=events.append, **kw)
    rows = _rows(tmp_path / "s")
    # the registered step's ladder is a stage of its own, on the best chain so far (the input model)
    assert [(r["id"], r["stage"]) for r in rows] == [("base+int8", "int8"), ("head1+int8", "scale_head"),
                                                     ("head0+int8", "scale_head")]
    assert float(rows[1]["keras_selection_accuracy"]) == pytest.approx(float(rows[0]["keras_selection_accuracy"]))
    # scale 0 leaves every class equally likely: far over twice the budget, the harsher rung is skipped
    assert float(rows[2]["drop_points"]) > 2 * 1.0
    skipped = {"event": "skipped", "id": "head0+int8", "stage": "scale_head",
               "drop_points": pytest.approx(float(rows[2]["drop_points"])), "skipped": ["head0.5+int8"]}
    assert _of(events, "skipped") == [skipped]
    assert "scale_head" in [e["name"] for e in _of(events, "stage")]
    assert result.chosen["id"] in ("base+int8", "head1+int8")
    assert not _of(events, "probe") and not _of(events, "rate")  # a given rate is kept as it is
    # a resumed search reads the finished rows and skips the same rungs, evaluating nothing again
    again = []
    optimize(model, train, out=tmp_path / "s", resume=True, on_event=again.append, **kw)
    assert not _of(again, "candidate") and _of(again, "skipped") == [skipped]
    assert _rows(tmp_path / "s") == rows


def test_a_time_budget_spent_before_any_candidate(small, tmp_path):
    model, train, sel = small
    events = []
    with pytest.raises(TfoptError, match=r"no candidate finished \(time budget 0.01, candidate limit none\); "
                                         r"allow more time"):
        optimize(model, train, validation_data=sel, target="macs", out=tmp_path / "s", lr=1e-3, levels=(),
                 distill=False, time_budget=0.01, log=quiet, on_event=events.append)
    assert _of(events, "limit") == [{"event": "limit", "reason": "time"}] and not _of(events, "candidate")
    assert "No candidate met the budget." in (tmp_path / "s" / "report.md").read_text()
    assert (tmp_path / "s" / "pareto.png").is_file()


@pytest.mark.slow
def test_fine_tunes_see_augmented_images_and_the_selection_split_is_held_out(small, record_step, tmp_path):
    """``augment`` gives the steps a shifted-image pipeline; the probe images stay as they were;
    without ``validation_data`` a tenth of the training images is held out for selection."""
    import tensorflow as tf

    model, train, _ = small
    optimize(model, train, max_drop=5.0, target="macs", out=tmp_path / "a", epochs=1, lr=1e-3, levels=(),
             distill=False, augment={"translate": 0.25}, log=quiet)
    (seen,) = record_step
    data = seen["data"]
    assert isinstance(data, tf.data.Dataset)
    x, _ = next(iter(data))
    assert x.shape[1:] == (8, 8, 1) and len(x) == 32
    # shifted by whole pixels: some images differ from every original
    originals = {train[0][i].tobytes() for i in range(len(train[0]))}
    assert sum(img.tobytes() not in originals for img in x.numpy()) > 0
    # 130 of the 1,300 images held out: the fine-tunes see the other 1,170
    assert sum(len(batch[0]) for batch in data) == 1170
    assert "(130 held-out images)" in (tmp_path / "a" / "report.md").read_text()
    probe = seen["inputs"]["probe"]
    assert len(probe) == 1024 and all(img.tobytes() in originals for img in probe)
    assert seen["fine_tune"].epochs == 1 and seen["fine_tune"].lr == 1e-3 and seen["fine_tune"].teacher is None
    record_step.clear()
    optimize(model, train, validation_data=_digits()[1], max_drop=5.0, target="macs", out=tmp_path / "b", epochs=1,
             lr=1e-3, levels=(), distill=False, log=quiet)
    (seen,) = record_step
    assert isinstance(seen["data"], tuple)  # no augmentation asked: the arrays themselves
    np.testing.assert_array_equal(seen["data"][0], train[0])


# -- latency ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_latency_search_measures_float32_files_too(searched, tmp_path):
    """For --target latency every chain is measured as int8 and as float32; the fastest within budget wins."""
    from tfopt import tflite

    train, sel, _ = _digits()
    model = searched[0]
    events = []
    result = optimize(model, train, validation_data=sel, max_drop=5.0, target="latency", out=tmp_path / "s",
                      epochs=1, lr=1e-3, max_candidates=4, levels=(10.0,), log=quiet, on_event=events.append)
    rows = _rows(tmp_path / "s")
    assert [r["id"] for r in rows] == ["base+int8", "base+f32", "ch1+int8", "ch1+f32"]
    assert [r["tflite"] for r in rows] == ["int8", "float32"] * 2
    ok = [r for r in rows if r["meets_budget"] == "True"]
    assert result.chosen["id"] == min(ok, key=lambda r: float(r["latency_us"]))["id"]
    mode = result.chosen["tflite"]
    assert (tmp_path / "s" / "chosen" / f"model_{mode}.tflite").read_bytes() == result.tflite
    # a float32 file holds 4-byte weights, an int8 one 1-byte weights
    f32, i8 = (int(r["tflite_raw_bytes"]) for r in rows[1::-1])
    assert f32 > 2 * i8
    assert tflite.accuracy(result.tflite, *sel) == pytest.approx(result.chosen["selection_accuracy"])


@pytest.mark.slow
def test_latency_search_removes_layers_and_folds_pools_without_changing_the_predictions(searched, tmp_path):
    """The remove stage takes out a shape-keeping conv; the fold_pool stage rewrites the best chain
    exactly: its Keras model predicts what its parent predicts, and its file is measured as int8
    and float32 like every chain."""
    train, sel, _ = _digits()
    optimize(searched[0], train, validation_data=sel, max_drop=5.0, target="latency", out=tmp_path / "s", epochs=1,
             max_candidates=8, levels=(10.0,), log=quiet)
    rows = {r["id"]: r for r in _rows(tmp_path / "s")}
    removed = [r for r in rows.values() if r["stage"] == "remove"]
    assert all(r["id"].split("+")[-2].startswith("rm-") and ' -> remove {"layers": [' in " -> " + r["steps"]
               for r in removed)
    folded = [r for r in rows.values() if r["stage"] == "fold_pool"]
    assert [r["tflite"] for r in folded] == ["int8", "float32"]
    assert folded[0]["steps"].split(" -> ")[-2].startswith('fold_pool {"layers": [')
    # the chain it folded: the best within budget before the stage ("base" when that is the input model)
    prefix = folded[0]["id"][:folded[0]["id"].index("fp-")].rstrip("+")
    parent = (prefix or "base") + "+int8"
    assert float(folded[0]["keras_selection_accuracy"]) == float(rows[parent]["keras_selection_accuracy"])
    assert float(folded[0]["macs"]) > float(rows[parent]["macs"])  # 4 filter groups of a kernel one larger


def test_the_remove_stage_tries_shape_keeping_layers_but_not_batch_norm():
    import tf_keras as keras

    from tfopt.search.measure import removable_layers

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.Conv2D(4, 3, padding="same", name="keeps")(x)
    x = L.BatchNormalization(name="keeps_bn")(x)
    x = L.Conv2D(6, 3, padding="same", name="widens")(x)
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D(name="gap")(x))
    assert removable_layers(keras.Model(inp, out)) == ["keeps"]


# -- the stages' plans, from rows ------------------------------------------------------------------


def _row(id_, stage, drop, nonzero, gzip, meets, int8="ptq", keras_drop=None, base=0.99):
    return {"id": id_, "stage": stage, "drop_points": drop, "nonzero_params": nonzero, "tflite_gzip_bytes": gzip,
            "meets_budget": meets, "int8": int8, "selection_accuracy": base - drop / 100, "latency_us": 1.0,
            "macs": 1, "error": "", "keras_selection_accuracy": base - (drop if keras_drop is None else keras_drop) / 100}


def _standings(max_drop, base_acc=0.99, **chains_rows):
    s = Standings("size", max_drop, 2.0, base_acc)
    for id_, (chain, row) in chains_rows.items():
        s.chains[id_], s.rows[id_] = chain, row
    return s


def test_a_near_miss_goes_on_and_a_loss_over_twice_the_budget_is_hopeless():
    s = Standings("size", 0.2)
    assert not s.hopeless({"drop_points": 0.35, "error": ""})  # within twice the 0.2-pt budget
    assert s.hopeless({"drop_points": 0.41, "error": ""})
    assert not s.hopeless({"drop_points": None, "error": "failed"})


def test_candidate_ids_come_from_the_steps_tokens():
    ch2 = ChainStep("structured", {"ratio": 0.0, "per_layer": {"fc1": 0.5}}, label=2)
    assert chain_key([]) == "base" and chain_key([ch2]) == "ch2"
    assert Candidate([ch2, ChainStep("cluster", {"clusters": 16})], "cluster").id == "ch2+c16+int8"
    assert Candidate([ch2], "qat", "qat").id == "ch2+qat" and Candidate([ch2], "channels", "float32").id == "ch2+f32"
    assert chain_key([ChainStep("prune", {"m_by_n": [2, 4]})]) == "p2of4"
    assert chain_key([ChainStep("prune", {"sparsity": 0.9, "criterion": "activation"})]) == "perk90act"
    assert chain_key([ChainStep("prune", {"sparsity": 0.9}, {"epochs": 60}, label="3")]) == "p3-e60"
    assert chain_key([ChainStep("remove", {"layers": ["conv3"]}), ChainStep("fold_pool", {"layers": ["conv1"]})]) \
        == "rm-conv3+fp-conv1"
    # the label is search data, not a setting: the step's config never sees it
    assert "label" not in ch2.settings and STEPS["structured"].configure(ch2.settings).per_layer == {"fc1": 0.5}


def test_size_search_spreads_and_ranks_the_way_that_loses_least():
    accs = {("erk", "magnitude"): 0.48, ("er", "magnitude"): 0.88, ("erk", "activation"): 0.50,
            ("er", "activation"): 0.80}
    allocation, criterion = stages.pick_pruning(accs)
    how = {"allocation": allocation, "criterion": criterion}
    ladder = [[s] for s in stages.overall_prune_steps(how)]
    assert [chain[-1].settings for chain in ladder] == [{"sparsity": p / 100, "allocation": "er"}
                                                        for p in (80, 90, 95, 97)]
    assert [chain_key(chain) for chain in ladder] == ["per80", "per90", "per95", "per97"]
    assert recipe_steps(ladder[1], "int8", FineTuneSettings(epochs=2, lr=1e-3))[0] == {
        "prune": {"sparsity": 0.9, "allocation": "er", "epochs": 2, "lr": 0.001}}
    accs["er", "activation"] = 0.90  # the activation criterion keeps more: its chains say so in their ids and recipes
    steps = stages.overall_prune_steps(dict(zip(("allocation", "criterion"), stages.pick_pruning(accs))), (0.8,))
    assert chain_key(steps) == "per80act"
    assert steps[0].settings == {"sparsity": 0.8, "allocation": "er", "criterion": "activation"}
    assert recipe_steps(steps, "int8", FineTuneSettings())[0]["prune"]["criterion"] == "activation"
    accs.update(dict.fromkeys(accs, 0.48))  # a tie keeps erk by magnitude: the names they had
    how = dict(zip(("allocation", "criterion"), stages.pick_pruning(accs)))
    assert chain_key(stages.overall_prune_steps(how, (0.8,))) == "perk80"


def test_size_search_cuts_the_layer_with_the_most_weights_deeper():
    sizes = {"fc1": 235_200, "fc2": 30_000, "fc3": 1_000}
    largest = stages.largest_group(sizes, ["fc1", "fc2"])
    assert largest == "fc1" and stages.largest_group(sizes, ["conv"]) is None
    ch3 = [ChainStep("structured", {"ratio": 0.0, "per_layer": {"fc1": 0.5, "fc2": 0.5}}, label=3)]
    chains = stages.deeper_cuts(ch3, largest, 4)
    assert [c[0].settings["per_layer"] for c in chains] == [{"fc1": r, "fc2": 0.5} for r in (0.7, 0.8, 0.9)]
    assert [chain_key(c) for c in chains] == ["ch5", "ch6", "ch7"]
    # no channel candidate within budget: from the input
    assert [c[0].settings["per_layer"] for c in stages.deeper_cuts([], largest, 0)] == [{"fc1": r}
                                                                                      for r in (0.5, 0.7, 0.8, 0.9)]
    # far from the trained minimum, the deep cuts fine-tune at the rate they are given
    chains = stages.deeper_cuts([], largest, 0, {"lr": 1e-3})
    assert chains[0][0].fine_tune == {"lr": 1e-3} and chain_key(chains[0]) == "ch1"
    assert recipe_steps(chains[0], "int8", FineTuneSettings(epochs=2, lr=3e-4))[0] == {
        "structured": {"ratio": 0.0, "per_layer": {"fc1": 0.5}, "epochs": 2, "lr": 1e-3}}
    # the best is not a channel cut: none
    assert stages.deeper_cuts([ChainStep("prune", {"sparsity": 0.8}, label="1")], largest, 0) == []


def test_size_search_prunes_from_a_start_with_headroom_and_fine_tunes_a_near_miss_longer():
    ch = {i: [ChainStep("structured", {"ratio": 0.0, "per_layer": {"fc1": r}}, label=i)] for i, r in ((3, 0.5), (6, 0.8))}
    s = _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 266_000, 248_000, True)),
                           "ch3+int8": (ch[3], _row("ch3+int8", "channels", 0.13, 125_000, 115_000, True)),
                           "ch6+int8": (ch[6], _row("ch6+int8", "channels", 0.47, 50_000, 47_000, True))})
    # ch6 is the smallest within budget, but has used 0.47 of the 0.5 pt; ch3 has used 0.13
    assert chain_key(s.base_chain()) == "ch6" and chain_key(stages.prune_start(s)) == "ch3"
    s.rows["ch6+int8"]["drop_points"] = 0.25  # at most half the budget: ch6 itself
    assert chain_key(stages.prune_start(s)) == "ch6"
    s.rows["ch6+int8"]["drop_points"] = 0.47
    # the prune stage: every ladder on ch3; the overall targets also on ch6, the best; the harsher ones on the input
    how = {"allocation": "erk", "criterion": "activation"}
    ladders = stages.prune_chains(ch[3], ch[6], [{"fc1": 0.75}], ["fc1", "fc2"], {"start": how, "edge": how,
                                                                                  "input": how})
    assert [[chain_key(c) for c in ladder] for ladder in ladders] == [
        ["ch3+p1act"], [f"ch3+perk{p}act" for p in (80, 90, 95, 97)], [f"ch6+perk{p}act" for p in (80, 90, 95, 97)],
        [f"perk{p}act" for p in (90, 95, 97)]]
    assert ladders[0][0][-1].settings == {"per_layer": {"fc1": 0.75}, "sparsity": 0.75, "skip": ["fc2"],
                                          "criterion": "activation"}
    # overall targets go beyond what the sweep tolerated: at the rate they are given
    assert ladders[1][0][-1].fine_tune == {}
    assert stages.prune_chains([], [], [], [], {"start": how}, {"lr": 1e-3})[1][0][-1].fine_tune == {"lr": 1e-3}

    p = {sp: ch[3] + [ChainStep("prune", {"sparsity": sp / 100, "criterion": "activation"})] for sp in (90, 95, 97)}
    for sp, drop, nonzero, gzip in ((90, 0.37, 12_500, 24_000), (95, 0.80, 6_300, 18_000), (97, 1.20, 3_800, 14_000)):
        key = f"ch3+perk{sp}act+int8"
        s.chains[key], s.rows[key] = p[sp], _row(key, "prune", drop, nonzero, gzip, drop <= 0.5)
    assert s.best()["id"] == "ch3+perk90act+int8"
    # 95% missed by 0.30 pt (97% by more than twice the budget): pruned again over 3 × 20 epochs
    lines = []
    longer = stages.longer_chains(s, 60, lines.append)
    assert [[chain_key(c) for c in ladder] for ladder in longer] == [["ch3+perk95act-e60"]]
    assert longer[0][0][-1].settings == p[95][-1].settings and longer[0][0][-1].fine_tune == {"epochs": 60}
    assert recipe_steps(longer[0][0] + [ChainStep("cluster", {"clusters": 8})], "int8",
                        FineTuneSettings(epochs=20, lr=1e-3))[1:3] == [
        {"prune": {"sparsity": 0.95, "criterion": "activation", "epochs": 60, "lr": 1e-3}},
        {"cluster": {"clusters": 8, "epochs": 20, "lr": 1e-3}}]
    assert len(lines) == 1 and "ch3+perk95act+int8" in lines[0]
    # 97% within twice the budget: it keeps the fewest weights and goes first; 95% lost least and follows
    s.rows["ch3+perk97act+int8"]["drop_points"] = 0.95
    assert [[chain_key(c) for c in ladder] for ladder in stages.longer_chains(s, 60)] == [
        ["ch3+perk97act-e60"], ["ch3+perk95act-e60"]]
    s.rows["ch3+perk97act+int8"]["drop_points"] = 1.2
    # a near miss that keeps more weights than the best is no use
    s.rows["ch3+perk95act+int8"]["nonzero_params"] = 13_000
    assert stages.longer_chains(s, 60) == []


def test_qat_goes_to_the_near_misses_that_lost_least():
    base = 0.9333
    # id: (selection drop, gzip bytes, Keras selection drop)
    table = {"base": (0.0, 363_000, 0.0), "ch1": (0.27, 125_000, 0.2), "ch2": (0.90, 77_000, 0.9),
             "p90": (0.73, 77_100, 0.7), "ch1+c16": (0.90, 86_700, 0.9), "ch1+c8": (0.57, 61_800, 0.5),
             "ch1+c4": (1.20, 45_000, 1.1), "p95": (0.45, 130_000, 0.4), "ch1+c2": (0.80, 40_000, 0.3)}
    s = _standings(0.5, base, **{
        key + "+int8": ([] if key == "base" else [ChainStep("prune", {"sparsity": 0.5}, label=key)],
                        _row(key + "+int8", "prune", drop, 1, size, drop <= 0.5, keras_drop=kd, base=base))
        for key, (drop, size, kd) in table.items()})
    # a row of another search in the same folder, not planned in this one, is left alone
    s.rows["other+int8"] = {**s.rows["ch1+c8+int8"], "id": "other+int8", "drop_points": 0.51}
    by_chain = {id(c): k for k, c in s.chains.items()}
    # int8 lost what Keras kept: ch1+c2 (Keras 0.3 pt, int8 0.8 pt); near misses that lost least and are
    # smaller than the best (ch1, 125 kB): ch1+c8 (0.57 pt), then p90 (0.73); ch1+c4 lost over twice the budget
    assert [by_chain[id(c)] for c in stages.qat_chains(s)] == ["ch1+c2+int8", "ch1+c8+int8", "p90+int8"]


def test_a_chain_that_qat_made_the_best_is_clustered_too():
    s = Standings("size", 0.5, 2.0, 0.93)
    ch1 = [ChainStep("structured", {"ratio": 0.0, "per_layer": {"fc1": 0.5}}, label=1)]
    p90 = [ChainStep("prune", {"sparsity": 0.9, "allocation": "er"})]
    c8 = ch1 + [ChainStep("cluster", {"clusters": 8})]

    def row(cand, drop, size):
        s.chains[cand.id] = cand.chain
        s.rows[cand.id] = _row(cand.id, cand.stage, drop, 1, size, drop <= 0.5, int8="qat" if cand.mode == "qat"
                               else "ptq", base=0.93)

    row(Candidate(ch1, "channels"), 0.27, 124_929)
    row(Candidate(p90, "prune"), 0.73, 77_042)
    row(Candidate(c8, "cluster"), 0.57, 61_750)
    assert stages.recluster_start(s, ch1) is None  # the best (ch1, post-training int8) was the cluster stage's start
    row(Candidate(c8, "qat", "qat"), 0.45, 69_891)
    assert stages.recluster_start(s, ch1) is None  # the new best is clustered already
    row(Candidate(p90, "qat", "qat"), 0.47, 75_840)
    s.rows["ch1+c8+qat"]["meets_budget"] = False
    assert s.best()["id"] == "per90+qat" and stages.recluster_start(s, ch1) == p90
    assert stages.recluster_start(s, p90) is None


# -- a teacher ------------------------------------------------------------------------------------


def test_the_search_learns_from_a_named_teacher(small, tmp_path):
    import tf_keras as keras
    import yaml

    model, train, sel = small
    teacher = _copy(model)
    teacher.set_weights([w * 1.5 for w in model.get_weights()])
    teacher.save(tmp_path / "teacher.keras")
    with pytest.raises(TfoptError, match=r"^optimize: a teacher is for distillation, which distill=False "
                                         r"\(--no-distill\) turns off$"):
        optimize(model, train, validation_data=sel, out=tmp_path / "a", teacher=teacher, distill=False)
    wide = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)], name="three")
    with pytest.raises(TfoptError) as info:
        optimize(model, train, validation_data=sel, out=tmp_path / "b", teacher=wide)
    assert str(info.value) == ("teacher: the model 'three' outputs 3 where the model being optimized outputs 10; "
                               "a teacher must take the same inputs and give as many outputs.")
    assert not (tmp_path / "b").exists()

    kw = dict(validation_data=sel, max_drop=5.0, target="macs", out=tmp_path / "s", epochs=1, lr=1e-3, levels=(),
              log=quiet)
    result = optimize(model, train, teacher=str(tmp_path / "teacher.keras"), **kw)
    report = (result.out / "report.md").read_text()
    assert f"Distillation: on, from {tmp_path / 'teacher.keras'}." in report
    assert yaml.safe_load((result.out / "optimize.yaml").read_text())["optimize"]["distill"] == {
        "temperature": 4.0, "alpha": 0.9, "teacher": str(tmp_path / "teacher.keras")}
    state = json.loads((result.out / "state.json").read_text())
    assert state["settings"]["teacher"] == weights_digest(teacher)
    # a resumed search must learn from the same teacher
    with pytest.raises(TfoptError, match=r"ran with other settings \(teacher '[0-9a-f]{16}' -> None\)"):
        optimize(model, train, resume=True, **kw)


def test_the_steps_learn_from_the_teachers_outputs_computed_once(small, record_step, tmp_path):
    model, train, sel = small
    teacher = _copy(model)
    teacher.set_weights([w * 1.5 for w in model.get_weights()])
    optimize(model, train, validation_data=sel, max_drop=5.0, target="macs", out=tmp_path / "s", epochs=1, lr=1e-3,
             levels=(), teacher=teacher, log=quiet)
    (seen,) = record_step
    stored = seen["fine_tune"].teacher  # the teacher's outputs on the training images, computed once
    assert isinstance(stored, TeacherTargets) and stored.covers(seen["data"])
    for a, b in zip(stored.model.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert stored.model is not model
    np.testing.assert_allclose(stored.outputs[0], teacher.predict(train[0], verbose=0), atol=1e-6)
    assert "Distillation: on, from the teacher passed in." in (tmp_path / "s" / "report.md").read_text()


def test_optimize_refuses_what_top1_accuracy_cannot_judge_before_any_work(tmp_path):
    """A regression head, a per-pixel head and data of two inputs are refused in one paragraph,
    and nothing is written."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 1), dtype="float32")
    regression = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(1)],
                                  name="reg")
    inp = keras.Input((8, 8, 1))
    per_pixel = keras.Model(inp, keras.layers.Conv2D(3, 1, activation="softmax")(inp), name="seg")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    two = keras.Model({"a": a, "b": b}, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Concatenate()([a, b])), name="two")
    cases = [(regression, (x, rng.random(32).astype("float32")), "its output has shape (None, 1), one value per "
              "example (a regression)"),
             (per_pixel, (x, rng.integers(0, 3, (32, 8, 8))), "its output has shape (None, 8, 8, 3), not one row of "
              "class scores per example (per-position outputs)"),
             (two, ({"a": x[:, 0, :4, 0], "b": x[:, 1, :4, 0]}, rng.integers(0, 3, 32)),
              "its data has several inputs or outputs (x or y a list or a dict)")]
    for model, data, reason in cases:
        with pytest.raises(TfoptError) as caught:
            optimize(model, data, out=tmp_path / model.name, max_candidates=1, log=lambda _line: None)
        message = str(caught.value)
        assert message.startswith(f"optimize cannot take the model '{model.name}' ({type(model).__name__}): {reason}. "
                                  f"optimize searches classifiers of one input and one output"), message
        assert "\n" not in message
        assert not (tmp_path / model.name).exists()


# -- the time the plan leaves: longer fine-tunes of the near misses ----------------------------------


def test_extensions_double_the_last_trained_steps_epochs_of_the_near_misses_that_would_beat_the_best():
    ch = [ChainStep("structured", {"ratio": 0.0, "per_layer": {"fc1": 0.5}}, label=3)]
    p95 = ch + [ChainStep("prune", {"sparsity": 0.95}, {"lr": 1e-3})]
    fold = ch + [ChainStep("fold_pool", {"layers": ["conv1"]})]
    s = _standings(0.5, **{"ch3+int8": (ch, _row("ch3+int8", "channels", 0.2, 1, 100_000, True)),
                           "ch3+p95+int8": (p95, _row("ch3+p95+int8", "prune", 0.7, 1, 40_000, False)),
                           "ch3+fp-conv1+f32": (fold, {**_row("ch3+fp-conv1+f32", "fold_pool", 0.6, 1, 90_000, False,
                                                                int8=""), "tflite": "float32"}),
                           "p99+qat": ([ChainStep("prune", {"sparsity": 0.99}, {"epochs": 6})],
                                       _row("p99+qat", "qat", 0.9, 1, 20_000, False, int8="qat")),
                           "p97+int8": ([ChainStep("prune", {"sparsity": 0.97})],
                                        _row("p97+int8", "prune", 1.1, 1, 30_000, False)),
                           "big+int8": ([ChainStep("prune", {"sparsity": 0.5})],
                                        _row("big+int8", "prune", 0.6, 1, 200_000, False)),
                           "base+int8": ([], _row("base+int8", "int8", 0.55, 1, 90_000, False))})
    for r in s.rows.values():
        r["seconds"] = 30.0
    plan = extend.extension_candidates(s, 2, {})
    # least drop first; the rewrite after the cut stays, the cut fine-tunes twice the search's 2 epochs; the
    # QAT near miss keeps its mode and doubles its own 6; larger than the best (big) or nothing trained (base):
    # none; over twice the budget but at most half the best's bytes (p97, 30 kB): the long shot, second, four
    # times the epochs; the best itself (0.2 pt down) last
    assert [(row["id"], c.id, est) for row, c, est in plan] == [
        ("ch3+fp-conv1+f32", "ch3-e4+fp-conv1+f32", 60.0), ("p97+int8", "perk97-e8+int8", 120.0),
        ("ch3+p95+int8", "ch3+perk95-e4+int8", 60.0), ("p99+qat", "perk99-e12+qat", 60.0),
        ("ch3+int8", "ch3-e4+int8", 60.0)]
    assert plan[2][1].chain[-1].fine_tune == {"lr": 1e-3, "epochs": 4} and plan[2][1].stage == "extend"
    s.rows["p97+int8"]["tflite_gzip_bytes"] = 50_001  # over half the best's: no long shot
    assert "p97+int8" not in [r["id"] for r, _, _ in extend.extension_candidates(s, 2, {})]
    s.rows["p97+int8"]["tflite_gzip_bytes"] = 30_000
    # an extension that lost as much as the row it came from is not extended again; the row it came from has
    # the step before that one extended instead (the channel cut under the prune), which redoes the prune
    s.chains["ch3+perk95-e4+int8"] = plan[2][1].chain
    s.rows["ch3+perk95-e4+int8"] = {**_row("ch3+perk95-e4+int8", "extend", 0.7, 1, 40_000, False), "seconds": 50.0}
    again = extend.extension_candidates(s, 2, {"ch3+perk95-e4+int8": s.rows["ch3+p95+int8"]})
    assert [(c.id, est) for _, c, est in again] == [("ch3-e4+fp-conv1+f32", 60.0), ("perk97-e8+int8", 120.0),
                                                    ("ch3-e4+perk95+int8", 120.0), ("perk99-e12+qat", 60.0),
                                                    ("ch3-e4+int8", 60.0)]
    assert again[2][1].chain[1].fine_tune == {"lr": 1e-3} and again[2][1].chain[0].fine_tune == {"epochs": 4}
    # with that one tried too, the prune again at a third of its rate, then nothing is left in that row
    s.chains["ch3-e4+perk95+int8"] = again[2][1].chain
    lower = extend.extension_candidates(s, 2, {"ch3+perk95-e4+int8": s.rows["ch3+p95+int8"]})
    assert [(c.id, est) for r, c, est in lower if r["id"] == "ch3+p95+int8"] == [("ch3+perk95-e4-lrx0.33+int8", 60.0)]
    assert lower[2][1].chain[-1].fine_tune == {"lr": 1e-3, "epochs": 4, "lr_scale": extend.LOWER_RATE}
    assert lower[2][1].chain[-1].overrides(5e-3) == {"lr": pytest.approx(1e-3 / 3), "epochs": 4}
    assert ChainStep("prune", {}, {"lr_scale": 0.5}).overrides(4e-3) == {"lr": 2e-3}
    s.chains["ch3+perk95-e4-lrx0.33+int8"] = lower[2][1].chain
    assert "ch3+p95+int8" not in [r["id"] for r, _, _ in extend.extension_candidates(
        s, 2, {"ch3+perk95-e4+int8": s.rows["ch3+p95+int8"]})]
    s.rows["ch3+perk95-e4+int8"]["drop_points"] = 0.6  # it recovered: on to 8 epochs
    assert [c.id for _, c, _ in extend.extension_candidates(s, 2, {"ch3+perk95-e4+int8": s.rows["ch3+p95+int8"]})][:3] == [
        "ch3+perk95-e8+int8", "perk97-e8+int8", "ch3-e4+fp-conv1+f32"]


class _TimedSearch:
    """What the extend stage reads of a search: a clock that each candidate advances by its time, and
    rows whose drop a function of the candidate gives."""

    def __init__(self, standings, budget_s, drop_of, seconds=30.0):
        self.standings, self.budget_s, self.drop_of, self.seconds = standings, budget_s, drop_of, seconds
        self.max_drop, self.target = standings.max_drop, standings.target
        self.fine_tune = FineTuneSettings(epochs=2)
        self.clock, self.lines, self.events, self.stop_reason = 0.0, [], [], ""

    def elapsed(self):
        return self.clock

    def log(self, line):
        self.lines.append(line)

    def emit(self, event, **fields):
        self.events.append({"event": event, **fields})

    def may_start(self):
        return self.clock + self.seconds <= self.budget_s

    def evaluate(self, cand):
        if cand.id in self.standings.rows:  # as a search does with a row it finished before
            return self.standings.rows[cand.id]
        epochs = cand.chain[-1].fine_tune["epochs"]
        self.clock += self.seconds * epochs / 2
        drop = self.drop_of(epochs)
        self.standings.rows[cand.id] = {**_row(cand.id, "extend", drop, 1, 40_000, drop <= self.max_drop),
                                        "seconds": self.seconds * epochs / 2}


def _near_miss_standings():
    p95 = [ChainStep("prune", {"sparsity": 0.95})]
    s = _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 1, 100_000, True)),
                           "p95+int8": (p95, _row("p95+int8", "prune", 0.8, 1, 40_000, False))})
    s.rows["p95+int8"]["seconds"] = 30.0
    return s


def test_the_extend_stage_spends_the_time_left_and_says_why_it_stopped():
    # each doubling recovers 0.2 pt: 4 epochs 0.6, 8 epochs 0.4 (within budget, the best), then the best itself
    # fine-tuned longer: 16 epochs 0.2, 32 epochs 0.0 (nothing left to narrow)
    search = _TimedSearch(_near_miss_standings(), 3600, lambda e: 0.8 - 0.2 * (e.bit_length() - 2))
    assert extend.extend_stage(search, {}) is True
    assert [r["id"] for r in search.standings.rows.values()][2:] == [
        "perk95-e4+int8", "perk95-e8+int8", "perk95-e16+int8", "perk95-e32+int8"]
    assert search.standings.best()["id"] == "perk95-e32+int8"
    assert search.events[-1]["event"] == "stopped" and search.events[-1]["used"] == pytest.approx(900 / 3600)
    assert search.stop_reason == ("stopped after 15.0 of 60.0 min (25% of the time budget): nothing left to improve: "
                                  "no near miss (over budget by at most 2× the budget) would beat the best, nor would "
                                  "any candidate further over reach 0.5× its figure, and the best loses no accuracy")
    assert search.lines[0] == "p95+int8 missed by 0.30 pt: prune fine-tuned 4 epochs"
    assert search.lines[2] == "perk95-e8+int8 is the best, 0.40 pt down: prune fine-tuned 16 epochs"
    # a fine-tune that does not recover is not doubled again; it is tried once more at a third of the rate
    flat = _TimedSearch(_near_miss_standings(), 3600, lambda e: 0.8)
    extend.extend_stage(flat, {})
    assert [r["id"] for r in flat.standings.rows.values()][2:] == ["perk95-e4+int8", "perk95-e4-lrx0.33+int8"]
    assert "nothing left to improve" in flat.stop_reason
    # the best's own longer fine-tunes end when one recovers nothing more
    stuck = _TimedSearch(_near_miss_standings(), 3600, lambda e: 0.4)
    extend.extend_stage(stuck, {})
    assert [r["id"] for r in stuck.standings.rows.values()][2:] == ["perk95-e4+int8", "perk95-e8+int8",
                                                                      "perk95-e8-lrx0.33+int8"]
    assert stuck.stop_reason.endswith("reach 0.5× its figure, and the longer fine-tunes tried, at the search's rate "
                                      "and at 0.33× it, lost as much as the ones before them")


def test_a_long_shot_is_fine_tuned_longer_while_it_recovers():
    # 2.5 pt over a 0.5-pt budget, at 40% of the best's bytes: 8 epochs 2.0, 32 epochs 0.9 (a near miss now),
    # 64 epochs 0.4 (the best), then the best's own 128 epochs recover nothing more
    s = _near_miss_standings()
    s.rows["p95+int8"]["drop_points"] = 3.0
    drops = {8: 2.0, 32: 0.9, 64: 0.4, 128: 0.4}
    search = _TimedSearch(s, 36000, drops.get)
    assert extend.extend_stage(search, {}) is True
    assert [r["id"] for r in s.rows.values()][2:] == [
        "perk95-e8+int8", "perk95-e32+int8", "perk95-e64+int8", "perk95-e128+int8", "perk95-e128-lrx0.33+int8"]
    assert s.best()["id"] == "perk95-e64+int8"
    assert search.lines[:3] == ["p95+int8 missed by 2.50 pt, 0.40× the best's figure: prune fine-tuned 8 epochs",
                                "perk95-e8+int8 missed by 1.50 pt, 0.40× the best's figure: prune fine-tuned 32 epochs",
                                "perk95-e32+int8 missed by 0.40 pt: prune fine-tuned 64 epochs"]
    # at over half the best's bytes it is left alone
    s = _near_miss_standings()
    s.rows["p95+int8"].update(drop_points=3.0, tflite_gzip_bytes=50_001)
    alone = _TimedSearch(s, 3600, drops.get)
    extend.extend_stage(alone, {})
    assert len(s.rows) == 2 and "nothing left to improve" in alone.stop_reason


class _TwoChainSearch(_TimedSearch):
    """Rows whose drop and bytes depend on the candidate: ``drops[id]``, the bytes of its chain's first step."""

    def __init__(self, standings, budget_s, drops, sizes):
        super().__init__(standings, budget_s, None)
        self.drops, self.sizes = drops, sizes

    def evaluate(self, cand):
        epochs = cand.chain[-1].fine_tune["epochs"]
        self.clock += self.seconds * epochs / 2
        drop, size = self.drops[cand.id], self.sizes[cand.chain[0].settings["sparsity"]]
        self.standings.rows[cand.id] = {**_row(cand.id, "extend", drop, 1, size, drop <= self.max_drop),
                                        "seconds": self.seconds * epochs / 2}


def test_a_long_shot_that_recovers_goes_on_when_the_best_moves_closer():
    # the long shot (40 kB, 3 pt down) starts at 0.4x the best's bytes; the near miss (60 kB) becomes the best, and
    # the long shot, at 0.67x its bytes, is lengthened again while it recovers and still beats it
    p80, p95 = [ChainStep("prune", {"sparsity": 0.8})], [ChainStep("prune", {"sparsity": 0.95})]
    s = _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 1, 100_000, True)),
                           "p80+int8": (p80, {**_row("p80+int8", "prune", 0.7, 1, 60_000, False), "seconds": 30.0}),
                           "p95+int8": (p95, {**_row("p95+int8", "prune", 3.0, 1, 40_000, False), "seconds": 30.0})})
    drops = {"perk80-e4+int8": 0.4, "perk95-e8+int8": 2.0, "perk80-e8+int8": 0.4, "perk95-e32+int8": 1.2,
             "perk95-e128+int8": 0.3, "perk95-e256+int8": 0.3, "perk80-e8-lrx0.33+int8": 0.4,
             "perk95-e256-lrx0.33+int8": 0.3}
    search = _TwoChainSearch(s, 36000, drops, {0.8: 60_000, 0.95: 40_000})
    assert extend.extend_stage(search, {}) is True
    assert [r["id"] for r in s.rows.values()][3:] == [
        "perk80-e4+int8", "perk95-e8+int8", "perk95-e32+int8", "perk80-e8+int8", "perk95-e128+int8",
        "perk80-e8-lrx0.33+int8", "perk95-e256+int8", "perk95-e256-lrx0.33+int8"]
    assert s.best()["id"] == "perk95-e128+int8"
    assert search.lines[2] == "perk95-e8+int8 missed by 1.50 pt, 0.67× the best's figure: prune fine-tuned 32 epochs"


def test_a_rounds_second_extension_waits_for_the_time_its_first_left():
    # 150 s: the near miss's 4 epochs (60 s) and the long shot's 8 (120 s) each fit, not both; the long shot
    # is planned again in the 90 s left, where the near miss, cut to 5 epochs (75 s), is what fits
    p80, p95 = [ChainStep("prune", {"sparsity": 0.8})], [ChainStep("prune", {"sparsity": 0.95})]
    s = _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 1, 100_000, True)),
                           "p80+int8": (p80, {**_row("p80+int8", "prune", 0.7, 1, 60_000, False), "seconds": 30.0}),
                           "p95+int8": (p95, {**_row("p95+int8", "prune", 3.0, 1, 40_000, False), "seconds": 30.0})})
    plan = extend.extension_candidates(s, 2, {})
    assert [(cand.id, est) for _, cand, est in plan] == [("perk80-e4+int8", 60.0), ("perk95-e8+int8", 120.0)]
    search = _TwoChainSearch(s, 150, {"perk80-e4+int8": 0.6, "perk80-e5+int8": 0.55}, {0.8: 60_000, 0.95: 40_000})
    assert extend.extend_stage(search, {}) is True
    assert [r["id"] for r in s.rows.values()][3:] == ["perk80-e4+int8", "perk80-e5+int8"]
    assert search.clock == 135.0 and search.events[-1]["used"] == pytest.approx(0.9)


def test_an_extension_brings_its_chains_other_mode_and_is_timed_by_the_row_that_built_it():
    # the float32 row of a chain converts the model its int8 row built: 5 s against 60
    p95 = [ChainStep("prune", {"sparsity": 0.95})]
    s = _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 1, 100_000, True)),
                           "perk95+int8": (p95, {**_row("perk95+int8", "prune", 0.8, 1, 40_000, False), "seconds": 60.0}),
                           "perk95+f32": (p95, {**_row("perk95+f32", "prune", 0.7, 1, 40_000, False, int8=""),
                                             "tflite": "float32", "seconds": 5.0})})
    plan = extend.extension_candidates(s, 2, {})
    assert [(row["id"], cand.id, est) for row, cand, est in plan] == [("perk95+f32", "perk95-e4+f32", 120.0)]
    search = _TimedSearch(s, 3600, lambda e: 0.9 - 0.1 * e)
    extend.extend_stage(search, {})
    ids = [r["id"] for r in s.rows.values()]
    assert ids[3:5] == ["perk95-e4+f32", "perk95-e4+int8"]
    assert set(ids[5:7]) == {"perk95-e8+f32", "perk95-e8+int8"}


def test_the_cut_to_fit_goes_to_the_first_plan_entry_that_lengthens_a_last_trained_step():
    ch = [ChainStep("structured", {"ratio": 0.0, "per_layer": {"fc1": 0.5}}, label=3)]
    p95 = ch + [ChainStep("prune", {"sparsity": 0.95})]
    s = _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 1, 100_000, True)),
                           "ch3+p95+int8": (p95, {**_row("ch3+p95+int8", "prune", 0.7, 1, 40_000, False), "seconds": 60.0}),
                           "p90+int8": (p95[1:], {**_row("p90+int8", "prune", 0.8, 1, 50_000, False), "seconds": 30.0})})
    earlier = extend._extended(s.rows["ch3+p95+int8"], p95, 2, lambda e: 2 * e, 0)  # the channel cut, not the prune
    last = extend._extended(s.rows["p90+int8"], p95[1:], 2, lambda e: 2 * e)
    plan = [(s.rows["ch3+p95+int8"], earlier, 240.0), (s.rows["p90+int8"], last, 60.0)]
    row, cut, est = extend.fitted(s, plan, 2, 50.0)  # 3 epochs (45 s) of the second fit in 50 s with a tenth to spare
    assert (row["id"], cut.id, est) == ("p90+int8", "perk95-e3+int8", 45.0)
    assert extend.fitted(s, plan, 2, 40.0) is None  # 2 epochs, no longer than before
    assert extend.fitted(s, plan[:1], 2, 1e6) is None


def test_a_resumed_search_takes_up_the_extensions_it_finished_and_chooses_as_before():
    first = _TimedSearch(_near_miss_standings(), 3600, lambda e: 0.8 - 0.2 * (e.bit_length() - 2))
    extend.extend_stage(first, {})
    # resumed: every row read back, but only the stages before extend have registered their chains
    again = _TimedSearch(_near_miss_standings(), 3600, lambda e: pytest.fail("nothing is fine-tuned again"))
    again.standings.rows.update(first.standings.rows)
    again.clock = first.clock
    assert again.standings.best()["id"] == "base+int8"
    assert extend.extend_stage(again, {}) is True
    assert again.standings.best()["id"] == first.standings.best()["id"] == "perk95-e32+int8"
    assert again.clock == first.clock and not again.lines[:-1]
    assert again.stop_reason == first.stop_reason


def test_the_last_extension_is_cut_to_the_time_left():
    # 4 epochs (60 s) fit in 150 s; 8 (120 s) do not fit in the 90 s left, 5 (75 s, with a tenth to spare) do
    search = _TimedSearch(_near_miss_standings(), 150, lambda e: 0.8 - 0.05 * e)
    assert extend.extend_stage(search, {}) is True
    assert [r["id"] for r in search.standings.rows.values()][2:] == ["perk95-e4+int8", "perk95-e5+int8"]
    assert search.elapsed() == pytest.approx(135.0)
    assert search.stop_reason.endswith("the next longer fine-tune (perk95-e10+int8, about 2.5 min) would not fit in "
                                       "the 0.2 min left")


def test_latencies_of_one_graph_within_the_measurement_noise_tie_and_the_more_accurate_wins():
    from tfopt.search.candidates import LATENCY_TIE, Standings

    s = Standings("latency", 0.5)
    rows = {"a": {"latency_us": 30.0, "macs": 100, "selection_accuracy": 0.90, "tflite_gzip_bytes": 1},
            "a-longer": {"latency_us": 30.0 * (1 + LATENCY_TIE) - 0.01, "macs": 100, "selection_accuracy": 0.92,
                         "tflite_gzip_bytes": 1},
            "other": {"latency_us": 30.5, "macs": 90, "selection_accuracy": 0.99, "tflite_gzip_bytes": 1}}
    assert s.best([{**r, "id": k} for k, r in rows.items()])["id"] == "a-longer"
    rows["a-longer"]["latency_us"] = 30.0 * (1 + LATENCY_TIE) + 0.01
    assert s.best([{**r, "id": k} for k, r in rows.items()])["id"] == "a"
    size = Standings("size", 0.5)  # other targets: the smallest, ties to the more accurate
    assert size.best([{"id": "x", "tflite_gzip_bytes": 10, "selection_accuracy": 0.5, "latency_us": 2, "macs": 1},
                      {"id": "y", "tflite_gzip_bytes": 11, "selection_accuracy": 0.9, "latency_us": 1, "macs": 1}]
                     )["id"] == "x"


class _ModeSearch(_TimedSearch):
    """Rows whose drop depends on the candidate's mode: ``drops[mode]``."""

    def __init__(self, standings, budget_s, drops):
        super().__init__(standings, budget_s, None)
        self.drops = drops

    def evaluate(self, cand):
        self.clock += self.seconds
        drop = self.drops[cand.mode]
        self.standings.rows[cand.id] = {**_row(cand.id, "extend", drop, 1, 40_000, drop <= self.max_drop,
                                               int8={"int8": "ptq", "float32": "", "qat": "qat"}[cand.mode]),
                                        "tflite": cand.tflite_mode, "seconds": self.seconds}


def test_an_extension_whose_int8_file_loses_more_than_the_budget_over_its_float32_gets_qat():
    # 3.0 pt as int8 against 0.4 as float32, on a 0.5-pt budget: the model is fine, its post-training int8 is not
    def standings():
        p95 = [ChainStep("prune", {"sparsity": 0.95})]
        return _standings(0.5, **{"base+int8": ([], _row("base+int8", "int8", 0.0, 1, 100_000, True)),
                                  "perk95+int8": (p95, {**_row("perk95+int8", "prune", 0.8, 1, 40_000, False),
                                                        "seconds": 30.0}),
                                  "perk95+f32": (p95, {**_row("perk95+f32", "prune", 0.9, 1, 40_000, False, int8=""),
                                                       "tflite": "float32", "seconds": 5.0})})
    s = standings()
    search = _ModeSearch(s, 100, {"int8": 3.0, "float32": 0.4, "qat": 0.45})
    extend.extend_stage(search, {})
    assert [r["id"] for r in s.rows.values()][3:6] == ["perk95-e4+int8", "perk95-e4+f32", "perk95-e4+qat"]
    assert s.rows["perk95-e4+qat"]["int8"] == "qat" and s.chains["perk95-e4+qat"][0].fine_tune == {"epochs": 4}
    assert "perk95-e4+int8 lost 3.00 pt, more than the budget over its float32 file: quantization-aware training" \
        in search.lines
    assert extend.wants_qat(s, s.chains["perk95-e4+int8"]) is False  # it has its QAT file now
    # a gap within the budget: no QAT
    s = standings()
    extend.extend_stage(_ModeSearch(s, 100, {"int8": 0.8, "float32": 0.4, "qat": 0.45}), {})
    assert not any(id_.endswith("+qat") for id_ in s.rows)


def test_the_extend_stage_stops_when_the_next_fine_tune_would_not_fit():
    # 4 epochs (60 s) fit in 100 s, 8 epochs (120 s) do not in the 40 s left
    search = _TimedSearch(_near_miss_standings(), 100, lambda e: 0.75 - 0.01 * e)
    assert extend.extend_stage(search, {}) is True
    assert [r["id"] for r in search.standings.rows.values()][2:] == ["perk95-e4+int8"]
    assert search.stop_reason == ("stopped after 1.0 of 1.7 min (60% of the time budget): the next longer fine-tune "
                                  "(perk95-e8+int8, about 2.0 min) would not fit in the 0.7 min left")
    # without a time budget the plan's end is the search's end
    none = _TimedSearch(_near_miss_standings(), None, lambda e: 0.0)
    assert extend.extend_stage(none, {}) is True and not none.events and len(none.standings.rows) == 2


def test_a_budget_below_what_the_selection_split_resolves_is_named_at_the_start():
    assert resolution_note(0.05, 10_000) == ""  # 5 images
    note = resolution_note(0.02, 5_000)
    assert note.startswith("note: a drop of at most 0.02 points is 1.0 of the 5000 selection images (one image is "
                           "0.020 points); the selection split cannot tell such a drop from noise.")
    assert resolution_note(0.0, 250).startswith("note: a drop of at most 0 points is 0.0 of the 250 selection images")


def test_latency_finalists_are_timed_again_in_turn_and_keep_their_fastest_figure(tmp_path, monkeypatch):
    """The fastest files within budget (within FINALIST_SPREAD of the fastest) are timed again, in
    turn, and each keeps its fastest new figure; the slow file, the one over budget and the rows
    of candidates.csv follow."""
    from types import SimpleNamespace

    from tfopt.search import measure
    from tfopt.search.candidates import SearchState, read_rows

    # the first figures: "a" was timed during a busy minute
    s = _standings(0.5, a=([], _row("a", "int8", 0.2, 1, 1, True)), b=([], _row("b", "int8", 0.3, 1, 1, True)),
                   c=([], _row("c", "int8", 0.1, 1, 1, True)), d=([], _row("d", "int8", 0.9, 1, 1, False)))
    s.target = "latency"
    for id_, us in {"a": 100.0, "b": 80.0, "c": 200.0, "d": 10.0}.items():
        s.rows[id_]["latency_us"] = us
        (tmp_path / "cache" / id_).mkdir(parents=True)
        (tmp_path / "cache" / id_ / "model.tflite").write_bytes(id_.encode())
    state = SearchState(tmp_path)
    for row in s.rows.values():
        state.append(row)
    figures = {b"a": iter([70.0, 60.0, 65.0]), b"b": iter([75.0, 72.0, 90.0])}
    calls = []

    def fake_latency(content, sample):
        calls.append(content)
        return next(figures[content])

    monkeypatch.setattr(measure, "latency_us", fake_latency)
    events, lines = [], []
    fake = SimpleNamespace(standings=s, target="latency", out=tmp_path, x_sel=np.zeros((1, 2)), state=state,
                           rows=s.rows, log=lines.append, emit=lambda e, **f: events.append({"event": e, **f}))
    measure.retime_finalists(fake)
    assert calls == [b"b", b"a"] * measure.FINALIST_ROUNDS  # fastest first, in turn
    assert {k: r["latency_us"] for k, r in s.rows.items()} == {"a": 60.0, "b": 72.0, "c": 200.0, "d": 10.0}
    assert s.best()["id"] == "a"
    assert events == [{"event": "retimed", "latency_us": {"a": 60.0, "b": 72.0}, "note": lines[0]}]
    assert lines == ["the 2 fastest files within budget timed again, in turn (3 rounds): a 60 µs, b 72 µs"]
    assert {k: r["latency_us"] for k, r in read_rows(tmp_path / "candidates.csv").items()} == \
        {"a": 60.0, "b": 72.0, "c": 200.0, "d": 10.0}
    # timed again with no new candidate since: nothing is timed
    measure.retime_finalists(fake)
    assert len(calls) == 2 * measure.FINALIST_ROUNDS and len(events) == 1


def test_the_extend_stage_times_the_finalists_again_before_it_chooses_what_to_lengthen(monkeypatch):
    order = []
    search = _TimedSearch(_near_miss_standings(), 3600, lambda e: 0.0)
    monkeypatch.setattr(extend.M, "retime_finalists", lambda s: order.append("retimed"))
    evaluate = search.evaluate
    search.evaluate = lambda cand: (order.append(cand.id), evaluate(cand))[1]
    extend.extend_stage(search, {})
    assert order == ["retimed", "perk95-e4+int8"]


def test_the_choice_is_checked_on_a_confirmation_split_set_aside_from_the_selection_split(small, tmp_path):
    from tfopt import tflite
    from tfopt.search.choice import hold_out

    model, train, sel = small
    result = optimize(model, train, validation_data=sel, max_drop=5.0, target="macs", out=tmp_path / "s", epochs=1,
                      lr=1e-3, levels=(), log=quiet)
    (conf_x, conf_y), rest = hold_out(sel, 1 / 3, 5.0, 0, quiet)  # the search's seed is 0
    assert len(conf_x) == 83 and len(rest[0]) == 167
    input_right = model.predict(conf_x, verbose=0).argmax(1) == conf_y
    chosen_right = tflite.predict(result.tflite, conf_x).argmax(1) == conf_y
    drop = (input_right.mean() - chosen_right.mean()) * 100
    found = result.confirmation
    assert found["images"] == 83 and found["drop_points"] == pytest.approx(drop)
    assert found["confirmed"] == (drop <= 5.0)
    base = float(np.mean(model.predict(rest[0], verbose=0).argmax(1) == rest[1]))
    assert result.chosen["drop_points"] == pytest.approx((base - tflite.accuracy(result.tflite, *rest)) * 100)
    metrics = json.loads((result.out / "chosen" / "metrics.json").read_text())
    assert metrics["confirmation"]["drop_points"] == pytest.approx(drop)
    with open(result.out / "candidates.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert float(rows[result.chosen["id"]]["confirmation_drop_points"]) == pytest.approx(drop)
    report = (result.out / "report.md").read_text()
    assert f"- confirmation split (83 selection images set aside from the choice): drop {drop:.2f} ± " in report
    assert "on the selection split (167 held-out images)" in report
    state = json.loads((result.out / "state.json").read_text())
    assert state["settings"]["confirmation_images"] == 83
