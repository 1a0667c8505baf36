"""``tfopt optimize``: the smallest (or fastest) model within an accuracy budget.

The search chains tfopt's registered steps (:data:`tfopt.steps.STEPS`): per-layer channel
pruning guided by a sensitivity sweep, layer removal, magnitude pruning, clustering, int8
(post-training, then quantization-aware where post-training misses the budget), and every
registered step that declares a ladder for the target. It judges every candidate's TFLite file
on a held-out *selection* split, never on the test split. Every fine-tune learns from the input
model (knowledge distillation) unless ``distill=False``.

Unless a fine-tune rate is given, the search first picks one: the highest of
:data:`PROBE_RATES` at which one epoch of fine-tuning the *unchanged* input model costs at most
:data:`PROBE_SHARE` of the budget. A model trained to the end of a long decaying schedule sits in a
minimum that a high rate throws it out of; every later fine-tune would pay that loss first.

The stages, and the ladders of settings each tries, are in :mod:`tfopt.search.stages`. For the
latency target every chain is also measured as a float32 file: on CPUs whose int8 kernels are
slow (narrow convolutions, no VNNI) the float32 file of a pruned model can be the fastest.

Every finished candidate is appended to ``candidates.csv`` at once, and its Keras model kept
under ``cache/``, so Ctrl-C loses at most the candidate in progress and ``resume=True`` goes on.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.data.pipeline import load_splits
from tfopt.distill import TeacherTargets
from tfopt.errors import TfoptError
from tfopt.graph_path import enter_graph
from tfopt.kinds import enter
from tfopt.search import inputs as I
from tfopt.search import measure as M
from tfopt.search import report, stages
from tfopt.search.choice import CONFIRMATION_FRACTION, Result, conclude, hold_out
from tfopt.search.candidates import REWRITES, Candidate, SearchState, Standings, chain_key
from tfopt.steps import STEPS
from tfopt.steps.source import (beside, budget_seconds, check_search_limits, check_source_path, check_writable,
                                load_source)
from tfopt.training.finetune import DEFAULT_BATCH_SIZE, DEFAULT_LR, logging_to

TARGETS = ("size", "latency", "macs")
#: Un-augmented training images the activation criterion measures the layers' inputs on.
PROBE_SAMPLES = 1024
#: Training images that calibrate int8 files and check exact rewrites.
CALIBRATION_SAMPLES = 500
#: A candidate over budget by at most this multiple of the budget is a near miss: its ladder goes on,
#: and, smaller (or faster) than the best so far, it also gets quantization-aware training.
NEAR_MISS = 2.0
#: Fine-tune rates the search probes when none is given, highest first.
PROBE_RATES = (1e-3, 3e-4, 1e-4)
#: Times the highest probed rate at which a change that relearns the maps' resolution is fine-tuned.
RETRAIN_FACTOR = 3
#: A probed rate is kept when one epoch of fine-tuning the unchanged input model at it costs at most
#: this share of the budget on the selection split.
PROBE_SHARE = 1 / 3
#: Registered steps that take the search's un-augmented probe images (``probe=``); so do the
#: registered steps beyond the built-in stages.
PROBED = ("prune",)


def parse_budget(text) -> float | None:
    """A time budget in seconds: ``None`` (no budget), a number of seconds, or a duration such as
    ``"30m"``, ``"1h"``, ``"90s"``.

    Raises:
        TfoptError: ``text`` is none of those, or not a finite duration above zero.
    """
    return budget_seconds(text)


class QuietRootWarnings(logging.Filter):
    """Drops the root logger's warnings (TFMOT warns through it, e.g. "Input layer does not contain
    zero weights") while a search runs; installed by :func:`optimize` and removed when it returns."""

    def filter(self, record) -> bool:
        return not (record.name == "root" and record.levelno <= logging.WARNING)


