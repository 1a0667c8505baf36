"""tfopt optimize on a digits-sized model: the budget on the selection split, files, resume; TFLite sizes."""

import csv
import json

import numpy as np
import pytest


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


def _bare_search(out, log, *, max_drop, epochs=2, lr=1e-3):
    """A Search with no model and four blank images, for tests of its planning alone."""
    from tfopt.search import engine

    x = np.zeros((4, 8, 8, 1), np.float32)
    y = np.zeros(4, np.int64)
    return engine.Search(None, (x, y), (x, y), out=out, max_drop=max_drop, target="size", time_budget=None,
                         distill=False, epochs=epochs, lr=lr, batch_size=None, temperature=4.0, alpha=0.9, seed=0,
                         max_candidates=None, levels=(1.0,), log=log)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    import tf_keras as keras

    from tfopt.search.engine import optimize

    keras.utils.set_random_seed(0)
    train, sel, test = _digits()
    model = _model(train)
    out = tmp_path_factory.mktemp("opt") / "search"
    lines = []
    result = optimize(model, train, validation_data=sel, test_data=test, max_drop=2.0, target="size", out=out,
                      epochs=1, max_candidates=3, levels=(2.0, 10.0), log=lines.append)
    return model, sel, result, out, lines


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


def test_paired_standard_error_of_a_drop():
    from tfopt.search.engine import paired_drop

    # 1,000 images: the input right on 990; the other file loses 6 of them and wins 2 others
    a = np.r_[np.ones(990), np.zeros(10)].astype(bool)
    b = a.copy()
    b[:6], b[990:992] = False, True
    d = paired_drop(a, b)
    assert (d["lost"], d["won"], d["drop_points"]) == (6, 2, pytest.approx(0.4))
    assert d["standard_error_points"] == pytest.approx(np.sqrt(8 - 16 / 1000) / 1000 * 100)
    assert paired_drop(a, a) == {"drop_points": 0.0, "standard_error_points": 0.0, "lost": 0, "won": 0}


