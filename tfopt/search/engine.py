"""``tfopt optimize``: the smallest (or fastest) model within an accuracy budget.

The search chains tfopt's steps — per-layer channel pruning guided by a sensitivity sweep,
layer removal, magnitude or m:n pruning, clustering, int8 (post-training, then
quantization-aware where post-training misses the budget) — and judges every candidate's
TFLite file on a held-out *selection* split, never on the test split. Every fine-tune learns
from the input model (knowledge distillation) unless ``distill=False``.

Unless a fine-tune rate is given, the search first picks one: the highest of
:data:`PROBE_RATES` at which one epoch of fine-tuning the *unchanged* input model costs at most
:data:`PROBE_SHARE` of the budget. A model trained to the end of a long decaying schedule sits in a
minimum that a high rate throws it out of; every later fine-tune would pay that loss first.

The search is greedy in stages: each stage tries a few settings of one step on top of the best
candidate so far that meets the budget, so good combinations are found without trying them all.
Settings of one kind form a ladder from mild to harsh; a ladder ends at the first rung that loses
more than :data:`NEAR_MISS` times the budget, since the harsher rungs would lose more:

1. int8 of the model as it is (post-training quantization);
2. channel pruning at a few aggressiveness levels, per-layer ratios read off a sensitivity sweep
   (accuracy with a fraction of one layer's channels removed, no fine-tune); for the size target
   then deeper cuts of the layer that holds the most weights, on top of the best level (a sweep
   without fine-tune is cautious, and for size a narrow layer pays twice: fewer weights, and
   denser kernels that cost fewer gzip bits per kept weight after magnitude pruning);
3. layer removal (latency and MACs targets; layers whose removal keeps the shapes), and for the
   latency target pool folding (:mod:`tfopt.surgery.fold_pool`: an exact rewrite of a conv and
   the 2×2 max-pool after it into one stride-2 conv, faster where the conv reads few channels;
   the first foldable pool alone, then all; kept only where its file is measured faster);
4. magnitude pruning at per-layer sparsities from a second sweep, and at overall sparsities
   spread by erk or er, weights ranked by magnitude or by the activation criterion (magnitude
   times the root-mean-square of the input each weight reads; whichever pair loses less when
   the model is pruned at once), on the model itself and on the best channel-pruned candidate
   that has used at most half the budget (the overall targets also on the best one, where it
   differs; size target); overall targets, which go beyond what the sweep tolerated, fine-tune at
   the highest probed rate;
5. the near-missed prune candidates with fewer non-zero weights than the best (the one keeping
   fewest, and the one that lost least) pruned again over three times the epochs, then clustering
   to 32, 16, 8 and 4 values per kernel (size target);
6. quantization-aware training for the best candidates whose post-training int8 missed, and for
   the near misses (over budget by at most twice the budget) that would beat the best so far;
7. when that made a chain the best that clustering has not seen, clustering of that chain, and
   quantization-aware training for its near misses (size target).

For the latency target every chain is also measured as a float32 file: on CPUs whose int8
kernels are slow (narrow convolutions, no VNNI) the float32 file of a pruned model can be the
fastest.

Every finished candidate is appended to ``candidates.csv`` at once, and its Keras model kept
under ``cache/``, so Ctrl-C loses at most the candidate in progress and ``resume=True`` goes on.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfopt.errors import TfoptError
from tfopt.kinds import enter, leave
from tfopt.search import steps as S

TARGETS = ("size", "latency", "macs")
#: Overall sparsities the size search tries, spread by erk or er, beside the sweep's per-layer levels.
OVERALL_SPARSITIES = (0.8, 0.9, 0.95, 0.97)
#: Ways of spreading an overall sparsity over the layers, and of ranking a layer's weights; the
#: search uses the pair whose one-shot pruning at :data:`ALLOCATION_PROBE` keeps the most
#: selection accuracy (the first on a tie).
ALLOCATIONS = ("erk", "er")
PRUNE_CRITERIA = ("magnitude", "activation")
#: Un-augmented training images the activation criterion measures the layers' inputs on.
PROBE_SAMPLES = 1024
ALLOCATION_PROBE = 0.9
#: Channel ratios the size search tries on the channel group holding the most kernel weights, deeper
#: than the sweep's levels (see :meth:`Search.deeper_channels`).
DEEPER_CHANNELS = (0.5, 0.7, 0.8, 0.9)
#: Shared values per kernel the size search tries.
CLUSTERS = (32, 16, 8, 4)
#: Share of the budget the chain a later stage starts from may have used: pruning, clustering and
#: int8 still to come each cost some accuracy (see :meth:`Search.prune_start`).
HEADROOM = 0.5
#: How many times the search's fine-tune epochs the longer prune fine-tune gets (see
#: :meth:`Search.longer_chains`).
LONG_EPOCHS = 3
#: A candidate over budget by at most this multiple of the budget, smaller (or faster) than the best
#: so far, also gets quantization-aware training.
NEAR_MISS = 2.0
#: Fine-tune rates the search probes when none is given, highest first.
PROBE_RATES = (1e-3, 3e-4, 1e-4)
#: A probed rate is kept when one epoch of fine-tuning the unchanged input model at it costs at most
#: this share of the budget on the selection split.
PROBE_SHARE = 1 / 3
COLUMNS = ["id", "steps", "stage", "selection_accuracy", "keras_selection_accuracy", "drop_points", "meets_budget",
           "tflite", "int8", "tflite_raw_bytes", "tflite_gzip_bytes", "sparse_raw_bytes", "params", "nonzero_params",
           "macs", "latency_us", "seconds", "error"]


@dataclass
class Step:
    """One step of a candidate: a name (``channels``, ``remove``, ``prune``, ``cluster``, ``fold_pool``)
    and its knobs."""

    kind: str
    knobs: dict = field(default_factory=dict)

    def token(self) -> str:
        return self._token() + (f"-e{self.knobs['epochs']}" if self.knobs.get("epochs") else "")

    def _token(self) -> str:
        k = self.knobs
        if self.kind == "channels":
            return f"ch{k['level']}"
        if self.kind == "remove":
            return "rm-" + "-".join(k["layers"])
        if self.kind == "prune":
            return f"p{k['m_by_n'][0]}of{k['m_by_n'][1]}" if k.get("m_by_n") else f"p{k['level']}"
        if self.kind == "cluster":
            return f"c{k['clusters']}"
        if self.kind == "fold_pool":
            return "fp-" + "-".join(k["layers"])
        raise TfoptError(f"unknown search step {self.kind!r}")

    def describe(self) -> str:
        k = {key: v for key, v in self.knobs.items() if key != "level"}
        return f"{self.kind} {json.dumps(k, sort_keys=True)}"


def _key(chain) -> str:
    return "+".join(s.token() for s in chain) or "base"


@dataclass
class Candidate:
    chain: list
    stage: str
    qat: bool = False
    float32: bool = False  # the float32 TFLite of the chain instead of int8 (latency: int8 is not always faster)

    @property
    def id(self) -> str:
        return _key(self.chain) + ("+qat" if self.qat else "+f32" if self.float32 else "+int8")

    @property
    def mode(self) -> str:
        return "float32" if self.float32 else "int8"


def _parse_budget(text) -> float | None:
    """Seconds from ``None``, a number of seconds, or ``"30m"``, ``"1h"``, ``"90s"``."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if s and s[-1] in units:
            return float(s[:-1]) * units[s[-1]]
        return float(s)
    except ValueError:
        raise TfoptError(f"time budget: expected seconds or a duration such as 30m, 1h, 90s; got {text!r}") from None


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def _score(row, target):
    return {"size": row["tflite_gzip_bytes"], "latency": row["latency_us"], "macs": row["macs"]}[target]


