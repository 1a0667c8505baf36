"""Each data source, the split and normalization, and the missing-data error."""

import gzip
import shutil

import numpy as np
import pytest

from tfopt.config.data import DATASETS
from tfopt.data.pipeline import load_splits, make_dataset
from tfopt.errors import DataError


def cfg(**kw):
    return DATASETS.get(kw)


def test_digits_split_is_seeded_and_scaled():
    a = load_splits(cfg(name="digits", validation_split=0.1), seed=3)
    b = load_splits(cfg(name="digits", validation_split=0.1), seed=3)
    c = load_splits(cfg(name="digits", validation_split=0.1), seed=4)
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (1294, 144, 359)
    assert a.input_shape == (8, 8, 1) and a.num_classes == 10
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.y_train, c.y_train)
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0


def test_standardize_uses_training_statistics():
    s = load_splits(cfg(name="digits", normalize="standardize"), seed=0)
    assert abs(float(s.x_train.mean())) < 1e-5 and float(s.x_train.std()) == pytest.approx(1.0, rel=1e-4)
    assert s.normalization["method"] == "standardize" and len(s.normalization["mean"]) == 1


def test_synthetic_and_limit():
    s = load_splits(cfg(name="synthetic", samples=100, test_samples=20, shape=[6, 5, 2], classes=3,
                        limit=50, validation_split=0.2), seed=0)
    assert s.x_train.shape == (40, 6, 5, 2) and s.x_val.shape == (10, 6, 5, 2) and s.x_test.shape == (20, 6, 5, 2)
    assert set(np.unique(s.y_train)) <= {0, 1, 2}


def test_npz_source_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=rng.integers(0, 256, (30, 5, 5), dtype=np.uint8), y_train=rng.integers(0, 3, 30),
             x_test=rng.integers(0, 256, (10, 5, 5), dtype=np.uint8), y_test=rng.integers(0, 3, 10))
    s = load_splits(cfg(name="npz", path=str(p), validation_split=0), seed=0)
    assert s.x_train.shape == (30, 5, 5, 1) and s.x_test.shape == (10, 5, 5, 1) and s.x_train.max() <= 1.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match=r"bad.npz: the npz file lacks y_train, x_test, y_test"):
        load_splits(cfg(name="npz", path=str(bad)), seed=0)
    with pytest.raises(DataError, match=r"data.path: npz file '.*nope.npz' does not exist"):
        load_splits(cfg(name="npz", path=str(tmp_path / "nope.npz")), seed=0)


def test_image_dir_source(tmp_path):
    from PIL import Image

    for label, value in (("cat", 30), ("dog", 220)):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.fromarray(np.full((12, 10, 3), value, np.uint8)).save(tmp_path / label / f"{i}.png")
    s = load_splits(cfg(name="image_dir", path=str(tmp_path), image_size=[6, 4], color_mode="rgb",
                        test_split=0.2, validation_split=0), seed=0)
    assert s.x_train.shape == (8, 6, 4, 3) and s.x_test.shape == (2, 6, 4, 3)
    means = {int(y): float(x.mean()) for x, y in zip(s.x_train, s.y_train)}
    assert means[0] == pytest.approx(30 / 255) and means[1] == pytest.approx(220 / 255)


def test_mnist_from_env_dir_is_verified(mnist_dir, monkeypatch):
    monkeypatch.setenv("TFOPT_DATA_DIR", str(mnist_dir))
    s = load_splits(cfg(name="mnist", validation_split=0.05), seed=0)
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (57000, 3000, 10000)
    assert s.input_shape == (28, 28, 1) and s.num_classes == 10


def test_corrupt_idx_file_is_refused(mnist_dir, tmp_path):
    for f in (mnist_dir / "mnist").glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    raw = bytearray(gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz").read())
    raw[100] ^= 1
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: SHA-256 .* does not match the published mnist"):
        load_splits(cfg(name="mnist", path=str(tmp_path)), seed=0)


def test_missing_dataset_names_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("TFOPT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_splits(cfg(name="fashion_mnist", path=str(tmp_path / "nowhere")), seed=0)
    msg = str(info.value)
    assert msg.startswith("fashion_mnist: dataset files not found. Looked in: data.path (")
    for place in ("$TFOPT_DATA_DIR/fashion-mnist", "~/.keras/datasets", "/usr/share/datasets/fashion-mnist",
                  "apt install dataset-fashion-mnist", "tfopt never downloads"):
        assert place in msg


def test_pipeline_batches_one_hot_and_augments():
    x = np.random.default_rng(0).uniform(size=(10, 8, 8, 1)).astype("float32")
    y = np.arange(10, dtype="int32") % 3
    aug = DATASETS.get({"name": "digits", "augment": {"translate": 0.2, "rotate": 0.1, "zoom": 0.1,
                                                      "flip": "horizontal"}}).augment
    ds = make_dataset(x, y, 4, training=True, augment=aug, one_hot=True, num_classes=3, seed=1)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, 8, 8, 1), (4, 8, 8, 1), (2, 8, 8, 1)]
    labels = np.concatenate([b[1] for b in batches])
    assert labels.shape == (10, 3) and labels.sum() == 10
    images = np.concatenate([b[0] for b in batches])
    assert not np.allclose(np.sort(images.ravel()), np.sort(x.ravel()))


def test_shift_and_flip_moves_each_image_by_whole_pixels():
    """Each image is its own copy shifted by at most the translate fraction (zeros fill in), flipped or not."""
    import tensorflow as tf

    from tfopt.data.pipeline import shift_and_flip

    rng = np.random.default_rng(0)
    x = rng.random((16, 10, 12, 2)).astype("float32")
    out = shift_and_flip(tf.constant(x), tf.constant([3, 4]), translate=0.2, flip="horizontal").numpy()
    ph, pw = 2, 2
    padded = np.pad(x, [(0, 0), (ph, ph), (pw, pw), (0, 0)])
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx, f) for dy in range(2 * ph + 1) for dx in range(2 * pw + 1) for f in (False, True)
                 if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(padded[i, dy:dy + 10, dx:dx + 12]))]
        assert found, i  # a whole-pixel shift of its own image, flipped or not
        shifts.add(found[0][:2])
    assert len(shifts) > 3  # images draw their own shifts