def test_candidates_csv_and_pareto_png_are_written(searched):
    _, _, result, out, lines = searched
    rows = list(csv.DictReader(open(out / "candidates.csv")))
    assert len(rows) == 3
    assert rows[0]["id"] == "base+int8"
    assert all(int(r["tflite_gzip_bytes"]) < int(r["tflite_raw_bytes"]) for r in rows if not r["error"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert f"## Chosen: `{result.chosen['id']}`" in report
    assert "optimize:" in (out / "optimize.yaml").read_text()
    assert any("best so far" in line for line in lines)
    assert any(line.startswith("candidate limit (3)") for line in lines)


def test_resume_keeps_finished_candidates_and_continues(searched, tmp_path):
    import shutil

    from tfopt.errors import TfoptError
    from tfopt.search.engine import optimize

    model, sel, _, out, _ = searched
    train, _, test = _digits()
    copy = tmp_path / "search"
    shutil.copytree(out, copy)
    before = list(csv.DictReader(open(copy / "candidates.csv")))
    with pytest.raises(TfoptError, match="already holds a search; pass resume=True"):
        optimize(model, train, validation_data=sel, out=copy, max_candidates=4)
    with pytest.raises(TfoptError, match=r"ran with other settings \(epochs 1 -> 2, levels \[2.0, 10.0\] -> "
                                         r"\[1.0, 10.0\]\); its candidates would not match"):
        optimize(model, train, validation_data=sel, max_drop=2.0, out=copy, epochs=2, max_candidates=4,
                 levels=(1.0, 10.0), resume=True)
    lines = []
    optimize(model, train, validation_data=sel, test_data=test, max_drop=2.0, out=copy, epochs=1, max_candidates=4,
             levels=(2.0, 10.0), resume=True, log=lines.append)
    after = list(csv.DictReader(open(copy / "candidates.csv")))
    assert after[:3] == before  # kept as they were, not rerun
    assert len(after) == 4
    # the next stage builds on the best of the finished candidates, as it would have without the stop
    best = min((r for r in before if r["meets_budget"] == "True"), key=lambda r: int(r["tflite_gzip_bytes"]))
    # (after the channel sweep, a deeper cut of fc1, the group holding the most kernel weights)
    cut = json.loads(after[3]["steps"].removeprefix("channels ").split(" -> ")[0])["per_layer"]
    was = {} if best["id"] == "base+int8" else json.loads(best["steps"].removeprefix("channels ").split(" -> ")[0])["per_layer"]
    assert after[3]["stage"] == "channels" and cut.pop("fc1") > was.pop("fc1", 0.0), (after[3], best)
    assert cut == was
    assert "resuming: 3 finished candidate(s)" in lines[1] or any("resuming: 3" in line for line in lines)
    # the three finished candidates were not evaluated again, nor the rate probed again
    assert sum(line.startswith("[") for line in lines) == 1
    assert not any(line.startswith("rate probe:") for line in lines)
    probed = [line for line in lines if line.startswith("fine-tune rate:")]
    assert len(probed) == 1 and probed[0].split()[2] == f"{_first_rate(searched[4]):g}"


def _first_rate(lines):
    return float(next(line for line in lines if line.startswith("fine-tune rate:")).split()[2])


def test_the_search_probes_its_fine_tune_rate_and_uses_it(searched):
    import yaml

    from tfopt.search.engine import PROBE_RATES

    _, _, result, out, lines = searched
    probes = [line for line in lines if line.startswith("rate probe: one epoch at ")]
    assert 1 <= len(probes) <= len(PROBE_RATES)
    rate = _first_rate(lines)
    assert rate in PROBE_RATES
    state = __import__("json").loads((out / "state.json").read_text())
    assert [p["lr"] for p in state["rate_probe"]] == list(PROBE_RATES[:len(probes)])
    steps = yaml.safe_load((out / "optimize.yaml").read_text())["optimize"]["steps"]
    tuned = [next(iter(s.values())) for s in steps if "quantize" not in s]
    assert all(t["lr"] == rate for t in tuned)
    assert f"Fine-tune rate: {rate:g} (probed: " in (out / "report.md").read_text()


@pytest.mark.parametrize("drops, chosen", [
    ((0.05,), 1e-3),                 # the first rate is harmless: nothing more is probed
    ((0.5, 0.09, 0.0), 3e-4),        # stops at the first rate within a third of the 0.3-pt budget
    ((0.5, 0.4, 0.2), 1e-4),         # none within it: the least harmful
    ((0.5, 0.15, 0.3), 3e-4),
])
def test_rate_probe_keeps_the_highest_rate_within_a_third_of_the_budget(tmp_path, monkeypatch, drops, chosen):
    from tfopt.search import engine

    lines = []
    search = _bare_search(tmp_path, lines.append, max_drop=0.3, epochs=2, lr=None)
    search.base_acc = 0.99
    calls = []
    monkeypatch.setattr(engine.S, "fine_tuned", lambda model, data, fit: calls.append(fit) or fit["lr"])
    monkeypatch.setattr(engine.S, "accuracy", lambda lr, xs, ys: 0.99 - drops[engine.PROBE_RATES.index(lr)] / 100)
    search.choose_rate()
    assert search.fit["lr"] == chosen
    n = next((i + 1 for i, d in enumerate(drops) if d <= 0.1), len(drops))
    assert [c["lr"] for c in calls] == list(engine.PROBE_RATES[:n])
    assert all(c["epochs"] == 1 for c in calls) and search.fit["epochs"] == 2
    # a given rate is kept as it is, without a probe
    fixed = _bare_search(tmp_path, lines.append, max_drop=0.3, epochs=2, lr=5e-4)
    fixed.choose_rate()
    assert fixed.fit["lr"] == 5e-4 and len(calls) == n


def test_bad_target_and_budget_are_refused(tmp_path):
    from tfopt.errors import TfoptError
    from tfopt.search.engine import _parse_budget, optimize

    with pytest.raises(TfoptError, match="target must be one of size, latency, macs; got 'speed'"):
        optimize(None, None, target="speed", out=tmp_path)
    assert _parse_budget("30m") == 1800 and _parse_budget("1h") == 3600 and _parse_budget(90) == 90
    with pytest.raises(TfoptError, match="expected seconds or a duration such as 30m, 1h, 90s; got 'soon'"):
        _parse_budget("soon")


def test_pareto_front_keeps_only_undominated_rows():
    from tfopt.search.engine import pareto_front

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


def test_fine_tunes_see_augmented_images_when_asked(searched, tmp_path, monkeypatch):
    """``augment`` gives the search's fine-tunes a shifted-image pipeline; sensitivity and calibration keep
    the arrays."""
    import tensorflow as tf

    from tfopt.errors import TfoptError
    from tfopt.search import engine

    train, sel, _ = _digits()
    made = []
    monkeypatch.setattr(engine.Search, "search", lambda self: made.append(self) or setattr(self, "base_acc", 0.5))
    lines = []
    with pytest.raises(TfoptError, match=r"no candidate finished \(time budget none, candidate limit none\)"):
        engine.optimize(searched[0], train, validation_data=sel, out=tmp_path / "s", augment={"translate": 0.25},
                        log=lines.append)
    (search,) = made
    assert isinstance(search.train, tf.data.Dataset) and isinstance(search.data, tuple)
    assert "fine-tunes augment their training images: {'translate': 0.25}" in lines
    x, y = next(iter(search.train))
    assert x.shape[1:] == (8, 8, 1) and len(x) == 32
    # shifted by whole pixels: some images differ from every original
    originals = {train[0][i].tobytes() for i in range(len(train[0]))}
    assert sum(img.tobytes() not in originals for img in x.numpy()) > 0
    made.clear()
    with pytest.raises(TfoptError):
        engine.optimize(searched[0], train, validation_data=sel, out=tmp_path / "t", log=lines.append)
    assert made[0].train is made[0].data  # no augmentation asked: the arrays themselves


def test_latency_search_measures_float32_files_too(searched, tmp_path):
    """For --target latency every chain is measured as int8 and as float32; the fastest within budget wins."""
    from tfopt import tflite
    from tfopt.search.engine import optimize

    train, sel, _ = _digits()
    model = searched[0]
    result = optimize(model, train, validation_data=sel, max_drop=5.0, target="latency", out=tmp_path / "s",
                      epochs=1, max_candidates=4, levels=(10.0,), log=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "s" / "candidates.csv")))
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


