"""Hostile input: every case refused with one paragraph and exit 2, nothing hangs, nothing
outside the run being written is touched. Each data-loss test keeps a sentinel folder beside
the run and checks it survives."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, tiny_recipe_dict
from tfopt.cli import cli
from tfopt.errors import RecipeError, RunDirError
from tfopt.config.limits import MAX_CHOICES, MAX_DEPTH, MAX_LAYERS, MAX_NODES, MAX_RECIPE_BYTES
from tfopt.config.recipe import validate
from tfopt.rundir import RunDir

QUICKSTART = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())


#: The refusals below come before any work; the bound only catches one that hangs or expands its input, on a
#: machine under any load (validate's speed on the worst inputs is measured by benchmarks/bench_validate.py).
HANG = 60


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, *needles):
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result.output


def problems(data):
    with pytest.raises(RecipeError) as info:
        validate(data, "r.yaml")
    return info.value.problems


def quickstart(**changes):
    data = copy.deepcopy(QUICKSTART)
    for key, value in changes.items():
        node, parts = data, key.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value
    return data


@pytest.fixture
def out(tmp_path):
    """An output folder holding a sentinel run that must survive every test."""
    root = tmp_path / "OUT"
    (root / "sentinel").mkdir(parents=True)
    (root / "sentinel" / "keep.txt").write_text("keep")
    yield root
    assert (root / "sentinel" / "keep.txt").read_text() == "keep"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# -- data loss ------------------------------------------------------------------------


@pytest.mark.parametrize("run_name", [".", "..", "../escaped", "/tmp/absolute-run", "a/b", "", "x\x00y"])
def test_run_name_must_be_one_plain_component(tmp_path, out, run_name):
    recipe = write(tmp_path, yaml.safe_dump(tiny_recipe_dict()))
    # a NUL byte cannot travel in argv: YAML's double-quoted "\0" makes one
    setting = 'output.run_name="x\\0y"' if "\x00" in run_name else \
        f"output.run_name={run_name!r}" if run_name else "output.run_name=''"
    text = refused(run("fit", recipe, "--set", setting, "--output", out, "--overwrite"),
                   *(["NUL"] if "\x00" in run_name else []))
    assert "output.run_name" in text
    assert sorted(p.name for p in out.iterdir()) == ["sentinel"]
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/absolute-run").exists()


def test_rundir_refuses_names_that_leave_their_folder(tmp_path):
    for name in ("..", "a.partial"):
        with pytest.raises(RunDirError, match="plain folder name"):
            RunDir(tmp_path / "OUT" / name)


def test_overwrite_replaces_only_its_run(tmp_path, out, tiny_recipe):
    from tfopt.training.run import fit

    r = tiny_recipe(**{"train.epochs": 1})
    fit(r, output=out, log=lambda *_: None)
    (out / "tiny" / "marker").write_text("old")
    fit(r, output=out, overwrite=True, log=lambda *_: None)
    assert not (out / "tiny" / "marker").exists()
    assert sorted(p.name for p in out.iterdir()) == ["sentinel", "tiny"]


# -- validate: tracebacks and hangs -------------------------------------------------------


@pytest.mark.parametrize("content, needle", [
    ("name: x\n".encode("utf-16"), "UTF-16"),
    (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at line 1"),
    (b"\x00\x01\x02binary", "NUL byte"),
    (b"\x89PNG\r\n\x1a\n....", "is an image"),
    (b"[" * 5000, "nesting"),
    (b"x: " + b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5), f"limit: nesting depth {MAX_DEPTH}"),
    (b"a: &x [*x]\n", "recursive alias"),
    (b"name: x\nmodel: &m {layers: [*m]}\n", "recursive alias"),
    (b"".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else '1, 1, 1, 1, 1, 1, 1, 1, 1'}]\n".encode()
              for i in range(10)), "limit: YAML nodes after alias expansion"),
    (b"name: x\ntrain: {epochs: 3}\nseed: 1\ntrain: {epochs: 5}\n", "the key 'train' appears twice"),
])
def test_validate_refuses_unreadable_files(tmp_path, content, needle):
    started = time.perf_counter()
    refused(run("validate", write(tmp_path, content)), needle)
    assert time.perf_counter() - started < HANG


def test_validate_refuses_files_over_the_size_limit_at_once(tmp_path):
    path = write(tmp_path, b"# " + b"x" * (10 * 1024 * 1024) + b"\nname: x\n")
    started = time.perf_counter()
    refused(run("validate", path), "limit: recipe file size", f"{MAX_RECIPE_BYTES // 1024} KiB")
    assert time.perf_counter() - started < HANG


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_validate_refuses_devices(device):
    refused(run("validate", device), "character device")


def test_validate_refuses_a_folder_and_a_missing_file(tmp_path):
    refused(run("fit", tmp_path), "is a directory")
    refused(run("validate", tmp_path / "missing.yaml"), "recipe file not found")


def test_huge_repeat_and_choice_are_refused_at_once(tmp_path):
    cases = [
        (quickstart(**{"model.layers.0.repeat": 10**9}), "model.layers.0.repeat: 1,000,000,000 copies are over the "
                                                         "limit of 1,000 (limit: layers after repeat)"),
        (quickstart(**{"model.layers": [{"type": "dropout", "rate": 0.1}] * 1001}),
         "model.layers: 1,001 layers are over the limit of 1,000 (limit: layers after repeat)"),
        (quickstart(**{"model.layers.0.repeat": {"tune": "int", "min": 1, "max": 10**9}}), "model.layers.0.repeat"),
        (quickstart(**{"model.layers.0.filters": {"tune": "choice", "values": list(range(1, 100_001))}}),
         "limit: recipe file size"),
        (quickstart(**{"model.layers.0.filters": {"tune": "choice", "values": list(range(1, 20_001))}}),
         "limit: values in one tune choice"),
        (quickstart(**{"model.layers.0.repeat": 600, "model.layers.1.repeat": 600}),
         "limit: layers after repeat"),
    ]
    for data, needle in cases:
        path = write(tmp_path, yaml.safe_dump(data, default_flow_style=True, width=10**9))
        started = time.perf_counter()
        refused(run("validate", path), needle)
        assert time.perf_counter() - started < HANG, needle
    assert MAX_LAYERS == 1000 and MAX_CHOICES == 1000 and MAX_NODES == 100_000


def test_tune_spec_under_a_dotted_key_is_refused(tmp_path):
    data = quickstart(**{"optimize.prune.per_layer": {"conv1.x": {"tune": "float", "min": 0.1, "max": 0.5}}})
    refused(run("validate", write(tmp_path, yaml.safe_dump(data))), "optimize.prune.per_layer.conv1.x", "'.'")


# -- validate catches what fit would crash on ---------------------------------------------


@pytest.mark.parametrize("changes, key, needle", [
    ({"seed": 2**32}, "seed", "4,294,967,295"),
    ({"model.layers.0.name": "bn1"}, "model.layers.0.name", "BatchNorm"),
    ({"model.layers.1.name": "bn1"}, "model.layers.1.name", "'bn1'"),
    ({"model.layers.0.name": "input"}, "model.layers.0.name", "input layer"),
    ({"model.layers.0.name": "cönv"}, "model.layers.0.name", "ASCII"),
    ({"model.layers.0.name": "-conv"}, "model.layers.0.name", "starting with"),
    ({"model.layers.0.dilation_rate": 2, "model.layers.0.strides": 2}, "model.layers.0.dilation_rate", "strides"),
    ({"model.kernel_regularizer": {"l2": float("inf")}}, "model.kernel_regularizer.l2", "finite"),
    ({"train.lr.initial": float("inf")}, "train.lr.initial", "finite"),
    ({"train.batch_size": 1e20}, "train.batch_size", "too large"),
    ({"model.layers.0.kernel_size": 2**63}, "model.layers.0.kernel_size", "too large"),
    ({"model.layers.0.filters": 10**30}, "model.layers.0.filters", "too large"),
    ({"train.metrics": ["accuracy", "accuracy"]}, "train.metrics.1", "listed"),
    ({"model.layers.0.name": "a\x00b"}, "model.layers.0.name", "NUL"),
    ({"output.dir": "out\x00put"}, "output.dir", "NUL"),
    ({"model.layers.0.filters": True}, "model.layers.0.filters", "boolean"),
    ({"train.epochs": False}, "train.epochs", "boolean"),
])
def test_validate_names_the_key(changes, key, needle):
    found = problems(quickstart(**changes))
    assert len(found) == 1, found
    assert found[0][0] == key and needle in found[0][1], found


def test_duplicate_yaml_keys_are_refused(tmp_path):
    original = (REPO / "recipes" / "quickstart.yaml").read_text().rstrip("\n") + "\n"
    first = original.splitlines().index("train:") + 1
    text = original + "train:\n  epochs: 2\n"
    refused(run("validate", write(tmp_path, text)), "the key 'train' appears twice",
            f"lines {first} and {len(original.splitlines()) + 1}")


# -- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, key, needle", [
    ({"model.layers.0.kernel_size": 0}, "model.layers.0.kernel_size", "greater than 0"),
    ({"model.layers.0.kernel_size": [3]}, "model.layers.0.kernel_size", "expected 2 values, got 1"),
    ({"model.layers.0.kernel_size": "big"}, "model.layers.0.kernel_size", "expected an integer or a list"),
    ({"tune": {"objective": 5}}, "tune.objective", "expected a text value or a mapping"),
    ({"train.batch_size": "1e308"}, "train.batch_size", "expected an integer"),
    ({"train.lr.initial": 1e308}, "train.lr.initial", "too large"),
])
def test_messages_carry_no_pydantic_internals_and_count_once(changes, key, needle):
    found = problems(quickstart(**changes))
    assert len(found) == 1, found
    assert found[0][0] == key and needle in found[0][1], found
    for internal in ("constrained-int", "tuple[", ".str", "Unable to parse", "required key is missing"):
        assert internal not in found[0][0] + found[0][1]


def test_dotted_key_at_top_level_says_to_nest_it():
    data = quickstart()
    data["train.epochs"] = 3
    [(key, msg)] = problems(data)
    assert key == "train.epochs" and "nest it" in msg and "train: {epochs: 3}" in msg and "export" not in msg


def test_synthetic_noise_inf_is_a_recipe_problem():
    [(key, msg)] = problems(tiny_recipe_dict(**{"data.noise": float("inf")}))
    assert key == "data.noise" and "finite" in msg


def test_npz_path_pointing_at_yaml(tmp_path):
    from tfopt.data import load_data
    from tfopt.errors import DataError

    r = validate(tiny_recipe_dict(**{"data": {"name": "npz", "path": str(REPO / "recipes" / "quickstart.yaml")}}))
    with pytest.raises(DataError, match="is not an .npz archive") as info:
        load_data(r.data, 0)
    assert "pickle" not in str(info.value)


# -- run directories ---------------------------------------------------------------------

HOLD = """
import sys, time
from tfopt.rundir import RunDir
run = RunDir(sys.argv[1]).open()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_live_run_is_locked_and_its_writer_named(tmp_path, out):
    target = out / "tiny"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        owner = json.loads((out / "tiny.partial" / ".owner.json").read_text())
        assert owner["pid"] == proc.pid
        for flags in ([], ["--overwrite"], ["--resume"]):
            recipe = write(tmp_path, yaml.safe_dump(tiny_recipe_dict()))
            text = refused(run("fit", recipe, "--output", out, *flags), f"process {proc.pid}", "being written")
            assert "interrupted" not in text
        assert (out / "tiny.partial" / ".owner.json").is_file()
    finally:
        proc.kill()
        proc.wait()
    # the writer is gone: its folder is an interrupted run again
    refused(run("fit", write(tmp_path, yaml.safe_dump(tiny_recipe_dict())), "--output", out), "interrupted run")


