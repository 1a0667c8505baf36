"""The search's choice: checked on a confirmation split it never judged a candidate by, then written.

A search measures dozens of files on one selection split and keeps the best that looks within
budget there. The one that looks best is, more often than not, one the split's noise flattered: its
drop on new images is larger than on the split that chose it (the winner's curse). So a share of
the selection split is set aside as the *confirmation split*: no fine-tune, calibration or choice
sees it. The files within budget on the rest are checked on it, best first: the first whose drop
there is also within the budget is the one returned.

It is carved from the selection split, not from the training images, because the input model was
trained on those: on a MobileNetV3-Small trained on Fashion-MNIST it scored 93.96% on 2,850 of its
training images against 92.20% on its validation split, and the compressed files, which lose part
of what it memorised, lost 1.2-1.6 points there where they lost 0.4-0.7 on the test split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfopt.errors import TfoptError
from tfopt.kinds import leave
from tfopt.rundir import atomic_write_json, provenance
from tfopt.search import report
from tfopt.search.inputs import RESOLVABLE_IMAGES
from tfopt.search.report import file_drop

#: Share of the selection split set aside as the confirmation split by default.
CONFIRMATION_FRACTION = 1 / 3


def hold_out(selection, fraction: float, max_drop: float, seed: int, log):
    """``(confirmation split or None, the selection split the search chooses on)``.

    ``fraction`` of ``selection`` is set aside at random, unless it is 0, or it would be too small
    to resolve the budget (fewer than :data:`tfopt.search.inputs.RESOLVABLE_IMAGES` images' worth of
    ``max_drop``) or leave the selection split so: then nothing is set aside, and the search says so.
    """
    x, y = selection
    n = int(round(len(x) * fraction))
    if fraction <= 0:
        return None, selection
    if min(n, len(x) - n) * max_drop / 100 < RESOLVABLE_IMAGES:
        log(f"no confirmation split: {fraction:.2g} of the {len(x)} selection images ({n}) cannot resolve a drop of "
            f"{max_drop:g} points; the chosen file is judged on the selection split alone")
        return None, selection
    idx = np.random.default_rng(seed + 1).permutation(len(x))
    keep, rest = np.sort(idx[:n]), np.sort(idx[n:])
    log(f"confirmation split: {n} of the {len(x)} selection images set aside; the search chooses on the other "
        f"{len(x) - n}, and the chosen file must keep the budget on these too")
    return (x[keep], y[keep]), (x[rest], y[rest])


def ranked(standings) -> list:
    """The feasible rows of ``standings``, best first, by its own rule (:meth:`Standings.best`)."""
    rows, out = standings.feasible(), []
    while rows:
        best = standings.best(rows)
        out.append(best)
        rows = [r for r in rows if r is not best]
    return out


def confirm(search) -> tuple[dict | None, dict]:
    """The search's choice: the best file within budget on the selection split whose drop on the
    confirmation split is within the budget too.

    Args:
        search: a finished :class:`tfopt.search.engine.Search` (``confirmation``: ``(x, y)`` or None).

    Returns:
        ``(the chosen row or None, what the confirmation found)``. The second is ``{}`` without a
        confirmation split, else ``{"images", "input_accuracy", "drop_points",
        "standard_error_points", "lost", "won", "confirmed", "passed_over"}``: the chosen file's
        paired drop on the confirmation split, whether it is within the budget, and the ids of the
        better-ranked files that lost more there. When no file keeps the budget there, the one that
        lost least on it is chosen, with ``confirmed`` False. Each checked row gets its
        ``confirmation_drop_points``.
    """
    if search.confirmation is None:
        return search.best(), {}
    x, y = search.confirmation

    def within(pair):
        return pair["drop_points"] <= search.max_drop + 1e-9

    input_right = search.model.predict(x, batch_size=512, verbose=0).argmax(-1) == y
    checked = []
    for row in ranked(search.standings):
        path = search.out / "cache" / row["id"] / "model.tflite"
        if not path.is_file():
            continue
        pair = file_drop(path, input_right, x, y)
        row["confirmation_drop_points"] = pair["drop_points"]
        checked.append((row, pair))
        if within(pair):
            break
    if not checked:  # no file of a row within budget is left in the cache
        return search.best(), {}
    row, pair = checked[-1]
    confirmed = within(pair)
    if not confirmed:
        row, pair = min(checked, key=lambda c: c[1]["drop_points"])
    passed = [r["id"] for r, _ in checked if r is not row]
    found = {"images": len(x), "input_accuracy": float(np.mean(input_right)), **pair, "confirmed": confirmed,
             "passed_over": passed}
    note = confirmation_line(row["id"], found, search.max_drop)
    search.log(note)
    search.emit("confirmation", id=row["id"], note=note, **found)
    return row, found


def confirmation_line(chosen_id: str, found: dict, max_drop: float) -> str:
    """One paragraph on what the confirmation split said of the chosen file."""
    head = (f"confirmation split ({found['images']} images): {chosen_id} drops {found['drop_points']:.2f} ± "
            f"{found['standard_error_points']:.2f} pt")
    over = found["passed_over"]
    if not found["confirmed"]:
        return (f"{head}; no file within budget on the selection split kept the budget of {max_drop:g} points on "
                f"the confirmation split: this one lost least there ({len(over) + 1} checked). Allow a larger "
                f"max-drop, or a longer time budget, for a file that keeps it")
    if over:
        return (f"{head}, within budget; passed over for losing more than {max_drop:g} points there: "
                f"{', '.join(over)}")
    return f"{head}, within budget"


@dataclass
class Result:
    """What :func:`tfopt.search.engine.optimize` returns: the chosen model (the input's kind), its
    TFLite bytes, its candidates.csv row, every row, the output folder, the test accuracies and what
    the confirmation split found (see :func:`confirm`)."""

    model: object
    tflite: bytes
    chosen: dict
    rows: list
    out: Path
    test: dict
    confirmation: dict


def conclude(search, test_data, kind, time_budget, max_candidates) -> Result:
    """The files of a finished search and its :class:`Result`.

    Raises:
        TfoptError: no candidate finished, or none met the budget.
    """
    out, rows = search.out, list(search.rows.values())
    chosen, found = confirm(search)
    if found:
        search.state.rewrite(rows)
    report.pareto_plot(rows, search.base_acc, search.max_drop, chosen, out / "pareto.png")
    if chosen is None:
        report.write_report(out, search, None, {}, rows)
        if not rows:
            raise TfoptError(f"optimize: no candidate finished (time budget {time_budget or 'none'}, candidate limit "
                             f"{max_candidates or 'none'}); allow more time.")
        raise TfoptError(f"optimize: none of the {len(rows)} candidates kept the selection accuracy within "
                         f"{search.max_drop:g} points of {search.base_acc:.2%}; see {out / 'candidates.csv'}. Allow a "
                         f"larger max_drop, more epochs, or a longer time budget.")
    chain = search.standings.chains.get(chosen["id"], [])
    model = search.keras_model(chain)
    content, test = report.write_chosen(search, chosen, chain, model, test_data, rows, found)
    metrics_path = out / "chosen" / "metrics.json"
    atomic_write_json(metrics_path, {**json.loads(metrics_path.read_text()), **provenance()})
    search.emit("chosen", id=chosen["id"])
    search.log(f"chosen: {chosen['id']}: {chosen['tflite_gzip_bytes'] / 1000:.1f} kB gzip "
               f"({chosen['tflite_raw_bytes'] / 1000:.1f} kB raw), {chosen['latency_us']:.0f} µs, "
               f"{chosen['selection_accuracy']:.2%} on the selection split; written to {out}")
    return Result(leave(model, kind), content, chosen, rows, out, test, found)