def test_latency_search_folds_pools_without_changing_the_predictions(searched, tmp_path):
    """The fold_pool stage rewrites the best chain exactly: its Keras model predicts what its
    parent predicts, and its file is measured as int8 and float32 like every chain."""
    from tfopt.search.engine import optimize

    train, sel, _ = _digits()
    lines = []
    optimize(searched[0], train, validation_data=sel, max_drop=5.0, target="latency", out=tmp_path / "s", epochs=1,
             max_candidates=8, levels=(10.0,), log=lines.append)
    rows = {r["id"]: r for r in csv.DictReader(open(tmp_path / "s" / "candidates.csv"))}
    folded = [r for r in rows.values() if r["stage"] == "fold_pool"]
    assert [r["tflite"] for r in folded] == ["int8", "float32"]
    # the chain it folded: the best within budget before the stage ("base" when that is the input model)
    prefix = folded[0]["id"][:folded[0]["id"].index("fp-")].rstrip("+")
    parent = (prefix or "base") + "+int8"
    assert float(folded[0]["keras_selection_accuracy"]) == float(rows[parent]["keras_selection_accuracy"])
    assert float(folded[0]["macs"]) > float(rows[parent]["macs"])  # 4 filter groups of a kernel one larger
    assert any(line.strip().startswith("step fold_pool {\"layers\": [") for line in lines)


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


