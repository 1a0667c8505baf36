"""Readers that turn each data source into uint8/float numpy arrays.

Every reader returns ``(x_train, y_train, x_test, y_test, pixel_max)``: images as
``N×H×W×C`` arrays, integer labels, and the value of a white pixel (for ``normalize: scale``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from tfopt.errors import DataError

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the published files.
SHA256 = {
    "mnist": {
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
    },
    "fashion_mnist": {
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    },
}
FOLDER = {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}
DATA_DIR_ENV = "TFOPT_DATA_DIR"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(name: str, path: Path) -> None:
    expected = SHA256[name].get(path.name)
    actual = _sha256(path)
    if expected and actual != expected:
        raise DataError(
            f"{path}: SHA-256 {actual[:16]}… does not match the published {name} file "
            f"({expected[:16]}…); the file is corrupt or not the original. Replace it."
        )


def _read_idx(path: Path, images: bool) -> np.ndarray:
    raw = gzip.open(path).read()
    if images:
        n, h, w = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w, 1)
    return np.frombuffer(raw, np.uint8, offset=8).astype(np.int32)


def candidate_dirs(name: str, path: str | None) -> list[tuple[str, Path | None]]:
    """The places searched for MNIST-style files, in order, with a label for each."""
    folder = FOLDER[name]
    env = os.environ.get(DATA_DIR_ENV)
    keras_dir = Path.home() / ".keras" / "datasets"
    return [
        ("data.path", Path(path).expanduser() if path else None),
        (f"${DATA_DIR_ENV}/{folder}", Path(env) / folder if env else None),
        ("~/.keras/datasets", keras_dir / folder),
        ("~/.keras/datasets (mnist.npz)", keras_dir / "mnist.npz" if name == "mnist" else None),
        ("/usr/share/datasets", Path("/usr/share/datasets") / folder),
    ]


def load_mnist_like(name: str, path: str | None):
    """Load MNIST or Fashion-MNIST from the first place that has all four files."""
    searched = []
    for label, where in candidate_dirs(name, path):
        if where is None:
            searched.append(f"{label} (not set)")
            continue
        searched.append(f"{label} ({where})")
        if where.suffix == ".npz" and where.is_file():
            _verify(name, where)
            with np.load(where) as f:
                return (f["x_train"][..., None], f["y_train"].astype(np.int32),
                        f["x_test"][..., None], f["y_test"].astype(np.int32), 255.0)
        files = {k: where / v for k, v in IDX_FILES.items()}
        if where.is_dir() and all(p.is_file() for p in files.values()):
            for p in files.values():
                _verify(name, p)
            arrays = {k: _read_idx(p, images=k.startswith("x")) for k, p in files.items()}
            return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], 255.0
    raise DataError(
        f"{name}: dataset files not found. Looked in: {'; '.join(searched)}. "
        f"Put the four original IDX files ({', '.join(IDX_FILES.values())}) in a folder and set "
        f"data.path to it, or set {DATA_DIR_ENV} to a folder holding '{FOLDER[name]}/'"
        + (". On Debian, 'apt install dataset-fashion-mnist' installs them" if name == "fashion_mnist" else "")
        + ". tfopt never downloads."
    )


def _split(x, y, fraction, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * fraction)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits(cfg, seed):
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.images.astype(np.float32)[..., None]
    return (*_split(x, bunch.target.astype(np.int32), cfg.test_split, seed), 16.0)


def load_npz(cfg, seed):
    p = Path(cfg.path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path: npz file '{p}' does not exist.")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":
        raise DataError(f"data.path: '{p}' is not an .npz archive (an npz file is a zip archive written by "
                        f"numpy.savez with x_train, y_train, x_test and y_test).")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in IDX_FILES if k not in f.files]
            if missing:
                raise DataError(
                    f"{p}: the npz file lacks {', '.join(missing)}; it must hold x_train, y_train, "
                    f"x_test and y_test (it has {', '.join(f.files) or 'nothing'})."
                )
            arrays = [f[k] for k in IDX_FILES]
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not a readable npz file ({exc}).") from None
    xs = [a[..., None] if a.ndim == 3 else a for a in (arrays[0], arrays[2])]
    for k, a in zip(("x_train", "x_test"), xs):
        if a.ndim != 4:
            raise DataError(f"{p}: {k} has shape {a.shape}; expected N×H×W or N×H×W×C images.")
    pixel_max = 255.0 if xs[0].dtype == np.uint8 else float(max(xs[0].max(), 1.0))
    return xs[0], arrays[1].astype(np.int32).ravel(), xs[1], arrays[3].astype(np.int32).ravel(), pixel_max


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def load_image_dir(cfg, seed):
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: image folder '{root}' does not exist.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root}: needs one sub-folder per class, at least two; found {len(classes)}.")
    from PIL import Image

    mode = "L" if cfg.color_mode == "grayscale" else "RGB"
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(f) as im:
                    im = im.convert(mode).resize(cfg.image_size[::-1])
                    images.append(np.asarray(im, np.uint8).reshape(*cfg.image_size, len(mode)))
                labels.append(label)
    if not images:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in its class folders.")
    return (*_split(np.stack(images), np.array(labels, np.int32), cfg.test_split, seed), 255.0)


def load_synthetic(cfg, seed):
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 1, (cfg.classes, *cfg.shape)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, cfg.classes, n).astype(np.int32)
        x = protos[y] + cfg.noise * rng.standard_normal((n, *cfg.shape)).astype(np.float32)
        return x, y

    return (*draw(cfg.samples), *draw(cfg.test_samples), 1.0)


def read(cfg, seed):
    """Dispatch on ``cfg.name``."""
    if cfg.name in FOLDER:
        return load_mnist_like(cfg.name, cfg.path)
    return {"digits": load_digits, "npz": load_npz, "image_dir": load_image_dir, "synthetic": load_synthetic}[
        cfg.name
    ](cfg, seed)
