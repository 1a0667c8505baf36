"""The time a search's plan leaves: longer fine-tunes of what would beat the best.

The search's fine-tunes are short, so that many candidates fit its time, and a short fine-tune
leaves a cut, a prune or a downsampled stride short of where it recovers. With a time budget,
the ``extend`` stage (the last of every plan) spends what the plan left, round after round, on
the chains of

- the near misses that would beat the best so far (over budget by at most
  :attr:`Standings.near_miss <tfopt.search.candidates.Standings>` times the budget), least drop first;
- the long shot: the least-drop candidate over that band whose target figure is at most
  :data:`LONG_SHOT` times the best's, or a long shot already lengthened that recovered and would
  still beat the best (the best may have moved closer while it ran). A change that large needs a
  fine-tune close to a training (a MobileNetV2 at stride 2 from its first conv: 14 µs against the
  best's 39, 4.3 pt down after two epochs; 0.96 pt on the test set after twelve), so its epochs grow by
  :data:`LONG_SHOT_FACTOR`; it is the one candidate whose success moves the result by that
  factor, and it shares each round with the nearest near miss;
- the best itself while it loses accuracy: its drop, measured on a few thousand images, is safer
  the narrower it is;

each (but the long shot) with the epochs of one trained step times :data:`EXTEND_FACTOR`, the step
before it when that recovered nothing, and a lower rate when no step did (:func:`extension_candidates`),
the last one cut to the time left (:func:`fitted`), until the budget is spent or nothing is left to
improve; the search says which.
"""

from __future__ import annotations

from tfopt.search import measure as M
from tfopt.search.candidates import REWRITES, Candidate, ChainStep, chain_key, score

#: Each extension multiplies the fine-tune epochs of a chain's trained step by this.
EXTEND_FACTOR = 2
#: Extensions one round of the extend stage runs at most.
EXTEND_PICKS = 2
#: A candidate over the near-miss band is lengthened when its target figure (bytes, µs, MACs) is at
#: most this times the best's,
LONG_SHOT = 0.5
#: with its epochs multiplied by this: it has further to go.
LONG_SHOT_FACTOR = 4
#: When every longer fine-tune of a chain at its rate lost as much as before, its last trained step
#: is lengthened once more at this times that rate: a longer run at the rate that suited two
#: epochs can wander off what the short one kept.
LOWER_RATE = 1 / 3


def trained_step(chain):
    """Index of the last step of ``chain`` that fine-tunes (not an exact rewrite); None when none does."""
    return next(iter(trained_steps(chain)), None)


def mode_of(row: dict) -> str:
    """How a row's TFLite file was made, as a :class:`Candidate` mode."""
    return "float32" if row.get("tflite") == "float32" else "qat" if row.get("int8") == "qat" else "int8"


def trained_steps(chain) -> list:
    """Indices of the steps of ``chain`` that fine-tune (not exact rewrites), last first."""
    return [i for i in range(len(chain) - 1, -1, -1) if chain[i].name not in REWRITES]


def chain_seconds(standings, row) -> float:
    """The most seconds a row of ``row``'s chain took in any mode: the one that built and fine-tuned
    it (the others reuse its model and only convert it)."""
    key = chain_key(standings.chains[row["id"]])
    return max([r.get("seconds") or 0.0 for r in standings.rows.values()
                if r["id"] in standings.chains and chain_key(standings.chains[r["id"]]) == key] + [0.0])


def siblings(standings, parent, cand) -> list:
    """``(row, candidate)`` pairs: ``cand``'s chain in each other post-training mode (int8, float32)
    in which ``parent``'s chain has a row; they reuse ``cand``'s model and only convert it."""
    chain = standings.chains[parent["id"]]
    pairs = []
    for mode in ("int8", "float32"):
        row = standings.rows.get(Candidate(chain, "extend", mode).id)
        if mode != cand.mode and row is not None and not row.get("error"):
            pairs.append((row, Candidate(cand.chain, "extend", mode)))
    return pairs


def wants_qat(standings, chain) -> bool:
    """``chain``'s post-training int8 file lost more than the budget over its float32 file (the
    same model) and it has no QAT file yet: quantization-aware training is what that model needs
    (a MobileNetV3-Small downsampled and fine-tuned 32 epochs: 0.67 pt as float32, 6.43 as int8)."""
    rows = {mode: standings.rows.get(Candidate(chain, "extend", mode).id) for mode in ("int8", "float32", "qat")}
    int8, f32 = rows["int8"], rows["float32"]
    return (rows["qat"] is None and int8 is not None and f32 is not None and not int8.get("error")
            and not f32.get("error") and int8["drop_points"] - f32["drop_points"] > standings.max_drop)