def test_a_ladder_ends_at_its_first_hopeless_rung(tmp_path):
    from tfopt.search import engine

    lines = []
    search = _bare_search(tmp_path, lines.append, max_drop=0.2, epochs=1, lr=1e-3)
    drops = {"p1+int8": 0.1, "p2+int8": 0.35, "p3+int8": 0.41, "p4+int8": 0.1, "c16+int8": 0.5, "c8+int8": 0.0}
    done = []

    def evaluate(cand):
        done.append(cand.id)
        search.rows[cand.id] = {"id": cand.id, "drop_points": drops[cand.id], "error": ""}

    search.evaluate = evaluate
    prune = [engine.Candidate([engine.Step("prune", {"level": i})], "prune") for i in (1, 2, 3, 4)]
    cluster = [engine.Candidate([engine.Step("cluster", {"clusters": c})], "cluster") for c in (16, 8)]
    assert search.run_stage("prune", [prune, cluster])
    # 0.35 is a near miss of a 0.2-pt budget (within twice it): the ladder goes on; 0.41 is not
    assert done == ["p1+int8", "p2+int8", "p3+int8", "c16+int8"]
    assert "    p3+int8 lost 0.41 pt, over 2× the budget: skipping p4+int8" in lines
    assert "    c16+int8 lost 0.50 pt, over 2× the budget: skipping c8+int8" in lines
    # a resumed search reads the finished rows and skips the same rungs
    done.clear()
    assert search.run_stage("prune", [prune, cluster]) and done == []


def test_size_search_spreads_and_ranks_the_way_that_loses_least(tmp_path, monkeypatch):
    from tfopt.search import engine
    from tfopt.search import steps as S

    lines = []
    search = _bare_search(tmp_path, lines.append, max_drop=0.5, epochs=2, lr=1e-3)
    scales = {"fc": {"kernel": np.ones((4, 1), np.float32)}}
    accs = {("erk", None): 0.48, ("er", None): 0.88, ("erk", "act"): 0.50, ("er", "act"): 0.80}
    monkeypatch.setattr(S, "input_scales", lambda model, x: scales)
    monkeypatch.setattr(S, "allocation_accuracy", lambda model, x, y, sparsity, allocation, ranked=None:
                        accs[allocation, "act" if ranked is scales else None])
    ladder = search.sparsity_ladder([], None)
    assert [chain[-1].knobs for chain in ladder] == [
        {"level": f"er{p}", "sparsity": p / 100, "allocation": "er"} for p in (80, 90, 95, 97)]
    assert [engine._key(chain) for chain in ladder] == ["per80", "per90", "per95", "per97"]
    assert ("pruning at once to 90%, without fine-tuning: erk by magnitude 48.00%, er by magnitude 88.00%, "
            "erk by activation 50.00%, er by activation 80.00%; spreading by er, ranking by magnitude") in lines
    assert engine._recipe_steps(ladder[1], False, search.fit)[0] == {
        "prune": {"sparsity": 0.9, "layers": {}, "skip": [], "allocation": "er", "epochs": 2, "lr": 0.001}}
    accs["er", "act"] = 0.90  # the activation criterion keeps more: its chains say so in their ids and recipes
    ladder = search.sparsity_ladder([], None, (0.8,))
    assert [engine._key(chain) for chain in ladder] == ["per80act"]
    assert ladder[0][-1].knobs == {"level": "er80act", "sparsity": 0.8, "allocation": "er", "criterion": "activation"}
    assert engine._recipe_steps(ladder[0], False, search.fit)[0]["prune"]["criterion"] == "activation"
    accs.update(dict.fromkeys(accs, 0.48))  # a tie keeps erk by magnitude: the names they had
    assert [engine._key(chain) for chain in search.sparsity_ladder([], None, (0.8,))] == ["perk80"]


