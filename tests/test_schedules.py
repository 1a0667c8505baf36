"""Schedules against their formulas, and LearningRateDecay inside both Keras worlds."""

import math

import numpy as np
import pytest

from tfopt.config.schedules import SCHEDULES, LRPolicy

LR, T = 0.1, 100
FORMULAS = {
    "constant": ({}, lambda t: LR),
    "step": ({"step_size": 30, "gamma": 0.5}, lambda t: LR * 0.5 ** (t // 30)),
    "exponential": ({"decay_rate": 0.5, "decay_steps": 20}, lambda t: LR * 0.5 ** (t / 20)),
    "inverse_time": ({"decay_rate": 2.0, "decay_steps": 10}, lambda t: LR / (1 + 2.0 * t / 10)),
    "inverse_sqrt": ({"k": 0.5}, lambda t: LR / math.sqrt(1 + 0.5 * t)),
    "polynomial": ({"end_lr": 0.001, "power": 2.0}, lambda t: (LR - 0.001) * (1 - t / T) ** 2 + 0.001),
    "cosine": ({"alpha": 0.1}, lambda t: LR * (0.9 * 0.5 * (1 + math.cos(math.pi * t / T)) + 0.1)),
    "piecewise": ({"boundaries": [10, 50], "values": [0.3, 0.2, 0.1]},
                  lambda t: 0.3 if t <= 10 else 0.2 if t <= 50 else 0.1),
}


def sgdr(t, first=10, t_mul=2.0, m_mul=0.5):
    period, peak = first, 1.0
    while t >= period:
        t, period, peak = t - period, period * t_mul, peak * m_mul
    return LR * peak * 0.5 * (1 + math.cos(math.pi * t / period))


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_schedule_matches_formula(name):
    args, formula = FORMULAS[name]
    schedule = SCHEDULES.get({"name": name, **args})
    for t in (0, 1, 9, 10, 11, 33, 50, 51, 99, 100):
        assert schedule.rate(t, LR, T) == pytest.approx(formula(t), rel=1e-12), t


def test_cosine_restarts_matches_sgdr():
    s = SCHEDULES.get({"name": "cosine_restarts", "first_decay_steps": 10, "m_mul": 0.5})
    for t in (0, 5, 9, 10, 15, 29, 30, 31, 69, 70):
        assert s.rate(t, LR, T) == pytest.approx(sgdr(t), rel=1e-12), t


def test_keras_schedules_agree_where_they_overlap():
    import tf_keras

    S = tf_keras.optimizers.schedules
    pairs = [
        (SCHEDULES.get({"name": "exponential", "decay_rate": 0.5, "decay_steps": 20}), S.ExponentialDecay(LR, 20, 0.5)),
        (SCHEDULES.get({"name": "cosine", "alpha": 0.1}), S.CosineDecay(LR, T, alpha=0.1)),
        (SCHEDULES.get({"name": "polynomial", "end_lr": 0.001, "power": 2.0}), S.PolynomialDecay(LR, T, 0.001, 2.0)),
        (SCHEDULES.get({"name": "inverse_time", "decay_rate": 2.0, "decay_steps": 10}), S.InverseTimeDecay(LR, 10, 2.0)),
        (SCHEDULES.get({"name": "cosine_restarts", "first_decay_steps": 10, "m_mul": 0.5}),
         S.CosineDecayRestarts(LR, 10, m_mul=0.5)),
    ]
    for ours, theirs in pairs:
        for t in (0, 7, 25, 64, 99):
            assert ours.rate(t, LR, T) == pytest.approx(float(theirs(t)), rel=1e-5)


def test_warmup_is_linear_then_hands_over():
    p = LRPolicy(initial=0.2, schedule={"name": "cosine"}, warmup=10, warmup_start=0.1)
    assert p.rate(0, 110) == pytest.approx(0.02)
    assert p.rate(5, 110) == pytest.approx(0.02 + 0.18 * 0.5)
    assert p.rate(10, 110) == pytest.approx(0.2)
    assert p.rate(60, 110) == pytest.approx(0.1)


def _fit_logs(keras_module, callback, epochs=4, steps=5):
    x = np.random.default_rng(0).normal(size=(steps * 8, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras_module.Sequential([keras_module.Input((3,)), keras_module.layers.Dense(1)])
    model.compile(keras_module.optimizers.SGD(0.5), "mse")
    hist = model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[callback])
    return hist.history, model


@pytest.mark.parametrize("world", ["tf_keras", "keras"])
def test_learning_rate_decay_per_epoch_in_both_worlds(world):
    import importlib

    from tfopt.callbacks import LearningRateDecay

    km = importlib.import_module(world)
    cb = LearningRateDecay({"name": "step", "step_size": 1, "gamma": 0.5}, per="epoch")
    hist, _ = _fit_logs(km, cb)
    assert hist["lr"] == pytest.approx([0.5, 0.25, 0.125, 0.0625])


@pytest.mark.parametrize("world", ["tf_keras", "keras"])
def test_learning_rate_decay_per_step_warmup(world):
    import importlib

    from tfopt.callbacks import LearningRateDecay

    km = importlib.import_module(world)
    cb = LearningRateDecay("cosine", per="step", initial_lr=0.1, warmup=5)
    hist, _ = _fit_logs(km, cb, epochs=2, steps=5)
    # the last step of each epoch: t = 4 (warm-up: 0.1·4/5) and t = 9 (cosine at 4 of 5)
    assert hist["lr"] == pytest.approx([0.08, 0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 5))], rel=1e-5)


def test_plateau_factor_multiplies_schedule():
    import tf_keras

    from tfopt.callbacks import LearningRateDecay

    cb = LearningRateDecay("constant", per="epoch", plateau={"monitor": "never_improves", "patience": 1,
                                                              "factor": 0.5, "min_delta": 0.0})
    model = tf_keras.Sequential([tf_keras.Input((1,)), tf_keras.layers.Dense(1)])
    model.compile(tf_keras.optimizers.SGD(0.2), "mse")
    cb.set_model(model)
    cb.params = {"epochs": 5, "steps": 1}
    cb.on_train_begin()
    lrs = []
    for epoch in range(5):
        cb.on_epoch_begin(epoch)
        logs = {"never_improves": 1.0}
        cb.on_epoch_end(epoch, logs)
        lrs.append(logs["lr"])
    assert lrs == pytest.approx([0.2, 0.2, 0.1, 0.05, 0.025])
    assert cb.get_state()["factor"] == 0.0625
    assert cb.get_config()["plateau"]["factor"] == 0.5


# -- the same policies inside the optimizer (tfopt.training.lr.PolicySchedule) ------------------------

INSIDE = {**{name: args for name, (args, _) in FORMULAS.items()},
          "cosine_restarts": {"first_decay_steps": 10, "m_mul": 0.5},
          "cosine_restarts_equal_periods": {"first_decay_steps": 7, "t_mul": 1.0, "m_mul": 0.8}}


def _policy(name, **kw):
    from tfopt.config.schedules import LRPolicy

    args = dict(INSIDE[name])
    return LRPolicy(initial=LR, schedule={"name": name.removesuffix("_equal_periods"), **args}, **kw)


def _bias_after_fit(schedule, steps, steps_per_execution=1, jit=False):
    """Train a bias with gradient 1 for ``steps`` SGD steps: it ends at −Σ rate(t)."""
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((1,)), tf_keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(tf_keras.optimizers.SGD(schedule), loss=lambda y, p: p, jit_compile=jit,
                  steps_per_execution=steps_per_execution)
    x = np.zeros((steps, 1), "float32")
    model.fit(x, x, batch_size=1, epochs=1, shuffle=False, verbose=0)
    return -float(model.layers[0].bias.numpy()[0])


@pytest.mark.parametrize("name", sorted(INSIDE))
def test_schedule_inside_the_optimizer_matches_its_formula(name):
    from tfopt.training.lr import PolicySchedule

    policy = _policy(name)
    s = PolicySchedule(policy, steps_per_epoch=10, epochs=10)  # T = 100 steps
    ts = [0, 1, 6, 7, 9, 10, 11, 14, 21, 33, 49, 50, 51, 70, 99, 100]
    got = [float(s(t)) for t in ts]
    assert got == pytest.approx([policy.rate(t, T) for t in ts], rel=1e-6)
    if name != "cosine_restarts_equal_periods":  # the formula of the table above, not only LRPolicy.rate
        assert got == pytest.approx([FORMULAS[name][1](t) for t in ts] if name in FORMULAS
                                    else [sgdr(t) for t in ts], rel=1e-6)
    # applied per step inside a compiled fit, many steps per call: the bias moved by Σ rate(t)
    expected = sum(policy.rate(t, T) for t in range(T))
    assert _bias_after_fit(s, T, steps_per_execution=25) == pytest.approx(expected, rel=1e-5)


def test_warmup_per_epoch_plateau_factor_and_min_lr_inside_the_optimizer():
    from tfopt.config.schedules import LRPolicy
    from tfopt.training.lr import PolicySchedule

    warm = LRPolicy(initial=0.2, schedule={"name": "cosine"}, warmup=10, warmup_start=0.1)
    s = PolicySchedule(warm, steps_per_epoch=11, epochs=10)
    for t in (0, 5, 9, 10, 60, 109):
        assert float(s(t)) == pytest.approx(warm.rate(t, 110), rel=1e-6)
    per_epoch = LRPolicy(initial=0.1, schedule={"name": "step", "step_size": 2, "gamma": 0.5}, per="epoch",
                         plateau={"min_lr": 0.02})
    s = PolicySchedule(per_epoch, steps_per_epoch=3, epochs=6)
    assert [float(s(t)) for t in range(0, 18, 3)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert float(s(5)) == pytest.approx(0.1) and float(s(6)) == pytest.approx(0.05)  # whole epochs
    s.factor.assign(0.5)
    assert [float(s(t)) for t in (0, 6, 12)] == pytest.approx([0.05, 0.025, 0.02])  # floored at min_lr
    # 3 steps per epoch, per-epoch steps of the schedule, 18 steps in one compiled call with XLA
    s.factor.assign(1.0)
    expected = 3 * (0.1 + 0.1 + 0.05 + 0.05 + 0.025 + 0.025)
    assert _bias_after_fit(s, 18, steps_per_execution=18, jit=True) == pytest.approx(expected, rel=1e-5)


def test_policy_schedule_survives_a_save_and_load(tmp_path):
    import tf_keras

    from tfopt.export import load_keras
    from tfopt.training.lr import PolicySchedule

    s = PolicySchedule(_policy("cosine"), steps_per_epoch=10, epochs=10, factor=0.25)
    model = tf_keras.Sequential([tf_keras.Input((1,)), tf_keras.layers.Dense(1)])
    model.compile(tf_keras.optimizers.SGD(s), "mse")
    model.fit(np.ones((20, 1)), np.ones((20, 1)), batch_size=4, verbose=0)
    model.save(tmp_path / "m.keras")
    back = load_keras(tmp_path / "m.keras").optimizer
    assert isinstance(back._learning_rate, PolicySchedule) and int(back.iterations) == 5
    assert float(back._learning_rate(33)) == pytest.approx(0.25 * _policy("cosine").rate(33, T), rel=1e-6)


def test_fine_tune_rate_lives_in_the_optimizer_and_matches_its_formula():
    """The fine-tunes' hold-then-cosine rate runs inside the optimizer, step for step as its formula,
    with many steps per compiled call and no per-step callback."""
    import tf_keras as keras

    from tfopt.config.fine_tune import FineTuneSettings
    from tfopt.training.finetune import fine_tune
    from tfopt.training.lr import HoldThenCosine

    def formula(step, total, hold, floor, lr=0.01):
        start = round(total * hold)
        if step < start or total <= start:
            return lr
        p = min(1.0, (step - start) / max(total - start, 1))
        return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))

    for total, hold, floor in ((37, 0.5, 0.1), (10, 0.0, 0.0), (5, 1.0, 0.1)):
        inside = HoldThenCosine(0.01, total, hold, floor)
        for step in range(total + 2):
            assert float(inside(step)) == pytest.approx(formula(step, total, hold, floor), rel=1e-6), (total, hold, step)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 4)).astype("float32"), rng.integers(0, 3, 96)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
    rows, _ = fine_tune(model, (x, y), FineTuneSettings(epochs=3, lr=0.01, batch_size=16), verbose=0,
                        log=lambda *_: None)
    assert isinstance(model.optimizer._learning_rate, HoldThenCosine)
    assert int(model._steps_per_execution.numpy()) == 6  # one epoch's 6 steps in one call
    assert [r["lr"] for r in rows] == pytest.approx([formula(s, 18, 0.5, 0.1) for s in (5, 11, 17)], rel=1e-6)