def probe_rates(drop_of, max_drop: float, rates=PROBE_RATES) -> list[dict]:
    """Probe fine-tune rates, highest first, until one costs at most :data:`PROBE_SHARE` of the budget.

    Args:
        drop_of: ``drop_of(lr)`` fine-tunes the input model for one epoch at ``lr`` and returns
            the selection accuracy it lost, in points.
        max_drop: the search's budget, in points.
        rates: the rates to try, highest first.

    Returns:
        ``[{"lr", "drop_points", "seconds"}, ...]``, one per rate tried.
    """
    probe = []
    for lr in rates:
        t0 = time.perf_counter()
        drop = drop_of(lr)
        probe.append({"lr": lr, "drop_points": drop, "seconds": time.perf_counter() - t0})
        if drop <= PROBE_SHARE * max_drop:
            break
    return probe


def chosen_rate(probe: list, max_drop: float) -> tuple[float, bool]:
    """The rate the search fine-tunes at, from a probe.

    Args:
        probe: what :func:`probe_rates` returned (or a resumed search recorded).
        max_drop: the search's budget, in points.

    Returns:
        ``(rate, whether it kept within the limit)``: the first probed rate that cost at most
        :data:`PROBE_SHARE` of ``max_drop``, else the least harmful.
    """
    ok = [p for p in probe if p["drop_points"] <= PROBE_SHARE * max_drop]
    return (ok[0]["lr"], True) if ok else (min(probe, key=lambda p: p["drop_points"])["lr"], False)