def test_size_search_cuts_the_layer_with_the_most_weights_deeper(tmp_path, monkeypatch):
    from tfopt.search import engine
    from tfopt.search import steps as S

    lines = []
    search = _bare_search(tmp_path, lines.append, max_drop=0.5)
    monkeypatch.setattr(S, "prunable_layers", lambda model: {"fc1": 235_200, "fc2": 30_000, "fc3": 1_000})
    monkeypatch.setattr(S, "channel_groups", lambda model: ["fc1", "fc2"])
    search.chains = {"ch3+int8": [engine.Step("channels", {"level": 3, "per_layer": {"fc1": 0.5, "fc2": 0.5}})]}
    monkeypatch.setattr(search, "best", lambda: {"id": "ch3+int8"})
    chains = search.deeper_channels(4)
    assert [c[0].knobs for c in chains] == [{"level": 5 + i, "per_layer": {"fc1": r, "fc2": 0.5}}
                                            for i, r in enumerate((0.7, 0.8, 0.9))]
    assert [engine._key(c) for c in chains] == ["ch5", "ch6", "ch7"]
    assert "fc1 holds the most kernel weights (235,200): cutting 70%, 80%, 90% of its channels on top of ch3" in lines
    monkeypatch.setattr(search, "best", lambda: None)  # no channel candidate within budget: from the input
    assert [c[0].knobs["per_layer"] for c in search.deeper_channels(0)] == [{"fc1": r} for r in (0.5, 0.7, 0.8, 0.9)]
    # a probed rate below the highest: the deep cuts, far from the trained minimum, fine-tune at the highest
    search.probe, search.fit["lr"] = [{"lr": 1e-3, "drop_points": 0.2}, {"lr": 3e-4, "drop_points": 0.1}], 3e-4
    chains = search.deeper_channels(0)
    assert chains[0][0].knobs == {"level": 1, "per_layer": {"fc1": 0.5}, "lr": 1e-3}
    assert engine._recipe_steps(chains[0], False, search.fit)[0] == {
        "structured": {"ratio": 0.0, "per_layer": {"fc1": 0.5}, "epochs": 2, "lr": 1e-3}}
    assert "fc1 holds the most kernel weights (235,200): cutting 50%, 70%, 80%, 90% of its channels, fine-tuned " \
           "at 0.001" in lines
    search.chains["p1+int8"] = [engine.Step("prune", {"level": 1})]
    monkeypatch.setattr(search, "best", lambda: {"id": "p1+int8"})  # the best is not a channel cut: none
    assert search.deeper_channels(0) == []


def _row(id_, stage, drop, nonzero, gzip, meets, int8="ptq"):
    return {"id": id_, "stage": stage, "drop_points": drop, "nonzero_params": nonzero, "tflite_gzip_bytes": gzip,
            "meets_budget": meets, "int8": int8, "selection_accuracy": 0.99 - drop / 100, "latency_us": 1.0,
            "macs": 1, "error": ""}


