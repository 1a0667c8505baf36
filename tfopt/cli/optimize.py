"""``tfopt optimize``: the smallest or fastest model within an accuracy budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tfopt.cli.app import VERBOSE, Option, echo_err, echo_out, sigterm_as_interrupt
from tfopt.cli.checks import check_number
from tfopt.errors import TfoptError
from tfopt.steps.runs import check_source, check_teacher_path, source_name
from tfopt.steps.source import beside, check_search_limits, check_writable

#: Columns of the final table: (header, width, the row's cell).
COLUMNS = (
    ("candidate", 30, lambda r: r["id"]),
    ("sel. acc", 8, lambda r: f"{r['selection_accuracy']:.2%}"),
    ("drop pt", 7, lambda r: f"{r['drop_points']:+.2f}"),
    ("ok", 3, lambda r: "yes" if r["meets_budget"] else "no"),
    ("gzip kB", 8, lambda r: f"{r['tflite_gzip_bytes'] / 1000:.1f}"),
    ("µs", 6, lambda r: f"{r['latency_us']:.0f}"),
    ("MACs", 11, lambda r: f"{r['macs']:,}"),
    ("conf. pt", 8, lambda r: "" if r.get("confirmation_drop_points") is None
     else f"{r['confirmation_drop_points']:+.2f}"),
)


def candidate_line(n: int, event: dict) -> str:
    """The one progress line of a finished candidate."""
    row = event["row"]
    if row.get("error"):
        return f"[{n}] {event['id']} ({event['stage']}): failed: {row['error'][:80]}"
    return (f"[{n}] {event['id']} ({event['stage']}): {row['selection_accuracy']:.2%}, drop "
            f"{row['drop_points']:+.2f} pt{'' if row['meets_budget'] else ' (over budget)'}, "
            f"{row['tflite_gzip_bytes'] / 1000:.1f} kB gzip, {row['latency_us']:.0f} µs")


def final_table(rows, chosen_id) -> str:
    """The candidates as a table of at most 100 columns; the chosen one marked with ``*``."""
    def fit(text, width):
        return text if len(text) <= width else text[:width - 1] + "…"

    lines = [" ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w, _) in enumerate(COLUMNS))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        if r.get("error"):
            lines.append(f"{fit(r['id'], COLUMNS[0][1])}  failed")
            continue
        cells = [fit(cell(r), w) for _, w, cell in COLUMNS]
        line = " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, COLUMNS)))
        lines.append(line + (" *" if r["id"] == chosen_id else ""))
    return "\n".join(lines)


def check_search_folder(out: Path, resume: bool) -> None:
    """Refuse a search folder that holds a search without ``resume``, or none to resume with it."""
    if out.exists() and not out.is_dir():
        raise TfoptError(f"{out} is a file where the search folder goes; move it, or give --output elsewhere")
    held = out.is_dir() and any(out.iterdir())
    if resume and not held:
        raise TfoptError(f"--resume: {out} holds no search to resume (no interrupted search was found there); run "
                         f"without --resume to start one, or give the --output of the search to continue")
    if held and not resume:
        raise TfoptError(f"{out} already holds a search; pass --resume to continue it, or --output elsewhere")


def check_arguments(source, recipe, overrides, output, resume, teacher, lr, temperature, alpha, **limits) -> None:
    """Every argument, the source and its recipe, the teacher and the output folder, before
    TensorFlow is imported or any work done."""
    # loaded when the command runs: --help stays light

    check_search_limits(**limits)
    for name, value, ok, allowed in (("--lr", lr, lambda v: 0 < v <= 10, "a finite rate above 0 (at most 10)"),
                                     ("--temperature", temperature, lambda v: v > 0, "a finite number above 0"),
                                     ("--alpha", alpha, lambda v: 0 <= v <= 1, "a number from 0 to 1")):
        check_number(name, value, ok, allowed)
    check_source(source, recipe, overrides)
    if teacher:
        check_teacher_path(teacher)
    check_writable(output or beside(source))
    check_search_folder(Path(output or beside(source)) / f"{source_name(source)}-optimized", resume)


@click.command("optimize")
@click.argument("source", type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), cls=Option, shown="the run's recipe",
              help="Recipe naming the data (required for a model file).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value by dotted key (repeatable).")
@click.option("--max-drop", type=float, default=0.3, show_default=True,
              help="Largest accuracy drop allowed, in points, judged on the selection (validation) split.")
@click.option("--target", type=click.Choice(["size", "latency", "macs"]), default="size", show_default=True,
              help="What to minimise: gzip bytes of the int8 .tflite, 1-thread LiteRT latency, or MACs.")
@click.option("--time-budget", metavar="DURATION", help="Stop starting candidates after this long, e.g. 30m, 1h; time the plan leaves goes to longer "
                   "fine-tunes of the near misses.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Fine-tune epochs of every step.")
@click.option("--lr", type=float, cls=Option,
              shown="probed, the highest of 1e-3, 3e-4, 1e-4 that one epoch on the input model tolerates",
              help="Fine-tune learning rate.")
@click.option("--no-distill", is_flag=True,
              help="Fine-tune on the labels only, not learning from the input model's outputs.")
@click.option("--teacher", metavar="RUN|MODEL",
              help="Learn from this run directory or model file instead of the input model (same inputs, as many "
                   "outputs; e.g. a larger network). The budget is still judged against the input model.")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature.")
@click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of the teacher's soft targets.")
@click.option("--max-candidates", type=int, help="Stop after this many candidates.")
@click.option("--confirmation-fraction", type=click.FloatRange(0, 0.5), cls=Option, shown="1/3",
              help="Share of the selection split set aside as the confirmation split: the best file within budget "
                   "on the rest is chosen only if it keeps the budget there too, else the next best. 0: none.")
@click.option("--output", type=click.Path(file_okay=False), cls=Option, shown="the folder holding SOURCE",
              help="Parent folder of the search.")
@click.option("--resume", is_flag=True, help="Continue an interrupted search in <output>/<source>-optimized; finished "
                                             "candidates are kept. Refused when that folder holds no search.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr; only the results on stdout.")
@click.option("--json", "as_json", is_flag=True, help="The results as one JSON document on stdout, nothing else.")
def optimize(source, recipe, overrides, max_drop, target, time_budget, epochs, lr, no_distill, teacher,
             temperature, alpha, max_candidates, confirmation_fraction, output, resume, quiet, as_json):
    """Search pruning, layer removal, clustering and int8 for the smallest (--target size) or fastest
    model of SOURCE within --max-drop points of its accuracy.

    Writes candidates.csv (as each candidate finishes), pareto.png, report.md, optimize.yaml and
    the chosen model (chosen/model.keras and a verified chosen/model_int8.tflite) into
    <output>/<source>-optimized (default: beside SOURCE), and TensorBoard logs of every candidate's
    fine-tunes into its logs/<candidate id>/. Progress goes to stderr, one line per candidate
    (--verbose: every line); the results table to stdout. Ctrl-C keeps the finished candidates;
    --resume continues.
    """
    check_arguments(source, recipe, overrides, output, resume, teacher, lr, temperature, alpha, max_drop=max_drop,
                    time_budget=time_budget, max_candidates=max_candidates, epochs=epochs)
    sigterm_as_interrupt()
    from tfopt.search.engine import optimize_source  # TensorFlow, once the arguments are known to be good

    verbose = any(a in VERBOSE for a in sys.argv[1:]) and not as_json
    progress = not quiet and not verbose
    finished = []

    def on_event(event):
        if event["event"] == "candidate":
            finished.append(event)
            if progress:
                echo_err(candidate_line(len(finished), event))
        elif event["event"] in ("resolution", "stopped", "retimed", "confirmation") and progress:
            echo_err(event["note"])

    try:
        result = optimize_source(source, recipe, overrides, output=output, resume=resume,
                                 log=echo_err if verbose and not quiet else (lambda *_: None), on_event=on_event,
                                 fit_verbose=2 if verbose and not quiet else 0, max_drop=max_drop, target=target,
                                 time_budget=time_budget, epochs=epochs, lr=lr, distill=not no_distill,
                                 teacher=teacher, temperature=temperature, alpha=alpha, max_candidates=max_candidates,
                                 **({} if confirmation_fraction is None
                                    else {"confirmation_fraction": confirmation_fraction}))
    except KeyboardInterrupt:
        echo_err("interrupted; run again with --resume to continue")
        raise SystemExit(130) from None
    if as_json:
        echo_out(json.dumps({"output": str(result.out), "chosen": result.chosen, "test": result.test,
                             "confirmation": result.confirmation or None, "candidates": result.rows}, default=str))
        return
    echo_out(final_table(result.rows, result.chosen["id"]))
    echo_out(f"chosen: {result.chosen['id']}; written to {result.out}")
