"""Shared fixtures: tiny synthetic data and tiny models; TF threads capped; seeds fixed."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On AVX-512 hosts, oneDNN's graph rewrite fails on some random BatchNorm→tanh architectures of
# the property tests ("Fusion is not implemented: [FusedBatchNorm,Tanh]"), a TensorFlow issue.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = os.environ.get("TFOPT_DATA_DIR")


def python_c(code: str):
    """Run ``python -c code`` in a fresh interpreter at the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="session", autouse=True)
def _tf_threads():
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(2)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test its own compile-probe cache: no test reads another's choice, or the user's."""
    monkeypatch.setenv("TFOPT_CACHE_DIR", str(tmp_path / "tfopt-cache"))


@pytest.fixture(autouse=True)
def _seed():
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    yield
    tf_keras.backend.clear_session()


def tiny_recipe_dict(**overrides):
    """A recipe that trains in about a second on synthetic 8×8 images."""
    data = {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "synthetic", "samples": 192, "test_samples": 64, "shape": [8, 8, 1], "classes": 4,
                 "noise": 0.3, "validation_split": 0.25},
        "model": {"layers": [
            {"type": "conv2d", "filters": 4, "batch_norm": True, "activation": "relu"},
            {"type": "max_pool"},
            {"type": "flatten"},
            {"type": "dense", "units": 4, "activation": "softmax"},
        ]},
        "train": {"epochs": 3, "batch_size": 32, "verbose": 0, "lr": {"initial": 0.01}},
        "output": {"tensorboard": False, "saved_model": False, "plot": False},
    }
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return data


@pytest.fixture
def tiny_recipe():
    from tfopt.config.recipe import validate

    return lambda **kw: validate(tiny_recipe_dict(**kw))


@pytest.fixture
def mnist_dir():
    if not DATA_DIR or not (Path(DATA_DIR) / "mnist").is_dir():
        pytest.skip("MNIST files not found: set TFOPT_DATA_DIR to ../shared/datasets")
    return Path(DATA_DIR)


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of the tiny recipe, trained once per test module."""
    from tfopt.config.recipe import validate
    from tfopt.training.run import fit

    runs = tmp_path_factory.mktemp("runs")
    fit(validate(tiny_recipe_dict(name="tiny")), output=runs, log=quiet)
    return runs / "tiny"


#: A small CNN with a BatchNorm and a hidden dense layer: every step has something to work on.
SMALL_CNN = [
    {"type": "conv2d", "filters": 8, "batch_norm": True, "activation": "relu"},
    {"type": "max_pool"}, {"type": "flatten"},
    {"type": "dense", "units": 16, "activation": "relu"},
    {"type": "dense", "units": 4, "activation": "softmax"},
]
