"""``tfopt report``: every artifact of one or more runs, measured the same way, with ratios to
the first one and plain words where an optimization brought no gain."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfopt.config.limits import model_file_kind
from tfopt.config.recipe import load_recipe
from tfopt.data.pipeline import load_splits
from tfopt.errors import TfoptError
from tfopt.export import load_keras
from tfopt.models.stats import model_stats
from tfopt.plots import pyplot
from tfopt.rundir import RunDir, atomic_write_json, atomic_write_text
from tfopt.steps import STEPS
from tfopt.steps.prune import layer_sparsity, overall_sparsity
from tfopt.steps.runs import accuracy as keras_accuracy
from tfopt.steps.source import beside, check_writable, looks_like
from tfopt.tflite import accuracy as tflite_accuracy
from tfopt.tflite import latency_us


@dataclass
class Row:
    name: str
    kind: str
    path: str
    params: int | None = None
    nonzero: int | None = None
    macs: int | None = None
    size: int = 0
    size_gzip: int = 0
    accuracy: float | None = None
    latency_1: float | None = None
    latency_n: float | None = None
    delegate: str | None = None
    steps: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def gzip_size(data) -> int:
    """``gzip -9`` size of a file (given its path) or of bytes."""
    raw = data if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes()
    return len(gzip.compress(raw, compresslevel=9))


def _artifacts(path: Path):
    if path.is_dir():
        found = [path / "model.keras"] if (path / "model.keras").is_file() else []
        found += sorted(path.glob("*.tflite"))
        if not found:
            raise TfoptError(f"{path}: no model.keras or .tflite file to report on.")
        return found
    if path.suffix in (".keras", ".h5", ".tflite"):
        return [path]
    raise TfoptError(f"{path}: not a run directory, .keras, .h5 or .tflite file.")


def _recipe_for(path: Path, recipe, overrides):
    run = path if path.is_dir() else path.parent
    if recipe:
        return load_recipe(recipe, overrides)
    if (run / "recipe.yaml").is_file():
        return load_recipe(run / "recipe.yaml", overrides)
    raise TfoptError(f"{path}: no recipe.yaml beside it; pass --recipe so tfopt knows the test data.")


def measure(paths, recipe=None, overrides=(), runs=200, threads=None, log=print) -> list[Row]:
    """Measure every artifact of ``paths`` on its recipe's test split."""
    threads = threads or os.cpu_count() or 2
    rows, cache = [], {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise TfoptError(f"{path} does not exist.")
        r = _recipe_for(path, recipe, overrides)
        key = r.data.model_dump_json()
        if key not in cache:
            cache[key] = load_splits(r.data, r.seed)
        splits = cache[key]
        run = path if path.is_dir() else path.parent
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        stats = None
        for art in _artifacts(path):
            name = f"{run.name}/{art.name}" if path.is_dir() else art.name
            row = Row(name, "tflite" if art.suffix == ".tflite" else "keras", str(art), size=art.stat().st_size,
                      size_gzip=gzip_size(art), steps=step_names(metrics.get("steps")))
            if row.kind == "keras":
                model = load_keras(art)
                stats = model_stats(model)
                sparsity = overall_sparsity(layer_sparsity(model))
                log(f"{name}: Keras test accuracy")
                row.accuracy = keras_accuracy(model, splits.x_test, splits.y_test)
                if sparsity >= 0.3:
                    row.notes.append(f"{sparsity:.0%} of its kernel weights are zero")
            else:
                content = art.read_bytes()
                log(f"{name}: TFLite test accuracy and latency ({runs} runs, 1 and {threads} threads)")
                row.accuracy = tflite_accuracy(content, splits.x_test, splits.y_test, log=log)
                one = latency_us(content, splits.x_test[0], 1, runs=runs, log=log)
                many = latency_us(content, splits.x_test[0], threads, runs=runs, log=log)
                row.latency_1, row.latency_n, row.delegate = one["median_us"], many["median_us"], one["delegate"]
            src = stats or metrics
            row.params = src.get("params")
            row.nonzero = src.get("nonzero_params")
            row.macs = src.get("macs")
            rows.append(row)
    return rows


def step_names(steps) -> list:
    """The steps a run's metrics.json records, as a list (a search's chosen model records one string)."""
    if not steps:
        return []
    return [steps] if isinstance(steps, str) else list(steps)


def _mode(row: Row) -> str:
    stem = Path(row.path).stem
    return stem.split("_", 1)[1] if row.kind == "tflite" and "_" in stem else row.kind


def notes(rows: list[Row]) -> list[str]:
    """Plain statements about what did and did not pay."""
    out = []
    base = rows[0]
    float_tfl = next((r for r in rows if r.kind == "tflite" and _mode(r) == "float32"), None)
    for r in rows[1:]:
        if r.size_gzip < base.size_gzip * 0.95:
            continue
        if r.latency_1 is None:
            out.append(f"{r.name}: no gain over {base.name} in gzipped size.")
        elif float_tfl is not None and r is not float_tfl and r.latency_1 >= float_tfl.latency_1 * 0.95:
            out.append(f"{r.name}: no gain over {base.name} in gzipped size, nor in latency over "
                       f"{float_tfl.name}.")
    for r in rows:
        sparse = any("zero" in n for n in r.notes)
        if sparse and r.kind == "keras" and r.size >= base.size * 0.9:
            out.append(f"{r.name}: {r.notes[0]}, yet its raw file is {r.size / base.size:.2f}× the baseline's: "
                       f"pruning keeps every tensor's shape; the zeros pay only once compressed "
                       f"(gzip: {base.size_gzip / max(r.size_gzip, 1):.1f}× smaller).")
    if float_tfl:
        for r in rows:
            if r.kind == "tflite" and _mode(r) in ("float32", "float16") and r is not float_tfl and \
                    r.latency_1 >= float_tfl.latency_1 * 0.9:
                out.append(f"{r.name}: {r.latency_1 / float_tfl.latency_1:.2f}× the float32 latency: unstructured "
                           f"sparsity or float16 weights do not speed up dense float kernels on this CPU.")
    out.append("BatchNorm folding is already done by the TFLite converter: a folded model's .tflite runs no faster.")
    return out


def table(rows: list[Row]) -> list[list[str]]:
    base = rows[0]
    lat_base = next((r.latency_1 for r in rows if r.latency_1), None)
    header = ["artifact", "steps", "params", "non-zero", "MACs", "size", "gzip", "gzip ×", "accuracy", "Δ pts",
              "latency 1T µs", "latency ×", "latency NT µs"]
    body = []
    for r in rows:
        body.append([
            r.name, " → ".join(r.steps) or "—", f"{r.params:,}" if r.params else "—", f"{r.nonzero:,}" if r.nonzero else "—",
            f"{r.macs:,}" if r.macs else "—", f"{r.size / 1024:.1f} KB", f"{r.size_gzip / 1024:.1f} KB",
            f"{base.size_gzip / r.size_gzip:.1f}×", f"{r.accuracy:.2%}" if r.accuracy is not None else "—",
            f"{(r.accuracy - base.accuracy) * 100:+.2f}" if r.accuracy is not None else "—",
            f"{r.latency_1:.1f}" if r.latency_1 else "—",
            f"{r.latency_1 / lat_base:.2f}×" if r.latency_1 and lat_base else "—",
            f"{r.latency_n:.1f}" if r.latency_n else "—",
        ])
    return [header, *body]


#: The terminal table's columns, of the full table's (the markdown report keeps every column).
TEXT_COLUMNS = {"artifact": 26, "steps": 12, "MACs": 11, "gzip": 9, "gzip ×": 6, "accuracy": 8, "Δ pts": 7,
                "latency 1T µs": 7}
TEXT_HEADERS = {"latency 1T µs": "1T µs"}


def text_cells(cells) -> list[list[str]]:
    """The columns of :data:`TEXT_COLUMNS`, each cut to its width: with two spaces between them, a
    table of at most 100 columns (report.md keeps every column)."""
    def cut(text, width):
        return text if len(text) <= width else "…" + text[-(width - 1):] if width > 1 else text[:width]

    keep = [i for i, h in enumerate(cells[0]) if h in TEXT_COLUMNS]
    out = [[TEXT_HEADERS.get(cells[0][i], cells[0][i]) for i in keep]]
    out += [[cut(row[i], TEXT_COLUMNS[cells[0][i]]) for i in keep] for row in cells[1:]]
    return out


def render_text(cells) -> str:
    cells = text_cells(cells)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def step_legend(rows: list[Row]) -> list[str]:
    """One line per registered step that made one of the rows: its name and what it does."""
    used = list(dict.fromkeys(s for r in rows for s in r.steps))
    return [f"{name}: {STEPS[name].help}" if name in STEPS else f"{name}: (no longer registered)" for name in used]


def render_markdown(cells, note_lines, threads, legend=()) -> str:
    md = ["# tfopt report", "", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    md += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    md += ["", f"Ratios are to the first artifact. Latency: LiteRT median of single-image invocations after "
               f"warm-up, 1 thread (1T) and {threads} threads (NT)."]
    if legend:
        md += ["", "## Steps", ""] + [f"- {line}" for line in legend]
    md += ["", "## Notes", ""]
    md += [f"- {n}" for n in note_lines]
    return "\n".join(md) + "\n"


def numbered_points(ax, points) -> None:
    """Scatter ``(number, x, y, colour)`` points, labelled with their numbers; points that fall
    on the same spot share one label ("1,2") instead of printing over each other."""
    spots: dict = {}
    for n, x, y, colour in points:
        ax.scatter(x, y, color=colour, s=36, zorder=3)
        spots.setdefault((round(x, 6), round(y, 4)), []).append(str(n))
    for (x, y), numbers in spots.items():
        ax.annotate(",".join(numbers), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)


def plot(rows: list[Row], path) -> None:
    """Accuracy against gzipped size and against latency; each artifact a number, named in the legend below."""
    import textwrap

    from matplotlib.ticker import ScalarFormatter

    plt = pyplot()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [f"{i}:\u00a0{r.name}" for i, r in enumerate(rows, 1)]  # a number stays with its name
    legend_lines = textwrap.wrap("   ".join(names), width=150, break_on_hyphens=False, break_long_words=False)
    measured = [(i, r, colours[(i - 1) % len(colours)]) for i, r in enumerate(rows, 1) if r.accuracy is not None]
    timed = [(i, r.latency_1, r.accuracy * 100, c) for i, r, c in measured if r.latency_1]
    # no TFLite file among the artifacts: no latency was measured, so no latency panel
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4 + 0.22 * len(legend_lines)),
                             squeeze=False)
    axes = axes[0]
    numbered_points(axes[0], [(i, r.size_gzip / 1024, r.accuracy * 100, c) for i, r, c in measured])
    if timed:
        numbered_points(axes[1], timed)
        axes[1].set_xlabel("single-thread LiteRT latency (µs)")
    axes[0].set_xscale("log")
    axes[0].xaxis.set_major_formatter(ScalarFormatter())
    axes[0].xaxis.set_minor_formatter(ScalarFormatter())
    axes[0].tick_params(axis="x", which="minor", labelsize=7)
    axes[0].set_xlabel("gzipped size (KB, log)")
    for ax in axes:
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)
    fig.text(0.01, 0.01, "\n".join(legend_lines), fontsize=8, va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.05 + 0.05 * len(legend_lines), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report_folder(paths, output=None) -> Path:
    """Where :func:`report` writes: ``output``, else ``report/`` beside the first of ``paths``."""
    return Path(output) if output else beside(paths[0]) / "report"


def check_inputs(paths, output=None, runs=200, threads=None) -> Path:
    """Refuse missing or wrong-kind artifacts, bad counts and an unwritable output, before any work;
    returns the report folder."""
    if not paths:
        raise TfoptError("report: give at least one run directory or model file.")
    for name, value in (("--runs", runs), ("--threads", threads)):
        if value is not None and value < 1:
            raise TfoptError(f"report: {name} must be at least 1; got {value}")
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise TfoptError(f"{path} does not exist.")
        _artifacts(path)
        if path.is_file() and model_file_kind(path) is None:
            raise TfoptError(f"{path} is not a model file: it is {looks_like(path)}.")
    folder = report_folder(paths, output)
    check_writable(folder.parent, named=folder)
    return folder


def report(paths, recipe=None, overrides=(), output=None, overwrite=False, runs=200, threads=None, log=print):
    """Measure, then write ``report.md``, ``report.json`` and ``report.png`` into ``output``
    (default: ``report/`` beside the first of ``paths``)."""
    output = check_inputs(paths, output, runs, threads)
    threads = threads or os.cpu_count() or 2
    target = RunDir(Path(output), overwrite=overwrite).check()
    rows = measure(paths, recipe, overrides, runs, threads, log)
    cells = table(rows)
    note_lines = notes(rows)
    target.open()
    atomic_write_text(target.path("report.md"), render_markdown(cells, note_lines, threads, step_legend(rows)))
    atomic_write_json(target.path("report.json"), {"rows": [asdict(r) for r in rows], "notes": note_lines})
    plot(rows, target.path("report.png"))
    final = target.commit()
    return rows, render_text(cells), note_lines, final
