"""Knowledge distillation: the loss against its formula, and Distiller training only the student."""

import numpy as np
import pytest


def _np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _np_expected(y, s_logits, t_logits, T, alpha):
    p_t = _np_softmax(t_logits / T)
    p_s = _np_softmax(s_logits / T)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1).mean()
    hard = -np.log(_np_softmax(s_logits)[np.arange(len(y)), y]).mean()
    return alpha * T ** 2 * kl + (1 - alpha) * hard


@pytest.mark.parametrize("T,alpha", [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (3.0, 1.0)])
def test_loss_matches_formula_with_logits(T, alpha):
    import tf_keras as keras

    from tfopt.distill import distillation_loss

    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 5)).astype(np.float32) * 3, rng.normal(size=(6, 5)).astype(np.float32) * 3
    y = rng.integers(0, 5, size=6)
    got = float(distillation_loss(y, s, t, temperature=T, alpha=alpha, from_logits=True,
                                  hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
    assert got == pytest.approx(_np_expected(y, s, t, T, alpha), rel=1e-5)


def test_loss_with_probabilities_equals_loss_with_their_logits():
    import tf_keras as keras

    from tfopt.distill import distillation_loss

    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=8)
    probs = distillation_loss(y, _np_softmax(s), _np_softmax(t), temperature=4.0, alpha=0.7, from_logits=False,
                              hard_loss=keras.losses.SparseCategoricalCrossentropy())
    assert float(probs) == pytest.approx(_np_expected(y, s, t, 4.0, 0.7), rel=1e-4)


def test_identical_outputs_leave_only_the_hard_term():
    import tf_keras as keras

    from tfopt.distill import distillation_loss

    s = np.array([[2.0, -1.0, 0.5]], np.float32)
    y = np.array([0])
    got = float(distillation_loss(y, s, s, temperature=4.0, alpha=0.9, from_logits=True,
                                  hard_loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
    assert got == pytest.approx(0.1 * -np.log(_np_softmax(s)[0, 0]), rel=1e-5)


def test_bad_temperature_and_alpha_are_refused():
    import tf_keras as keras

    from tfopt.distill import distillation_loss
    from tfopt.errors import TfoptError

    s = np.zeros((1, 3), np.float32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with pytest.raises(TfoptError, match="temperature must be > 0; got 0"):
        distillation_loss([0], s, s, temperature=0, alpha=0.5, hard_loss=loss, from_logits=True)
    with pytest.raises(TfoptError, match=r"alpha .* must be in \[0, 1\]; got 1.5"):
        distillation_loss([0], s, s, temperature=2, alpha=1.5, hard_loss=loss, from_logits=True)


def _mlp(seed, units=16, name=None):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(units, activation="relu"),
                             keras.layers.Dense(3, activation="softmax")], name=name)


def test_distiller_fit_trains_only_the_student():
    import tf_keras as keras

    from tfopt.distill import Distiller

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    teacher, student = _mlp(1, 32, "teacher"), _mlp(2, 8, "student")
    t_before = [w.copy() for w in teacher.get_weights()]
    s_before = [w.copy() for w in student.get_weights()]
    d = Distiller(student, teacher, temperature=3.0, alpha=0.8)
    d.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy(),
              metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    hist = d.fit(x, y, epochs=3, batch_size=32, verbose=0, validation_data=(x, y))
    for a, b in zip(t_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(np.abs(a - b).max() > 0 for a, b in zip(s_before, student.get_weights()))
    assert d.student is student
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    # predict and evaluate go through the student alone
    np.testing.assert_allclose(d.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6)
    val = d.evaluate(x, y, verbose=0, return_dict=True)
    expected = float(keras.losses.SparseCategoricalCrossentropy()(y, student.predict(x, verbose=0)))
    assert val["loss"] == pytest.approx(expected, rel=1e-4)


def test_distiller_pulls_student_towards_teacher():
    """With alpha=1 the student learns only from the teacher: its outputs approach the teacher's."""
    import tf_keras as keras

    from tfopt.distill import Distiller

    rng = np.random.default_rng(3)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = np.zeros(256, int)  # labels carrying no information: only the teacher teaches
    teacher, student = _mlp(4, 32), _mlp(5, 32)
    gap = lambda: np.abs(teacher.predict(x, verbose=0) - student.predict(x, verbose=0)).mean()  # noqa: E731
    before = gap()
    d = Distiller(student, teacher, temperature=1.0, alpha=1.0)
    d.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.SparseCategoricalCrossentropy())
    d.fit(x, y, epochs=20, batch_size=64, verbose=0)
    assert gap() < before / 3


def test_mismatched_outputs_are_refused():
    import tf_keras as keras

    from tfopt.distill import Distiller
    from tfopt.errors import TfoptError

    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)], name="wide")
    with pytest.raises(TfoptError, match=r"the teacher 'wide' outputs shape \(None, 4\) but the student"):
        Distiller(_mlp(0, name="small"), other)
