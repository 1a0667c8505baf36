"""Results on stdout, progress on stderr; --quiet and --json; one progress line per candidate."""

import json
import logging
import os
import subprocess
import sys

import pytest

import tfopt
from conftest import REPO


def tfopt_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tfopt", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


SEARCH = ("--epochs", "1", "--lr", "1e-3", "--no-distill", "--max-drop", "30")


def test_optimize_shows_one_line_per_candidate_and_a_narrow_table(tiny_run):
    proc = tfopt_cli("optimize", tiny_run, "--max-candidates", "2", *SEARCH)
    assert proc.returncode == 0, proc.stderr
    progress = proc.stderr.splitlines()
    assert [line.split()[0] for line in progress] == ["[1]", "[2]", "confirmation"], proc.stderr
    assert progress[2].startswith("confirmation split (16 images): ")  # a third of the tiny run's 48
    assert "Epoch" not in proc.stderr + proc.stdout and "WARNING:root" not in proc.stderr
    table = proc.stdout.splitlines()
    assert table[0].split()[:3] == ["candidate", "sel.", "acc"]
    assert len(table) == 2 + 2 + 1  # header, rule, two candidates, the closing line
    assert max(len(line) for line in table[:-1]) <= 100
    out = tiny_run.parent / "tiny-optimized"
    assert table[-1].endswith(f"written to {out}")
    chosen = json.loads((out / "chosen" / "metrics.json").read_text())
    assert chosen["tfopt_version"] == tfopt.__version__ and chosen["command"].startswith("tfopt optimize ")
    assert chosen["created"].endswith("+00:00")
    candidate_logs = [p.name for p in (out / "logs").iterdir()]
    assert candidate_logs and all(any(p.rglob("events.out.tfevents.*")) for p in (out / "logs").iterdir())


def test_optimize_names_a_budget_the_selection_split_cannot_resolve_before_its_first_candidate(tiny_run, tmp_path):
    proc = tfopt_cli("optimize", tiny_run, "--max-candidates", "1", "--output", tmp_path, *SEARCH[:-1], "0.01")
    first = proc.stderr.splitlines()[0]
    assert first.startswith("note: a drop of at most 0.01 points is 0.0 of the "), proc.stderr
    assert "the selection split cannot tell such a drop from noise" in first
    assert proc.stderr.splitlines()[1].startswith("[1] ")


@pytest.mark.slow
def test_optimize_json_is_the_only_thing_on_stdout(tiny_run, tmp_path):
    proc = tfopt_cli("optimize", tiny_run, "--max-candidates", "1", "--json", "--quiet", "--output", tmp_path,
                     *SEARCH)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["output"] == str(tmp_path / "tiny-optimized")
    assert [row["id"] for row in doc["candidates"]] == [doc["chosen"]["id"]]
    assert proc.stderr.strip() == ""


def test_report_json_and_quiet(tiny_run, tmp_path):
    proc = tfopt_cli("report", tiny_run, "--runs", "5", "--json", "--quiet", "--output", tmp_path / "rep")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [row["name"] for row in doc["rows"]] == ["tiny/model.keras"] and doc["output"] == str(tmp_path / "rep")
    assert proc.stderr.strip() == ""  # --quiet: nothing but the result
    loud = tfopt_cli("report", tiny_run, "--runs", "5")
    assert loud.returncode == 0, loud.stderr
    assert "tiny/model.keras: Keras test accuracy" in loud.stderr
    assert "tiny/model.keras: Keras test accuracy" not in loud.stdout
    assert loud.stdout.splitlines()[-1] == f"report written to {tiny_run.parent / 'report'}/report.md"
    assert max(len(line) for line in loud.stdout.splitlines()) <= 100


def test_the_search_silences_root_warnings_only_while_it_runs():
    from tfopt.search.engine import quiet_root_warnings

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    root = logging.getLogger()
    handler = Keep(level=logging.DEBUG)
    root.addHandler(handler)
    try:
        with quiet_root_warnings():
            logging.warning("Input layer does not contain zero weights, so apply CQAT instead.")
            logging.getLogger("tfopt.test").warning("a named logger still speaks")
        logging.warning("after the search")
    finally:
        root.removeHandler(handler)
    assert seen == ["a named logger still speaks", "after the search"]
    assert not root.filters


def test_the_rate_panel_is_not_squashed_by_a_last_near_zero_rate(tmp_path):
    from tfopt.plots import RATE_RANGE, pyplot, rate_panel

    plt = pyplot()
    fig, ax = plt.subplots()
    rates = [1e-3, 2e-3, 3e-3, 1e-3, 1e-8]
    rate_panel(ax, [1, 2, 3, 4, 5], rates)
    low, high = ax.get_ylim()
    assert high / low == pytest.approx(RATE_RANGE * 1.3 * 1.3)
    assert [t.get_text() for t in ax.texts] == ["1.0e-08"]
    plt.close(fig)


def test_the_report_plot_has_a_latency_panel_only_when_a_latency_was_measured(tmp_path):
    import matplotlib.image

    from tfopt.report.report import Row, plot

    rows = [Row("a/model.keras", "keras", "a", size_gzip=90_000, accuracy=0.98),
            Row("b/model.keras", "keras", "b", size_gzip=80_000, accuracy=0.97)]
    plot(rows, tmp_path / "keras.png")
    rows.append(Row("b/model.tflite", "tflite", "b", size_gzip=20_000, accuracy=0.97, latency_1=120.0))
    plot(rows, tmp_path / "tflite.png")
    widths = {k: matplotlib.image.imread(tmp_path / f"{k}.png").shape[1] for k in ("keras", "tflite")}
    assert widths == {"keras": 6 * 90, "tflite": 11 * 90}


def test_a_step_prints_its_run_on_stdout_and_keras_epoch_lines_on_stderr(tiny_run, tmp_path):
    proc = tfopt_cli("prune", tiny_run, "--sparsity", "0.5", "--epochs", "1", "--output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(tmp_path / "tiny-pruned")]
    keras_lines = [line for line in proc.stderr.splitlines() if " - loss: " in line]
    assert len(keras_lines) == 1 and keras_lines[0].startswith("5/5 - "), proc.stderr
