"""tf.distribute: `--workers N` on loopback, only the chief writing, fine-tunes, refusals, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO
from tfopt.errors import TfoptError

QUICKSTART = REPO / "recipes" / "quickstart.yaml"
EPOCHS = 4


def tfopt(*args, env=None, **kw):
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env = {**base, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tfopt.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=env, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The quickstart trained by two workers on loopback, and by one process with the same global batch and seed."""
    from tfopt.config.recipe import load_recipe
    from tfopt.training.run import fit

    out = tmp_path_factory.mktemp("dist")
    scratch = out / "scratch"  # the workers' temporary folder
    scratch.mkdir()
    res = tfopt("fit", QUICKSTART, "--set", f"train.epochs={EPOCHS}", "--workers", "2", "--output", out / "two",
                env={"TMPDIR": str(scratch)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not list(scratch.glob("tfopt-worker-*"))  # worker 1's copy of the run is gone
    single = fit(load_recipe(QUICKSTART, [f"train.epochs={EPOCHS}"]), output=out / "one", log=lambda *_: None)
    return out / "two" / "quickstart", single.run_dir, res.stdout


@pytest.mark.slow
def test_two_workers_write_one_complete_run(runs):
    two, one, stdout = runs
    assert {p.name for p in two.iterdir()} >= {"model.keras", "recipe.yaml", "metrics.json", "history.csv",
                                               "checkpoints"}
    assert not list(two.parent.glob("*.partial"))
    m = json.loads((two / "metrics.json").read_text())
    assert m["distribute"]["strategy"] == "multi_worker"
    assert m["distribute"]["workers"] == 2 and m["distribute"]["replicas"] == 2
    assert m["distribute"]["global_batch_size"] == 32 and m["distribute"]["per_replica_batch_size"] == 16
    assert m["epochs"] == EPOCHS
    single = json.loads((one / "metrics.json").read_text())
    assert abs(m["test_accuracy"] - single["test_accuracy"]) <= 0.015, (m["test_accuracy"], single["test_accuracy"])
    assert "[worker 0] " in stdout and "[worker 1] " in stdout
    assert "[worker 1] worker 1 done; the chief writes the run" in stdout


@pytest.mark.slow
def test_prune_with_two_workers_gives_the_counted_sparsity(runs, tmp_path):
    from tfopt.export import load_keras
    from tfopt.steps.prune import layer_sparsity, overall_sparsity

    two, _, _ = runs
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    res = tfopt("prune", two, "--sparsity", "0.6", "--epochs", "1", "--workers", "2", "--output", tmp_path / "out",
                env={"TMPDIR": str(scratch)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[worker 1] worker 1 done; the chief writes" in res.stdout
    model = load_keras(tmp_path / "out" / "quickstart-pruned" / "model.keras")
    assert overall_sparsity(layer_sparsity(model)) == pytest.approx(0.6, abs=0.01)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["quickstart-pruned"]
    assert not list(scratch.glob("tfopt-worker-*"))


@pytest.mark.slow
def test_refusals(tmp_path):
    from tfopt.training import distribute as D
    from tfopt.tune.space import check_file

    res = tfopt("fit", QUICKSTART, "--set", "train.distribute=multi_worker", "--output", tmp_path)
    assert res.returncode == 2 and "multi_worker reads the cluster from TF_CONFIG, which is not set" in res.stderr
    res = tfopt("fit", QUICKSTART, "--workers", "2", "--output", tmp_path, env={"TF_CONFIG": "{}"})
    assert res.returncode == 2 and "--workers: TF_CONFIG is already set" in res.stderr
    res = tfopt("fold-bn", tmp_path, "--workers", "2")
    assert res.returncode == 2 and "No such option '--workers'" in res.stderr  # folding trains nothing
    os.environ["TF_CONFIG"] = "not json"
    try:
        with pytest.raises(TfoptError, match="TF_CONFIG is not a valid cluster description"):
            D.task()
    finally:
        del os.environ["TF_CONFIG"]
    search = yaml.safe_load((REPO / "recipes" / "search" / "digits_hyperband.yaml").read_text())
    search["train"]["distribute"] = "mirrored"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(search))
    with pytest.raises(TfoptError, match="train.distribute: 'mirrored' is refused in a search"):
        check_file(path)


def test_a_failing_worker_fails_the_launch(tmp_path):
    from tfopt.training.launch import launch

    lines, printed = [], tmp_path / "out.txt"
    with printed.open("w") as out:
        status = launch(["validate", str(tmp_path / "missing.yaml")], 2, log=lines.append, out=out)
    assert status == 2
    text = printed.read_text()
    # the first worker to fail stops the other, which may not have got as far as its own error
    failed = [i for i in (0, 1) if f"[worker {i}] Error: " in text]
    assert failed and f"[worker {failed[0]}]   recipe file not found" in text


@pytest.mark.slow
def test_a_killed_worker_then_resume_finishes_the_run(tmp_path):
    """SIGKILL one of two workers in epoch 2 of 4; the launcher stops the other; --resume finishes."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "tfopt.cli", "fit", str(QUICKSTART), "--set", "train.epochs=4", "--workers", "2",
            "--output", str(out)]
    scratch = tmp_path / "scratch"  # the workers' temporary folders
    scratch.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch)}
    env.pop("TF_CONFIG", None)
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    pids, killed, seen = {}, False, []
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        seen.append(line)
        if ": pid " in line and line.startswith("worker "):
            index, pid = line.split(": pid ")
            pids[int(index.split()[1])] = int(pid)
        if not killed and "Epoch 2/4" in line and 1 in pids:
            time.sleep(1.0)  # inside epoch 2
            os.kill(pids[1], signal.SIGKILL)
            killed = True
        assert time.monotonic() < deadline, "".join(seen[-30:])
    assert proc.wait(timeout=120) != 0 and killed, "".join(seen[-30:])
    partial = out / "quickstart.partial"
    assert partial.is_dir() and not (out / "quickstart").exists()
    state = json.loads((partial / "checkpoints" / "state.json").read_text())
    assert state["epochs_done"] == 1
    res = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout
    history = (out / "quickstart" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 4
    assert not list(out.glob("*.partial"))
    assert json.loads((out / "quickstart" / "metrics.json").read_text())["epochs"] == 4
    assert not list(scratch.glob("tfopt-worker-*"))  # the killed worker's copy was cleared by its successor
