"""``tfopt tune``: keras-tuner's random search, Bayesian optimization and Hyperband over a
recipe's tune specs, for tf_keras models.

keras-tuner 1.4.8 refuses models that are not Keras 3 ones (keras-team/keras-tuner#1039), so
tfopt drives its oracles from a :class:`BaseTuner` whose ``run_trial`` trains the trial's
concrete recipe itself and returns the reported values; the model-type check never runs.

Search folder (``<output.dir>/<run-name>-tune/``, built as ``.partial`` and renamed when done)::

    search.yaml        the search recipe, as given (with --set applied)
    oracle.json, tuner0.json, trial_<id>/   keras-tuner's state: what --resume continues
    trials.csv         one row per trial, rewritten after each one
    objective.png      the score of each trial and the best so far
    best.yaml          the best trial's complete recipe, ready for `tfopt fit`
    summary.json       best trial, its values, and the epochs every trial trained
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import yaml

from tfopt.config.tune import label
from tfopt.errors import RunDirError, TfoptError
from tfopt.plots import trials_plot
from tfopt.rundir import RunDir, atomic_write_json, atomic_write_text
from tfopt.training.run import Interrupted
from tfopt.tune.trial import RUN, run_trial, splits_for

SEARCH_FILE = "search.yaml"
SHOWN = ("score", "val_accuracy", "val_loss", "accuracy", "loss", "tflite_kb", "latency_ms", "params", "macs",
         "fit_val_accuracy", "fit_val_loss", "fit_accuracy", "fit_loss", "test_accuracy", "fit_test_accuracy")
TAIL = ("epochs", "epochs_trained", "seconds", "error")


def _priority(name):
    if name in SHOWN:
        return (0, SHOWN.index(name))
    return (2, TAIL.index(name)) if name in TAIL else (1, name)


class SearchInterrupted(TfoptError):
    """The search was stopped; ``--resume`` continues it."""

    exit_code = 130


def _role() -> str:
    """``single``, ``chief`` or ``worker``, read as keras-tuner reads its environment variables."""
    env = os.environ
    if "KERASTUNER_ORACLE_IP" not in env:
        return "single"
    missing = [k for k in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if k not in env]
    if missing:
        raise TfoptError(f"distributed search: KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not; every process needs all three "
                         f"(KERASTUNER_TUNER_ID=chief on the chief, tuner0, tuner1, ... on the workers).")
    return "chief" if "chief" in env["KERASTUNER_TUNER_ID"] else "worker"


def make_oracle(search):
    """The keras-tuner oracle for ``tune.algorithm``, maximising or minimising ``score``."""
    import keras_tuner as kt

    cfg, recipe = search.config, search.base
    objective = kt.Objective("score", cfg.objective.resolved_direction())
    # keras-tuner draws a random seed when given 0, so seeds are handed over plus one.
    seed = (cfg.seed if cfg.seed is not None else recipe.seed) + 1
    common = dict(objective=objective, seed=seed,
                  max_retries_per_trial=cfg.max_retries_per_trial,
                  max_consecutive_failed_trials=cfg.max_consecutive_failed_trials)
    if cfg.algorithm == "random":
        oracle = kt.oracles.RandomSearchOracle(max_trials=cfg.trials(), **common)
    elif cfg.algorithm == "bayesian":
        oracle = kt.oracles.BayesianOptimizationOracle(max_trials=cfg.trials(), num_initial_points=cfg.num_initial_points,
                                                       **common)
    else:
        oracle = kt.oracles.HyperbandOracle(max_epochs=recipe.train.epochs, factor=cfg.factor,
                                            hyperband_iterations=cfg.hyperband_iterations, **common)
        oracle.max_trials = cfg.max_trials
    oracle.verbose = 0
    return oracle


def _tuner_class():
    import keras_tuner as kt
    from keras_tuner.engine.base_tuner import BaseTuner

    class Space(kt.HyperModel):
        def __init__(self, search):
            super().__init__()
            self.space = search

        def declare_hyperparameters(self, hp):
            self.space.declare(hp)

        def build(self, hp):
            return None

    class RecipeTuner(BaseTuner):
        """Runs each trial's concrete recipe with :func:`tfopt.tune.trial.run_trial`."""

        def __init__(self, search, folder: Path, stem: str, log=print):
            self.space, self.log, self.folder, self.stem = search, log, Path(folder), stem
            super().__init__(oracle=make_oracle(search), hypermodel=Space(search), directory=str(self.folder.parent),
                             project_name=self.folder.name, overwrite=False)

        def run_trial(self, trial, *args, **kwargs):
            hp = trial.hyperparameters.values
            values = self.space.values(hp)
            epochs = hp.get("tuner/epochs")
            parent = hp.get("tuner/trial_id")
            shown = ", ".join(f"{n}={_fmt(values[p])}" for p, n in self.space.names().items())
            budget = f" epochs {hp.get('tuner/initial_epoch', 0)}→{epochs}" if epochs else ""
            self.log(f"trial {trial.trial_id} ({os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}){budget}: {shown}")
            try:
                recipe = self.space.recipe(values)
                cfg = self.space.config
                result = run_trial(recipe, Path(self.get_trial_dir(trial.trial_id)), cfg.objective, cfg.compress,
                                   epochs=epochs, parent=self.trial_folder(parent) if parent else None,
                                   log=self.log)
            except Interrupted:
                raise KeyboardInterrupt from None
            except TfoptError as exc:
                self.log(f"trial {trial.trial_id} failed: {exc}")
                one_line = " ".join(line.strip() for line in str(exc).splitlines()) or type(exc).__name__
                raise kt.errors.FailedTrialError(one_line) from None
            self.log(f"trial {trial.trial_id}: score {result['score']:.4f} after {int(result['epochs_trained'])} "
                     f"epoch(s) ({result['seconds']:.1f} s)")
            return result

        def trial_folder(self, trial_id) -> Path:
            """Where trial ``trial_id`` trained: this tuner's folder, else a sibling worker's."""
            own = self.folder / f"trial_{trial_id}"
            for candidate in [own, *sorted(self.folder.parent.glob(f"{self.stem}-*/trial_{trial_id}"))]:
                if (candidate / RUN / "checkpoints" / "state.json").is_file():
                    return candidate
            return own

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if not self._is_worker():
                write_trials_csv(self.oracle, self.space, self.folder)

        def save_model(self, trial_id, model, step=0):
            pass  # each trial's run directory holds its model

        def load_model(self, trial):
            raise NotImplementedError("load the best trial's model from its run folder, or fit best.yaml")

    return RecipeTuner


