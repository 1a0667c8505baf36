"""A file of the wrong kind is named for what it is, before any work."""

import subprocess
import sys
import zipfile

import pytest

HDF5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 200_000  # over the recipe size limit, as real models are
TFLITE = b"\x1c\0\0\0TFL3" + b"\0" * 64


@pytest.fixture
def model_files(tmp_path):
    keras = tmp_path / "model.keras"
    with zipfile.ZipFile(keras, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", HDF5)
    (tmp_path / "model.h5").write_bytes(HDF5)
    (tmp_path / "model.tflite").write_bytes(TFLITE)
    return {"keras": keras, "h5": tmp_path / "model.h5", "tflite": tmp_path / "model.tflite"}


@pytest.mark.parametrize("kind, said", [("keras", "a Keras model file (a .keras zip archive)"),
                                        ("h5", "an HDF5 model file (.h5)"),
                                        ("tflite", "a TFLite model (.tflite)")])
def test_a_model_given_as_the_recipe_is_named_for_what_it_is(model_files, kind, said):
    proc = subprocess.run([sys.executable, "-m", "tfopt", "validate", str(model_files[kind])],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"the recipe file is {said}, not a recipe" in proc.stderr
    assert "Traceback" not in proc.stderr and "KiB limit" not in proc.stderr