class Search:
    """State of one search; see :func:`optimize`."""

    def __init__(self, model, data, selection, *, out, max_drop, target, time_budget, distill, epochs, lr,
                 batch_size, temperature, alpha, seed, max_candidates, levels, log, train=None, teacher=None,
                 teacher_path=None):
        self.model = model
        self.data = data
        self.train = data if train is None else train  # what the fine-tunes see (augmented, when asked)
        self.x_sel, self.y_sel = selection
        self.out = Path(out)
        self.max_drop = max_drop
        self.target = target
        self.budget_s = time_budget
        self.epochs = epochs
        self.log = log
        self.max_candidates = max_candidates
        self.levels = levels
        self.fit = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        self.teacher_path = teacher_path  # where a named teacher came from, for report.md and optimize.yaml
        if distill:
            self.fit.update(teacher=model if teacher is None else teacher, temperature=temperature, alpha=alpha)
        self.x_calib = data[0][:500]
        self.x_probe = data[0][:PROBE_SAMPLES]
        # what the candidates in this folder depend on: a resumed search must ask for the same
        self.settings = {"target": target, "max_drop": max_drop, "levels": [float(v) for v in levels],
                         "epochs": epochs, "lr": lr, "batch_size": batch_size, "distill": bool(distill),
                         "temperature": temperature, "alpha": alpha, "seed": seed}
        if teacher is not None:
            self.settings["teacher"] = _weights_digest(teacher)
        self.rows: dict[str, dict] = {}
        self.probe: list[dict] = []
        self.started = time.perf_counter()
        self.elapsed_before = 0.0
        self.times: list[float] = []

    # -- bookkeeping -------------------------------------------------------------------------

    @property
    def csv_path(self) -> Path:
        return self.out / "candidates.csv"

    def load_previous(self):
        if not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="") as f:
            for row in csv.DictReader(f):
                self.rows[row["id"]] = _typed(row)
        state = self.out / "state.json"
        if state.is_file():
            saved = json.loads(state.read_text())
            self.elapsed_before = saved.get("elapsed_s", 0.0)
            self.probe = saved.get("rate_probe", [])
            before = saved.get("settings")
            if before is not None and before != self.settings:
                changed = ", ".join(f"{k} {before.get(k)!r} -> {self.settings.get(k)!r}"
                                    for k in sorted(set(before) | set(self.settings))
                                    if before.get(k) != self.settings.get(k))
                raise TfoptError(f"optimize: the search in {self.out} ran with other settings ({changed}); its "
                                 f"candidates would not match. Resume with the same settings, or search in "
                                 f"another folder.")
        self.log(f"resuming: {len(self.rows)} finished candidate(s) read from {self.csv_path}")

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _record(self, row):
        self.rows[row["id"]] = row
        new = not self.csv_path.is_file()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
        self._save_state()

    def _save_state(self):
        (self.out / "state.json").write_text(json.dumps({"elapsed_s": self.elapsed(), "settings": self.settings,
                                                         "rate_probe": self.probe}))

    def feasible(self):
        # only candidates whose stage has run in this search: a resumed search reads every finished row
        # at once, and must still start each stage from what the earlier stages chose
        known = getattr(self, "chains", None)
        return [r for r in self.rows.values() if r.get("meets_budget") and not r.get("error")
                and (known is None or r["id"] in known)]

    def best(self, rows=None):
        """The best of ``rows`` (default: the feasible ones) for the target; None when there are none."""
        ok = self.feasible() if rows is None else rows
        return min(ok, key=lambda r: (_score(r, self.target), -r["selection_accuracy"])) if ok else None

    def _best_line(self):
        b = self.best()
        if b is None:
            return "best so far: none within budget"
        return (f"best so far: {b['id']} ({b['tflite_gzip_bytes'] / 1000:.1f} kB gzip, {b['latency_us']:.0f} µs, "
                f"{b['selection_accuracy']:.2%})")

    def out_of_time(self) -> bool:
        if self.budget_s is None:
            return False
        mean = float(np.mean(self.times)) if self.times else 0.0
        return self.elapsed() + mean > self.budget_s

    # -- models -------------------------------------------------------------------------------

    def keras_model(self, chain):
        """The Keras model after ``chain``, from the cache when a run (this one or an earlier
        one) already made it; prefixes are reused, so chains share their common steps."""
        if not chain:
            return self.model
        path = self.out / "cache" / _key(chain) / "model.keras"
        if path.is_file():
            return S.load(path)
        parent = self.keras_model(chain[:-1])
        step = chain[-1]
        self.log(f"    step {step.describe()}")
        k = step.knobs
        fit = {**self.fit, **{name: k[name] for name in ("lr", "epochs") if k.get(name)}}
        if step.kind == "channels":
            model = S.channels(parent, self.train, k["per_layer"], fit)
        elif step.kind == "remove":
            model = S.remove(parent, self.train, k["layers"], fit)
        elif step.kind == "prune":
            model = S.prune(parent, self.train, fit, sparsity=k.get("sparsity", 0.8), layers=k.get("layers"),
                            skip=k.get("skip", ()), m_by_n=k.get("m_by_n"), allocation=k.get("allocation", "erk"),
                            criterion=k.get("criterion", "magnitude"), probe=self.x_probe)
        elif step.kind == "cluster":
            model = S.cluster(parent, self.train, fit, clusters=k["clusters"])
        elif step.kind == "fold_pool":
            model = S.fold_pool(parent, self.x_calib, k["layers"])
        else:
            raise TfoptError(f"unknown search step {step.kind!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        S.save(model, path)
        return model

    def evaluate(self, cand: Candidate) -> dict:
        """Build, convert and measure one candidate; its row (recorded in candidates.csv)."""
        if cand.id in self.rows:
            return self.rows[cand.id]
        n = len(self.rows) + 1
        self.log(f"[{n} {self.elapsed() / 60:.1f} min] {cand.id} ({cand.stage}) | {self._best_line()}")
        t0 = time.perf_counter()
        row = {"id": cand.id, "steps": " -> ".join([s.describe() for s in cand.chain]
                                                  + ["int8 qat" if cand.qat else "float32" if cand.float32
                                                     else "int8 ptq"]),
               "stage": cand.stage, "tflite": cand.mode, "int8": "qat" if cand.qat else "" if cand.float32 else "ptq"}
        try:
            model = self.keras_model(cand.chain)
            row["keras_selection_accuracy"] = S.accuracy(model, self.x_sel, self.y_sel)
            quantized = S.qat(model, self.train, self.fit) if cand.qat else model
            content = S.to_tflite(quantized, cand.mode, self.x_calib)
            sizes = S.tflite_sizes(content)
            st = S.stats(model)
            acc = S.tflite_accuracy(content, self.x_sel, self.y_sel)
            row.update(selection_accuracy=acc, tflite_raw_bytes=sizes["raw_bytes"],
                       tflite_gzip_bytes=sizes["gzip_bytes"], params=st["params"], nonzero_params=st["nonzero_params"],
                       macs=st["macs"], latency_us=S.latency_us(content, self.x_sel[0]),
                       sparse_raw_bytes=S.sparse_raw_bytes(quantized, cand.mode, self.x_calib)
                       if st["nonzero_params"] < 0.7 * st["params"] else None,
                       error="")
            row["drop_points"] = (self.base_acc - acc) * 100
            row["meets_budget"] = row["drop_points"] <= self.max_drop + 1e-9
            d = self.out / "cache" / cand.id
            d.mkdir(parents=True, exist_ok=True)
            (d / "model.tflite").write_bytes(content)
        except (TfoptError, ValueError, RuntimeError) as exc:
            self.log(f"    failed: {str(exc).splitlines()[0]}")
            row.update(error=str(exc).splitlines()[0][:300], meets_budget=False)
        row["seconds"] = time.perf_counter() - t0
        self.times.append(row["seconds"])
        self._record(row)
        if not row.get("error"):
            self.log(f"    {row['selection_accuracy']:.2%} (drop {row['drop_points']:+.2f} pt"
                     f"{', within budget' if row['meets_budget'] else ', over budget'}), "
                     f"{row['tflite_gzip_bytes'] / 1000:.1f} kB gzip / {row['tflite_raw_bytes'] / 1000:.1f} kB raw, "
                     f"{row['latency_us']:.0f} µs, {row['macs']:,} MACs, {row['seconds']:.0f} s")
        return row

    # -- the plan -----------------------------------------------------------------------------

    def hopeless(self, row) -> bool:
        """Over budget by more than a near miss: the next, harsher rung of its ladder is skipped."""
        return not row.get("error") and row["drop_points"] > NEAR_MISS * self.max_drop + 1e-9

    def run_stage(self, name, ladders) -> bool:
        """Evaluate each ladder's candidates (mildest first) in order, leaving a ladder at its first
        hopeless rung; False when time or the candidate limit ran out."""
        for ladder in ladders:
            stopped = set()  # modes (int8, float32, qat) whose ladder has ended
            for cand in ladder:
                if cand.mode in stopped:
                    continue
                if cand.id not in self.rows:
                    if self.max_candidates is not None and len(self.rows) >= self.max_candidates:
                        self.log(f"candidate limit ({self.max_candidates}) reached")
                        return False
                    if self.out_of_time():
                        self.log(f"time budget ({self.budget_s / 60:.1f} min) reached after "
                                 f"{self.elapsed() / 60:.1f} min")
                        return False
                    self.evaluate(cand)
                if self.hopeless(self.rows[cand.id]):
                    rest = [c.id for c in ladder[ladder.index(cand) + 1:] if c.mode == cand.mode]
                    if rest:
                        self.log(f"    {cand.id} lost {self.rows[cand.id]['drop_points']:.2f} pt, over "
                                 f"{NEAR_MISS:g}× the budget: skipping {', '.join(rest)}")
                    stopped.add(cand.mode)
        return True

    def choose_rate(self):
        """Set the fine-tune rate from :data:`PROBE_RATES` (see the module's notes); a resumed
        search reuses the probe it recorded."""
        if self.fit.get("lr") is not None:
            return
        limit = PROBE_SHARE * self.max_drop
        if not self.probe:
            for lr in PROBE_RATES:
                t0 = time.perf_counter()
                tuned = S.fine_tuned(self.model, self.train, {**self.fit, "epochs": 1, "lr": lr})
                acc = S.accuracy(tuned, self.x_sel, self.y_sel)
                p = {"lr": lr, "drop_points": (self.base_acc - acc) * 100, "seconds": time.perf_counter() - t0}
                self.probe.append(p)
                self.log(f"rate probe: one epoch at {lr:g} leaves the input model at {acc:.2%} "
                         f"(drop {p['drop_points']:+.2f} pt, {p['seconds']:.0f} s)")
                if p["drop_points"] <= limit:
                    break
            self._save_state()
        ok = [p for p in self.probe if p["drop_points"] <= limit]
        self.fit["lr"] = ok[0]["lr"] if ok else min(self.probe, key=lambda p: p["drop_points"])["lr"]
        self.log(f"fine-tune rate: {self.fit['lr']:g} (the highest probed rate costing at most {limit:.2f} pt"
                 + ("" if ok else "; none did: the least harmful") + ")")

    def high_rate(self) -> dict:
        """``{"lr": the highest probed rate}`` when the probe chose a lower one, else ``{}``. A probed
        rate keeps a model near the minimum it was trained into; a cut beyond what a sweep without
        fine-tune tolerated has left that minimum, and its fine-tune needs the highest probed rate
        (LeNet-300-100 cut to 784-90-50, then pruned to 93% over 20 epochs: 97.72% test at 3e-4,
        98.25% at 1e-3)."""
        return {"lr": PROBE_RATES[0]} if self.probe and self.fit.get("lr") != PROBE_RATES[0] else {}

    def deeper_channels(self, numbered: int) -> list:
        """Chains that cut the channel group holding the most kernel weights deeper than the best
        channel candidate so far does, one rung per ratio of :data:`DEEPER_CHANNELS` above its own
        (other groups as that candidate has them); numbered on from ``numbered``."""
        start = self.base_chain()
        if len(start) > 1 or (start and start[0].kind != "channels"):
            return []
        per_layer = dict(start[0].knobs["per_layer"]) if start else {}
        sizes = S.prunable_layers(self.model)
        groups = [g for g in S.channel_groups(self.model) if g in sizes]
        if not groups:
            return []
        largest = max(groups, key=lambda g: sizes[g])
        deeper = [r for r in DEEPER_CHANNELS if r > per_layer.get(largest, 0.0)]
        rate = self.high_rate()
        if deeper:
            self.log(f"{largest} holds the most kernel weights ({sizes[largest]:,}): cutting "
                     f"{', '.join(f'{r:.0%}' for r in deeper)} of its channels"
                     + (f" on top of {_key(start)}" if start else "")
                     + (f", fine-tuned at {rate['lr']:g}" if rate else ""))
        return [[Step("channels", {"level": numbered + i + 1, "per_layer": {**per_layer, largest: r}} | rate)]
                for i, r in enumerate(deeper)]

    def choose_pruning(self, model) -> dict:
        """How to spread an overall sparsity (:data:`ALLOCATIONS`) and rank the weights
        (:data:`PRUNE_CRITERIA`): the pair that loses least when ``model`` is pruned to
        :data:`ALLOCATION_PROBE` at once. erk gives a first conv and a dense head much of the cut;
        er, counting channels only, leaves more to the convolutions (Fashion-MNIST CNN at 90%: erk
        48%, er 88% selection accuracy). The activation criterion lets weights on inputs that are
        rarely non-zero go first (an MNIST MLP trained with shifted images keeps border-pixel
        weights that centred images never use). Returns ``{"allocation", "criterion", "scales"}``."""
        scales = S.input_scales(model, self.x_probe)
        accs = {(a, c): S.allocation_accuracy(model, self.x_sel, self.y_sel, ALLOCATION_PROBE, a,
                                              scales if c == "activation" else None)
                for c in PRUNE_CRITERIA for a in ALLOCATIONS}
        chosen = max(accs, key=lambda k: accs[k])
        self.log("pruning at once to " + f"{ALLOCATION_PROBE:.0%}, without fine-tuning: "
                 + ", ".join(f"{a} by {c} {v:.2%}" for (a, c), v in accs.items())
                 + f"; spreading by {chosen[0]}, ranking by {chosen[1]}")
        return {"allocation": chosen[0], "criterion": chosen[1], "scales": scales if chosen[1] == "activation" else None}

    def sparsity_ladder(self, start, start_model, sparsities=OVERALL_SPARSITIES, how=None):
        """Chains ``start`` + pruning to each overall sparsity, spread and ranked as
        :meth:`choose_pruning` finds best for ``start_model`` (or as ``how`` says), fine-tuned at
        :meth:`high_rate`: these targets go beyond what the sweep tolerated."""
        how = how or self.choose_pruning(start_model)
        return [start + [Step("prune", {"level": _prune_level(how, f"{how['allocation']}{round(sp * 100)}"),
                                        "sparsity": sp} | _prune_knobs(how) | self.high_rate())]
                for sp in sparsities]

    def qat_chains(self) -> list:
        """Chains that get quantization-aware training, a further fine-tune: the two smallest whose
        post-training int8 lost what the Keras model kept, and the two near misses (over budget by
        at most :data:`NEAR_MISS` times it) that lost least among those that would beat the best so far."""
        done = [r for r in self.rows.values() if not r.get("error") and r["int8"] == "ptq" and r["id"] in self.chains]
        missed = [r for r in done if not r["meets_budget"]
                  and (self.base_acc - r["keras_selection_accuracy"]) * 100 <= self.max_drop]
        best = self.best()
        near = [r for r in done if not r["meets_budget"] and r["drop_points"] <= NEAR_MISS * self.max_drop
                and (best is None or _score(r, self.target) < _score(best, self.target))]
        chosen = []
        for r in sorted(missed, key=lambda r: _score(r, self.target))[:2] + \
                sorted(near, key=lambda r: (r["drop_points"], _score(r, self.target)))[:2]:
            if self.chains[r["id"]] not in chosen:
                chosen.append(self.chains[r["id"]])
        return chosen

    def recluster_start(self, clustered):
        """The chain of the best candidate when quantization-aware training made it the best and the
        cluster stage (which ran on ``clustered``) has not seen it; else None. QAT is one more
        fine-tune: it can lift a chain the earlier stages left over budget, and clustering that
        chain is the step it has not had."""
        b = self.best()
        if b is None or b["int8"] != "qat":
            return None
        chain = self.chains.get(b["id"], [])
        if chain == clustered or any(step.kind == "cluster" for step in chain):
            return None
        return chain

    def base_chain(self):
        """The chain of the best feasible Keras-level candidate (QAT rows count as their chain)."""
        return self._chain(self.best())

    def _chain(self, row) -> list:
        return self.chains.get(row["id"], []) if row else []

    def prune_start(self):
        """The chain the prune stage builds on first: the best feasible candidate that has used at
        most :data:`HEADROOM` of the budget, else the best. Pruning, clustering and int8 each cost
        some accuracy; a start at the edge of the budget leaves them none (LeNet-300-100, budget
        0.5 pt: a 784-60-50 start at a 0.47-pt drop kept no prune rung within budget, a 784-150-50
        start at 0.13 pt reached 90%). The best itself, where it differs, gets the overall targets
        too: some models lose nothing more to a first prune (LeNet-5 (Caffe), budget 0.2 pt: channels
        at a 0.17-pt drop, then 80%, still 0.17)."""
        roomy = [r for r in self.feasible() if r["drop_points"] <= HEADROOM * self.max_drop + 1e-9]
        return self._chain(self.best(roomy) or self.best())

    def prune_ladders(self) -> list:
        """The prune stage's ladders: on :meth:`prune_start`, the sweep's per-layer levels and the
        overall targets; the overall targets on the best, where it is another chain; and the harsher
        overall targets on the input model itself."""
        x, y = self.x_sel, self.y_sel
        start = self.prune_start()
        start_model = self.keras_model(start)
        how = self.choose_pruning(start_model)
        mag_rows = S.magnitude_sensitivity(start_model, x, y, scales=how["scales"])
        sp_levels = _levels(mag_rows, S.accuracy(start_model, x, y), self.levels, kind="sparsity")
        names = list(S.prunable_layers(start_model))
        crit = {"criterion": how["criterion"]} if how["criterion"] != "magnitude" else {}
        ladders = [[start + [Step("prune", {"level": _prune_level(how, str(i + 1)), "layers": p,
                                            "sparsity": max(p.values()),
                                            "skip": [n for n in names if n not in p]} | crit)]
                    for i, p in enumerate(sp_levels) if p]]
        # The sweep zeroes one layer at a time without a fine-tune, so it is cautious; overall
        # targets spread by erk or er (see choose_pruning) go further and let the fine-tune recover.
        ladders.append(self.sparsity_ladder(start, start_model, how=how))
        edge = self.base_chain()
        if edge != start:
            # the smallest start, nearer the edge of the budget: its overall targets alone (a rung
            # with no room left ends the ladder soon)
            ladders.append(self.sparsity_ladder(edge, self.keras_model(edge)))
        if start:
            # channel pruning and then high sparsity compound their losses: high sparsity alone
            # can keep fewer weights at a smaller loss
            ladders.append(self.sparsity_ladder([], self.model, OVERALL_SPARSITIES[1:]))
        return ladders

    def longer_chains(self) -> list:
        """Chains for the near-missed prune candidates (post-training int8, over budget by at most
        :data:`NEAR_MISS` times it) that keep fewer non-zero weights than the best: the one keeping
        fewest, then the one that lost least, each with its prune step again over
        :data:`LONG_EPOCHS` times the epochs. The search's fine-tunes are short, so that many
        candidates fit its time; a deep prune keeps recovering long after (LeNet-300-100 cut to
        784-90-50 and pruned to 93%: 98.25% test after 20 epochs, 98.63% after 60; pruned to 97%
        without the cut: a 0.60-pt selection drop after 20 epochs, none after 60)."""
        best = self.best()
        if best is None:
            return []
        done = [r for r in self.rows.values() if not r.get("error") and r["stage"] == "prune" and r["int8"] == "ptq"
                and r["id"] in self.chains and not r["meets_budget"] and r["drop_points"] <= NEAR_MISS * self.max_drop
                and r["nonzero_params"] < best["nonzero_params"]]
        picked = []
        for key in (lambda r: (r["nonzero_params"], r["drop_points"]), lambda r: (r["drop_points"], r["nonzero_params"])):
            near = min(done, key=key, default=None)
            if near is not None and near not in picked:
                picked.append(near)
        epochs = LONG_EPOCHS * self.fit["epochs"]
        ladders = []
        for near in picked:
            chain = self.chains[near["id"]]
            ladders.append([chain[:-1] + [Step("prune", {**chain[-1].knobs, "epochs": epochs})]])
            self.log(f"{near['id']} missed by {near['drop_points'] - self.max_drop:.2f} pt with "
                     f"{near['nonzero_params']:,} non-zero weights (the best keeps {best['nonzero_params']:,}): "
                     f"pruning again over {epochs} epochs")
        return ladders

    def search(self):
        self.chains = {}
        x, y = self.x_sel, self.y_sel
        self.base_acc = S.accuracy(self.model, x, y)
        self.reference = {}
        try:
            ref = S.to_tflite(self.model, "float32", self.x_calib)
            self.reference = {**S.tflite_sizes(ref), "latency_us": S.latency_us(ref, x[0]),
                              "accuracy": S.tflite_accuracy(ref, x, y), "macs": S.stats(self.model)["macs"]}
            self.log(f"input model as float32 TFLite: {self.reference['gzip_bytes'] / 1000:.1f} kB gzip, "
                     f"{self.reference['raw_bytes'] / 1000:.1f} kB raw, {self.reference['latency_us']:.0f} µs")
        except (TfoptError, ValueError, RuntimeError) as exc:
            self.log(f"the input model did not convert to float32 TFLite ({str(exc).splitlines()[0]})")
        self.log(f"input model: {self.base_acc:.2%} on the selection split ({len(x)} images); budget: a drop of at "
                 f"most {self.max_drop:g} points; target: {self.target}")
        self.choose_rate()

        def stage(name, ladders, qat=False):
            """``ladders``: lists of chains, each from mild to harsh (a single chain is its own ladder)."""
            groups = []
            for chains in ladders:
                cands = []
                for c in chains:
                    cands.append(Candidate(c, name, qat))
                    if self.target == "latency" and not qat:
                        cands.append(Candidate(c, name, float32=True))
                for c in cands:
                    self.chains[c.id] = c.chain
                groups.append(cands)
            return self.run_stage(name, groups)

        if not stage("int8", [[[]]]):
            return
        # Channel pruning: ratios per layer from a sweep, at a few tolerances.
        ch_rows = S.channel_sensitivity(self.model, x, y)
        per_levels = _levels(ch_rows, self.base_acc, self.levels)
        ch_chains = [[Step("channels", {"level": i + 1, "per_layer": p})] for i, p in enumerate(per_levels) if p]
        if not stage("channels", [ch_chains]):
            return
        if self.target == "size":
            deeper = self.deeper_channels(len(ch_chains))
            if deeper and not stage("channels", [deeper]):
                return
        if self.target in ("latency", "macs"):
            start = self.base_chain()
            rm = S.removable_layers(self.keras_model(start))
            if rm and not stage("remove", [[start + [Step("remove", {"layers": [name]})]] for name in rm[:3]]):
                return
        if self.target == "latency":
            # an exact rewrite, no fine-tune: the first foldable pool alone, then every one
            start = self.base_chain()
            convs = S.foldable_pools(self.keras_model(start))
            folds = [convs[:1]] + ([convs] if len(convs) > 1 else [])
            if convs and not stage("fold_pool", [[start + [Step("fold_pool", {"layers": f})]] for f in folds]):
                return
        if self.target == "size":
            if not stage("prune", self.prune_ladders()):
                return
            longer = self.longer_chains()
            if longer and not stage("longer", longer):
                return
            start = self.base_chain()
            if not stage("cluster", [[start + [Step("cluster", {"clusters": c})] for c in CLUSTERS]]):
                return
        chosen = self.qat_chains()
        if not stage("qat", [[c] for c in chosen], qat=True):
            return
        again = self.recluster_start(start) if self.target == "size" else None
        if again is not None:
            self.log(f"quantization-aware training made {self.best()['id']} the best: clustering its chain too")
            if stage("cluster", [[again + [Step("cluster", {"clusters": c})] for c in CLUSTERS]]):
                stage("qat", [[c] for c in self.qat_chains() if c not in chosen], qat=True)


def _prune_level(how: dict, level: str) -> str:
    """A prune step's level in candidate ids: ``erk90``, ``3``; ``act`` appended when the
    activation criterion ranks the weights."""
    return level + ("act" if how["criterion"] == "activation" else "")


def _prune_knobs(how: dict) -> dict:
    """The allocation and criterion knobs of a prune step, each only where it is not the default."""
    return ({"allocation": how["allocation"]} if how["allocation"] != "erk" else {}) \
        | ({"criterion": how["criterion"]} if how["criterion"] != "magnitude" else {})


def _levels(rows, base_acc, tolerances, kind="ratio"):
    """Per-layer settings at each tolerance (points of selection accuracy a layer may lose alone,
    before fine-tuning): the largest ratio or sparsity whose sweep stays within it."""
    out = []
    for tol in tolerances:
        chosen = {}
        for r in rows:
            if (base_acc - r["accuracy"]) * 100 <= tol and r["ratio"] > chosen.get(r["layer"], 0):
                chosen[r["layer"]] = r["ratio"]
        if out and chosen == out[-1]:
            continue
        out.append(chosen)
    return out


def _typed(row: dict) -> dict:
    out = dict(row)
    for k in ("selection_accuracy", "keras_selection_accuracy", "drop_points", "latency_us", "seconds"):
        out[k] = float(row[k]) if row.get(k) not in (None, "") else None
    for k in ("tflite_raw_bytes", "tflite_gzip_bytes", "sparse_raw_bytes", "params", "nonzero_params", "macs"):
        out[k] = int(float(row[k])) if row.get(k) not in (None, "") else None
    out["meets_budget"] = row.get("meets_budget") == "True"
    return out


def _recipe_steps(chain, qat, fit, mode="int8") -> list[dict]:
    steps = []
    for s in chain:
        k = s.knobs
        lr = k.get("lr") or fit.get("lr")
        ft = {"epochs": k.get("epochs") or fit["epochs"]} | ({"lr": lr} if lr else {})
        if s.kind == "channels":
            steps.append({"structured": {"ratio": 0.0, "per_layer": k["per_layer"], **ft}})
        elif s.kind == "remove":
            steps.append({"remove_layers": {"layers": k["layers"], **ft}})
        elif s.kind == "prune":
            steps.append({"prune": ({"m_by_n": list(k["m_by_n"])} if k.get("m_by_n") else
                                    {"sparsity": k["sparsity"], "layers": k.get("layers") or {},
                                     "skip": k.get("skip", [])}
                                    | ({"allocation": k["allocation"]} if k.get("allocation") else {})
                                    | ({"criterion": k["criterion"]} if k.get("criterion") else {}))
                           | ft})
        elif s.kind == "cluster":
            steps.append({"cluster": {"clusters": k["clusters"], **ft}})
        elif s.kind == "fold_pool":
            steps.append({"fold_pool": {"layers": list(k["layers"]), "measure": False}})
    if mode == "float32":
        steps.append({"export": {"tflite": ["float32"]}})
    else:
        steps.append({"quantize": {"mode": "qat", **({"epochs": fit["epochs"]})} if qat else {"mode": "int8"}})
    return steps


def pareto_front(rows, key):
    """Rows not beaten on both ``key`` (lower) and selection accuracy (higher), sorted by ``key``."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r[key], -r["selection_accuracy"])):
        if r["selection_accuracy"] > best:
            front.append(r)
            best = r["selection_accuracy"]
    return front


def pareto_plot(rows, base_acc, max_drop, chosen, path):
    from tfopt.report.plots import _pyplot

    plt = _pyplot()
    ok = [r for r in rows if not r.get("error")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "tflite_gzip_bytes", "TFLite size, gzip (kB)"),
                           (axes[1], "latency_us", "1-thread LiteRT latency (µs)")):
        scale = 1000 if key == "tflite_gzip_bytes" else 1
        xs = [r[key] / scale for r in ok]
        ax.scatter(xs, [r["selection_accuracy"] * 100 for r in ok],
                   c=["tab:green" if r["meets_budget"] else "tab:gray" for r in ok], s=18, zorder=2)
        front = pareto_front(ok, key)
        ax.step([r[key] / scale for r in front], [r["selection_accuracy"] * 100 for r in front], where="post",
                color="tab:blue", lw=1.2, label="Pareto frontier", zorder=1)
        ax.axhline((base_acc * 100) - max_drop, color="red", ls="--", lw=1, label=f"budget (−{max_drop:g} pt)")
        if chosen:
            ax.scatter([chosen[key] / scale], [chosen["selection_accuracy"] * 100], marker="*", s=160,
                       color="tab:orange", label=f"chosen: {chosen['id']}", zorder=3)
        if ok:  # no finished candidate (a time budget spent on the set-up): an empty, linear axis
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("selection accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("tfopt optimize: candidates (green: within budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass
class Result:
    """What :func:`optimize` returns: the chosen model (the input's kind), its TFLite bytes,
    its candidates.csv row, every row, and the output folder."""

    model: object
    tflite: bytes
    chosen: dict
    rows: list
    out: Path
    test: dict


def optimize(model, data, *, validation_data=None, test_data=None, max_drop: float = 0.3, target: str = "size",
             time_budget=None, out="optimize", resume: bool = False, distill: bool = True, epochs: int = 2,
             lr: float | None = None, batch_size: int | None = None, temperature: float = 4.0, alpha: float = 0.9,
             seed: int = 0, max_candidates: int | None = None, levels=(1.0, 3.0, 10.0, 20.0, 30.0), selection_fraction=0.1,
             augment=None, teacher=None, log=print) -> Result:
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
        time_budget: seconds or ``"30m"``; no candidate starts that would likely overrun it.
        out: folder for candidates.csv, pareto.png, report.md, optimize.yaml, the chosen model
            (``chosen/``) and the cache of intermediate models.
        resume: continue a search in ``out`` (finished candidates are kept, not rerun).
        distill: every fine-tune learns from the input model (``temperature``, ``alpha``).
        teacher: learn from this model instead (any Keras model, or the path of a run directory or
            model file) taking the same inputs and giving as many outputs, e.g. a larger network
            than the one being compressed. The budget is still judged against the input model.
        epochs, lr, batch_size: fine-tune settings of every step (defaults: the steps' own; ``lr``
            None: probed, see :data:`PROBE_RATES`).
        max_candidates: stop after this many candidates (tests, quick looks).
        levels: per-layer tolerances, in points lost before fine-tuning, that turn the
            sensitivity sweeps into per-layer ratios (one candidate each).
        augment: training-time augmentation of the fine-tunes, as a recipe's ``data.augment``
            (e.g. ``{"translate": 0.08}``); a model trained with augmentation keeps its accuracy
            better when its fine-tunes see the same. ``tfopt optimize RUN`` uses the run's recipe's.

    Returns:
        A :class:`Result`. Raises TfoptError when no candidate meets the budget.
    """
    from tfopt import api
    from tfopt.steps.runner import sample_xy

    if target not in TARGETS:
        raise TfoptError(f"optimize: target must be one of {', '.join(TARGETS)}; got {target!r}")
    if max_drop < 0:
        raise TfoptError(f"optimize: max_drop (points of accuracy) must be >= 0; got {max_drop}")
    budget_s = _parse_budget(time_budget)
    kind, work = enter(model)
    teacher, teacher_path = _teacher(teacher, work, distill)
    x, y = sample_xy(data)
    if validation_data is None:
        n_sel = max(1, int(round(len(x) * selection_fraction)))
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(x))
        sel, train = idx[:n_sel], idx[n_sel:]
        selection, data = (x[sel], y[sel]), (x[train], y[train])
        log(f"selection split: {n_sel} of the {len(x)} training images held out (never the test split)")
    else:
        selection, data = sample_xy(validation_data), (x, y)
    selection = (selection[0], _labels(selection[1]))
    data = (data[0], data[1])
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise TfoptError(f"optimize: the output folder {out} already holds a search; pass resume=True (--resume) "
                         f"to continue it, or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    augment = _augment_config(augment)
    search = Search(work, data, selection, out=out, max_drop=max_drop, target=target, time_budget=budget_s,
                    distill=distill, epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature,
                    alpha=alpha, seed=seed, max_candidates=max_candidates, levels=levels, log=log,
                    train=_augmented(data, augment, batch_size, seed, log), teacher=teacher,
                    teacher_path=teacher_path)
    if distill:
        from tfopt.distill import TeacherTargets
        from tfopt.steps.runner import DEFAULT_BATCH_SIZE

        stored = TeacherTargets.build(search.fit["teacher"], data[0], data[1], source=search.train, augment=augment,
                                      batch_size=batch_size or DEFAULT_BATCH_SIZE, seed=seed, log=log)
        if stored is not None:
            search.fit["teacher"] = stored
    if resume:
        search.load_previous()
    interrupted = False
    try:
        search.search()
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted: {len(search.rows)} finished candidate(s) kept in {search.csv_path}; "
            f"--resume continues the search")
    rows = list(search.rows.values())
    chosen = search.best()
    pareto_plot(rows, search.base_acc, max_drop, chosen, out / "pareto.png")
    if interrupted:
        raise KeyboardInterrupt
    if chosen is None and not rows:
        _report(out, search, None, {}, rows)
        raise TfoptError(f"optimize: no candidate finished (time budget {time_budget or 'none'}, candidate limit "
                         f"{max_candidates or 'none'}); allow more time.")
    if chosen is None:
        _report(out, search, None, {}, rows)
        raise TfoptError(f"optimize: none of the {len(rows)} candidates kept the selection accuracy within "
                         f"{max_drop:g} points of {search.base_acc:.2%}; see {out / 'candidates.csv'}. Allow a larger "
                         f"max_drop, more epochs, or a longer time budget.")
    return _finish(search, chosen, rows, test_data, kind, log)


def _augment_config(augment):
    """``augment`` (a dict or an ``Augment``) as an ``Augment`` that does something, else None."""
    if not augment:
        return None
    from tfopt.config.data import Augment
    from tfopt.config.validation import validated

    cfg = augment if isinstance(augment, Augment) else validated(Augment, dict(augment), "augment")
    return cfg if cfg.any() else None


def _augmented(data, augment, batch_size, seed, log):
    """The fine-tunes' training pipeline with the ``Augment`` ``augment`` (None: the arrays themselves)."""
    if augment is None:
        return None
    from tfopt.data.pipeline import make_dataset
    from tfopt.steps.runner import DEFAULT_BATCH_SIZE

    log(f"fine-tunes augment their training images: {augment.model_dump(exclude_defaults=True)}")
    return make_dataset(data[0], data[1], batch_size or DEFAULT_BATCH_SIZE, training=True, seed=seed, augment=augment)


def _labels(y):
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y))


