"""The files a search leaves: ``report.md``, ``pareto.png``, ``optimize.yaml`` and ``chosen/``,
and the paired accuracy drop every candidate is reported with."""

from __future__ import annotations

import json

import numpy as np
import yaml

from tfopt import tflite
from tfopt.rundir import atomic_write_json
from tfopt.search import measure as M
from tfopt.steps import STEPS
from tfopt.training.finetune import DEFAULT_LR


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


def pareto_front(rows, key):
    """The rows no other row beats on both ``key`` and selection accuracy.

    Args:
        rows: candidate rows with ``key`` and ``selection_accuracy``.
        key: the column to minimise (``tflite_gzip_bytes``, ``latency_us``).

    Returns:
        The undominated rows, sorted by ``key``.
    """
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r[key], -r["selection_accuracy"])):
        if r["selection_accuracy"] > best:
            front.append(r)
            best = r["selection_accuracy"]
    return front


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_plot(rows, base_acc, max_drop, chosen, path) -> None:
    """``pareto.png``: selection accuracy against gzip size and against latency, every finished
    candidate (green within budget), the Pareto frontier, the budget line and the chosen one."""
    plt = pyplot()
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


def recipe_steps(chain, mode: str, fine_tune) -> list[dict]:
    """The recipe's ``optimize.steps`` that reproduce a chain and its TFLite file.

    Args:
        chain: the candidate's chain steps.
        mode: how its file was made: ``int8``, ``float32`` or ``qat``.
        fine_tune: the search's :class:`~tfopt.config.fine_tune.FineTuneSettings`.

    Returns:
        One ``{step name: settings}`` per step, each valid for ``STEPS[name].configure``, with
        the fine-tune's epochs and rate (the step's overrides, else ``fine_tune``'s) where the
        step's config takes them; then the quantize (or float32 export) step.
    """
    steps = []
    for s in chain:
        config = STEPS[s.name].config
        fields = config.model_fields if config is not None else {}
        lr = s.overrides(fine_tune.lr or DEFAULT_LR).get("lr") or fine_tune.lr
        ft = ({"epochs": s.fine_tune.get("epochs") or fine_tune.epochs} if "epochs" in fields else {}) \
            | ({"lr": lr} if lr and "lr" in fields else {})
        steps.append({s.name: {**json.loads(json.dumps(s.settings)), **ft}})
    if mode == "float32":
        steps.append({"export": {"tflite": ["float32"]}})
    elif mode == "qat":
        steps.append({"quantize": {"mode": "qat", "epochs": fine_tune.epochs}})
    else:
        steps.append({"quantize": {"mode": "int8"}})
    return steps


def row_mode(row) -> str:
    """How a row's TFLite file was made: ``int8``, ``float32`` or ``qat``."""
    return "qat" if row.get("int8") == "qat" else (row.get("tflite") or "int8")


def write_recipe(out, search, chain, mode: str) -> None:
    """``optimize.yaml``: the recipe ``optimize:`` section that reproduces the chosen candidate."""
    ft = search.fine_tune
    distill = {"temperature": ft.temperature, "alpha": ft.alpha} if ft.teacher is not None else None
    if distill and search.teacher_path:
        distill["teacher"] = search.teacher_path
    (out / "optimize.yaml").write_text(
        "# The recipe `optimize:` section that reproduces the chosen candidate, step by step:\n"
        "# tfopt replay RUN --steps optimize.yaml runs it again.\n"
        + yaml.safe_dump({"optimize": {"steps": recipe_steps(chain, mode, ft), "distill": distill}}, sort_keys=False))


def paired_drops(search, rows) -> dict:
    """``{id: paired_drop}`` of every finished candidate whose file is in the cache."""
    y_sel = M.class_labels(search.y_sel)
    input_right = search.model.predict(search.x_sel, verbose=0).argmax(-1) == y_sel
    pairs = {}
    for r in rows:
        cached = search.out / "cache" / r["id"] / "model.tflite"
        if not r.get("error") and cached.is_file():
            pairs[r["id"]] = file_drop(cached, input_right, search.x_sel, y_sel)
    return pairs


