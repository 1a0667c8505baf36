"""A step writes its new run beside its input, wherever it is run from; every run records when,
by which command and which tfopt made it, and keeps its fine-tune's TensorBoard logs."""

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest

import tfopt
from conftest import REPO


def tfopt_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tfopt", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_fit_records_when_and_by_which_tfopt(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    created = datetime.fromisoformat(metrics["created"])
    assert created.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 3600
    assert metrics["command"] is None  # called from Python, not the command line
    assert metrics["tfopt_version"] == tfopt.__version__


def test_prune_from_another_folder_writes_beside_its_input(tiny_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = tfopt_cli("prune", tiny_run, "--epochs", "1", "--sparsity", "0.5", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    pruned = tiny_run.parent / "tiny-pruned"
    assert (pruned / "model.keras").is_file()
    assert list(elsewhere.iterdir()) == []
    assert not [p for p in tiny_run.parent.iterdir() if p.name.startswith(".tfopt-")]
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert metrics["command"] == f"tfopt prune {tiny_run} --epochs 1 --sparsity 0.5"
    assert metrics["tfopt_version"] == tfopt.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", metrics["created"])
    events = list((pruned / "logs").rglob("events.out.tfevents.*"))
    assert events, "the fine-tune wrote no TensorBoard events"


def test_a_keras_file_gets_its_run_beside_the_file(tiny_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = tmp_path / "models" / "model.keras"
    model.parent.mkdir()
    model.write_bytes((tiny_run / "model.keras").read_bytes())
    proc = tfopt_cli("fold-bn", model, "--recipe", tiny_run / "recipe.yaml", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert (model.parent / "model-folded" / "model.keras").is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_output_still_decides(tiny_run, tmp_path):
    proc = tfopt_cli("fold-bn", tiny_run, "--output", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "tiny-folded" / "model.keras").is_file()
    assert not (tiny_run.parent / "tiny-folded").exists()
