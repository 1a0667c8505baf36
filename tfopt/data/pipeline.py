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
    """A tf_keras Sequential of the random layers that need resampling (rotation, zoom), or None.

    Shifts and flips are not here: :func:`shift_and_flip` does them on whole batches, by whole
    pixels, without resampling.
    """
    if aug is None or not (aug.rotate or aug.zoom):
        return None
    import tf_keras

    L = tf_keras.layers
    layers = []
    if aug.rotate:
        layers.append(L.RandomRotation(aug.rotate, fill_mode="constant", seed=seed))
    if aug.zoom:
        layers.append(L.RandomZoom(aug.zoom, fill_mode="constant", seed=seed))
    return tf_keras.Sequential(layers, name="augment")


def shift_and_flip(x, seed, translate: float = 0.0, flip: str = "none"):
    """A batch of images ``x`` shifted by up to ``translate`` of their height and width in whole
    pixels (zeros fill in) and flipped, each image on its own draw; ``seed`` is a stateless seed
    pair, so one seed always gives the same batch. One gather of every output pixel from the
    padded batch, and a select: vectorised (two batched gathers, a one-hot product and
    ``ImageProjectiveTransformV3`` were each 0.3–0.7 ms slower per batch of 128 MNIST images here;
    a resampling ``RandomTranslation`` slower still)."""
    import tensorflow as tf

    return apply_shifts(x, *draw_shifts(tf.shape(x)[0], seed, x.shape[1], x.shape[2], translate, flip),
                        translate=translate, flip=flip)


def shift_margins(h: int, w: int, translate: float) -> tuple[int, int]:
    """The largest shift, in whole pixels, down and across, for ``translate`` (0 when off)."""
    if not translate:
        return 0, 0
    return max(1, int(round(translate * h))), max(1, int(round(translate * w)))


def draw_shifts(b, seed, h: int, w: int, translate: float = 0.0, flip: str = "none"):
    """``(dy, dx, flip_h, flip_v)``: int32 vectors of ``b`` draws from the stateless ``seed`` pair;
    ``dy`` in ``[0, 2·ph]`` (``ph`` from :func:`shift_margins`; ``ph`` is no shift), flips 0 or 1."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, 4)
    ph, pw = shift_margins(h, w, translate)
    if translate:
        dy = tf.random.stateless_uniform([b], seeds[0], 0, 2 * ph + 1, dtype=tf.int32)
        dx = tf.random.stateless_uniform([b], seeds[1], 0, 2 * pw + 1, dtype=tf.int32)
    else:
        dy = dx = tf.zeros([b], tf.int32)

    def coin(on, s):
        return tf.cast(tf.random.stateless_uniform([b], s) < 0.5, tf.int32) if on else tf.zeros([b], tf.int32)

    return (dy, dx, coin(flip in ("horizontal", "both"), seeds[2]), coin(flip in ("vertical", "both"), seeds[3]))


def apply_shifts(x, dy, dx, flip_h, flip_v, *, translate: float = 0.0, flip: str = "both"):
    """The batch ``x`` moved and flipped by the draws of :func:`draw_shifts` (one per image);
    ``flip`` names the flips that can be drawn (the others are not applied)."""
    import tensorflow as tf

    b = tf.shape(x)[0]
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    if translate:
        ph, pw = shift_margins(h, w, translate)
        padded = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
        big_h, big_w = h + 2 * ph, w + 2 * pw
        # the flat index of each output pixel in the padded batch
        index = (tf.range(b)[:, None, None] * (big_h * big_w)
                 + (dy[:, None, None] + tf.range(h)[None, :, None]) * big_w
                 + dx[:, None, None] + tf.range(w)[None, None, :])
        x = tf.reshape(tf.gather(tf.reshape(padded, [-1, c]), tf.reshape(index, [-1])), [b, h, w, c])
    if flip in ("horizontal", "both"):
        x = tf.where(tf.cast(flip_h, tf.bool)[:, None, None, None], tf.reverse(x, [2]), x)
    if flip in ("vertical", "both"):
        x = tf.where(tf.cast(flip_v, tf.bool)[:, None, None, None], tf.reverse(x, [1]), x)
    return x


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 10000,
                  draws: bool = False):
    """Batches of indices into ``n`` images (reshuffled each pass when ``shuffle``), with
    ``draws`` paired with a stateless seed per batch for :func:`shift_and_flip`. Every pipeline
    over whole arrays starts here, so that one seed gives the same batches everywhere."""
    import tensorflow as tf

    ds = tf.data.Dataset.range(n)
    if shuffle:
        ds = ds.shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if draws:
        seeds = tf.data.Dataset.random(seed=seed).batch(2).map(lambda s: tf.cast(s % (2**31), tf.int32))
        ds = tf.data.Dataset.zip((ds, seeds))
    return ds


def make_dataset(x, y, batch_size, *, training=False, seed=0, augment=None, one_hot=False,
                 num_classes=None, shuffle_buffer=10000):
    """A batched, prefetched tf.data pipeline; shuffled and augmented when ``training``.

    The arrays stay whole in memory; the pipeline shuffles and batches *indices* and gathers
    each batch at once, so no per-image work happens in Python or tf.data.
    """
    import tensorflow as tf

    images, labels = tf.constant(x), tf.constant(y)
    shift = augment is not None and training and bool(augment.translate or augment.flip != "none")
    ds = batch_indices(len(x), batch_size, shuffle=training, seed=seed, shuffle_buffer=shuffle_buffer, draws=shift)
    if shift:
        translate, flip = augment.translate, augment.flip
        ds = ds.map(lambda idx, s: (shift_and_flip(tf.gather(images, idx), s, translate, flip),
                                    tf.gather(labels, idx)),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)), num_parallel_calls=tf.data.AUTOTUNE)
    aug = augmenter(augment, seed) if training else None
    if aug is not None:
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    if one_hot:
        ds = ds.map(lambda a, b: (a, tf.one_hot(b, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