def _raw(value):
    return label(value) if isinstance(value, (dict, list)) else value


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return label(value)
    return str(value)


# ----------------------------------------------------------------------------------------
# Results


def trial_rows(oracle, search) -> list[dict]:
    """One row per trial in start order: id, status, values, reported metrics."""
    rows = []
    names = search.names()
    for trial_id in oracle.start_order:
        trial = oracle.trials[trial_id]
        hp = trial.hyperparameters.values
        values = search.values(hp)
        row = {"trial": trial_id, "status": trial.status}
        row.update({names[p]: _raw(values[p]) for p in names})
        if "tuner/epochs" in hp:
            row["budget"] = f"{hp.get('tuner/initial_epoch', 0)}→{hp['tuner/epochs']}"
            row["continues"] = hp.get("tuner/trial_id") or ""
        for name in sorted(trial.metrics.metrics, key=_priority):
            value = trial.metrics.get_last_value(name)
            row[name] = None if value is None else float(value)
        if trial.message and trial.status != "COMPLETED":
            last = trial.message.strip().splitlines()[-1]
            kind, sep, text = last.partition(": ")
            row["error"] = text if sep and kind.endswith(("Error", "Exception")) else last
        rows.append(row)
    return rows


def _columns(rows) -> list:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    tail = [k for k in TAIL if k in keys]
    return [k for k in keys if k not in tail] + tail


