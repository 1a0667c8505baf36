"""GradientNormMonitor: per-layer gradient statistics on a fixed probe batch, every N steps."""

from __future__ import annotations

import math
import statistics

import numpy as np
import tensorflow as tf
from tf_keras.callbacks import Callback

from tfopt.callbacks.base import (CsvLog, all_layers, keras_module, resolve_loss, take_probe, unpack,
                                  variable_owners)
from tfopt.plots import line_plot

CSV_FIELDS = ["step", "layer", "grad_norm", "grad_min_abs", "grad_max_abs", "update_ratio", "dead_fraction"]
RELU_NAMES = ("relu", "relu6")


class GradientNormMonitor(Callback):
    """Watch gradient norms layer by layer and flag vanishing or exploding gradients.

    Every ``every_n_steps`` training steps the monitor runs one compiled GradientTape pass
    on a fixed probe batch (dropout off, BatchNorm in inference mode, regularization losses
    included) and records, per layer (variables grouped by the layer that owns them): the
    L2 norm of the gradient, its min and max absolute entry, the update-to-weight ratio
    ``‖W_after − W_before‖ / ‖W_before‖`` of the training step just taken, and for ReLU
    outputs the fraction of dead units (zero on the whole probe batch); plus the global norm.

    Results go to ``self.records``, to the epoch logs (``grad_norm`` and
    ``grad_norm/<layer>``, so History, CSV loggers and TensorBoard see them), to an optional
    CSV file (one row per layer per check, flushed each time), to TensorBoard scalars when
    ``log_dir`` is given, and to a PNG of the per-layer norms at the end when ``plot_path``
    is given. Alerts go to ``self.alerts`` and, with ``verbose``, to stdout. The ``(x, y)`` arrays
    the checks run on are ``self.probe_batch`` once training has begun.

    With ``probe_data`` omitted the monitor takes the first training batch: for that one
    step it wraps the model's ``train_step`` to copy the batch, then restores it and rebuilds
    the train function (one extra trace).

    Args:
        probe_data: ``(x, y)`` arrays, or a dataset of ``(x, y)`` batches (``probe_batches`` are taken).
        every_n_steps: check frequency, in training steps.
        loss: loss to differentiate; default: the model's compiled loss.
        vanishing_threshold: a layer whose gradient norm stays below this ...
        vanishing_patience: ... for this many checks in a row is flagged as vanishing.
        dead_relu_threshold: flag a ReLU layer when more than this fraction of its units is dead.
        exploding_threshold: flag when the global norm exceeds this ...
        growth_factor: ... or when a layer's norm grows by more than this factor between checks.
        stop_on_explosion: stop training when exploding gradients are flagged.
        stop_on_nonfinite: stop training when a gradient is NaN or infinite.
        csv_path: where to write one row per check and layer (optional).
        log_dir: a TensorBoard folder for the norms (optional).
        plot_path: a PNG of the norms over the steps, written at the end of training (optional).
        verbose: print alerts.
    """

    def __init__(self, probe_data=None, every_n_steps=100, probe_batches=1, loss=None, vanishing_threshold=1e-6,
                 vanishing_patience=3, dead_relu_threshold=0.9, exploding_threshold=1e3, growth_factor=100.0,
                 stop_on_explosion=False, stop_on_nonfinite=True, csv_path=None, log_dir=None, plot_path=None,
                 verbose=1):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be ≥ 1; got {every_n_steps}")
        self.probe_data = probe_data
        self.every_n_steps = int(every_n_steps)
        self.probe_batches = probe_batches
        self.loss = loss
        self.vanishing_threshold = vanishing_threshold
        self.vanishing_patience = vanishing_patience
        self.dead_relu_threshold = dead_relu_threshold
        self.exploding_threshold = exploding_threshold
        self.growth_factor = growth_factor
        self.stop_on_explosion = stop_on_explosion
        self.stop_on_nonfinite = stop_on_nonfinite
        self.csv_path = csv_path
        self.log_dir = log_dir
        self.plot_path = plot_path
        self.verbose = verbose
        self.records: list[dict] = []
        self.alerts: list[dict] = []
        self.probe_batch = None
        self._step = 0

    def get_config(self):
        keys = ["every_n_steps", "probe_batches", "vanishing_threshold", "vanishing_patience", "dead_relu_threshold",
                "exploding_threshold", "growth_factor", "stop_on_explosion", "stop_on_nonfinite", "csv_path",
                "log_dir", "plot_path", "verbose"]
        return {k: getattr(self, k) for k in keys}

    # -- set-up ---------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._variables, owners = variable_owners(self.model)
        self._layers = list(dict.fromkeys(owners))
        self._owner_index = np.array([self._layers.index(o) for o in owners])
        self._loss_fn = resolve_loss(self.model, self.loss)
        self._below = {name: 0 for name in self._layers}
        self._flagged = set()
        self._last_norms = None
        self._csv = CsvLog(self.csv_path, CSV_FIELDS) if self.csv_path else None
        self._writer = tf.summary.create_file_writer(str(self.log_dir)) if self.log_dir else None
        self._relu_model = self._relu_outputs()
        self._probe_fn = tf.function(self._probe_step, reduce_retracing=True)
        self._snapshot_fn = tf.function(lambda: [tf.identity(v) for v in self._variables])
        self._delta_fn = tf.function(self._deltas)
        if self.probe_data is not None:
            self.probe_batch = take_probe(self.probe_data, self.probe_batches)
        else:
            self._capture_first_batch()

    def _relu_outputs(self):
        """A model from the input to every ReLU-activated output, for dead-unit counting."""
        if not getattr(self.model, "inputs", None):
            return None
        outs, names = [], []
        for layer in all_layers(self.model):
            act = getattr(layer, "activation", None)
            name = getattr(act, "__name__", "")
            is_relu = type(layer).__name__ == "ReLU" or name in RELU_NAMES
            if is_relu:
                try:
                    outs.append(layer.output)
                    names.append(layer.name)
                except (AttributeError, ValueError):
                    continue
        if not outs:
            return None
        km = keras_module(self.model)
        self._relu_names = names
        return km.Model(self.model.inputs, outs)

    def _capture_first_batch(self):
        model = self.model
        original = model.train_step

        def grab(x, y):
            self.probe_batch = (x.numpy(), y.numpy())
            return True

        def capturing_step(data):
            x, y = unpack(data)
            done = tf.py_function(grab, [x, y], Tout=tf.bool)
            with tf.control_dependencies([done]):
                data = tf.nest.map_structure(tf.identity, data)
            return original(data)

        model.train_step = capturing_step
        self._restore_step = True
        model.make_train_function(force=True)  # Keras 3 binds train_step when it builds the function

    def _stop_capturing(self):
        del self.model.train_step  # back to the class's method
        self._restore_step = False
        self.model.train_function = None
        self.model.make_train_function(force=True)

    # -- the probe ------------------------------------------------------------------------
    def _probe_step(self, x, y):
        with tf.GradientTape() as tape:
            pred = self.model(x, training=False)
            loss = tf.reduce_mean(self._loss_fn(y, pred))
            if self.model.losses:
                loss += tf.add_n([tf.cast(v, loss.dtype) for v in self.model.losses])
        grads = tape.gradient(loss, self._variables)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, self._variables)]
        sumsq = tf.stack([tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) for g in grads])
        mins = tf.stack([tf.reduce_min(tf.abs(tf.cast(g, tf.float32))) for g in grads])
        maxs = tf.stack([tf.reduce_max(tf.abs(tf.cast(g, tf.float32))) for g in grads])
        dead = []
        if self._relu_model is not None:
            outs = self._relu_model(x, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for o in outs:
                alive = tf.reduce_any(tf.reshape(o > 0, [-1, tf.shape(o)[-1]]), axis=0)
                dead.append(1.0 - tf.reduce_mean(tf.cast(alive, tf.float32)))
        return loss, sumsq, mins, maxs, tf.stack(dead) if dead else tf.zeros([0])

    def _deltas(self, before):
        d = tf.stack([tf.reduce_sum(tf.square(tf.cast(v, tf.float32) - tf.cast(b, tf.float32)))
                      for v, b in zip(self._variables, before)])
        w = tf.stack([tf.reduce_sum(tf.square(tf.cast(b, tf.float32))) for b in before])
        return d, w

    # -- per step -------------------------------------------------------------------------
    def _due(self, step):
        return step % self.every_n_steps == 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._due(self._step) and self.probe_batch is not None:
            self._before = self._snapshot_fn()

    def on_train_batch_end(self, batch, logs=None):
        step = self._step
        self._step += 1
        if getattr(self, "_restore_step", False) and self.probe_batch is not None:
            self._stop_capturing()
            self._before = None
        if not self._due(step) or self.probe_batch is None:
            return
        before = getattr(self, "_before", None)
        self._before = None
        self._check(step, before)

    def _check(self, step, before):
        x, y = self.probe_batch
        loss, sumsq, mins, maxs, dead = (t.numpy() for t in self._probe_fn(x, y))
        n = len(self._layers)
        layer_sq = np.bincount(self._owner_index, weights=sumsq, minlength=n)
        layer_min = np.full(n, np.inf)
        layer_max = np.zeros(n)
        np.minimum.at(layer_min, self._owner_index, mins)
        np.maximum.at(layer_max, self._owner_index, maxs)
        norms = np.sqrt(layer_sq)
        ratios = np.full(n, np.nan)
        if before is not None:
            d, w = (t.numpy() for t in self._delta_fn(before))
            ratios = np.sqrt(np.bincount(self._owner_index, weights=d, minlength=n)) / np.maximum(
                np.sqrt(np.bincount(self._owner_index, weights=w, minlength=n)), 1e-12)
        dead_by_layer = dict(zip(getattr(self, "_relu_names", []), dead.tolist()))
        global_norm = float(np.sqrt(np.sum(sumsq)))
        record = {"step": step, "grad_norm": global_norm, "loss": float(loss), "layers": {}}
        for i, name in enumerate(self._layers):
            record["layers"][name] = {"grad_norm": float(norms[i]), "grad_min_abs": float(layer_min[i]),
                                      "grad_max_abs": float(layer_max[i]), "update_ratio": float(ratios[i])}
        for name, frac in dead_by_layer.items():
            record["layers"].setdefault(name, {})["dead_fraction"] = frac
        self.records.append(record)
        self._write(record)
        self._diagnose(record, norms)
        self._last_norms = norms

    def _write(self, record):
        if self._csv:
            self._csv.write([{"step": record["step"], "layer": "(global)", "grad_norm": record["grad_norm"]}] + [
                {"step": record["step"], "layer": name, **vals} for name, vals in record["layers"].items()])
        if self._writer:
            with self._writer.as_default(step=record["step"]):
                tf.summary.scalar("grad_norm", record["grad_norm"])
                for name, vals in record["layers"].items():
                    if "grad_norm" in vals:
                        tf.summary.scalar(f"grad_norm/{name}", vals["grad_norm"])
                    if "dead_fraction" in vals:
                        tf.summary.scalar(f"dead_fraction/{name}", vals["dead_fraction"])
            self._writer.flush()

    # -- diagnosis ------------------------------------------------------------------------
    def _alert(self, kind, layer, step, message, stop=False):
        self.alerts.append({"kind": kind, "layer": layer, "step": step, "message": message})
        if self.verbose:
            print(f"\nGradientNormMonitor [{kind}] step {step}: {message}", flush=True)
        if stop:
            self.model.stop_training = True

    def _lr(self):
        try:
            return float(self.model.optimizer.learning_rate.numpy())
        except Exception:  # optimizers with a schedule object
            return float("nan")

    def _diagnose(self, record, norms):
        step, layers = record["step"], self._layers
        if not np.all(np.isfinite(norms)) or not math.isfinite(record["grad_norm"]):
            bad = [layers[i] for i in range(len(layers)) if not np.isfinite(norms[i])]
            self._alert("nonfinite", bad[0] if bad else None, step,
                        f"non-finite gradients in {', '.join(bad) or 'the loss'}; "
                        f"{'training stopped before the weights are updated with them' if self.stop_on_nonfinite else 'continuing'}. "
                        f"Lower the learning rate ({self._lr():g}) or clip gradients.", stop=self.stop_on_nonfinite)
            return
        growth = None
        if self._last_norms is not None:
            growth = norms / np.maximum(self._last_norms, 1e-12)
        worst = int(np.argmax(norms))
        grew = growth is not None and float(np.max(growth)) > self.growth_factor
        if record["grad_norm"] > self.exploding_threshold or grew:
            idx = int(np.argmax(growth)) if grew and record["grad_norm"] <= self.exploding_threshold else worst
            seen = [r["grad_norm"] for r in self.records[:-1] if math.isfinite(r["grad_norm"])]
            clip = statistics.median(seen) if seen else self.exploding_threshold / 10
            why = (f"global norm {record['grad_norm']:.3g} > {self.exploding_threshold:g}"
                   if record["grad_norm"] > self.exploding_threshold
                   else f"norm grew {growth[idx]:.3g}× since the last check")
            self._alert("exploding", layers[idx], step,
                        f"exploding gradients in layer '{layers[idx]}' (norm {norms[idx]:.3g}; {why}). "
                        f"Clip gradients, e.g. global_clipnorm={clip:.3g} (the median global norm seen so far), "
                        f"or lower the learning rate ({self._lr():g}) about 10×."
                        + (" Training stopped." if self.stop_on_explosion else ""),
                        stop=self.stop_on_explosion)
        for i, name in enumerate(layers):
            self._below[name] = self._below[name] + 1 if norms[i] < self.vanishing_threshold else 0
            if self._below[name] >= self.vanishing_patience and ("vanishing", name) not in self._flagged:
                self._flagged.add(("vanishing", name))
                self._alert("vanishing", name, step,
                            f"vanishing gradients in layer '{name}': norm below {self.vanishing_threshold:g} for "
                            f"{self._below[name]} checks in a row (now {norms[i]:.3g}). Use ReLU-family activations "
                            f"instead of sigmoid/tanh, add batch_norm, use he_normal initialization or residual blocks.")
        for name, vals in record["layers"].items():
            frac = vals.get("dead_fraction")
            if frac is not None and frac > self.dead_relu_threshold and ("dead", name) not in self._flagged:
                self._flagged.add(("dead", name))
                self._alert("vanishing", name, step,
                            f"{frac:.0%} of the units of '{name}' output zero on the whole probe batch (dead ReLUs). "
                            f"Lower the learning rate, use leaky_relu, or check the initialization.")

    # -- epoch and end ----------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.records:
            return
        last = self.records[-1]
        logs["grad_norm"] = last["grad_norm"]
        for name, vals in last["layers"].items():
            if "grad_norm" in vals:
                logs[f"grad_norm/{name}"] = vals["grad_norm"]

    def on_train_end(self, logs=None):
        if getattr(self, "_restore_step", False):
            self._stop_capturing()
        if self._csv:
            self._csv.close()
        if self.plot_path and self.records:
            self.plot(self.plot_path)

    def plot(self, path):
        """Per-layer gradient norms against step, log scale."""
        steps = [r["step"] for r in self.records]
        series = {name: [r["layers"].get(name, {}).get("grad_norm", np.nan) for r in self.records]
                  for name in self._layers}
        series["(global)"] = [r["grad_norm"] for r in self.records]
        line_plot(steps, series, path, xlabel="step", ylabel="gradient L2 norm", title="Gradient norms", logy=True)
