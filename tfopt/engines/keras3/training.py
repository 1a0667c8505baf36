"""The fine-tune every Keras 3 compression runs: a copy of the model, trained with ``model.fit``.

Compression acts through variable constraints: a Keras 3 optimizer assigns
``variable.constraint(variable)`` after every update, in its stateful path (TensorFlow) and
inside ``stateless_apply`` (JAX's jitted step). State a constraint needs across steps (a
pruning mask, the float latent of a fake-quantized weight) is kept in variables added to
the optimizer: under JAX those are carried from step to step with the optimizer's own
state, where a variable of the model's or a Python object captured by the constraint would
be read once, at trace time, and its updates dropped. The current step is the optimizer's
``iterations``, which is optimizer state too.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace

import keras
from keras import ops

from tfopt.engines.keras3.copying import copy_model
from tfopt.engines.keras3.data import training_data
from tfopt.engines.keras3.losses import Distillation, compiled_loss, head_kinds, infer_losses
from tfopt.engines.keras3.selection import select_weights

_OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad", "adadelta", "adamax", "nadam",
               "ftrl", "lion", "lamb", "adafactor", "muon")


@dataclass
class FineTune:
    """Settings of the fine-tune a compression runs (keyword arguments of each step).

    Attributes:
        epochs: Passes over the data.
        lr: Learning rate; None keeps the optimizer's own (1e-3 for a name).
        batch_size: Batch size for in-memory data.
        steps_per_epoch: Steps per epoch; needed for a dataset of unknown length.
        loss: Task loss (anything ``compile`` takes). None: the model's compiled loss, else
            one inferred per head (see :mod:`tfopt.engines.keras3.losses`).
        loss_weights: Per-head weights for the task loss.
        optimizer: A name, a Keras config dict or an optimizer instance (copied, never
            changed).
        teacher: A Keras model with the same inputs and outputs to distill from, or None.
        temperature: Distillation temperature ``T``.
        alpha: Weight of the distillation term; the task loss gets ``1 - alpha``.
        callbacks: Callbacks for ``fit``.
        validation_data: Data ``fit`` evaluates after each epoch (``(x, y)`` or a dataset), or None.
        verbose: ``fit``'s verbosity.
        jit_compile: ``compile``'s ``jit_compile`` for the training step (``"auto"``: XLA
            where the backend and model allow it).
    """

    epochs: int = 2
    lr: float | None = None
    batch_size: int = 32
    steps_per_epoch: int | None = None
    loss: object = None
    loss_weights: object = None
    optimizer: object = "adam"
    teacher: object = None
    temperature: float = 4.0
    alpha: float = 0.5
    callbacks: list = field(default_factory=list)
    validation_data: object = None
    verbose: int = 0
    jit_compile: object = "auto"

    @classmethod
    def from_kwargs(cls, function: str, kwargs: dict) -> "FineTune":
        """Settings from a step's extra keyword arguments.

        Raises:
            TypeError: For an argument that is not a setting, with the closest names.
        """
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=2)
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise TypeError(f"{function}() got an unexpected keyword argument {key!r}.{hint} "
                                f"Fine-tune settings: {', '.join(names)}.")
        settings = cls(**kwargs)
        if not 0.0 <= settings.alpha <= 1.0 or settings.temperature <= 0 or settings.epochs < 1:
            raise ValueError(f"{function}(): expected 0 <= alpha <= 1, temperature > 0 and epochs "
                             f">= 1; received alpha={settings.alpha}, temperature="
                             f"{settings.temperature}, epochs={settings.epochs}.")
        return settings


def make_optimizer(optimizer, lr=None):
    """A fresh optimizer from a name, a config dict or an instance (whose copy is returned).

    Raises:
        ValueError: For an unknown name, with the closest known names.
    """
    if isinstance(optimizer, keras.optimizers.Optimizer):
        made = type(optimizer).from_config(optimizer.get_config())
    else:
        try:
            made = keras.optimizers.get(optimizer)
        except (ValueError, TypeError) as e:
            close = difflib.get_close_matches(str(optimizer).lower(), _OPTIMIZERS, n=2)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"Unknown optimizer {optimizer!r}.{hint} Available: "
                             f"{', '.join(_OPTIMIZERS)}.") from e
    if lr is not None:
        made.learning_rate = float(lr)
    return made


class _Trainer(keras.Model):
    """The model ``fit`` runs: the student's outputs, and the distillation loss if any."""

    def __init__(self, student, names=None, distillation=None):
        super().__init__(name="tfopt_fine_tune")
        self.student = student
        self._names = names
        self._distillation = distillation

    def arrange(self, outputs):
        """Student outputs keyed by output name when the targets are a dict."""
        if self._names is None:
            return outputs
        return dict(zip(self._names, keras.tree.flatten(outputs)))

    def call(self, inputs, training=False):
        return self.arrange(self.student(inputs, training=training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        total = super().compute_loss(x, y, y_pred, sample_weight, training)
        if self._distillation is None:
            return total
        # Layer losses (regularizers) are not part of the task loss the distillation mixes.
        extra = [ops.sum(ops.cast(loss, "float32")) for loss in self.losses]
        regular = ops.sum(ops.stack(extra)) if extra else 0.0
        return self._distillation.mix(total - regular, x, y_pred) + regular


def _output_names(student, sample_y):
    if not isinstance(sample_y, dict):
        return None
    names = getattr(student, "output_names", None)
    if not names or len(names) != len(sample_y) or set(names) != set(sample_y):
        raise ValueError(f"data: y is a dict with keys {sorted(sample_y)} but the model's outputs "
                         f"are named {names}; give y in the model's output structure.")
    return list(names)


class Session:
    """One fine-tune: the copy of the model, its training wrapper, optimizer and constraints.

    Args:
        model: The user's Keras 3 model (never changed).
        data: Training data (see :func:`tfopt.engines.keras3.data.training_data`).
        settings: The :class:`FineTune` settings.

    Attributes:
        model: The copy being compressed; the step returns it.
        data: The :class:`~tfopt.engines.keras3.data.TrainingData`.
        optimizer: The optimizer of the fine-tune, built before any constraint is set.
    """

    def __init__(self, model, data, settings: FineTune):
        self.settings = settings
        self.data = training_data(data, batch_size=settings.batch_size,
                                  steps_per_epoch=settings.steps_per_epoch)
        self.source = model
        self.model = copy_model(model, sample=self.data.sample_x)
        self._originals = {}
        loss, loss_weights = settings.loss, settings.loss_weights
        if loss is None:
            loss, loss_weights = compiled_loss(model)
        names = _output_names(self.model, self.data.sample_y)
        kinds, prediction = head_kinds(self.model, self.data.sample_x, self.data.sample_y, loss)
        if names:
            kinds, prediction = (dict(zip(names, keras.tree.flatten(s))) for s in (kinds, prediction))
        if loss is None:
            loss = infer_losses(kinds, self.data.sample_y, prediction)
        distillation = self._distillation(kinds, names)
        self.trainer = _Trainer(self.model, names, distillation)
        if getattr(self.model, "output_names", None) and names is None:
            self.trainer.output_names = list(self.model.output_names)
        self.trainer(self.data.sample_x)
        self.optimizer = make_optimizer(settings.optimizer, settings.lr)
        self.trainer.compile(optimizer=self.optimizer, loss=loss, loss_weights=loss_weights,
                             jit_compile=settings.jit_compile)
        self.optimizer.build(self.trainer.trainable_variables)

    def _distillation(self, kinds, names):
        teacher = self.settings.teacher
        if teacher is None:
            return None
        teacher_kinds, teacher_out = head_kinds(teacher, self.data.sample_x, self.data.sample_y, None)
        student_out = self.model(self.data.sample_x, training=False)
        shapes = [tuple(t.shape) for t in keras.tree.flatten(teacher_out)]
        expected = [tuple(t.shape) for t in keras.tree.flatten(student_out)]
        if shapes != expected:
            raise ValueError(f"teacher: its outputs have shapes {shapes}, the model's {expected}; "
                             f"a teacher must take the same inputs and give the same outputs.")
        arrange = (lambda out: dict(zip(names, keras.tree.flatten(out)))) if names else None
        if names:
            teacher_kinds = dict(zip(names, keras.tree.flatten(teacher_kinds)))
        return Distillation(teacher, kinds, teacher_kinds, self.settings.temperature,
                            self.settings.alpha, arrange)

    def entries(self, include, skip, function):
        """The table of variables to compress, read on the user's model (so paths and globs
        are the ones the user sees) and pointing at the copy's variables.

        Raises:
            ValueError: When nothing is selected.
        """
        found = select_weights(self.source, include=include, skip=skip)
        if not found:
            raise ValueError(
                f"{function}(): the model {self.source.name!r} has no weight to compress (no "
                f"trainable Dense, Conv, Embedding, RNN or custom rank >= 2 kernel); name some "
                f"with include=[...] (variable path globs).")
        # copy_model checked that the copy's weights match the source's one for one, in order.
        position = {id(v): i for i, v in enumerate(self.source.weights)}
        weights = self.model.weights
        return [replace(e, variable=weights[position[id(e.variable)]]) for e in found]

    @property
    def total_steps(self) -> int:
        """Optimizer steps the fine-tune will run."""
        return self.settings.epochs * self.data.steps_per_epoch

    def step(self):
        """The current optimizer step, readable inside a constraint on any backend."""
        return ops.cast(self.optimizer.iterations, "int32")

    def slot(self, variable, initial, name):
        """A variable carried in the optimizer's state, starting at ``initial``."""
        slot = self.optimizer.add_variable(
            tuple(variable.shape), initializer="zeros", dtype=variable.dtype,
            name=f"tfopt_{name}_{variable.path.replace('/', '_')}")
        slot.assign(ops.cast(initial, variable.dtype))
        return slot

    def constrain(self, variable, function):
        """Apply ``function`` after each update, after the variable's own constraint."""
        original = variable.constraint
        self._originals.setdefault(id(variable), (variable, original))
        variable.constraint = (lambda w: function(original(w))) if original else function

    def fit(self):
        """Run the fine-tune, then give every variable its own constraint back.

        Returns:
            The ``History`` of the fit.
        """
        try:
            return self.trainer.fit(epochs=self.settings.epochs, verbose=self.settings.verbose,
                                    callbacks=list(self.settings.callbacks),
                                    validation_data=self.settings.validation_data,
                                    **self.data.fit_arguments())
        finally:
            for variable, original in self._originals.values():
                variable.constraint = original
            self._originals.clear()


def fine_tuned(model, data, **settings):
    """A copy of ``model`` fine-tuned on ``data`` with the :class:`FineTune` ``settings``, no
    weight constrained (the fine-tune after a structural change)."""
    session = Session(model, data, FineTune(**settings))
    session.fit()
    return session.model
