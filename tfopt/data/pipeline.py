"""Split, normalize and batch: numpy arrays in, tf.data pipelines out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfopt.data import sources
from tfopt.errors import DataError


@dataclass
class Splits:
    """Normalized float32 images and int32 labels for train, validation and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    normalization: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def load_splits(cfg, seed: int = 0) -> Splits:
    """Read a data config, hold out ``validation_split`` (seeded) and normalize.

    The same seed always yields the same split. ``standardize`` takes its statistics from
    the training portion only.
    """
    x_train, y_train, x_test, y_test, pixel_max = sources.read(cfg, seed)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(
            f"{cfg.name}: images and labels differ in number "
            f"(train {len(x_train)} vs {len(y_train)}, test {len(x_test)} vs {len(y_test)})."
        )
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(x_train))
    if cfg.limit:
        order = order[: cfg.limit]
    n_val = int(round(len(order) * cfg.validation_split))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise DataError(f"data: no training samples left after limit={cfg.limit} and "
                        f"validation_split={cfg.validation_split}.")
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_train, y_train = x_train[train_idx], y_train[train_idx]

    x_train, x_val, x_test = (a.astype(np.float32) for a in (x_train, x_val, x_test))
    norm = {"method": cfg.normalize}
    if cfg.normalize == "scale":
        norm["divide_by"] = pixel_max
        x_train, x_val, x_test = (a / np.float32(pixel_max) for a in (x_train, x_val, x_test))
    elif cfg.normalize == "standardize":
        mean = x_train.mean(axis=(0, 1, 2))
        std = x_train.std(axis=(0, 1, 2)) + 1e-7
        norm.update(mean=mean.tolist(), std=std.tolist())
        x_train, x_val, x_test = ((a - mean) / std for a in (x_train, x_val, x_test))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test, num_classes, norm)


def augmenter(aug, seed):
    """A tf_keras Sequential of random preprocessing layers, or None when nothing is on."""
    if aug is None or not aug.any():
        return None
    import tf_keras

    L = tf_keras.layers
    layers = []
    if aug.flip != "none":
        layers.append(L.RandomFlip({"both": "horizontal_and_vertical"}.get(aug.flip, aug.flip), seed=seed))
    if aug.rotate:
        layers.append(L.RandomRotation(aug.rotate, fill_mode="constant", seed=seed))
    if aug.zoom:
        layers.append(L.RandomZoom(aug.zoom, fill_mode="constant", seed=seed))
    if aug.translate:
        layers.append(L.RandomTranslation(aug.translate, aug.translate, fill_mode="constant", seed=seed))
    return tf_keras.Sequential(layers, name="augment")


def make_dataset(x, y, batch_size, *, training=False, seed=0, augment=None, one_hot=False,
                 num_classes=None, shuffle_buffer=10000):
    """A batched, prefetched tf.data pipeline; shuffled and augmented when ``training``."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(min(shuffle_buffer, len(x)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    aug = augmenter(augment, seed) if training else None
    if aug is not None:
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    if one_hot:
        ds = ds.map(lambda a, b: (a, tf.one_hot(b, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