def test_resume_of_a_complete_run_says_so(tmp_path, out, tiny_recipe):
    from tfopt.training.run import fit

    fit(tiny_recipe(**{"train.epochs": 1}), output=out, log=lambda *_: None)
    text = refused(run("fit", write(tmp_path, yaml.safe_dump(tiny_recipe_dict(**{"train.epochs": 1}))),
                       "--output", out, "--resume"), "is complete")
    assert "--overwrite" in text
    assert not (out / "tiny" / ".lock").exists() and not (out / "tiny" / ".owner.json").exists()


def test_compression_commands_check_their_output_first(tmp_path, out, tiny_recipe):
    from tfopt.training.run import fit

    fit(tiny_recipe(**{"train.epochs": 1}), output=out, log=lambda *_: None)
    (out / "tiny-pruned").mkdir()
    started = time.perf_counter()
    text = refused(run("prune", out / "tiny", "--output", out, "--epochs", 1), "tiny-pruned already exists")
    assert "fine-tuning" not in text and "evaluating" not in text
    (out / "tiny-int8").mkdir()
    refused(run("quantize", out / "tiny", "--output", out, "--mode", "int8"), "tiny-int8 already exists")
    assert time.perf_counter() - started < 60


# -- noise -------------------------------------------------------------------------------


