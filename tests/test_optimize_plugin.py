"""A registered step that declares a ladder is a stage of ``tfopt optimize``: no edit of the search."""

import csv

import numpy as np
import pytest

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.interop import load_as_tf_keras
from tfopt.search.candidates import ChainStep
from tfopt.search.engine import optimize
from tfopt.search.report import recipe_steps
from tfopt.steps import STEPS, register
from tests.toy_steps import ZeroSmallConfig, zero_small

#: Thresholds that zero weights of this model whatever the earlier stages made of it (its clustered
#: kernels keep values near 0.1).
THRESHOLDS = (0.2, 0.4)


def kernels(model) -> list:
    return [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]


@pytest.fixture
def zero_step():
    register("zero_small", ZeroSmallConfig, "zeroed", zero_small,
             ladders={"size": [{"threshold": t} for t in THRESHOLDS]}, token=lambda s: f"z{s['threshold']}")
    yield STEPS["zero_small"]
    STEPS.unregister("zero_small")


@pytest.fixture(scope="module")
def digits():
    """A softmax regression on the 8×8 digits: one kernel, no channel group to cut, quick fine-tunes."""
    import tf_keras as keras
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(10, activation="softmax", name="fc")])
    m.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    m.fit(x[:1300], y[:1300], epochs=10, batch_size=32, verbose=0)
    return m, (x[:1300], y[:1300]), (x[1300:1550], y[1300:1550])


@pytest.mark.slow
def test_a_registered_step_with_a_ladder_is_searched(zero_step, digits, tmp_path):
    model, train, sel = digits
    events = []
    out = tmp_path / "search"
    result = optimize(model, train, validation_data=sel, max_drop=1.0, target="size", out=out, epochs=1, lr=1e-3,
                      levels=(), max_candidates=20, log=lambda *_: None, on_event=events.append)
    rows = list(csv.DictReader(open(out / "candidates.csv")))
    zeroed = [r for r in rows if r["stage"] == "zero_small"]
    assert zeroed and all(any(f"+z{t}+" in "+" + r["id"] for t in THRESHOLDS) for r in zeroed)
    assert "zero_small" in [e["name"] for e in events if e["event"] == "stage"]
    # the step's stage follows the built-in Keras-level stages and comes before QAT
    stages = [r["stage"] for r in rows]
    assert stages.index("zero_small") > max(i for i, s in enumerate(stages) if s in ("int8", "prune", "cluster"))
    assert all(s == "qat" for s in stages[stages.index("zero_small"):] if s != "zero_small")
    assert result.chosen["meets_budget"]

    added = []
    for row in zeroed:
        chain_id = row["id"].removesuffix("+int8")
        parent_id, token = chain_id.rpartition("+")[0], chain_id.rpartition("+")[2]
        threshold = float(token.removeprefix("z"))
        parent = load_as_tf_keras(out / "cache" / parent_id / "model.keras")[0] if parent_id else model
        child = load_as_tf_keras(out / "cache" / chain_id / "model.keras")[0]
        for before, after in zip(kernels(parent), kernels(child)):
            small = np.abs(before) < threshold
            assert int((after == 0).sum()) == int(small.sum())
            np.testing.assert_array_equal(after[~small], before[~small])
            added.append(int(small.sum()) - int((before == 0).sum()))
    assert max(added) > 0  # some weights were zeroed that were not zero before


def test_a_registered_steps_chain_is_written_as_recipe_steps_its_config_accepts(zero_step):
    chain = [ChainStep("zero_small", {"threshold": 0.05})]
    steps = recipe_steps(chain, "int8", FineTuneSettings(epochs=2, lr=1e-3))
    # the toy config takes the fine-tune fields too: the chain's epochs and rate are written with it
    assert steps == [{"zero_small": {"threshold": 0.05, "epochs": 2, "lr": 0.001}}, {"quantize": {"mode": "int8"}}]
    assert STEPS["zero_small"].configure(steps[0]["zero_small"]).threshold == 0.05