def test_size_search_prunes_from_a_start_with_headroom_and_fine_tunes_a_near_miss_longer(tmp_path, monkeypatch):
    from tfopt.search import engine
    from tfopt.search import steps as S

    lines = []
    search = _bare_search(tmp_path, lines.append, max_drop=0.5, epochs=20)
    ch = {i: [engine.Step("channels", {"level": i, "per_layer": {"fc1": r}})] for i, r in ((3, 0.5), (6, 0.8))}
    search.chains = {"base+int8": [], "ch3+int8": ch[3], "ch6+int8": ch[6]}
    search.rows = {r["id"]: r for r in (_row("base+int8", "int8", 0.0, 266_000, 248_000, True),
                                         _row("ch3+int8", "channels", 0.13, 125_000, 115_000, True),
                                         _row("ch6+int8", "channels", 0.47, 50_000, 47_000, True))}
    # ch6 is the smallest within budget, but has used 0.47 of the 0.5 pt; ch3 has used 0.13
    assert engine._key(search.base_chain()) == "ch6"
    assert engine._key(search.prune_start()) == "ch3"
    search.rows["ch6+int8"]["drop_points"] = 0.25  # at most half the budget: ch6 itself
    assert engine._key(search.prune_start()) == "ch6"
    search.rows["ch6+int8"]["drop_points"] = 0.47
    # the prune stage: every ladder on ch3; the overall targets also on ch6, the best; the harsher ones on the input
    how = {"allocation": "erk", "criterion": "activation", "scales": None}
    monkeypatch.setattr(search, "keras_model", lambda chain: engine._key(chain))
    monkeypatch.setattr(search, "choose_pruning", lambda model: how)
    monkeypatch.setattr(S, "magnitude_sensitivity", lambda model, x, y, scales=None: [
        {"layer": "fc1", "ratio": 0.5, "accuracy": 0.99}, {"layer": "fc1", "ratio": 0.75, "accuracy": 0.985},
        {"layer": "fc2", "ratio": 0.5, "accuracy": 0.97}])
    monkeypatch.setattr(S, "accuracy", lambda model, x, y: 0.99)
    monkeypatch.setattr(S, "prunable_layers", lambda model: {"fc1": 1, "fc2": 1})
    assert [[engine._key(c) for c in ladder] for ladder in search.prune_ladders()] == [
        ["ch3+p1act"], [f"ch3+perk{p}act" for p in (80, 90, 95, 97)], [f"ch6+perk{p}act" for p in (80, 90, 95, 97)],
        [f"perk{p}act" for p in (90, 95, 97)]]
    assert search.prune_ladders()[0][0][-1].knobs == {"level": "1act", "layers": {"fc1": 0.75}, "sparsity": 0.75,
                                                      "skip": ["fc2"], "criterion": "activation"}

    p90 = ch[3] + [engine.Step("prune", {"level": "erk90act", "sparsity": 0.9, "criterion": "activation"})]
    p95 = ch[3] + [engine.Step("prune", {"level": "erk95act", "sparsity": 0.95, "criterion": "activation"})]
    p97 = ch[3] + [engine.Step("prune", {"level": "erk97act", "sparsity": 0.97, "criterion": "activation"})]
    search.chains |= {"ch3+perk90act+int8": p90, "ch3+perk95act+int8": p95, "ch3+perk97act+int8": p97}
    search.rows |= {r["id"]: r for r in (_row("ch3+perk90act+int8", "prune", 0.37, 12_500, 24_000, True),
                                         _row("ch3+perk95act+int8", "prune", 0.80, 6_300, 18_000, False),
                                         _row("ch3+perk97act+int8", "prune", 1.20, 3_800, 14_000, False))}
    assert search.best()["id"] == "ch3+perk90act+int8"
    # 95% missed by 0.30 pt (97% by more than twice the budget): pruned again over 3 × 20 epochs
    assert [[engine._key(c) for c in ladder] for ladder in search.longer_chains()] == [["ch3+perk95act-e60"]]
    long = search.longer_chains()[0][0]
    assert long[-1].knobs == {**p95[-1].knobs, "epochs": 60}
    assert engine._recipe_steps(long + [engine.Step("cluster", {"clusters": 8})], False, search.fit)[1:3] == [
        {"prune": {"sparsity": 0.95, "layers": {}, "skip": [], "criterion": "activation", "epochs": 60, "lr": 1e-3}},
        {"cluster": {"clusters": 8, "epochs": 20, "lr": 1e-3}}]
    assert lines[-1] == ("ch3+perk95act+int8 missed by 0.30 pt with 6,300 non-zero weights (the best keeps 12,500): "
                         "pruning again over 60 epochs")
    # 97% within twice the budget: it keeps the fewest weights and goes first; 95% lost least and follows
    search.rows["ch3+perk97act+int8"]["drop_points"] = 0.95
    assert [[engine._key(c) for c in ladder] for ladder in search.longer_chains()] == [
        ["ch3+perk97act-e60"], ["ch3+perk95act-e60"]]
    search.rows["ch3+perk97act+int8"]["drop_points"] = 1.2
    # a near miss that keeps more weights than the best is no use
    search.rows["ch3+perk95act+int8"]["nonzero_params"] = 13_000
    assert search.longer_chains() == []
    # overall targets go beyond what the sweep tolerated: at the highest probed rate when a lower one was chosen
    how = {"allocation": "erk", "criterion": "activation"}
    assert "lr" not in search.sparsity_ladder(ch[3], None, (0.9,), how=how)[0][-1].knobs  # lr was given
    search.probe, search.fit["lr"] = [{"lr": 1e-3, "drop_points": 0.2}, {"lr": 3e-4, "drop_points": 0.1}], 3e-4
    assert search.sparsity_ladder(ch[3], None, (0.9,), how=how)[0][-1].knobs == {
        "level": "erk90act", "sparsity": 0.9, "criterion": "activation", "lr": 1e-3}


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


