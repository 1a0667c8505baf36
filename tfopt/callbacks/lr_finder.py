"""LRFinder: the learning-rate range test (sweep the rate exponentially, watch the loss)."""

from __future__ import annotations

import math

import numpy as np
from tf_keras.callbacks import Callback

from tfopt.callbacks.lr import get_lr, set_lr
from tfopt.plots import line_plot

RULES = ("steepest", "min_div_10")


class LRFinder(Callback):
    """Sweep the learning rate from ``min_lr`` to ``max_lr`` exponentially over ``num_steps``
    training steps, record the loss of each step, then put the model's weights and the
    optimizer's state back as they were.

    The per-step loss is recovered from Keras's running epoch mean and smoothed
    exponentially (``smoothing``). The sweep stops early once the smoothed loss exceeds
    ``diverge_factor`` × its minimum. :meth:`suggestion` then proposes a rate by one of two
    rules: ``"steepest"``, the rate where the smoothed loss falls fastest against log(lr);
    or ``"min_div_10"``, a tenth of the rate at the loss minimum.

    Example:
        >>> finder = LRFinder(1e-6, 1.0, num_steps=100)
        >>> model.fit(x, y, epochs=finder.epochs_needed(len(x) // 32), callbacks=[finder])
        >>> finder.suggestion()
        {'lr': 0.0031, 'rule': 'steepest', ...}
    """

    def __init__(self, min_lr=1e-7, max_lr=10.0, num_steps=100, smoothing=0.9, diverge_factor=4.0,
                 rule="steepest", plot_path=None):
        super().__init__()
        if not 0 < min_lr < max_lr:
            raise ValueError(f"need 0 < min_lr < max_lr; got {min_lr} and {max_lr}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}; got '{rule}'")
        if num_steps < 5:
            raise ValueError(f"num_steps must be at least 5; got {num_steps}")
        self.min_lr, self.max_lr, self.num_steps = float(min_lr), float(max_lr), int(num_steps)
        self.smoothing, self.diverge_factor, self.rule, self.plot_path = smoothing, diverge_factor, rule, plot_path
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []

    def get_config(self):
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "num_steps": self.num_steps,
                "smoothing": self.smoothing, "diverge_factor": self.diverge_factor, "rule": self.rule,
                "plot_path": self.plot_path}

    def epochs_needed(self, steps_per_epoch: int) -> int:
        return max(1, math.ceil(self.num_steps / max(1, steps_per_epoch)))

    def rate(self, i: int) -> float:
        return self.min_lr * (self.max_lr / self.min_lr) ** (i / (self.num_steps - 1))

    def on_train_begin(self, logs=None):
        self._weights = [w.copy() for w in self.model.get_weights()]
        self._opt_vars = {id(v): v.numpy().copy() for v in self.model.optimizer.variables}
        self._lr0 = get_lr(self.model.optimizer)
        self._i = 0
        self.lrs, self.losses, self.smoothed = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._batch_in_epoch = 0
        self._mean_before = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        set_lr(self.model.optimizer, self.rate(self._i))

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", np.nan))
        k = self._batch_in_epoch
        loss = (k + 1) * mean - k * self._mean_before  # undo Keras's running mean
        self._batch_in_epoch += 1
        self._mean_before = mean
        self.lrs.append(self.rate(self._i))
        self.losses.append(loss)
        prev = self.smoothed[-1] if self.smoothed else loss
        self.smoothed.append(self.smoothing * prev + (1 - self.smoothing) * loss if self.smoothed else loss)
        self._i += 1
        best = min(self.smoothed)
        if self._i >= self.num_steps or not math.isfinite(loss) or self.smoothed[-1] > self.diverge_factor * best:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.model.set_weights(self._weights)
        for v in self.model.optimizer.variables:
            saved = self._opt_vars.get(id(v))
            v.assign(saved if saved is not None else np.zeros(v.shape, v.dtype.name if hasattr(v.dtype, "name") else v.dtype))
        set_lr(self.model.optimizer, self._lr0)
        if self.plot_path and self.lrs:
            self.plot(self.plot_path)

    def suggestion(self) -> dict:
        """The suggested rate, the rule used, and the swept range."""
        if len(self.smoothed) < 5:
            raise ValueError("too few steps were recorded to suggest a learning rate")
        lrs, loss = np.array(self.lrs), np.array(self.smoothed)
        finite = np.isfinite(loss)
        lrs, loss = lrs[finite], loss[finite]
        if self.rule == "min_div_10":
            lr = max(lrs[int(np.argmin(loss))] / 10, self.min_lr)
            why = "a tenth of the rate at the minimum smoothed loss"
        else:
            stop = int(np.argmin(loss)) + 1
            slope = np.gradient(loss[:stop], np.log(lrs[:stop])) if stop >= 3 else np.array([0.0])
            lr = lrs[int(np.argmin(slope))]
            why = "where the smoothed loss falls fastest against log(lr), before its minimum"
        return {"lr": float(lr), "rule": self.rule, "reason": why, "min_lr": self.min_lr,
                "max_lr": float(self.lrs[-1]), "steps": len(self.lrs)}

    def plot(self, path):
        s = self.suggestion()
        line_plot(self.lrs, {"loss": self.losses, "smoothed": self.smoothed}, path, xlabel="learning rate",
                  ylabel="loss", title="Learning-rate range test", logx=True, mark=(s["lr"], f"suggested {s['lr']:.2g}"))


def find_lr(model, x, y=None, batch_size=32, **kwargs) -> LRFinder:
    """Run the range test on a compiled model; its weights and optimizer come back unchanged.

    Args:
        model: a compiled tf_keras or Keras 3 model.
        x: input array (with ``y``), or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        y: labels of ``x`` when ``x`` is an array; ``None`` for a dataset.
        batch_size: batch size of the sweep when ``x`` is an array.
        **kwargs: the :class:`LRFinder` settings (``min_lr``, ``max_lr``, ``num_steps``,
            ``smoothing``, ``diverge_factor``, ``rule``, ``plot_path``).

    Returns:
        The finished :class:`LRFinder`: its ``lrs``, ``losses`` and ``smoothed`` per step, and
        :meth:`LRFinder.suggestion`.

    Raises:
        ValueError: ``min_lr`` not below ``max_lr`` (or not positive), an unknown ``rule``,
            ``num_steps`` below 5, or, with ``plot_path``, a sweep that stopped before 5 steps
            (too few to suggest a rate).
    """
    finder = LRFinder(**kwargs)
    if y is not None:
        steps = math.ceil(len(x) / batch_size)
        model.fit(x, y, batch_size=batch_size, epochs=finder.epochs_needed(steps), callbacks=[finder], verbose=0)
    else:
        steps = int(x.cardinality()) if hasattr(x, "cardinality") else finder.num_steps
        model.fit(x, epochs=finder.epochs_needed(max(steps, 1)), callbacks=[finder], verbose=0)
    return finder