def file_drop(path, input_right, x, y) -> dict:
    """:func:`paired_drop` of the TFLite file at ``path`` on ``(x, y)`` against the input model's
    right answers ``input_right`` on the same images."""
    return paired_drop(input_right, tflite.predict(path.read_bytes(), x).argmax(-1) == y)


def write_chosen(search, chosen, chain, model, test_data, rows, confirmation=None):
    """Verify the chosen file against its Keras model (QAT: against the float model it came from),
    measure every candidate's paired drop and the test accuracies, and write ``chosen/``,
    ``optimize.yaml`` and ``report.md``, with what the confirmation split found (``confirmation``, see
    :func:`tfopt.search.choice.confirm`). Returns ``(the chosen TFLite bytes, test accuracies)``."""
    out, log = search.out, search.log
    content = (out / "cache" / chosen["id"] / "model.tflite").read_bytes()
    mode = chosen.get("tflite") or "int8"
    ver = tflite.verify(model, content, search.x_sel, search.y_sel, mode, threshold=0.98 if mode == "int8" else 0.999)
    log(ver.line())
    pairs = paired_drops(search, rows)
    paired = pairs[chosen["id"]]
    log(f"selection split: drop {paired['drop_points']:.2f} ± {paired['standard_error_points']:.2f} pt (paired standard "
        f"error: the input model right and the chosen file wrong on {paired['lost']} images, the reverse on "
        f"{paired['won']})")
    test = {}
    if test_data is not None:
        xt, yt = test_data[0], M.class_labels(test_data[1])
        test = {"input_test_accuracy": M.accuracy(search.model, xt, yt),
                "chosen_test_accuracy": tflite.accuracy(content, xt, yt)}
        log(f"test split: input model {test['input_test_accuracy']:.2%}, chosen {mode} TFLite "
            f"{test['chosen_test_accuracy']:.2%}")
    run = out / "chosen"
    run.mkdir(exist_ok=True)
    M.save(model, run / "model.keras")
    (run / f"model_{mode}.tflite").write_bytes(content)
    atomic_write_json(run / "metrics.json", {**chosen, **test, "verification": ver.line(),
                                             "input_selection_accuracy": search.base_acc, "selection_drop": paired,
                                             "confirmation": confirmation or None})
    write_recipe(out, search, chain, row_mode(chosen))
    write_report(out, search, chosen, test, rows, pairs, confirmation)
    return content, test


def distillation(search) -> str:
    """How the fine-tunes learned: ``off``, or from which teacher."""
    teacher = search.fine_tune.teacher
    if teacher is None:
        return "off"
    if search.teacher_path:
        return f"on, from {search.teacher_path}"
    return "on, from the input model" if getattr(teacher, "model", teacher) is search.model \
        else "on, from the teacher passed in"


def header_lines(search, rows) -> list[str]:
    """The report's opening: target, budget, candidates, distillation, rate, the input file."""
    ref = search.reference
    rate = search.fine_tune.lr
    lines = ["# tfopt optimize", "",
             f"Target: **{search.target}**; budget: at most {search.max_drop:g} points below the input model's "
             f"{search.base_acc:.2%} on the selection split ({len(search.x_sel)} held-out images). "
             f"{len(rows)} candidates in {search.elapsed() / 60:.1f} min. "
             f"Distillation: {distillation(search)}. Fine-tune rate: {rate or 'the steps’ default'}"
             + (" (probed: " + ", ".join(f"{p['lr']:g} {-p['drop_points']:+.2f} pt" for p in search.probe) + ")"
                if search.probe else "") + ".", ""]
    notes = [n[:1].upper() + n[1:] + ("" if n.endswith(".") else ".")
             for n in (search.resolution_note, search.stop_reason) if n]
    lines += [" ".join(notes), ""] if notes else []
    if ref:
        lines += [f"Input model as float32 TFLite: {ref['gzip_bytes']:,} bytes gzip, {ref['raw_bytes']:,} bytes raw, "
                  f"{ref['macs']:,} MACs, {ref['latency_us']:.0f} µs 1-thread LiteRT"
                  + (f" ({ref['latency_us_2t']:.0f} µs on 2 threads)" if ref.get("latency_us_2t") else "")
                  + f", {ref['accuracy']:.2%} on the "
                  f"selection split.", ""]
    return lines


