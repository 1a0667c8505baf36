"""Knowledge distillation: a compressed student learns from the model it was made from.

Hinton et al. (2015): the student matches the teacher's softened class distribution as well
as the hard labels. Every compression fine-tune can use it; ``tfopt optimize`` does by default.

    import tfopt.distill as distill
    d = distill.Distiller(student, teacher, temperature=4.0, alpha=0.9)
    d.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    d.fit(x, y, epochs=2)
    trained = d.student

Works in tf_keras (the teacher may be any callable tf_keras model with the same output shape).
:class:`TeacherTargets` computes a teacher's outputs once for many fine-tunes on the same images.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfopt.data.pipeline import apply_shifts, batch_indices, draw_shifts, shift_margins
from tfopt.errors import TfoptError
from tfopt.models.outputs import emits_logits

#: Probabilities are clipped to this before their log is taken (log 0 is -inf).
_EPS = 1e-7


def _as_logits(out, from_logits: bool):
    """Outputs -> class logits over the last axis.

    Probabilities become logits through ``log`` (softmax of ``log p`` is ``p``, so nothing is
    lost up to the clipping). One output unit is a binary classifier: it becomes the two logits
    ``[0, z]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``.
    """
    out = tf.convert_to_tensor(out)
    out = tf.cast(out, tf.float32)
    binary = out.shape.rank is not None and out.shape[-1] == 1
    if binary:
        if from_logits:
            z = out
        else:
            p = tf.clip_by_value(out, _EPS, 1 - _EPS)
            z = tf.math.log(p) - tf.math.log(1 - p)
        return tf.concat([tf.zeros_like(z), z], axis=-1)
    if from_logits:
        return out
    return tf.math.log(tf.clip_by_value(out, _EPS, 1.0))


def soft_kl(student_out, teacher_out, *, temperature: float, from_logits: bool):
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch (a scalar tensor).

    The ``T²`` keeps the soft term's gradients on the scale of the hard term's as ``T`` grows.
    """
    t = _as_logits(teacher_out, from_logits) / temperature
    s = _as_logits(student_out, from_logits) / temperature
    p_t = tf.nn.softmax(t, axis=-1)
    kl = tf.reduce_sum(p_t * (tf.nn.log_softmax(t, axis=-1) - tf.nn.log_softmax(s, axis=-1)), axis=-1)
    return temperature ** 2 * tf.reduce_mean(kl)


def distillation_loss(y_true, student_out, teacher_out, *, temperature: float, alpha: float, hard_loss,
                      from_logits: bool):
    """``alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 - alpha) · hard_loss(y_true, s)``.

    Args:
        y_true: the labels, as ``hard_loss`` takes them.
        student_out: the student's outputs (probabilities, or logits when ``from_logits``).
        teacher_out: the teacher's outputs, in the same form as the student's.
        temperature: ``T`` > 0; above 1 softens both distributions so that the teacher's
            ranking of the wrong classes carries information.
        alpha: weight of the soft (teacher) term, in [0, 1]; 0 is plain training.
        hard_loss: a loss callable ``(y_true, y_pred) -> scalar`` applied to the student's
            outputs as given (so built with the same ``from_logits``).
        from_logits: whether both outputs are logits. Probabilities are turned into logits
            with ``log`` (clipped at 1e-7); a single sigmoid unit counts as two classes.

    Returns:
        A scalar tensor.
    """
    if temperature <= 0:
        raise TfoptError(f"distillation temperature must be > 0; got {temperature}")
    if not 0 <= alpha <= 1:
        raise TfoptError(f"distillation alpha (the weight of the teacher's soft targets) must be in [0, 1]; got {alpha}")
    hard = hard_loss(y_true, student_out)
    if alpha == 0:
        return hard
    soft = soft_kl(student_out, teacher_out, temperature=temperature, from_logits=from_logits)
    return alpha * soft + (1 - alpha) * tf.cast(hard, soft.dtype)


