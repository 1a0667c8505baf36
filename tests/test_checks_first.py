"""Every command checks its arguments and its output folder before importing TensorFlow or doing
any work: one paragraph, exit 2, no traceback, in about a second."""

import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, tiny_recipe_dict


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as tfopt fit writes it (its model a real .keras zip header; never loaded)."""
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe_dict()))
    (run / "model.keras").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    return run


def tfopt(*args, cwd=None):
    """``python -X importtime -m tfopt args``: (exit status, stderr without import lines, whether
    TensorFlow was imported, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfopt", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=cwd or REPO)
    seconds = time.perf_counter() - t0
    lines = proc.stderr.splitlines()
    imported_tf = any(ln.startswith("import time:") and ln.rstrip().endswith("| tensorflow") for ln in lines)
    said = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
    return proc.returncode, said, imported_tf, seconds


def refused(args, message, cwd=None):
    rc, said, imported_tf, seconds = tfopt(*args, cwd=cwd)
    assert rc == 2, said
    assert message in said, said
    assert said.startswith("Error: ") and len(said.strip().splitlines()) == 1, said
    assert "Traceback" not in said
    assert not imported_tf, f"tensorflow was imported before refusing {args}"
    assert seconds < 5, seconds


@pytest.mark.parametrize("command", ["prune", "quantize", "export", "cluster", "optimize"])
def test_an_output_under_proc_is_refused_before_any_work(run_dir, command):
    refused([command, run_dir, "--output", "/proc/x"],
            "cannot write the output folder /proc/x: /proc is the kernel's virtual file system, not storage")


def test_report_refuses_an_output_under_proc(run_dir):
    refused(["report", run_dir, "--output", "/proc/x"], "cannot write the output folder /proc/x: /proc is")


def test_a_file_where_the_output_folder_should_be(run_dir, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    refused(["prune", run_dir, "--output", blocker / "sub"],
            f"cannot write the output folder {blocker / 'sub'}: {blocker} is a file, not a folder")
    refused(["optimize", run_dir, "--output", blocker / "sub"],
            f"cannot write the output folder {blocker / 'sub'}: {blocker} is a file, not a folder")


@pytest.mark.parametrize("args, message", [
    (["--max-drop", "nan"], "the accuracy points that may be lost must be a finite number from 0 to 100; got nan"),
    (["--max-drop", "inf"], "must be a finite number from 0 to 100; got inf"),
    (["--max-drop", "150"], "must be a finite number from 0 to 100; got 150.0"),
    (["--max-drop", "-1"], "must be a finite number from 0 to 100; got -1.0"),
    (["--time-budget", "nan"], "time budget: must be a finite duration above zero, e.g. 30m; got 'nan'"),
    (["--time-budget", "-5m"], "time budget: must be a finite duration above zero, e.g. 30m; got '-5m'"),
    (["--time-budget", "soon"], "time budget: expected seconds or a duration such as 30m, 1h, 90s; got 'soon'"),
    (["--max-candidates", "0"], "max candidates (--max-candidates): must be a whole number of at least 1; got 0"),
    (["--epochs", "0"], "epochs (--epochs): must be a whole number of at least 1; got 0"),
    (["--lr", "nan"], "--lr: must be a finite rate above 0 (at most 10); got nan"),
    (["--alpha", "2"], "--alpha: must be a number from 0 to 1; got 2.0"),
])
def test_optimize_refuses_bad_budgets_before_loading_anything(run_dir, args, message):
    refused(["optimize", run_dir, *args], message)


@pytest.mark.parametrize("name, content, what", [
    ("notes.txt", b"just some notes\n", "a text file"),
    ("recipe.yaml", yaml.safe_dump(tiny_recipe_dict()).encode(), "a YAML recipe"),
    ("empty.keras", b"", "empty"),
    ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "an image"),
])
@pytest.mark.parametrize("command", ["prune", "optimize"])
def test_a_file_that_is_not_a_model_is_named_for_what_it_is(tmp_path, command, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    refused([command, path, "--recipe", REPO / "recipes" / "quickstart.yaml"],
            f"{path} is not a model file: it is {what}.")


def test_a_tflite_file_cannot_be_fine_tuned(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x1c\0\0\0TFL3" + b"\0" * 64)
    for command in ("prune", "optimize"):
        refused([command, path, "--recipe", REPO / "recipes" / "quickstart.yaml"],
                f"{path} is a TFLite model (.tflite): TFLite files cannot be fine-tuned or optimized further; give "
                f"the run directory it came from, or its .keras model with --recipe.")


def test_a_run_whose_model_is_not_a_model(run_dir):
    (run_dir / "model.keras").write_text("x\n")
    refused(["optimize", run_dir], f"{run_dir / 'model.keras'} is not a model file: it is a text file; the run "
                                   f"directory {run_dir} is damaged")


def test_a_missing_source(tmp_path):
    refused(["prune", tmp_path / "nowhere"], f"{tmp_path / 'nowhere'} does not exist")
    refused(["report", tmp_path / "nowhere"], f"{tmp_path / 'nowhere'} does not exist")


def test_library_refuses_a_nan_budget_before_any_work():
    from tfopt.errors import TfoptError
    from tfopt.search.engine import optimize

    with pytest.raises(TfoptError, match="finite number from 0 to 100; got nan"):
        optimize(object(), None, max_drop=float("nan"))


def test_a_refused_command_leaves_no_output_folder_behind(run_dir, tmp_path):
    refused(["optimize", run_dir, "--max-drop", "nan", "--output", tmp_path / "new" / "deeper"], "got nan")
    rc, said, imported_tf, _ = tfopt("prune", run_dir, "--output", tmp_path / "new" / "deeper", "--recipe",
                                     tmp_path / "nowhere.yaml")
    assert rc == 2 and "nowhere.yaml: 1 problem(s) in the recipe:\n  recipe file not found" in said
    assert not imported_tf
    assert not (tmp_path / "new").exists()
