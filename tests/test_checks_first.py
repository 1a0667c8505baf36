"""Every command checks its arguments and its output folder before importing TensorFlow or doing
any work: one paragraph, exit 2, no traceback, in about a second."""

import json
import subprocess
import sys
import time
import zipfile

import pytest
import yaml

from conftest import REPO, tiny_recipe_dict


def keras_archive(path):
    """A file shaped as a .keras archive (a zip holding config.json); never loaded."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        archive.writestr("metadata.json", "{}")
    return path


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as tfopt fit writes it (its model shaped as a .keras archive; never loaded)."""
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe_dict()))
    keras_archive(run / "model.keras")
    return run


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict()))
    return path


@pytest.fixture
def steps_file(tmp_path):
    """An optimize.yaml as tfopt optimize writes it."""
    path = tmp_path / "optimize.yaml"
    path.write_text(yaml.safe_dump({"optimize": {"steps": [{"prune": {"sparsity": 0.5}}, {"quantize": {}}]}}))
    return path


#: A refusal is quick because it comes before TensorFlow is imported (asserted beside each bound); the bound only
#: catches a refusal that hangs or does real work, on a machine under any load.
HANG = 60


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
    assert seconds < HANG, seconds


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


@pytest.mark.parametrize("args, message", [
    (["fit", "{recipe}", "--output", "/proc/x"], "cannot write the run directory /proc/x/tiny: /proc is the kernel's"),
    (["tune", REPO / "recipes" / "search" / "digits_hyperband.yaml", "--output", "/proc/x"],
     "cannot write the run directory /proc/x/"),
    (["replay", "{run}", "--steps", "{steps}", "--output", "/proc/x"],
     "cannot write the output folder /proc/x: /proc is"),
    (["lr-find", "{recipe}", "--plot", "/proc/x/p.png"], "cannot write --plot /proc/x/p.png: /proc is the kernel's"),
    (["sensitivity", "{run}", "--write", "/proc/x/t.yaml"],
     "cannot write --write /proc/x/t.yaml: /proc is the kernel's"),
    (["lr-find", "{recipe}", "--plot", "{tmp}/nowhere/p.png"], "--plot: the folder {tmp}/nowhere does not exist"),
    (["sensitivity", "{run}", "--write", "{recipe}"], "--write: {recipe} already exists; give a new file name"),
])
def test_every_command_refuses_an_unwritable_output_before_any_work(run_dir, recipe, steps_file, tmp_path, args,
                                                                     message):
    fill = {"run": run_dir, "recipe": recipe, "steps": steps_file, "tmp": tmp_path}
    refused([str(a).format(**fill) for a in args], message.format(**fill))