def _extended(row, chain, epochs: int, longer_epochs, index=None, lr_scale=None):
    """``row``'s chain with its trained step ``index`` (default: the last) fine-tuned
    ``longer_epochs(epochs it had)`` epochs (at ``lr_scale`` times its rate, when given), the steps
    after it as they were, as an ``extend`` candidate in the row's mode; None when nothing in it
    fine-tunes."""
    i = trained_step(chain) if index is None else index
    if i is None:
        return None
    step = chain[i]
    longer = {**step.fine_tune, "epochs": longer_epochs(step.fine_tune.get("epochs") or epochs)}
    if lr_scale is not None:
        longer["lr_scale"] = lr_scale
    return Candidate(chain[:i] + [ChainStep(step.name, step.settings, longer, step.label)] + chain[i + 1:],
                     "extend", mode_of(row))


def extended_index(chain, longer) -> int:
    """The index of the step ``longer`` (an extension of ``chain``) fine-tunes longer."""
    return next(i for i, (a, b) in enumerate(zip(chain, longer)) if a != b)


def extension_candidates(standings, epochs: int, parents: dict) -> list:
    """The next longer fine-tunes: for the near miss that would beat the best so far and lost
    least, the long shot (see the module's text), the other near misses (least drop first), then
    the best itself when it loses accuracy, its chain with the epochs of one
    trained step times :data:`EXTEND_FACTOR`, in the same mode: the last trained step first; when
    that extension recovered nothing, the step before it (a longer prune under a clustering, a
    longer channel cut under a prune), and so on; when none did, the last trained step again at
    :data:`LOWER_RATE` times its rate (an extension of that one keeps the lower rate). A short
    fine-tune leaves a cut or a prune short of where it recovers (see :func:`longer_chains`): a
    near miss is where more epochs can still cross the budget, and the best's own drop, measured
    on a few thousand images, is safer the narrower it is.

    Args:
        standings: the search's :class:`Standings`.
        epochs: the search's fine-tune epochs (a step without its own override has these).
        parents: ``{id of an extension: the row it extended}``; a row whose extension recovered
            accuracy is not extended again (the extension goes on in its place), nor is an
            extension that lost as much as the row it came from. An extension over the near-miss
            band that recovered stays a long shot while it would beat the best.

    Returns:
        ``(row, candidate, estimated seconds)`` triples; the estimate is the row's own time times
        :data:`EXTEND_FACTOR`, for each trained step from the extended one on (none for one
        already in ``standings.rows``, which a resumed search finished before).
    """
    best, target = standings.best(), standings.target

    def recovered(child):
        row = standings.rows.get(child)
        return row is not None and not row.get("error") and row["drop_points"] < parents[child]["drop_points"]

    done = {parent["id"] for child, parent in parents.items() if recovered(child)}
    rows = [r for r in standings.rows.values() if not r.get("error") and r["id"] in standings.chains
            and r["id"] not in done and (r["id"] not in parents or recovered(r["id"]))]
    near = sorted((r for r in standings.near_misses(rows) if best is None or score(r, target) < score(best, target)),
                  key=lambda r: (r["drop_points"], score(r, target)))
    far = sorted((r for r in rows if best is not None and standings.hopeless(r)
                  and (score(r, target) <= LONG_SHOT * score(best, target)
                       or r["id"] in parents and score(r, target) < score(best, target))),
                 key=lambda r: (r["drop_points"], score(r, target)))
    own = [best] if best is not None and best["drop_points"] > 0 and best in rows else []

    def longer(row, factor=EXTEND_FACTOR):
        chain = standings.chains[row["id"]]
        steps = trained_steps(chain)
        tries = [(n, i, None) for n, i in enumerate(steps)]
        if steps and "lr_scale" not in chain[steps[0]].fine_tune:
            tries.append((0, steps[0], LOWER_RATE))  # every step lost as much at its rate: a lower one
        for n, i, scale in tries:
            cand = _extended(row, chain, epochs, lambda before: before * factor, i, scale)
            if cand.id in standings.chains:
                continue  # tried in this search: on to the step before it
            # one a resumed search finished before costs nothing: it is taken up again, so that
            # the search goes on from where it was
            return row, cand, (0.0 if cand.id in standings.rows
                               else chain_seconds(standings, row) * factor * (n + 1))
        return None

    near, own = ([p for p in map(longer, group) if p is not None] for group in (near, own))
    far = [p for p in (longer(r, LONG_SHOT_FACTOR) for r in far) if p is not None]
    plan, chains = [], set()
    for entry in near[:1] + far[:1] + near[1:] + own:
        key = chain_key(entry[1].chain)
        if key not in chains:  # the other modes of one chain come with it (see :func:`siblings`)
            chains.add(key)
            plan.append(entry)
    return plan