def chosen_lines(search, chosen, test, paired, confirmation=None) -> list[str]:
    """The report's section on the chosen candidate."""
    ref = search.reference
    lines = [f"## Chosen: `{chosen['id']}`", "", f"Steps: {chosen['steps']}", "",
             f"- {chosen.get('tflite') or 'int8'} TFLite: {chosen['tflite_gzip_bytes']:,} bytes gzip, "
             f"{chosen['tflite_raw_bytes']:,} bytes raw"
             + (f" ({chosen['sparse_raw_bytes']:,} raw with sparse weight storage)"
                if chosen.get("sparse_raw_bytes") else ""),
             f"- selection accuracy {chosen['selection_accuracy']:.2%} (drop {chosen['drop_points']:.2f} pt"
             + (f" ± {paired['standard_error_points']:.2f}, the paired standard error: the input "
                f"model right and this file wrong on {paired['lost']} images, the reverse on "
                f"{paired['won']}" if paired else "") + ")",
             *([confirmation_item(confirmation, search.max_drop)] if confirmation else []),
             f"- {chosen['macs']:,} MACs, {chosen['latency_us']:.0f} µs 1-thread LiteRT"
             + (f" ({chosen['latency_us_2t']:.0f} µs on 2 threads)" if chosen.get("latency_us_2t") else "")]
    if ref:
        lines += [f"- against the float32 TFLite: {ref['gzip_bytes'] / chosen['tflite_gzip_bytes']:.1f}× smaller "
                  f"(gzip), {ref['raw_bytes'] / chosen['tflite_raw_bytes']:.1f}× (raw), latency "
                  f"{chosen['latency_us'] / ref['latency_us']:.2f}×"]
    if test:
        lines += [f"- test accuracy: {test['chosen_test_accuracy']:.2%} (input model "
                  f"{test['input_test_accuracy']:.2%})"]
    return lines + ["", "![pareto](pareto.png)", ""]


def confirmation_item(found: dict, max_drop: float) -> str:
    """The report's line on the confirmation split (see :func:`tfopt.search.choice.confirm`)."""
    line = (f"- confirmation split ({found['images']:,} selection images set aside from the choice): drop "
            f"{found['drop_points']:.2f} ± {found['standard_error_points']:.2f} pt, "
            + ("within the budget" if found["confirmed"] else f"**over** the {max_drop:g}-point budget: no file within "
               f"it on the selection split kept it there, so the one that lost least there was chosen"))
    if found["passed_over"]:
        line += "; passed over for losing more there: " + ", ".join(f"`{i}`" for i in found["passed_over"])
    return line


def candidate_lines(rows, pairs) -> list[str]:
    """The report's table of every candidate, with each drop's paired standard error."""
    lines = ["## Candidates", "", "The drop's ± is its paired standard error on the selection split.", "",
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
    return lines


def write_report(out, search, chosen, test, rows, pairs=None, confirmation=None) -> None:
    """``report.md``: the search's settings, the chosen candidate (or that none met the budget)
    and every candidate."""
    pairs = pairs or {}
    lines = header_lines(search, rows)
    lines += chosen_lines(search, chosen, test, pairs.get(chosen["id"]), confirmation) if chosen \
        else ["No candidate met the budget.", ""]
    lines += candidate_lines(rows, pairs)
    (out / "report.md").write_text("\n".join(lines) + "\n")