def test_fit_refuses_a_file_in_the_way_of_its_run_directory(recipe, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    refused(["fit", recipe, "--output", blocker / "sub"],
            f"cannot write the run directory {blocker / 'sub' / 'tiny'}: {blocker} is a file, not a folder")


@pytest.mark.parametrize("args, message", [
    (["prune", "--sparsity", "nan"], "--sparsity: must be a finite number (got nan)"),
    (["prune", "--sparsity", "1.5"], "--sparsity: Input should be less than 1 (got 1.5)"),
    (["prune", "--structured", "--ratio", "inf"], "--ratio: must be a finite number (got inf)"),
    (["prune", "--per-layer", "conv1=2"], "--per-layer: per-layer sparsity must be in [0, 1); got {'conv1': 2.0}"),
    (["cluster", "--clusters", "0"], "--clusters: Input should be greater than or equal to 2 (got 0)"),
    (["quantize", "--representative-samples", "0"], "--representative-samples: Input should be greater than 0 (got 0)"),
    (["export", "--min-agreement-int8", "nan"], "--min-agreement-int8: must be a finite number (got nan)"),
    (["remove-layers", "--analyze", "--max-drop", "nan"],
     "max drop (--max-drop): the accuracy points that may be lost must be a finite number from 0 to 100; got nan"),
    (["remove-layers", "--analyze", "--max-drop", "inf"], "must be a finite number from 0 to 100; got inf"),
    (["remove-layers", "--analyze", "--max-drop", "150"], "must be a finite number from 0 to 100; got 150.0"),
    (["remove-layers", "--analyze", "--max-drop", "-1"], "must be a finite number from 0 to 100; got -1.0"),
    (["sensitivity", "--max-drop", "nan", "--write", "t.yaml"], "must be a finite number from 0 to 100; got nan"),
    (["sensitivity", "--max-drop", "-5", "--write", "t.yaml"], "must be a finite number from 0 to 100; got -5.0"),
    (["sensitivity", "--ratios", "0,2", "--write", "t.yaml"],
     "--ratios: each ratio must be a number above 0 and below 1"),
    (["sensitivity", "--ratios", "half", "--write", "t.yaml"], "--ratios 'half': expected numbers separated by commas"),
])
def test_a_step_setting_out_of_range_is_refused_by_its_flag_before_loading_anything(run_dir, tmp_path, args, message):
    command, *rest = args
    refused([command, run_dir, *[tmp_path / a if a == "t.yaml" else a for a in rest]], message)
    assert not (tmp_path / "t.yaml").exists()


def test_a_setting_the_recipe_gave_is_named_by_its_key_and_one_the_command_line_gave_by_its_flag(run_dir):
    refused(["prune", run_dir, "--set", "optimize.prune.block=4", "--m-by-n", "2:4"],
            "optimize.prune.block: block and m_by_n are two patterns of zeros: choose one (got 4)")
    refused(["prune", run_dir, "--set", "optimize.prune.m_by_n=[2,4]", "--block", "4"],
            "--block: block and m_by_n are two patterns of zeros: choose one (got 4)")


@pytest.mark.parametrize("args, message", [
    (["lr-find", "--min-lr", "nan"], "--min-lr: must be a finite number (got nan)"),
    (["lr-find", "--max-lr", "inf"], "--max-lr: must be a finite number (got inf)"),
    (["lr-find", "--steps", "2"], "--steps: Input should be greater than or equal to 5 (got 2)"),
    (["lr-find", "--min-lr", "1", "--max-lr", "0.1"], "lr-find: need 0 < min_lr < max_lr; got 1.0 and 0.1"),
    (["gradcheck", "--threshold", "nan"], "--threshold: must be a finite number above 0; got nan"),
    (["gradcheck", "--samples", "0"], "--samples: must be a whole number of at least 1; got 0"),
    (["gradcheck", "--entries", "-3"], "--entries: must be a whole number of at least 1; got -3"),
])
def test_a_recipe_command_refuses_bad_numbers_before_building_anything(recipe, args, message):
    command, *rest = args
    refused([command, recipe, *rest], message)


@pytest.mark.parametrize("command", ["prune", "optimize"])
def test_a_teacher_that_is_not_a_model_is_named_for_what_it_is(run_dir, tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("just some notes\n")
    refused([command, run_dir, "--teacher", notes], f"--teacher: {notes} is not a model file: it is a text file.")
    refused([command, run_dir, "--teacher", tmp_path / "nowhere"], f"--teacher: {tmp_path / 'nowhere'} does not exist")
    damaged = tmp_path / "teacher.keras"
    damaged.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    refused([command, run_dir, "--teacher", damaged], f"{damaged} is a damaged Keras model file")


@pytest.mark.parametrize("command", ["prune", "optimize", "replay"])
def test_a_damaged_keras_file_in_a_run_is_named_before_loading(run_dir, steps_file, command):
    (run_dir / "model.keras").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    extra = ["--steps", steps_file] if command == "replay" else []
    refused([command, run_dir, *extra], f"{run_dir / 'model.keras'} is a damaged Keras model file: it cannot be read "
                                        f"as a zip archive (File is not a zip file); the run directory {run_dir} is "
                                        f"damaged")


def test_a_keras_archive_without_its_config_is_damaged(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "no model here")
    refused(["prune", path, "--recipe", REPO / "recipes" / "quickstart.yaml"],
            f"{path} is a damaged Keras model file: it holds no config.json. Give a model file as Keras saved it.")


def test_replay_names_a_steps_file_of_the_wrong_kind(run_dir, tmp_path):
    refused(["replay", run_dir, "--steps", run_dir / "model.keras"],
            f"{run_dir / 'model.keras'} is a Keras model file (a .keras zip archive), not a chain of steps: give the "
            f"optimize.yaml a search wrote, or a recipe with optimize.steps")
    binary = tmp_path / "steps.yaml"
    binary.write_bytes(b"optimize:\n\0\xff\xfe")
    refused(["replay", run_dir, "--steps", binary], f"{binary} holds a NUL byte at offset 10")
    refused(["replay", run_dir, "--steps", run_dir / "recipe.yaml"], "no optimize.steps to replay")


def test_replay_refuses_an_existing_run_before_any_work(run_dir, steps_file):
    (run_dir.parent / "tiny-replayed").mkdir()
    refused(["replay", run_dir, "--steps", steps_file], "tiny-replayed already exists and holds an earlier run")


@pytest.mark.parametrize("args, message", [
    (["--recipe", "{tmp}/nowhere.yaml"], "{tmp}/nowhere.yaml: 1 problem(s) in the recipe:\n  recipe file not found"),
    (["--set", "train.epochs=0"], "train.epochs: Input should be greater than 0 (got 0)"),
])
def test_optimize_checks_its_recipe_and_set_before_importing_tensorflow(run_dir, tmp_path, args, message):
    rc, said, imported_tf, seconds = tfopt("optimize", run_dir, *[a.format(tmp=tmp_path) for a in args])
    assert rc == 2 and message.format(tmp=tmp_path) in said and "Traceback" not in said, said
    assert not imported_tf and seconds < HANG, seconds


def test_optimize_refuses_a_folder_holding_a_search_and_a_resume_of_nothing(run_dir):
    out = run_dir.parent / "tiny-optimized"
    refused(["optimize", run_dir, "--resume"],
            f"--resume: {out} holds no search to resume (no interrupted search was found there); run without "
            f"--resume to start one")
    out.mkdir()
    refused(["optimize", run_dir, "--resume"], "holds no search to resume")
    (out / "candidates.csv").write_text("id\n")
    refused(["optimize", run_dir], f"{out} already holds a search; pass --resume to continue it")


@pytest.mark.parametrize("command", ["remove-layers", "sensitivity"])
def test_budget_was_renamed_max_drop(run_dir, tmp_path, command):
    extra = ["--write", tmp_path / "t.yaml"] if command == "sensitivity" else ["--analyze"]
    refused([command, run_dir, "--budget", "0.5", *extra], "--budget was renamed --max-drop: write --max-drop 0.5")


@pytest.mark.parametrize("command, typo, old", [("cluster", "--protec", "--protect"),
                                                ("sensitivity", "--budgt", "--budget"), ("prune", "--laye", "--layer")])
def test_an_old_name_is_never_suggested(run_dir, command, typo, old):
    rc, said, imported_tf, _ = tfopt(command, run_dir, typo, "1")
    assert rc == 2 and "No such option" in said and typo in said and old not in said, said
    assert not imported_tf