def fitted(standings, plan, epochs: int, left: float):
    """The first planned extension that lengthens its row's last trained step, cut to the epochs
    that fit in ``left`` seconds (at its row's time per epoch, with a tenth to spare) when that is
    still more than its row had; None when there is none."""
    for row, cand, _ in plan:
        chain = standings.chains[row["id"]]
        i = extended_index(chain, cand.chain)
        seconds = chain_seconds(standings, row)
        if i != trained_step(chain) or seconds <= 0:
            continue
        before = chain[i].fine_tune.get("epochs") or epochs
        fit = int(before * 0.9 * left / seconds)
        shorter = _extended(row, chain, epochs, lambda _: fit)
        if fit > before and shorter.id not in standings.rows:
            return row, shorter, seconds * fit / before
    return None


def _nothing_left(standings) -> str:
    best = standings.best()
    why = (f"nothing left to improve: no near miss (over budget by at most {standings.near_miss:g}× the budget) "
           f"would beat the best, nor would any candidate further over reach {LONG_SHOT:g}× its figure")
    if best is None:
        return why
    if best["drop_points"] <= 0:
        return why + ", and the best loses no accuracy"
    if trained_step(standings.chain_of(best)) is None:
        return why + ", and the best has no fine-tune to lengthen"
    return why + (f", and the longer fine-tunes tried, at the search's rate and at {LOWER_RATE:.2g}× it, "
                  "lost as much as the ones before them")


def _why(standings, row, best) -> str:
    if best is not None and row["id"] == best["id"]:
        return f"{row['id']} is the best, {row['drop_points']:.2f} pt down: "
    missed = f"{row['id']} missed by {row['drop_points'] - standings.max_drop:.2f} pt"
    if best is None or not standings.hopeless(row):
        return missed + ": "
    return f"{missed}, {score(row, standings.target) / score(best, standings.target):.2f}× the best's figure: "


def _evaluate(search, parents, parent, cand) -> None:
    """Evaluate ``cand``, an extension of the row ``parent``, and remember where it came from."""
    search.standings.chains[cand.id] = cand.chain
    parents[cand.id] = parent
    search.evaluate(cand)


def _lengthen(search, parents, row, cand) -> None:
    """``cand`` (an extension of ``row``), then its chain in ``row``'s chain's other modes
    (:func:`siblings`), then its QAT file where :func:`wants_qat`."""
    _evaluate(search, parents, row, cand)
    for parent, sibling in siblings(search.standings, row, cand):
        _evaluate(search, parents, parent, sibling)
    if wants_qat(search.standings, cand.chain) and search.may_start():
        int8 = search.standings.rows[Candidate(cand.chain, "extend", "int8").id]
        search.log(f"{int8['id']} lost {int8['drop_points']:.2f} pt, more than the budget over its float32 file: "
                   "quantization-aware training")
        _evaluate(search, parents, row, Candidate(cand.chain, "extend", "qat"))


def extend_stage(search, shared) -> bool:
    """With a time budget, what the plan left goes to :func:`extension_candidates`, round after
    round, while one fits in the time left (the last one cut to fit, see :func:`fitted`); then the
    search says why it stopped. A round's second extension starts only when it still fits in the
    time its first left. An extension whose int8 file lost more than the budget over its float32
    file also gets quantization-aware training (:func:`wants_qat`)."""
    if search.budget_s is None:
        return True
    # the best decides what is lengthened: compare the fastest files under one load first
    M.retime_finalists(search)
    parents, started = {}, False
    epochs = search.fine_tune.epochs
    while True:
        plan = extension_candidates(search.standings, epochs, parents)
        left = search.budget_s - search.elapsed()
        fits = [p for p in plan if p[2] <= left]
        if not plan:
            reason = _nothing_left(search.standings)
            break
        if not fits:
            cut = fitted(search.standings, plan, epochs, left)
            if cut is None:
                row, cand, est = plan[0]
                reason = (f"the next longer fine-tune ({cand.id}, about {est / 60:.1f} min) would not fit in the "
                          f"{max(left, 0) / 60:.1f} min left")
                break
            fits = [cut]
        if not started:
            search.emit("stage", name="extend")
            started = True
        best = search.standings.best()
        for n, (row, cand, est) in enumerate(fits[:EXTEND_PICKS]):
            if n and est > search.budget_s - search.elapsed():
                break  # the round's first took the time this one needed: planned again, cut to fit
            if cand.id not in search.standings.rows and not search.may_start():
                return False
            step = cand.chain[extended_index(search.standings.chains[row["id"]], cand.chain)]
            what = f"{step.name} fine-tuned {step.fine_tune['epochs']} epochs"
            if cand.id not in search.standings.rows:
                search.log(_why(search.standings, row, best) + what)
            _lengthen(search, parents, row, cand)
    used = search.elapsed() / search.budget_s
    search.stop_reason = (f"stopped after {search.elapsed() / 60:.1f} of {search.budget_s / 60:.1f} min "
                          f"({used:.0%} of the time budget): {reason}")
    search.log(search.stop_reason)
    search.emit("stopped", reason=reason, used=used, note=search.stop_reason)
    return True
