"""What a search tries and what it keeps: chains of registered steps, candidates, their rows.

A chain step names a registered step (:data:`tfopt.steps.STEPS`) and holds the settings its
config accepts, the fine-tune overrides of that one step (``epochs``, ``lr``) and, for a rung the
search numbered (a sweep level), a label for ids. A candidate is a chain, the stage that planned
it and how its TFLite file is made (``int8``, ``float32`` or ``qat``). Every finished candidate
is one row of ``candidates.csv`` (:data:`COLUMNS`), appended at once, with ``state.json``
beside it, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from tfopt.errors import TfoptError
from tfopt.steps import STEPS

COLUMNS = ["id", "steps", "stage", "selection_accuracy", "keras_selection_accuracy", "drop_points", "meets_budget",
           "tflite", "int8", "tflite_raw_bytes", "tflite_gzip_bytes", "sparse_raw_bytes", "params", "nonzero_params",
           "macs", "latency_us", "latency_us_2t", "seconds", "error", "confirmation_drop_points"]
FLOAT_COLUMNS = ("selection_accuracy", "keras_selection_accuracy", "drop_points", "latency_us", "latency_us_2t",
                 "seconds", "confirmation_drop_points")
INT_COLUMNS = ("tflite_raw_bytes", "tflite_gzip_bytes", "sparse_raw_bytes", "params", "nonzero_params", "macs")
#: How a candidate's TFLite file is made: its id's suffix.
MODES = {"int8": "+int8", "float32": "+f32", "qat": "+qat"}
#: Exact rewrites: run on the calibration images, without labels or a fine-tune.
REWRITES = ("fold_pool",)


def step_token(name: str, settings: dict, label=None) -> str:
    """The part of a candidate id for a registered step: its declared ``token``, else the
    registry's default (:meth:`tfopt.config.step_registry.Step.candidate_token`).

    Args:
        name: a registered step name.
        settings: the settings its config accepts.
        label: the search's name for the rung (a sweep level); the token reads it as ``label``.

    Returns:
        A short name such as ``ch2``, ``perk90act``, ``c16``.

    Raises:
        TfoptError: ``name`` is not registered.
    """
    given = dict(settings) if label is None else {**settings, "label": label}
    return STEPS[name].candidate_token(given)


@dataclass
class ChainStep:
    """One step of a chain.

    Attributes:
        name: a registered step name (``structured``, ``prune``, ``cluster``, a plugin's).
        settings: the settings its config accepts, as a mapping.
        fine_tune: overrides of the search's fine-tune for this step (``epochs``, ``lr``).
        label: the search's name for the rung in ids (a sweep level), never a setting.
    """

    name: str
    settings: dict = field(default_factory=dict)
    fine_tune: dict = field(default_factory=dict)
    label: object = None

    def token(self) -> str:
        """This step's part of a candidate id; ``-e60`` appended for an epochs override, ``-lrx0.33``
        for a rate scaled from the step's own."""
        epochs, scale = self.fine_tune.get("epochs"), self.fine_tune.get("lr_scale")
        return (step_token(self.name, self.settings, self.label) + (f"-e{epochs}" if epochs else "")
                + (f"-lrx{scale:.2g}" if scale else ""))

    def overrides(self, lr: float) -> dict:
        """The fine-tune overrides as :class:`~tfopt.config.fine_tune.FineTuneSettings` fields:
        ``lr_scale`` becomes the rate it scales (the step's own, else ``lr``, the search's)."""
        out = dict(self.fine_tune)
        scale = out.pop("lr_scale", None)
        if scale is not None:
            out["lr"] = (out.get("lr") or lr) * scale
        return out

    def describe(self) -> str:
        """The step name and its settings with the fine-tune overrides, as in the ``steps`` column."""
        return f"{self.name} {json.dumps({**self.settings, **self.fine_tune}, sort_keys=True)}"


def chain_key(chain) -> str:
    """The chain's part of a candidate id (``base`` for the input model): ``ch2+p3+c16``."""
    return "+".join(step.token() for step in chain) or "base"


@dataclass
class Candidate:
    """A chain, the stage that planned it and its TFLite mode (``int8``, ``float32``, ``qat``)."""

    chain: list
    stage: str
    mode: str = "int8"

    def __post_init__(self):
        if self.mode not in MODES:
            raise TfoptError(f"candidate mode must be one of {', '.join(MODES)}; got {self.mode!r}")

    @property
    def id(self) -> str:
        return chain_key(self.chain) + MODES[self.mode]

    @property
    def tflite_mode(self) -> str:
        """The conversion: a QAT model converts to int8 with its learned ranges."""
        return "float32" if self.mode == "float32" else "int8"

    def first_columns(self) -> dict:
        """The row's columns known before any work: id, steps, stage, tflite, int8."""
        last = {"int8": "int8 ptq", "float32": "float32", "qat": "int8 qat"}[self.mode]
        return {"id": self.id, "steps": " -> ".join([s.describe() for s in self.chain] + [last]),
                "stage": self.stage, "tflite": self.tflite_mode,
                "int8": {"int8": "ptq", "float32": "", "qat": "qat"}[self.mode]}


def typed_row(row: dict) -> dict:
    """A ``candidates.csv`` row with numbers as numbers, ``meets_budget`` a bool, empty cells None.

    Args:
        row: the row as :class:`csv.DictReader` reads it (strings).

    Returns:
        A new dict; the other columns stay strings.
    """
    out = dict(row)
    for k in FLOAT_COLUMNS:
        out[k] = float(row[k]) if row.get(k) not in (None, "") else None
    for k in INT_COLUMNS:
        out[k] = int(float(row[k])) if row.get(k) not in (None, "") else None
    out["meets_budget"] = row.get("meets_budget") in ("True", True)
    return out


def read_rows(path) -> dict:
    """The rows of a ``candidates.csv``.

    Args:
        path: the file.

    Returns:
        ``{id: typed row}`` (see :func:`typed_row`), in file order.
    """
    with open(path, newline="") as f:
        return {row["id"]: typed_row(row) for row in csv.DictReader(f)}


#: Latencies of one graph (the same MACs) within this fraction of each other are measurement noise.
LATENCY_TIE = 0.05


def score(row: dict, target: str):
    """What the target minimises, from a row."""
    return {"size": row["tflite_gzip_bytes"], "latency": row["latency_us"], "macs": row["macs"]}[target]


class Standings:
    """The finished rows of a search and the chains its stages planned in this run.

    Attributes:
        target: ``size``, ``latency`` or ``macs``.
        max_drop: the budget, in points of selection accuracy.
        near_miss: a row over budget by at most this multiple of it is a near miss; beyond, its
            ladder ends.
        base_acc: the input model's selection accuracy (set once measured).
        rows: ``{id: row}``, including rows read from an earlier run.
        chains: ``{id: chain}`` of the candidates planned in this run.
    """

    def __init__(self, target: str, max_drop: float, near_miss: float = 2.0, base_acc: float | None = None):
        self.target = target
        self.max_drop = max_drop
        self.near_miss = near_miss
        self.base_acc = base_acc
        self.rows: dict[str, dict] = {}
        self.chains: dict[str, list] = {}

    def feasible(self) -> list:
        """Rows within budget whose stage has run in this search: a resumed search reads every
        finished row at once, and must still start each stage from what the earlier stages chose."""
        return [r for r in self.rows.values()
                if r.get("meets_budget") and not r.get("error") and r["id"] in self.chains]

    def best(self, rows=None):
        """The best of ``rows`` (default: the feasible ones) for the target; None when there are none.

        Ties go to the more accurate row. For latency, rows with the same MACs as the fastest whose
        latency is within :data:`LATENCY_TIE` of it tie: they are the same graph, and what
        separates them is the noise of the measurement."""
        ok = self.feasible() if rows is None else rows
        if not ok:
            return None
        first = min(ok, key=lambda r: (score(r, self.target), -r["selection_accuracy"]))
        if self.target != "latency":
            return first
        same = [r for r in ok if r["macs"] == first["macs"]
                and r["latency_us"] <= first["latency_us"] * (1 + LATENCY_TIE)]
        return max(same, key=lambda r: (r["selection_accuracy"], -r["latency_us"]))

    def chain_of(self, row) -> list:
        """The chain of ``row`` (a row or None: the input model's, empty)."""
        return self.chains.get(row["id"], []) if row else []

    def base_chain(self) -> list:
        """The chain of the best feasible candidate (QAT rows count as their chain)."""
        return self.chain_of(self.best())

    def hopeless(self, row) -> bool:
        """Over budget by more than a near miss: the next, harsher rung of its ladder is skipped."""
        return not row.get("error") and row["drop_points"] > self.near_miss * self.max_drop + 1e-9

    def near_misses(self, rows) -> list:
        """The rows of ``rows`` over budget by at most a near miss."""
        return [r for r in rows if not r["meets_budget"] and r["drop_points"] <= self.near_miss * self.max_drop]

    def best_line(self) -> str:
        b = self.best()
        if b is None:
            return "best so far: none within budget"
        return (f"best so far: {b['id']} ({b['tflite_gzip_bytes'] / 1000:.1f} kB gzip, {b['latency_us']:.0f} µs, "
                f"{b['selection_accuracy']:.2%})")


class SearchState:
    """The files of a search folder that let it resume: ``candidates.csv`` and ``state.json``."""

    def __init__(self, out):
        self.out = Path(out)

    @property
    def csv_path(self) -> Path:
        return self.out / "candidates.csv"

    def append(self, row: dict) -> None:
        """Append ``row`` to ``candidates.csv`` (the header first, for a new file), flushed at once."""
        new = not self.csv_path.is_file()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            f.flush()

    def rewrite(self, rows) -> None:
        """``candidates.csv`` written anew with ``rows`` (after a measurement was repeated),
        through a temporary file and a rename."""
        tmp = self.csv_path.with_name(self.csv_path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.csv_path)

    def save(self, elapsed_s: float, settings: dict, probe: list) -> None:
        """``state.json``: the time spent, the settings the candidates depend on, the rate probe."""
        (self.out / "state.json").write_text(json.dumps({"elapsed_s": elapsed_s, "settings": settings,
                                                         "rate_probe": probe}))

    def load(self, settings: dict):
        """``(rows, elapsed seconds, rate probe)`` of an earlier run in this folder; None when it
        finished no candidate.

        Raises:
            TfoptError: that run asked for other ``settings``: its candidates would not match.
        """
        if not self.csv_path.is_file():
            return None
        rows, elapsed, probe = read_rows(self.csv_path), 0.0, []
        path = self.out / "state.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            elapsed, probe = saved.get("elapsed_s", 0.0), saved.get("rate_probe", [])
            before = saved.get("settings")
            if before is not None and before != settings:
                changed = ", ".join(f"{k} {before.get(k)!r} -> {settings.get(k)!r}"
                                    for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k))
                raise TfoptError(f"optimize: the search in {self.out} ran with other settings ({changed}); its "
                                 f"candidates would not match. Resume with the same settings, or search in "
                                 f"another folder.")
        return rows, elapsed, probe