def test_qat_goes_to_the_near_misses_that_lost_least(tmp_path):
    from tfopt.search import engine

    search = _bare_search(tmp_path, lambda *_: None, max_drop=0.5, epochs=2, lr=1e-3)
    search.base_acc = 0.9333
    # id: (selection drop, gzip bytes, Keras selection drop)
    rows = {"base": (0.0, 363_000, 0.0), "ch1": (0.27, 125_000, 0.2), "ch2": (0.90, 77_000, 0.9),
            "p90": (0.73, 77_100, 0.7), "ch1+c16": (0.90, 86_700, 0.9), "ch1+c8": (0.57, 61_800, 0.5),
            "ch1+c4": (1.20, 45_000, 1.1), "p95": (0.45, 130_000, 0.4), "ch1+c2": (0.80, 40_000, 0.3)}
    search.chains = {}
    for key, (drop, size, keras_drop) in rows.items():
        chain = [] if key == "base" else [engine.Step("prune", {"level": key})]
        search.chains[key + "+int8"] = chain
        search.rows[key + "+int8"] = {"id": key + "+int8", "error": "", "int8": "ptq", "drop_points": drop,
                                      "meets_budget": drop <= 0.5, "tflite_gzip_bytes": size,
                                      "latency_us": 50.0, "macs": 1,
                                      "selection_accuracy": search.base_acc - drop / 100,
                                      "keras_selection_accuracy": search.base_acc - keras_drop / 100}
    # a row of another search in the same folder, not planned in this one, is left alone
    search.rows["other+int8"] = {**search.rows["ch1+c8+int8"], "id": "other+int8", "drop_points": 0.51}
    chosen = search.qat_chains()
    by_chain = {id(c): k for k, c in search.chains.items()}
    # int8 lost what Keras kept: ch1+c2 (Keras 0.3 pt, int8 0.8 pt); near misses that lost least and are
    # smaller than the best (ch1, 125 kB): ch1+c8 (0.57 pt), then p90 (0.73); ch1+c4 lost over twice the budget
    assert [by_chain[id(c)] for c in chosen] == ["ch1+c2+int8", "ch1+c8+int8", "p90+int8"]