def paired_drop(input_right, chosen_right) -> dict:
    """The accuracy drop, in points, of a model against the input model on the same images, with
    its paired standard error: only the images exactly one of the two gets right carry it.

    Example:
        >>> d = paired_drop([1] * 90 + [0] * 10, [1] * 85 + [0] * 5 + [1] * 3 + [0] * 7)
        >>> d["lost"], d["won"], round(d["drop_points"], 2), round(d["standard_error_points"], 2)
        (5, 3, 2.0, 2.8)
    """
    a, b = np.asarray(input_right, bool), np.asarray(chosen_right, bool)
    n = max(len(a), 1)
    lost, won = int(np.sum(a & ~b)), int(np.sum(~a & b))
    se = np.sqrt(max(lost + won - (lost - won) ** 2 / n, 0.0)) / n * 100
    return {"drop_points": (lost - won) / n * 100, "standard_error_points": float(se), "lost": lost, "won": won}


def _finish(search, chosen, rows, test_data, kind, log):
    import yaml

    from tfopt import api
    from tfopt.rundir import atomic_write_json

    out = search.out
    chain = search.chains.get(chosen["id"], [])
    model = search.keras_model(chain)
    content = (out / "cache" / chosen["id"] / "model.tflite").read_bytes()
    # The chosen file is verified against its Keras model (QAT: against the float model it came from).
    from tfopt import tflite as T

    mode = chosen.get("tflite") or "int8"
    ver = T.verify(model, content, search.x_sel, search.y_sel, mode, threshold=0.98 if mode == "int8" else 0.999)
    log(ver.line())
    y_sel = _labels(search.y_sel)
    input_right = search.model.predict(search.x_sel, verbose=0).argmax(-1) == y_sel
    # every candidate's drop with its paired standard error, the chosen file's among them
    pairs = {}
    for r in rows:
        cached = out / "cache" / r["id"] / "model.tflite"
        if not r.get("error") and cached.is_file():
            pairs[r["id"]] = paired_drop(input_right, T.predict(cached.read_bytes(), search.x_sel).argmax(-1) == y_sel)
    paired = pairs[chosen["id"]]
    log(f"selection split: drop {paired['drop_points']:.2f} ± {paired['standard_error_points']:.2f} pt (paired standard "
        f"error: the input model right and the chosen file wrong on {paired['lost']} images, the reverse on "
        f"{paired['won']})")
    test = {}
    if test_data is not None:
        xt, yt = test_data[0], _labels(test_data[1])
        test = {"input_test_accuracy": S.accuracy(search.model, xt, yt),
                "chosen_test_accuracy": T.accuracy(content, xt, yt)}
        log(f"test split: input model {test['input_test_accuracy']:.2%}, chosen {mode} TFLite "
            f"{test['chosen_test_accuracy']:.2%}")
    run = out / "chosen"
    run.mkdir(exist_ok=True)
    S.save(model, run / "model.keras")
    (run / f"model_{mode}.tflite").write_bytes(content)
    atomic_write_json(run / "metrics.json", {**{k: v for k, v in chosen.items()}, **test,
                                             "verification": ver.line(), "input_selection_accuracy": search.base_acc,
                                             "selection_drop": paired})
    steps = _recipe_steps(chain, chosen["int8"] == "qat", search.fit, mode)
    distill = {"temperature": search.fit["temperature"], "alpha": search.fit["alpha"]} \
        if "teacher" in search.fit else None
    if distill and search.teacher_path:
        distill["teacher"] = search.teacher_path
    (out / "optimize.yaml").write_text(
        "# The recipe `optimize:` section that reproduces the chosen candidate, step by step.\n"
        + yaml.safe_dump({"optimize": {"steps": steps, "distill": distill}}, sort_keys=False))
    _report(out, search, chosen, test, rows, pairs)
    log(f"chosen: {chosen['id']}: {chosen['tflite_gzip_bytes'] / 1000:.1f} kB gzip "
        f"({chosen['tflite_raw_bytes'] / 1000:.1f} kB raw), {chosen['latency_us']:.0f} µs, "
        f"{chosen['selection_accuracy']:.2%} on the selection split; written to {out}")
    result_model = leave(model, kind) if kind != "tf_keras" else model
    return Result(result_model, content, chosen, rows, out, test)