def trials_csv(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_trials_csv(oracle, search, folder: Path) -> list[dict]:
    rows = trial_rows(oracle, search)
    if rows:
        atomic_write_text(folder / "trials.csv", trials_csv(rows))
    return rows


def trials_table(rows, best_id=None) -> str:
    """The trials as an aligned text table; the best trial is marked with ``*``."""
    cols = [c for c in _columns(rows) if c != "error"]
    cells = [["", *cols]]
    for r in rows:
        cells.append(["*" if r["trial"] == best_id else "", *[_cell(r.get(c)) for c in cols]])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    failed = [f"trial {r['trial']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines + failed)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return _fmt(value)


def best_recipe_yaml(search, trial, score_line: str) -> str:
    """The best trial's recipe, complete, every spec replaced by its value, no ``tune:`` section."""
    recipe = search.recipe(search.values(trial.hyperparameters.values))
    data = recipe.model_dump(mode="json")
    data.pop("tune", None)
    header = f"# Best trial {trial.trial_id} of `tfopt tune {Path(search.source).name}`: {score_line}.\n"
    budget = trial.hyperparameters.values.get("tuner/epochs")
    if budget is not None and budget < recipe.train.epochs:
        header += (f"# That trial trained {budget} of train.epochs = {recipe.train.epochs} (its Hyperband budget); "
                   f"`tfopt fit` trains all {recipe.train.epochs}.\n")
    header += "# Run it with: tfopt fit <this file>\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def objective_plot(rows, path, direction: str) -> None:
    done = [(i + 1, r["score"]) for i, r in enumerate(rows) if r.get("score") is not None]
    groups = [f"{r['budget'].split('→')[1]}-epoch budget" if r.get("budget") else "trial"
              for r in rows if r.get("score") is not None]
    if not done:
        return
    best, running = None, []
    for _, s in done:
        best = s if best is None else (max(best, s) if direction == "max" else min(best, s))
        running.append(best)
    trials_plot([i for i, _ in done], [s for _, s in done], running, path, ylabel=f"score ({direction}imise)",
                title="tfopt tune: objective by trial", groups=groups)


# ----------------------------------------------------------------------------------------
# The command


def tune(search, *, output=None, resume=False, overwrite=False, log=print) -> dict:
    """Run (or continue, or join) a search; returns the summary (``{}`` for a worker).

    Args:
        search: a :class:`tfopt.tune.space.Search`.
        output: parent folder of the search folder; default ``output.dir`` of the recipe.
        resume: continue the interrupted search in ``<run>-tune.partial``.
        overwrite: replace a finished search of the same name (by rename, at the end).
    """
    role = _role()
    base = search.base
    run = RunDir(Path(output or base.output.dir) / f"{base.run_name()}-tune", overwrite=overwrite,
                 resume=resume)
    if role != "worker":
        run.check()
    splits_for(base)  # a missing or corrupt dataset stops the search here; trials reuse what it loaded
    text = yaml.safe_dump(search.data, sort_keys=False, default_flow_style=None)
    folder = run.partial
    if role == "worker":
        # A worker trains in a folder of its own beside the chief's: on one machine or many.
        folder = run.final.with_name(f"{run.final.name}-{os.environ['KERASTUNER_TUNER_ID']}")
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / SEARCH_FILE, text)
    else:
        run.open()
        saved = run.path(SEARCH_FILE)
        if resume and saved.is_file() and yaml.safe_load(saved.read_text()) != search.data:
            raise RunDirError(f"--resume: the search recipe differs from the interrupted one in {saved}; use the "
                              f"same recipe and --set options, or start afresh with --overwrite.")
        atomic_write_text(saved, text)
    started = time.perf_counter()
    tuner = _tuner_class()(search, folder, run.final.name, log=log)
    if role == "chief":
        log(f"chief: serving the {search.config.algorithm} oracle on {os.environ['KERASTUNER_ORACLE_IP']}:"
            f"{os.environ['KERASTUNER_ORACLE_PORT']}; waiting for workers")
    try:
        tuner.search()
    except KeyboardInterrupt:
        raise SearchInterrupted(f"interrupted; finished trials are kept in {run.partial}. Continue with the same "
                                f"command plus --resume (the interrupted trial goes on from its last epoch).") from None
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        if role != "worker":
            write_trials_csv(tuner.oracle, search, folder)
        cfg = search.config
        raise TfoptError(f"{cfg.max_consecutive_failed_trials} trials in a row failed, so the search stopped; each "
                         f"trial's error is in {folder / 'trials.csv'}. Fix the recipe, or raise "
                         f"tune.max_consecutive_failed_trials, then continue with --resume.") from None
    if role == "worker":
        log(f"worker {tuner.tuner_id}: no trials left")
        return {}
    return _finish(tuner, search, run, time.perf_counter() - started, log)


def _finish(tuner, search, run, seconds, log) -> dict:
    oracle, cfg = tuner.oracle, search.config
    rows = write_trials_csv(oracle, search, run.partial)
    done = [r for r in rows if r["status"] == "COMPLETED" and r.get("score") is not None]
    if not done:
        raise TfoptError(f"no trial completed; see {run.partial / 'trials.csv'} for each trial's error.")
    best = oracle.get_best_trials(1)[0]
    best_row = next(r for r in rows if r["trial"] == best.trial_id)
    obj = cfg.objective
    score_line = f"{obj.metric} {best_row.get(obj.metric, float('nan')):.4f}"
    if obj.penalty:
        score_line = f"score {best_row['score']:.4f} ({score_line}, " + ", ".join(
            f"{k} {best_row.get(k, float('nan')):.4g}" for k in obj.penalty) + ")"
    log(trials_table(rows, best.trial_id))
    objective_plot(rows, run.path("objective.png"), obj.resolved_direction())
    atomic_write_text(run.path("best.yaml"), best_recipe_yaml(search, best, score_line))
    summary = {
        "algorithm": cfg.algorithm,
        "objective": obj.model_dump(),
        "best_trial": best.trial_id,
        "best_score": best_row["score"],
        "best_values": {p: v for p, v in search.values(best.hyperparameters.values).items()},
        "best_epochs": best_row.get("epochs"),
        "trials": len(rows),
        "completed": len(done),
        "total_epochs_trained": sum(int(r.get("epochs_trained") or 0) for r in rows),
        "seconds": round(seconds, 1),
    }
    atomic_write_json(run.path("summary.json"), summary)
    final = run.commit()
    summary["folder"] = str(final)
    log(f"best: trial {best.trial_id}, {score_line}; {summary['total_epochs_trained']} epochs trained over "
        f"{len(rows)} trials")
    log(f"best recipe: {final / 'best.yaml'} (run it with `tfopt fit {final / 'best.yaml'}`)")
    return summary