def _loss_from_logits(loss) -> bool | None:
    """The ``from_logits`` setting of a tf_keras loss object, if it has one."""
    fn_kwargs = getattr(loss, "_fn_kwargs", None) or {}
    if "from_logits" in fn_kwargs:
        return bool(fn_kwargs["from_logits"])
    value = getattr(loss, "from_logits", None)
    return None if value is None else bool(value)


def _outputs_are_logits(model) -> bool:
    """Whether a model's last layer leaves its outputs unsquashed (no softmax or sigmoid)."""
    try:
        return emits_logits(model)
    except Exception:  # an exotic last layer: assume probabilities, the Keras default
        return False


class Distiller(keras.Model):
    """A training wrapper: ``fit`` trains the student on hard labels and the teacher's soft ones.

    ``compile`` takes the hard-label loss and metrics as usual. ``fit`` updates only the
    student's weights (the teacher runs in inference mode and gets no gradients); ``evaluate``
    and ``predict`` use the student alone, and ``evaluate``'s loss is the hard-label loss.
    ``.student`` is the trained student model, which callers keep.

    Args:
        student: the tf_keras model being trained.
        teacher: a tf_keras model with the same output shape (usually the uncompressed model).
        temperature: softening temperature ``T``.
        alpha: weight of the soft term; ``1 - alpha`` weights the hard-label loss.
        from_logits: whether the outputs are logits; default: read from the hard loss given
            to ``compile`` (its ``from_logits``), else from the student's last activation.
        targets_in_data: the training batches are ``((x, teacher outputs), y)`` (see
            :class:`TeacherTargets`), so the teacher does not run during ``fit``.
    """

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.9, from_logits=None,
                 targets_in_data: bool = False, **kwargs):
        super().__init__(name=kwargs.pop("name", f"distill_{student.name}"), **kwargs)
        if temperature <= 0:
            raise TfoptError(f"distillation temperature must be > 0; got {temperature}")
        if not 0 <= alpha <= 1:
            raise TfoptError(f"distillation alpha must be in [0, 1]; got {alpha}")
        s_shape, t_shape = tuple(student.output_shape), tuple(teacher.output_shape)
        if s_shape[1:] != t_shape[1:]:
            raise TfoptError(f"distillation: the teacher '{teacher.name}' outputs shape {t_shape} but the student "
                             f"'{student.name}' outputs {s_shape}; they must match")
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self._from_logits_arg = from_logits
        self.targets_in_data = bool(targets_in_data)
        self.hard_loss = None
        self.from_logits = False
        self._loss_tracker = keras.metrics.Mean(name="loss")

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """As ``tf_keras.Model.compile``; ``loss`` is the hard-label loss (required)."""
        if loss is None:
            raise TfoptError("Distiller.compile needs loss=, the hard-label loss (e.g. "
                             "tf_keras.losses.SparseCategoricalCrossentropy())")
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self.hard_loss = keras.losses.get(loss) if isinstance(loss, (str, dict)) else loss
        if self._from_logits_arg is not None:
            self.from_logits = bool(self._from_logits_arg)
        else:
            found = _loss_from_logits(self.hard_loss)
            self.from_logits = found if found is not None else _outputs_are_logits(self.student)

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    @property
    def metrics(self):
        # The tracker replaces compiled_loss's own "loss" mean, which would see the hard term only.
        return [self._loss_tracker, *self.compiled_metrics.metrics]

    def _hard(self, y, y_pred, sample_weight):
        if isinstance(self.hard_loss, keras.losses.Loss):
            return self.hard_loss(y, y_pred, sample_weight=sample_weight)
        values = self.hard_loss(y, y_pred)  # a plain function: one value per sample
        if sample_weight is not None:
            values = values * tf.cast(tf.reshape(sample_weight, tf.shape(values)), values.dtype)
        return tf.reduce_mean(values)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self.targets_in_data:
            x, teacher_out = x
        else:
            teacher_out = tf.stop_gradient(self.teacher(x, training=False))
        with tf.GradientTape() as tape:
            student_out = self.student(x, training=True)
            loss = distillation_loss(
                y, student_out, teacher_out, temperature=self.temperature, alpha=self.alpha,
                hard_loss=lambda yt, yp: self._hard(yt, yp, sample_weight), from_logits=self.from_logits)
            if self.student.losses:  # weight decay and other regularizers of the student
                loss += tf.add_n(self.student.losses)
        variables = self.student.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._report(loss, y, student_out, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        student_out = self.student(x, training=False)
        loss = self._hard(y, student_out, sample_weight)
        return self._report(loss, y, student_out, sample_weight)

    def _report(self, loss, y, y_pred, sample_weight):
        self._loss_tracker.update_state(loss)
        self.compiled_metrics.update_state(y, y_pred, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    def get_config(self):
        return {"temperature": self.temperature, "alpha": self.alpha}


#: Largest memory the stored teacher outputs may take (placements × images × outputs × 4 bytes).
TARGETS_MAX_BYTES = 512 * 2**20
#: Most placements (shift and flip combinations) the teacher is run on ahead: each is a pass of
#: the teacher over the training set, which pays back only over more fine-tune epochs than this.
TARGETS_MAX_PLACEMENTS = 32
_PREDICT_BATCH = 512


class TeacherTargets:
    """A teacher's outputs on every training image, computed once for many fine-tunes.

    A search fine-tunes dozens of students on the same images from the same teacher; running the
    teacher in every step of every fine-tune can cost more than training the student (a LeNet-5
    teacher of a LeNet-300-100 student: 3 s against 1 s per MNIST epoch). Shifts by whole pixels
    and flips (the pipeline's ``augment.translate`` and ``augment.flip``) place each image in one
    of a few ways: 25 for MNIST shifted by up to 2 pixels. The teacher runs once over the training
    set in every placement, and :meth:`dataset` yields the batches of
    :func:`tfopt.data.pipeline.make_dataset` (the same seed gives the same images in the same
    order) together with the teacher's stored outputs on exactly those images. The loss is the one
    the teacher running inside the fine-tune gives, at the cost of looking it up.

    :meth:`build` returns None where this does not pay or does not fit: resampling augmentation
    (rotation, zoom), more than :data:`TARGETS_MAX_PLACEMENTS` placements, outputs over
    :data:`TARGETS_MAX_BYTES`, or a teacher with several outputs.
    """

    def __init__(self, teacher, x, y, source, outputs, augment, pipeline):
        self.model = teacher
        self.x, self.y, self.source = x, y, source
        self.outputs = outputs  # [placements, n, ...] float32
        self.augment = augment
        self.pipeline = pipeline  # the source pipeline's (batch size, seed, shuffle buffer), or None for arrays
        self._tensors = None

    @staticmethod
    def placements(augment, h: int | None, w: int | None) -> list[tuple[int, int, int, int]]:
        """Every ``(dy, dx, flip_h, flip_v)`` the pipeline can draw for ``augment``, in the order
        of :meth:`_index`."""
        translate = augment.translate if augment is not None else 0.0
        flip = augment.flip if augment is not None else "none"
        ph, pw = shift_margins(h, w, translate) if translate else (0, 0)
        fh = (0, 1) if flip in ("horizontal", "both") else (0,)
        fv = (0, 1) if flip in ("vertical", "both") else (0,)
        return [(dy, dx, a, b) for dy in range(2 * ph + 1) for dx in range(2 * pw + 1) for a in fh for b in fv]

    @classmethod
    def build(cls, teacher, x, y, *, source, augment=None, batch_size: int | None = None, seed: int = 0,
              shuffle_buffer: int = 10000, max_passes: int = TARGETS_MAX_PLACEMENTS, log=print):
        """The teacher's outputs on ``x`` in every placement ``augment`` can draw, or None (see above,
        and when there are more placements than ``max_passes``: a single fine-tune of E epochs runs
        the teacher E times, so building pays only for fewer than E).

        Args:
            teacher: a tf_keras model.
            x, y: the training arrays.
            source: what the fine-tunes are given as their data: ``(x, y)`` itself, or the
                pipeline ``make_dataset(x, y, batch_size, training=True, seed=seed, augment=augment,
                shuffle_buffer=shuffle_buffer)``; :meth:`covers` recognises it.
            augment: the pipeline's ``Augment`` config, or None.
        """
        is_pipeline = isinstance(source, tf.data.Dataset)
        if is_pipeline and batch_size is None:
            raise TfoptError("TeacherTargets.build: give the batch_size of the source pipeline")
        if (augment is not None and (augment.rotate or augment.zoom)) or isinstance(teacher.output_shape, list):
            return None
        shifting = augment is not None and bool(augment.translate or augment.flip != "none")
        if shifting and np.ndim(x) != 4:
            return None
        places = cls.placements(augment, *(x.shape[1:3] if shifting else (None, None)))
        out_shape = tuple(int(d) for d in teacher.output_shape[1:])
        if len(places) > min(TARGETS_MAX_PLACEMENTS, max_passes) \
                or len(places) * len(x) * int(np.prod(out_shape)) * 4 > TARGETS_MAX_BYTES:
            return None
        started = time.perf_counter()
        images = tf.constant(x)
        outputs = np.empty((len(places), len(x), *out_shape), np.float32)
        translate, flip = (augment.translate, augment.flip) if shifting else (0.0, "none")
        for i, place in enumerate(places):
            ds = batch_indices(len(x), _PREDICT_BATCH)
            if shifting:
                ds = ds.map(lambda idx, p=place: apply_shifts(
                    tf.gather(images, idx), *(tf.fill(tf.shape(idx), v) for v in p), translate=translate, flip=flip))
            else:
                ds = ds.map(lambda idx: tf.gather(images, idx))
            outputs[i] = teacher.predict(ds.prefetch(tf.data.AUTOTUNE), verbose=0)
        log(f"teacher outputs computed once for every fine-tune: {len(x):,} training images"
            + (f" in each of the {len(places)} ways the augmentation shifts or flips them" if shifting else "")
            + f" ({time.perf_counter() - started:.0f} s)")
        return cls(teacher, x, y, source, outputs, augment if shifting else None,
                   (batch_size, seed, shuffle_buffer) if is_pipeline else None)

    def covers(self, data) -> bool:
        """Whether ``data`` is what these targets were computed for."""
        return data is self.source

    @staticmethod
    def _index(dy, dx, flip_h, flip_v, augment, h, w):
        """The placement number of each draw (the order of :meth:`placements`)."""
        _, pw = shift_margins(h, w, augment.translate)
        nh = 2 if augment.flip in ("horizontal", "both") else 1
        nv = 2 if augment.flip in ("vertical", "both") else 1
        return ((dy * (2 * pw + 1) + dx) * nh + flip_h) * nv + flip_v

    def dataset(self, batch_size: int, seed: int = 0):
        """``((x, teacher outputs), y)`` batches, with ``x`` and ``y`` as the source yields them: the
        source pipeline's own batches, or for arrays those of a fine-tune with ``batch_size`` and
        ``seed`` (:func:`tfopt.data.coerce.as_dataset`)."""
        buffer = 10000
        if self.pipeline is not None:
            batch_size, seed, buffer = self.pipeline
        if self._tensors is None:  # made once: every fine-tune's pipeline reads the same constants
            self._tensors = (tf.constant(self.x), tf.constant(self.y), tf.constant(self.outputs))
        images, labels, outputs = self._tensors
        aug = self.augment
        ds = batch_indices(len(self.x), batch_size, shuffle=True, seed=seed, shuffle_buffer=buffer,
                           draws=aug is not None)
        if aug is None:
            return ds.map(lambda idx: ((tf.gather(images, idx), tf.gather(outputs[0], idx)), tf.gather(labels, idx)),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
        h, w = self.x.shape[1], self.x.shape[2]

        def batch(idx, s):
            d = draw_shifts(tf.shape(idx)[0], s, h, w, aug.translate, aug.flip)
            x = apply_shifts(tf.gather(images, idx), *d, translate=aug.translate, flip=aug.flip)
            at = tf.stack([self._index(*d, aug, h, w), tf.cast(idx, tf.int32)], axis=-1)
            return (x, tf.gather_nd(outputs, at)), tf.gather(labels, idx)

        return ds.map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