class Search:
    """State of one search; see :func:`optimize`.

    Attributes:
        model: the input model (tf_keras); ``train`` what the fine-tunes see (the arrays
            ``data``, or an augmented pipeline of them).
        fine_tune: the :class:`FineTuneSettings` of every step (a rung's overrides replace its
            epochs or rate).
        standings: the finished rows and planned chains (:class:`Standings`).
        on_event: called with one dict per event (see :func:`optimize`).
    """

    def __init__(self, model, data, selection, *, out, max_drop, target, time_budget, distill, epochs, lr,
                 batch_size, temperature, alpha, seed, max_candidates, levels, log, train=None, teacher=None,
                 teacher_path=None, on_event=None, confirmation=None):
        self.model = model
        self.confirmation = confirmation  # (x, class labels) never used to choose, or None
        self.data = data
        self.train = data if train is None else train
        self.x_sel, self.y_sel = selection
        self.out = Path(out)
        self.state = SearchState(self.out)
        self.max_drop, self.target, self.budget_s = max_drop, target, time_budget
        self.log = log
        self.on_event = on_event
        self.max_candidates = max_candidates
        self.levels = tuple(levels)
        self.teacher_path = teacher_path  # where a named teacher came from, for report.md and optimize.yaml
        self.fine_tune = FineTuneSettings(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                                          teacher=(model if teacher is None else teacher) if distill else None,
                                          temperature=temperature, alpha=alpha)
        self.x_calib = data[0][:CALIBRATION_SAMPLES]
        self.x_probe = data[0][:PROBE_SAMPLES]
        # what the candidates in this folder depend on: a resumed search must ask for the same
        self.settings = {"target": target, "max_drop": max_drop, "levels": [float(v) for v in levels],
                         "epochs": epochs, "lr": lr, "batch_size": batch_size, "distill": bool(distill),
                         "temperature": temperature, "alpha": alpha, "seed": seed,
                         "confirmation_images": 0 if confirmation is None else len(confirmation[0])}
        if teacher is not None:
            self.settings["teacher"] = I.weights_digest(teacher)
        self.standings = Standings(target, max_drop, NEAR_MISS)
        self.probe: list[dict] = []
        self.reference: dict = {}
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        self.times: list[float] = []
        self.stop_reason = ""
        self.resolution_note = ""
        self.retimed_at = None  # (rows, finalists) at the last finalists' timing (measure.retime_finalists)

    # -- bookkeeping ------------------------------------------------------------------------------

    @property
    def rows(self) -> dict:
        return self.standings.rows

    @property
    def base_acc(self):
        return self.standings.base_acc

    def store_teacher(self, augment=None) -> None:
        """Compute the teacher's outputs once, on every image the fine-tunes' pipeline can draw,
        where that pays (see :class:`tfopt.distill.TeacherTargets`)."""
        ft = self.fine_tune
        stored = TeacherTargets.build(ft.teacher, self.data[0], self.data[1], source=self.train, augment=augment,
                                      batch_size=ft.batch_size or DEFAULT_BATCH_SIZE, seed=ft.seed, log=self.log)
        if stored is not None:
            self.fine_tune = ft.replace(teacher=stored)

    def emit(self, event: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, **fields})

    def resume(self) -> None:
        """Read the finished candidates and the rate probe of an earlier run in this folder."""
        found = self.state.load(self.settings)
        if found is None:
            return
        rows, self.elapsed_before, self.probe = found
        self.rows.update(rows)
        self.log(f"resuming: {len(self.rows)} finished candidate(s) read from {self.state.csv_path}")
        self.emit("resumed", rows=len(self.rows))

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def save_state(self) -> None:
        self.state.save(self.elapsed(), self.settings, self.probe)

    def record(self, row: dict) -> None:
        self.rows[row["id"]] = row
        self.state.append(row)
        self.save_state()

    def best(self):
        """The best row within budget so far, or None."""
        return self.standings.best()

    def out_of_time(self) -> bool:
        if self.budget_s is None:
            return False
        mean = float(np.mean(self.times)) if self.times else 0.0
        return self.elapsed() + mean > self.budget_s

    # -- models -----------------------------------------------------------------------------------

    def keras_model(self, chain):
        """The Keras model after ``chain``, from the cache when a run (this one or an earlier
        one) already made it; prefixes are reused, so chains share their common steps."""
        if not chain:
            return self.model
        path = self.out / "cache" / chain_key(chain) / "model.keras"
        if path.is_file():
            return M.load(path)
        parent = self.keras_model(chain[:-1])
        step = chain[-1]
        self.log(f"    step {step.describe()}")
        model = self.run_step(parent, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        M.save(model, path)
        return model

    def run_step(self, model, step):
        """The registered step of a chain step on ``model``, with the search's fine-tune settings
        and the step's overrides."""
        if step.name in REWRITES:
            data, inputs = (self.x_calib, None), {}
        else:
            data = self.train
            inputs = {"probe": self.x_probe} if step.name in PROBED or step.name not in stages.BUILT_IN else {}
        fine_tune = self.fine_tune.replace(**step.overrides(self.fine_tune.lr or DEFAULT_LR))
        new, _ = STEPS[step.name].run(model, data, step.settings, fine_tune, log=M.quiet, **inputs)
        return new

    def evaluate(self, cand: Candidate) -> dict:
        """Build, convert and measure one candidate; its row (recorded in candidates.csv)."""
        if cand.id in self.rows:
            return self.rows[cand.id]
        self.log(f"[{len(self.rows) + 1} {self.elapsed() / 60:.1f} min] {cand.id} ({cand.stage}) | "
                 f"{self.standings.best_line()}")
        t0 = time.perf_counter()
        row = cand.first_columns()
        try:
            with logging_to(self.out / "logs" / cand.id, verbose=self.fit_verbose):
                row.update(self.measured(cand))
        except (TfoptError, ValueError, RuntimeError) as exc:
            self.log(f"    failed: {str(exc).splitlines()[0]}")
            row.update(error=str(exc).splitlines()[0][:300], meets_budget=False)
        row["seconds"] = time.perf_counter() - t0
        self.times.append(row["seconds"])
        self.record(row)
        if not row.get("error"):
            self.log(f"    {row['selection_accuracy']:.2%} (drop {row['drop_points']:+.2f} pt"
                     f"{', within budget' if row['meets_budget'] else ', over budget'}), "
                     f"{row['tflite_gzip_bytes'] / 1000:.1f} kB gzip / {row['tflite_raw_bytes'] / 1000:.1f} kB raw, "
                     f"{row['latency_us']:.0f} µs, {row['macs']:,} MACs, {row['seconds']:.0f} s")
        self.emit("candidate", id=cand.id, stage=cand.stage, row=dict(row))
        return row

    def measured(self, cand: Candidate) -> dict:
        """The measured columns of a candidate's row; its TFLite file kept in the cache."""
        model = self.keras_model(cand.chain)
        keras_acc = M.accuracy(model, self.x_sel, self.y_sel)
        quantized = model
        if cand.mode == "qat":
            quantized, _ = STEPS["quantize"].run(model, self.train, {"mode": "qat"}, self.fine_tune, log=M.quiet)
        content = M.to_tflite(quantized, cand.tflite_mode, self.x_calib)
        sizes, st = M.tflite_sizes(content), M.stats(model)
        acc = M.tflite_accuracy(content, self.x_sel, self.y_sel)
        row = {"keras_selection_accuracy": keras_acc, "selection_accuracy": acc,
               "tflite_raw_bytes": sizes["raw_bytes"], "tflite_gzip_bytes": sizes["gzip_bytes"],
               "params": st["params"], "nonzero_params": st["nonzero_params"], "macs": st["macs"],
               "latency_us": M.latency_us(content, self.x_sel[0]),
               "latency_us_2t": M.latency_us(content, self.x_sel[0], threads=2),
               "sparse_raw_bytes": M.sparse_raw_bytes(quantized, cand.tflite_mode, self.x_calib)
               if st["nonzero_params"] < 0.7 * st["params"] else None, "error": ""}
        row["drop_points"] = (self.base_acc - acc) * 100
        row["meets_budget"] = row["drop_points"] <= self.max_drop + 1e-9
        d = self.out / "cache" / cand.id
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.tflite").write_bytes(content)
        return row

    # -- the loop ---------------------------------------------------------------------------------

    def stage(self, name: str, ladders, qat: bool = False) -> bool:
        """Plan and run stage ``name``: ``ladders`` are lists of chains, each from mild to harsh (a
        single chain is its own ladder); each chain is a candidate (QAT with ``qat``; for the
        latency target also as a float32 file). False when time or the candidate limit ran out."""
        self.emit("stage", name=name)
        groups = []
        for chains in ladders:
            cands = []
            for chain in chains:
                cands.append(Candidate(chain, name, "qat" if qat else "int8"))
                if self.target == "latency" and not qat:
                    cands.append(Candidate(chain, name, "float32"))
            for c in cands:
                self.standings.chains[c.id] = c.chain
            groups.append(cands)
        return self.run_ladders(groups)

    def run_ladders(self, ladders) -> bool:
        """Evaluate each ladder's candidates (mildest first) in order, leaving a ladder at its first
        hopeless rung (per mode: int8, float32, qat); False when time or the candidate limit ran out."""
        for ladder in ladders:
            stopped = set()
            for cand in ladder:
                if cand.mode in stopped:
                    continue
                if cand.id not in self.rows:
                    if not self.may_start():
                        return False
                    self.evaluate(cand)
                row = self.rows[cand.id]
                if self.standings.hopeless(row):
                    rest = [c.id for c in ladder[ladder.index(cand) + 1:] if c.mode == cand.mode]
                    if rest:
                        self.log(f"    {cand.id} lost {row['drop_points']:.2f} pt, over {NEAR_MISS:g}× the budget: "
                                 f"skipping {', '.join(rest)}")
                        self.emit("skipped", id=cand.id, stage=cand.stage, drop_points=row["drop_points"],
                                  skipped=rest)
                    stopped.add(cand.mode)
        return True

    def may_start(self) -> bool:
        """Whether another candidate may start (the candidate limit and the time budget)."""
        if self.max_candidates is not None and len(self.rows) >= self.max_candidates:
            self.log(f"candidate limit ({self.max_candidates}) reached")
            self.emit("limit", reason="candidates")
            return False
        if self.out_of_time():
            self.log(f"time budget ({self.budget_s / 60:.1f} min) reached after {self.elapsed() / 60:.1f} min")
            self.emit("limit", reason="time")
            return False
        return True

    def choose_rate(self) -> None:
        """Set the fine-tune rate from :data:`PROBE_RATES` (see the module's notes); a resumed
        search reuses the probe it recorded."""
        if self.fine_tune.lr is not None:
            return
        limit = PROBE_SHARE * self.max_drop
        if not self.probe:
            self.probe = probe_rates(self.probed_drop, self.max_drop)
            self.save_state()
        lr, ok = chosen_rate(self.probe, self.max_drop)
        self.fine_tune = self.fine_tune.replace(lr=lr)
        self.log(f"fine-tune rate: {lr:g} (the highest probed rate costing at most {limit:.2f} pt"
                 + ("" if ok else "; none did: the least harmful") + ")")
        self.emit("rate", lr=lr, probe=list(self.probe))

    def probed_drop(self, lr: float) -> float:
        """Points one epoch of fine-tuning the unchanged input model at ``lr`` costs."""
        t0 = time.perf_counter()
        tuned = M.fine_tuned(self.model, self.train, self.fine_tune.replace(epochs=1, lr=lr))
        acc = M.accuracy(tuned, self.x_sel, self.y_sel)
        drop = (self.base_acc - acc) * 100
        self.log(f"rate probe: one epoch at {lr:g} leaves the input model at {acc:.2%} "
                 f"(drop {drop:+.2f} pt, {time.perf_counter() - t0:.0f} s)")
        self.emit("probe", lr=lr, drop_points=drop)
        return drop

    def high_rate(self) -> dict:
        """``{"lr": the highest probed rate}`` when the probe chose a lower one, else ``{}``. A cut beyond
        what a sweep without fine-tune tolerated has left the trained minimum (LeNet-300-100 cut to
        784-90-50, then pruned to 93% over 20 epochs: 97.72% test at 3e-4, 98.25% at 1e-3)."""
        return {"lr": PROBE_RATES[0]} if self.probe and self.fine_tune.lr != PROBE_RATES[0] else {}

    def retrain_rate(self) -> dict:
        """``{"lr": RETRAIN_FACTOR × the highest probed rate}`` when probed, else ``{}`` (the caller's rate).
        A Fashion-MNIST MobileNetV2, stem at stride 2, 2 epochs: 88.90% validation at 1e-3, 90.23% at 3e-3."""
        return {"lr": RETRAIN_FACTOR * PROBE_RATES[0]} if self.probe else {}

    def measure_input(self) -> None:
        """The input model's selection accuracy, and its float32 TFLite file for reference."""
        x, y = self.x_sel, self.y_sel
        self.standings.base_acc = M.accuracy(self.model, x, y)
        try:
            ref = M.to_tflite(self.model, "float32", self.x_calib)
            self.reference = {**M.tflite_sizes(ref), "latency_us": M.latency_us(ref, x[0]),
                              "latency_us_2t": M.latency_us(ref, x[0], threads=2),
                              "accuracy": M.tflite_accuracy(ref, x, y), "macs": M.stats(self.model)["macs"]}
            self.log(f"input model as float32 TFLite: {self.reference['gzip_bytes'] / 1000:.1f} kB gzip, "
                     f"{self.reference['raw_bytes'] / 1000:.1f} kB raw, {self.reference['latency_us']:.0f} µs")
        except (TfoptError, ValueError, RuntimeError) as exc:
            self.log(f"the input model did not convert to float32 TFLite ({str(exc).splitlines()[0]})")
        self.log(f"input model: {self.base_acc:.2%} on the selection split ({len(x)} images); budget: a drop of at "
                 f"most {self.max_drop:g} points; target: {self.target}")
        self.resolution_note = I.resolution_note(self.max_drop, len(x))
        if self.resolution_note:
            self.log(self.resolution_note)
            self.emit("resolution", images=self.max_drop * len(x) / 100, selection_images=len(x),
                      note=self.resolution_note)

    def search(self) -> None:
        """Measure the input, choose the fine-tune rate, run the stages (:mod:`tfopt.search.stages`)."""
        self.standings.chains = {}
        self.measure_input()
        with logging_to(None, verbose=self.fit_verbose):
            self.choose_rate()
            stages.run(self)
        M.retime_finalists(self)


@contextmanager
def quiet_root_warnings():
    """While the block runs, the root logger drops its own warnings (see :class:`QuietRootWarnings`);
    records of named loggers, and everything after the block, pass as before."""
    quiet, root = QuietRootWarnings(), logging.getLogger()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def optimize(model, data, *, validation_data=None, test_data=None, max_drop: float = 0.3, target: str = "size",
             time_budget=None, out="optimize", resume: bool = False, distill: bool = True, epochs: int = 2,
             lr: float | None = None, batch_size: int | None = None, temperature: float = 4.0, alpha: float = 0.9,
             seed: int = 0, max_candidates: int | None = None, levels=(1.0, 3.0, 10.0, 20.0, 30.0), selection_fraction=0.1,
             confirmation_fraction=CONFIRMATION_FRACTION, augment=None, teacher=None, log=print, on_event=None,
             fit_verbose: int = 0) -> Result:
    """Search compression chains for the smallest (or fastest) TFLite model (int8; for latency also
    float32) whose accuracy on a held-out selection split drops by at most ``max_drop`` points.

    Args:
        model: a tf_keras or Keras 3 classifier (Sequential or functional).
        data: training ``(x, y)`` arrays, for fine-tunes and int8 calibration.
        validation_data: the selection split ``(x, y)`` the budget is judged on; default: the last
            ``selection_fraction`` of ``data``, held out from the fine-tunes.
        test_data: optional ``(x, y)``; only reported at the end, never used to choose.
        max_drop: largest allowed accuracy drop, in percentage points, of the TFLite file
            against the input model on the selection split.
        target: ``size`` (gzip bytes of the .tflite), ``latency`` (1-thread LiteRT) or ``macs``.
        time_budget: seconds or ``"30m"``; no candidate starts that would likely overrun it. Time
            the plan leaves goes to longer fine-tunes of the near misses (the ``extend`` stage).
        out: folder for candidates.csv, pareto.png, report.md, optimize.yaml, the chosen model
            (``chosen/``) and the cache of intermediate models.
        resume: continue a search in ``out`` (finished candidates are kept, not rerun).
        distill: every fine-tune learns from the input model (``temperature``, ``alpha``).
        teacher: learn from this model instead (any Keras model, or the path of a run directory or
            model file) taking the same inputs and giving as many outputs, e.g. a larger network
            than the one being compressed. The budget is still judged against the input model.
        epochs: fine-tune epochs of every step.
        lr: peak fine-tune rate (None: probed, see :data:`PROBE_RATES`).
        batch_size: fine-tune batch size (None: the steps' own).
        temperature: distillation softening temperature.
        alpha: weight of the teacher's soft targets in the distillation loss.
        seed: seed of the selection split, the fine-tunes and the calibration images.
        max_candidates: stop after this many candidates.
        selection_fraction: share of ``data`` held out as the selection split when
            ``validation_data`` is not given.
        confirmation_fraction: share of the selection split set aside as the confirmation split
            (0: none): the best file within budget on the rest is returned only if its drop there is
            within the budget too, else the next best (see :mod:`tfopt.search.choice`). Set aside
            only when both parts can resolve the budget.
        levels: per-layer tolerances, in points lost before fine-tuning, that turn the
            sensitivity sweeps into per-layer ratios (one candidate each).
        augment: training-time augmentation of the fine-tunes, as a recipe's ``data.augment`` (e.g.
            ``{"translate": 0.08}``; ``tfopt optimize RUN`` uses the run's recipe's).
        log: called with each progress line.
        on_event: called with one dict per event: ``{"event": "resumed", "rows"}``, ``"probe"``
            (``lr``, ``drop_points``), ``"rate"`` (``lr``, ``probe``), ``"stage"`` (``name``),
            ``"candidate"`` (``id``, ``stage``, ``row``) when a candidate finishes, ``"skipped"``
            (``id``, ``stage``, ``drop_points``, ``skipped``: the ids a hopeless rung ends its
            ladder before), ``"limit"`` (``reason``: ``candidates`` or ``time``), ``"resolution"``
            (``images``, ``selection_images``, ``note``: the budget is under :data:`tfopt.search.inputs.RESOLVABLE_IMAGES`
            selection images), ``"stopped"`` (``reason``, ``used``, ``note``: why a search with a time
            budget ended, having spent that share of it), ``"retimed"`` (``latency_us``: the new figure of
            each latency finalist, ``note``; see :data:`tfopt.search.measure.FINALIST_SPREAD`),
            ``"confirmation"`` (``id`` and what :func:`tfopt.search.choice.confirm` found) and
            ``"chosen"`` (``id``).
        fit_verbose: Keras ``fit`` verbosity of the fine-tunes (0: silent); logs go to ``out/logs/<id>/``.

    Returns:
        A :class:`Result`.

    Raises:
        TfoptError: bad settings, an output folder that holds another search, or no candidate
            meets the budget.
    """
    if target not in TARGETS:
        raise TfoptError(f"optimize: target must be one of {', '.join(TARGETS)}; got {target!r}")
    check_search_limits(max_drop, time_budget, max_candidates, epochs)
    budget_s = parse_budget(time_budget)
    kind, work = enter_graph("optimize", model)
    I.check_classifier(model, data, validation_data)
    teacher, teacher_path = I.teacher_model(teacher, work, distill)
    selection, data = I.split(data, validation_data, selection_fraction, seed, log)
    confirmation, selection = hold_out(selection, confirmation_fraction, max_drop, seed, log)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise TfoptError(f"optimize: the output folder {out} already holds a search; pass resume=True (--resume) "
                         f"to continue it, or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    augment = I.augment_config(augment)
    search = Search(work, data, selection, out=out, max_drop=max_drop, target=target, time_budget=budget_s,
                    distill=distill, epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature,
                    alpha=alpha, seed=seed, max_candidates=max_candidates, levels=levels, log=log,
                    train=I.augmented(data, augment, batch_size, seed, log), teacher=teacher,
                    teacher_path=teacher_path, on_event=on_event, confirmation=confirmation)
    search.fit_verbose = fit_verbose
    if distill:
        search.store_teacher(augment)
    if resume:
        search.resume()
    try:
        with quiet_root_warnings():
            search.search()
    except KeyboardInterrupt:
        log(f"interrupted: {len(search.rows)} finished candidate(s) kept in {search.state.csv_path}; "
            f"--resume continues the search")
        if search.base_acc is not None:
            report.pareto_plot(list(search.rows.values()), search.base_acc, max_drop, search.best(), out / "pareto.png")
        raise
    return conclude(search, test_data, kind, time_budget, max_candidates)


def optimize_source(source, recipe=None, overrides=(), *, output=None, resume=False, log=print, **kwargs):
    """Run the search on a run directory (or a model file with ``recipe``) and its recipe's data
    splits: fine-tunes on the training split, the budget judged on the validation split (the
    selection split; a recipe without one holds out 10% of the training images), test accuracy
    reported at the end. The search folder is ``<output>/<run name>-optimized``.

    Raises:
        TfoptError: the folder holds a search and ``resume`` is off, or as :func:`optimize`.
    """
    check_search_limits(kwargs.get("max_drop"), kwargs.get("time_budget"), kwargs.get("max_candidates"),
                        kwargs.get("epochs"))
    check_source_path(source)
    check_writable(output or beside(source))
    src = load_source(source, recipe, overrides)
    r = src.recipe
    out = Path(output or beside(source)) / f"{src.name}-optimized"
    if out.exists() and not resume and any(out.iterdir()):
        raise TfoptError(f"{out} already holds a search; pass --resume to continue it, or --output elsewhere")
    splits = load_splits(r.data, r.seed)
    validation = (splits.x_val, splits.y_val) if len(splits.x_val) else None
    kwargs.setdefault("batch_size", r.train.batch_size)
    kwargs.setdefault("seed", r.seed)
    kwargs.setdefault("augment", r.data.augment)
    return optimize(src.model, (splits.x_train, splits.y_train), validation_data=validation,
                    test_data=(splits.x_test, splits.y_test), out=out, resume=resume, log=log, **kwargs)