def _teacher(teacher, student, distill):
    """``(tf_keras teacher or None, its path or None)`` from a model or a path."""
    from tfopt import api
    from tfopt.steps.source import check_teacher, load_teacher

    if teacher is None:
        return None, None
    if not distill:
        raise TfoptError("optimize: a teacher is for distillation, which distill=False (--no-distill) turns off")
    if isinstance(teacher, (str, os.PathLike)):
        return load_teacher(teacher, student), str(teacher)
    _, model = enter(teacher, "teacher")
    check_teacher(model, student, f"the model '{model.name}'")
    return model, None


def _distillation(search) -> str:
    teacher = search.fit.get("teacher")
    if teacher is None:
        return "off"
    if search.teacher_path:
        return f"on, from {search.teacher_path}"
    return "on, from the input model" if getattr(teacher, "model", teacher) is search.model \
        else "on, from the teacher passed in"


def _report(out, search, chosen, test, rows, pairs=None):
    ref = getattr(search, "reference", {})
    lines = ["# tfopt optimize", "",
             f"Target: **{search.target}**; budget: at most {search.max_drop:g} points below the input model's "
             f"{search.base_acc:.2%} on the selection split ({len(search.x_sel)} held-out images). "
             f"{len(rows)} candidates in {search.elapsed() / 60:.1f} min. "
             f"Distillation: {_distillation(search)}. Fine-tune rate: {search.fit.get('lr') or 'the steps’ default'}"
             + (" (probed: " + ", ".join(f"{p['lr']:g} {-p['drop_points']:+.2f} pt" for p in search.probe) + ")"
                if search.probe else "") + ".", ""]
    if ref:
        lines += [f"Input model as float32 TFLite: {ref['gzip_bytes']:,} bytes gzip, {ref['raw_bytes']:,} bytes raw, "
                  f"{ref['macs']:,} MACs, {ref['latency_us']:.0f} µs 1-thread LiteRT, {ref['accuracy']:.2%} on the "
                  f"selection split.", ""]
    pairs = pairs or {}
    if chosen:
        paired = pairs.get(chosen["id"])
        lines += [f"## Chosen: `{chosen['id']}`", "", f"Steps: {chosen['steps']}", "",
                  f"- {chosen.get('tflite') or 'int8'} TFLite: {chosen['tflite_gzip_bytes']:,} bytes gzip, "
                  f"{chosen['tflite_raw_bytes']:,} bytes raw"
                  + (f" ({chosen['sparse_raw_bytes']:,} raw with sparse weight storage)"
                     if chosen.get("sparse_raw_bytes") else ""),
                  f"- selection accuracy {chosen['selection_accuracy']:.2%} (drop {chosen['drop_points']:.2f} pt"
                  + (f" ± {paired['standard_error_points']:.2f}, the paired standard error: the input "
                     f"model right and this file wrong on {paired['lost']} images, the reverse on "
                     f"{paired['won']}" if paired else "") + ")",
                  f"- {chosen['macs']:,} MACs, {chosen['latency_us']:.0f} µs 1-thread LiteRT"]
        if ref:
            lines += [f"- against the float32 TFLite: {ref['gzip_bytes'] / chosen['tflite_gzip_bytes']:.1f}× smaller "
                      f"(gzip), {ref['raw_bytes'] / chosen['tflite_raw_bytes']:.1f}× (raw), latency "
                      f"{chosen['latency_us'] / ref['latency_us']:.2f}×"]
        if test:
            lines += [f"- test accuracy: {test['chosen_test_accuracy']:.2%} (input model "
                      f"{test['input_test_accuracy']:.2%})"]
        lines += ["", "![pareto](pareto.png)", ""]
    else:
        lines += ["No candidate met the budget.", ""]
    lines += ["## Candidates", "", "The drop's ± is its paired standard error on the selection split.", "",
              "| id | selection acc | drop (pt) | gzip bytes | raw bytes | MACs | latency (µs) | s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['id']} | failed: {r['error']} | | | | | | |")
            continue
        drop = f"{r['drop_points']:.2f}" + (f" ± {pairs[r['id']]['standard_error_points']:.2f}"
                                            if r["id"] in pairs else "")
        lines.append(f"| {r['id']} | {r['selection_accuracy']:.2%} | {drop} | "
                     f"{r['tflite_gzip_bytes']:,} | {r['tflite_raw_bytes']:,} | {r['macs']:,} | {r['latency_us']:.0f} | "
                     f"{r['seconds']:.0f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def optimize_source(source, recipe=None, overrides=(), *, output=None, resume=False, log=print, **kwargs):
    """Run the search on a run directory (or a model file with ``recipe``) and its recipe's data
    splits: fine-tunes on the training split, the budget judged on the validation split (the
    selection split; a recipe without one holds out 10% of the training images), test accuracy
    reported at the end. The search folder is ``<output>/<run name>-optimized``."""
    from tfopt.data.pipeline import load_splits
    from tfopt.steps.source import load_source

    src = load_source(source, recipe, overrides)
    r = src.recipe
    out = Path(output or r.output.dir) / f"{src.name}-optimized"
    if out.exists() and not resume and any(out.iterdir()):
        raise TfoptError(f"{out} already holds a search; pass --resume to continue it, or --output elsewhere")
    splits = load_splits(r.data, r.seed)
    validation = (splits.x_val, splits.y_val) if len(splits.x_val) else None
    kwargs.setdefault("batch_size", r.train.batch_size)
    kwargs.setdefault("seed", r.seed)
    kwargs.setdefault("augment", r.data.augment)
    return optimize(src.model, (splits.x_train, splits.y_train), validation_data=validation,
                    test_data=(splits.x_test, splits.y_test), out=out, resume=resume, log=log, **kwargs)