def test_a_chain_that_qat_made_the_best_is_clustered_too(tmp_path):
    from tfopt.search import engine

    search = _bare_search(tmp_path, lambda *_: None, max_drop=0.5)
    ch1 = [engine.Step("channels", {"level": 1})]
    p90 = [engine.Step("prune", {"level": "er90", "sparsity": 0.9})]
    c8 = ch1 + [engine.Step("cluster", {"clusters": 8})]

    def row(cand, drop, size):
        search.chains[cand.id] = cand.chain
        search.rows[cand.id] = {"id": cand.id, "error": "", "int8": "qat" if cand.qat else "ptq",
                                "drop_points": drop, "meets_budget": drop <= 0.5, "tflite_gzip_bytes": size,
                                "selection_accuracy": 0.93 - drop / 100, "latency_us": 1.0, "macs": 1}

    search.chains = {}
    row(engine.Candidate(ch1, "channels"), 0.27, 124_929)
    row(engine.Candidate(p90, "prune"), 0.73, 77_042)
    row(engine.Candidate(c8, "cluster"), 0.57, 61_750)
    assert search.recluster_start(ch1) is None  # the best (ch1, post-training int8) was the cluster stage's start
    row(engine.Candidate(c8, "qat", qat=True), 0.45, 69_891)
    assert search.recluster_start(ch1) is None  # the new best is clustered already
    row(engine.Candidate(p90, "qat", qat=True), 0.47, 75_840)
    search.rows["ch1+c8+qat"]["meets_budget"] = False
    assert search.best()["id"] == "per90+qat" and search.recluster_start(ch1) == p90
    assert search.recluster_start(p90) is None


def test_the_search_learns_from_a_named_teacher(searched, tmp_path, monkeypatch):
    import tf_keras as keras
    import yaml

    from tfopt.distill import TeacherTargets
    from tfopt.errors import TfoptError
    from tfopt.search import engine

    model = searched[0]
    train, sel, test = _digits()
    teacher = keras.models.clone_model(model)
    teacher.set_weights([w * 1.5 for w in model.get_weights()])
    teacher.save(tmp_path / "teacher.keras")
    with pytest.raises(TfoptError, match=r"^optimize: a teacher is for distillation, which distill=False "
                                         r"\(--no-distill\) turns off$"):
        engine.optimize(model, train, validation_data=sel, out=tmp_path / "a", teacher=teacher, distill=False)
    wide = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)], name="three")
    with pytest.raises(TfoptError) as info:
        engine.optimize(model, train, validation_data=sel, out=tmp_path / "b", teacher=wide)
    assert str(info.value) == ("teacher: the model 'three' outputs 3 where the model being optimized outputs 10; "
                               "a teacher must take the same inputs and give as many outputs.")
    assert not (tmp_path / "b").exists()

    lines = []
    result = engine.optimize(model, train, validation_data=sel, test_data=test, max_drop=2.0, out=tmp_path / "s",
                             epochs=1, lr=1e-3, max_candidates=1, levels=(2.0,), teacher=str(tmp_path / "teacher.keras"),
                             log=lines.append)
    report = (result.out / "report.md").read_text()
    assert f"Distillation: on, from {tmp_path / 'teacher.keras'}." in report
    assert yaml.safe_load((result.out / "optimize.yaml").read_text())["optimize"]["distill"] == {
        "temperature": 4.0, "alpha": 0.9, "teacher": str(tmp_path / "teacher.keras")}
    state = json.loads((result.out / "state.json").read_text())
    assert state["settings"]["teacher"] == engine._weights_digest(teacher)
    # a resumed search must learn from the same teacher
    with pytest.raises(TfoptError, match=r"ran with other settings \(teacher '[0-9a-f]{16}' -> None\)"):
        engine.optimize(model, train, validation_data=sel, max_drop=2.0, out=tmp_path / "s", epochs=1, lr=1e-3,
                        max_candidates=2, levels=(2.0,), resume=True)

    made = []
    monkeypatch.setattr(engine.Search, "search", lambda self: made.append(self) or setattr(self, "base_acc", 0.5))
    with pytest.raises(TfoptError, match="no candidate finished"):
        engine.optimize(model, train, validation_data=sel, out=tmp_path / "c", teacher=teacher)
    stored = made[0].fit["teacher"]  # the teacher's outputs on the training images, computed once
    assert isinstance(stored, TeacherTargets) and stored.covers(made[0].train)
    for a, b in zip(stored.model.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert made[0].model is not stored.model
    np.testing.assert_allclose(stored.outputs[0], teacher.predict(made[0].data[0], verbose=0), atol=1e-6)
