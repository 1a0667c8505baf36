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


def _cnn(seed, name):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")], name=name)


def _images(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("augment,placements", [({"translate": 0.1, "flip": "horizontal"}, 3 * 3 * 2),
                                                ({"flip": "both"}, 4), (None, 1)])
def test_stored_teacher_outputs_come_with_the_pipelines_own_batches(augment, placements):
    """The stored targets yield the batches the fine-tune would see (same images, same order), each
    with the teacher's output on exactly that image."""
    from tfopt.config.data import Augment
    from tfopt.data.pipeline import make_dataset
    from tfopt.distill import TeacherTargets
    from tfopt.data.coerce import as_dataset

    x, y = _images()
    teacher = _cnn(1, "teacher")
    cfg = Augment(**augment) if augment else None
    if cfg is not None:
        source = make_dataset(x, y, 64, training=True, seed=7, augment=cfg)
        reference = source
    else:
        source = (x, y)
        reference = as_dataset(source, 64, training=True, seed=7)
    lines = []
    stored = TeacherTargets.build(teacher, x, y, source=source, augment=cfg, batch_size=64, seed=7,
                                  log=lines.append)
    assert stored.outputs.shape == (placements, 300, 3)
    assert lines[0].startswith("teacher outputs computed once for every fine-tune: 300 training images")
    assert stored.covers(source) and not stored.covers((x, y) if cfg is not None else (x, y[:]))
    replay = stored.dataset(64, seed=7)
    for epoch in range(2):  # a new shuffle each pass, as the pipeline's
        batches = list(zip(replay, reference))
        assert len(batches) == 5
        for ((xs, t), ys), (xr, yr) in batches:
            np.testing.assert_array_equal(xs.numpy(), xr.numpy())
            np.testing.assert_array_equal(ys.numpy(), yr.numpy())
            np.testing.assert_allclose(t.numpy(), teacher.predict(xs.numpy(), verbose=0), atol=1e-6)


def test_stored_teacher_outputs_are_not_built_where_they_cannot_replay_the_pipeline():
    from tfopt.config.data import Augment
    from tfopt.distill import TARGETS_MAX_PLACEMENTS, TeacherTargets

    x, y = _images(40)
    teacher = _cnn(1, "teacher")
    assert TeacherTargets.build(teacher, x, y, source=(x, y), augment=Augment(rotate=0.1)) is None
    assert len(TeacherTargets.placements(Augment(translate=0.5, flip="both"), 8, 8)) > TARGETS_MAX_PLACEMENTS
    assert TeacherTargets.build(teacher, x, y, source=(x, y), augment=Augment(translate=0.5, flip="both"),
                                batch_size=8) is None


@pytest.mark.slow
def test_fine_tune_on_stored_teacher_outputs_never_runs_the_teacher_and_matches_its_loss():
    import tensorflow as tf
    import tf_keras as keras

    from tfopt.distill import Distiller, TeacherTargets
    from tfopt.config.fine_tune import FineTuneSettings
    from tfopt.training.finetune import fine_tune

    class Count(keras.layers.Layer):
        def build(self, shape):
            self.calls = tf.Variable(0, trainable=False)

        def call(self, x):
            self.calls.assign_add(1)
            return x

    x, y = _images(256)
    inner = _cnn(1, "teacher")
    counter = Count()
    inp = keras.Input((8, 8, 1))
    teacher = keras.Model(inp, counter(inner(inp)))
    calls = counter.calls
    data = (x, y)
    stored = TeacherTargets.build(teacher, x, y, source=data, log=lambda *_: None)
    calls.assign(0)
    lines = []
    fine_tune(_cnn(2, "student"), data, FineTuneSettings(epochs=2, lr=1e-3, batch_size=64, teacher=stored),
              log=lines.append, verbose=0)
    assert int(calls.numpy()) == 0
    assert "distilling from the teacher (temperature 4, alpha 0.9; its outputs computed once)" in lines
    fine_tune(_cnn(2, "student"), (x, y), FineTuneSettings(epochs=1, lr=1e-3, batch_size=64, teacher=stored),
              log=lines.append, verbose=0)
    assert int(calls.numpy()) == 4  # other data than the stored targets': the teacher runs, once a batch
    # one step's loss is the same with the teacher running and with its outputs looked up
    losses = []
    for in_data in (False, True):
        student = _cnn(2, "student")
        d = Distiller(student, inner, temperature=3.0, alpha=0.7, targets_in_data=in_data)
        d.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy())
        batch = ((x[:64], inner.predict(x[:64], verbose=0)), y[:64]) if in_data else (x[:64], y[:64])
        losses.append(float(d.train_on_batch(*batch, return_dict=True)["loss"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    s = _cnn(2, "student").predict(x[:64], verbose=0)
    t = inner.predict(x[:64], verbose=0)
    assert losses[1] == pytest.approx(_np_expected(y[:64], np.log(s), np.log(t), 3.0, 0.7), rel=1e-4)