@pytest.mark.slow
def test_native_log_lines_are_hidden_unless_verbose():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    cmd = [str(Path(sys.executable).parent / "tfopt"), "summary", "recipes/quickstart.yaml"]
    quiet = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "conv1" in quiet.stdout
    for noise in ("absl::InitializeLog", "cuda drivers", "oneDNN"):
        assert noise not in quiet.stderr
    loud = subprocess.run(cmd + ["--verbose"], cwd=REPO, capture_output=True, text=True, env=env)
    assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr


@pytest.mark.slow
def test_converter_chatter_is_hidden_unless_verbose(tmp_path):
    from tfopt.config.recipe import validate
    from tfopt.training.run import fit

    fit(validate(tiny_recipe_dict()), output=tmp_path, log=lambda *_: None)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    cmd = [str(Path(sys.executable).parent / "tfopt"), "quantize", str(tmp_path / "tiny"), "--mode", "float16",
           "--output", str(tmp_path / "q")]
    quiet = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == f"{tmp_path / 'q' / 'tiny-float16'}\n"  # the result on stdout
    assert "run written to" in quiet.stderr  # the progress on stderr
    for noise in ("Ignored output_format", "W0000", "I0000",
                  "absl::InitializeLog", "Reading SavedModel"):
        assert noise not in quiet.stderr + quiet.stdout, noise


def test_optimization_commands_name_what_the_folder_lacks(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(run("prune", tmp_path / "empty"), "is an empty folder")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.keras").write_bytes(b"")
    text = refused(run("quantize", run_dir), "recipe.yaml is missing")
    assert "is a model file" not in text
