"""Keras 3 models beyond CNNs on real data, through tfopt and, side by side, through TFMOT:

* ``lstm``: an LSTM reading MNIST row by row (28 steps of 28 pixels);
* ``vit``: a small ViT on Fashion-MNIST (4×4 patches, a learned position embedding, attention
  blocks with a feed-forward part);
* ``unet``: a U-Net segmenting MNIST digits (a pixel above half intensity is the digit's class,
  digit + 1; the rest is background 0), scored by mean IoU over the 11 classes.

Usage:
    .venv/bin/python benchmarks/bench_families_real.py [--case lstm vit unet] [--cache DIR]
        [--fine-tune-epochs N] [--allocations erk uniform] [--quick] [--seed N]
        [--variants int8 prune channels tfmot scratch] [--channels-epochs N] [--channels-lr LR]
        [--channels-skip LAYER ...]

For each case, in one process: the Keras 3 float model is trained (or reused from ``--cache``,
default ``benchmarks/.cache/families``), then

* ``tfopt.to_tflite(model, "int8")``: the float model as a full-integer file, and for the ViT and
  the LSTM also with their family's op types in float (``TRANSFORMER_FLOAT_OPS``,
  ``RECURRENT_FLOAT_OPS``; the same for each variant's int8 file);
* ``tfopt.prune`` (80% for the LSTM, 50% for the others; its default ``erk`` allocation and
  ``uniform``), then int8;
* ``tfopt.prune_channels(ratio=0.5)`` (filters, LSTM units, attention heads and feed-forward
  units), then int8;
* TFMOT on the model's tf_keras copy (same weights): ``prune_low_magnitude`` with the same
  sparsity, polynomial schedule over the first half of the same fine-tune, then the converter's
  post-training int8 (500 training images). Layers TFMOT does not prune are left dense and said so.

The float models train with Adam and a cosine decay (LSTM 10 epochs, U-Net 8); the ViT trains 24 epochs on augmented
images (random flip, shifts of up to 2 pixels) with AdamW and a warm-up, then 5 epochs on the plain images (cosine
from 3e-4). Every fine-tune (tfopt or TFMOT) of a case runs the same epochs (6 for the LSTM, 2 for the ViT, 3 for
the U-Net), batch size 128 and Adam at 3e-4, unless ``--channels-epochs``, ``--channels-lr`` and ``--channels-skip``
give ``prune_channels`` its own (a channel cut of a small network needs a fine-tune nearer a training; the ViT's
sees the training's augmentation, then settles as its training did). ``scratch``: the channel-pruned architecture
with fresh weights, trained as the float model was, to tell what the smaller width can reach at all. The metric of a
TFLite file is measured by LiteRT on the whole test set; sparsity is counted from the weights (zeros in every weight
tensor of two or more axes). Latencies: float32 files, median of 200 single-sample runs, one thread, XNNPACK.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPARSITY = {"lstm": 0.8, "vit": 0.5, "unet": 0.5}
TRAIN_EPOCHS = {"lstm": 10, "vit": 24, "unet": 8}
TRAIN_LR = {"lstm": 1e-3, "vit": 1e-3, "unet": 2e-3}
FINE_TUNE_EPOCHS = {"lstm": 6, "vit": 2, "unet": 3}
FINE_TUNE = dict(lr=3e-4, batch_size=128)
# The ViT trains on augmented images (a random horizontal flip and a shift of up to 2 pixels) with AdamW
# (weight decay 0.05) and one epoch of warm-up, then settles a few epochs on the plain images (18 epochs of plain
# Adam gave 87.3% test; 24 augmented epochs alone 87.1%).
AUGMENTED = {"vit"}
WEIGHT_DECAY = {"vit": 0.05}
SETTLE_EPOCHS = {"vit": 5}
SETTLE_LR = 3e-4


def dataset(case, root):
    """``(x, y, x_test, y_test)`` as float32 images in [0, 1] and integer labels (per pixel for unet)."""
    from tfopt.data.sources import load_mnist_like

    name = "fashion_mnist" if case == "vit" else "mnist"
    x, y, xt, yt, scale = load_mnist_like(name, str(Path(root) / ("fashion-mnist" if case == "vit" else "mnist")))
    x, xt = (x / scale).astype("float32"), (xt / scale).astype("float32")
    if case == "lstm":
        return x[..., 0], y, xt[..., 0], yt
    if case == "unet":
        return x, segmentation(x, y), xt, segmentation(xt, yt)
    return x, y, xt, yt


def segmentation(x, y):
    """Per-pixel classes: digit + 1 where the pixel is above half intensity, else 0."""
    return np.where(x[..., 0] > 0.5, (y + 1)[:, None, None], 0).astype("int32")


def build(case, seed=0):
    import keras

    L = keras.layers
    keras.utils.set_random_seed(seed)
    if case == "lstm":
        model = keras.Sequential([keras.Input((28, 28)), L.LSTM(128, name="lstm"),
                                  L.Dense(10, activation="softmax", name="head")], name="lstm_rows")
    elif case == "vit":
        dim, heads, mlp = 64, 4, 128
        inp = keras.Input((28, 28, 1))
        x = L.Reshape((7, 4, 7, 4), name="grid")(inp)
        x = L.Permute((1, 3, 2, 4), name="patches")(x)
        x = L.Reshape((49, 16), name="tokens")(x)
        # patch projection; its bias over (position, channel) is the learned position embedding
        x = L.EinsumDense("abc,cd->abd", output_shape=(49, dim), bias_axes="bd", name="embed")(x)
        for b in range(3):
            h = L.LayerNormalization(epsilon=1e-6, name=f"ln{b}a")(x)
            h = L.MultiHeadAttention(heads, dim // heads, name=f"mha{b}")(h, h)
            x = L.Add(name=f"res{b}a")([x, h])
            h = L.LayerNormalization(epsilon=1e-6, name=f"ln{b}b")(x)
            h = L.Dense(mlp, activation="gelu", name=f"ffn{b}a")(h)
            h = L.Dense(dim, name=f"ffn{b}b")(h)
            x = L.Add(name=f"res{b}b")([x, h])
        x = L.GlobalAveragePooling1D(name="gap")(L.LayerNormalization(epsilon=1e-6, name="ln_out")(x))
        model = keras.Model(inp, L.Dense(10, activation="softmax", name="head")(x), name="vit")
    elif case == "unet":
        def block(x, filters, name):
            for i in "ab":
                x = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}{i}")(x)
                x = L.BatchNormalization(name=f"{name}{i}_bn")(x)
                x = L.ReLU(name=f"{name}{i}_relu")(x)
            return x

        inp = keras.Input((28, 28, 1))
        e1 = block(inp, 8, "enc1")
        e2 = block(L.MaxPooling2D(name="pool1")(e1), 16, "enc2")
        b = block(L.MaxPooling2D(name="pool2")(e2), 32, "mid")
        u2 = L.Conv2DTranspose(16, 2, strides=2, name="up2")(b)
        d2 = block(L.Concatenate(name="cat2")([u2, e2]), 16, "dec2")
        u1 = L.Conv2DTranspose(8, 2, strides=2, name="up1")(d2)
        d1 = block(L.Concatenate(name="cat1")([u1, e1]), 8, "dec1")
        model = keras.Model(inp, L.Conv2D(11, 1, activation="softmax", name="seg")(d1), name="unet")
    else:
        raise SystemExit(f"unknown case {case}")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def metric(case, probs, y) -> float:
    """Top-1 accuracy (%), or mean IoU (%) over the classes present in the labels or predictions."""
    pred = np.argmax(probs, axis=-1)
    if case != "unet":
        return float(100 * np.mean(pred == y))
    k = 11
    confusion = np.bincount(y.reshape(-1) * k + pred.reshape(-1), minlength=k * k).reshape(k, k)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return float(100 * np.mean(inter[union > 0] / union[union > 0]))


def sparsity(model) -> float:
    """Zeros in every weight tensor of two or more axes (kernels, recurrent kernels, embeddings)."""
    ws = [np.asarray(w) for w in model.get_weights() if np.ndim(w) >= 2]
    return float(sum(int(np.sum(w == 0)) for w in ws) / sum(w.size for w in ws))


def augmented(x, y, batch_size=128, shift=2, seed=0):
    """A ``tf.data`` pipeline over ``(x, y)``: reshuffled each epoch, each image flipped left-right at random and
    shifted by up to ``shift`` pixels (zero padding, a random crop back to its size)."""
    import tensorflow as tf

    h, w, c = x.shape[1:]

    def aug(img, label):
        img = tf.image.random_flip_left_right(img)
        img = tf.pad(img, [[shift, shift], [shift, shift], [0, 0]])
        return tf.image.random_crop(img, (h, w, c)), label

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.map(aug, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def settle_epochs(case, quick: bool) -> int:
    """Epochs on the plain images that end an :data:`AUGMENTED` case's training (0 for the others)."""
    return 0 if case not in AUGMENTED else 1 if quick else SETTLE_EPOCHS[case]


def fit_fresh(case, model, x, y, epochs: int, seed: int = 0):
    """``model`` (changed in place) trained from its initial weights by the case's recipe, before any settling:
    Adam with a cosine decay on the plain images, or for an :data:`AUGMENTED` case AdamW with one warm-up epoch on
    :func:`augmented` images."""
    import keras

    steps = int(np.ceil(len(x) / 128))
    if case in AUGMENTED:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, max(1, (epochs - 1) * steps), warmup_target=TRAIN_LR[case], warmup_steps=steps)
        model.compile(keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY[case]),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(augmented(x, y, seed=seed), epochs=epochs, verbose=2)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(TRAIN_LR[case], epochs * steps)
        model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, batch_size=128, epochs=epochs, verbose=2)
    return model


def trained(case, x, y, cache: Path, quick: bool, seed: int = 0):
    """The float model of ``case`` and the seconds its training took (0 when read from ``cache``):
    :func:`fit_fresh`, then for an :data:`AUGMENTED` case :func:`settled` (its augmented stage is cached on its
    own)."""
    import keras

    epochs = 1 if quick else TRAIN_EPOCHS[case]
    suffix = ("-quick" if quick else "") + (f"-seed{seed}" if seed else "")
    settle = settle_epochs(case, quick)
    path = cache / f"{case}-{epochs}-epochs{f'-aug-settle{settle}' if settle else ''}{suffix}.keras"
    if path.exists():
        return keras.saving.load_model(path), 0.0
    first = cache / f"{case}-{epochs}-epochs-aug{suffix}.keras"
    t = time.time()
    if settle and first.exists():
        model = keras.saving.load_model(first)
    else:
        model = fit_fresh(case, build(case, seed), x, y, epochs, seed)
        if settle:
            _save(model, first)
    if settle:
        settled(case, model, x, y, settle)
    seconds = time.time() - t
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    _save(model, path)
    return model, seconds


def settled(case, model, x, y, epochs):
    """``model`` (changed in place) after ``epochs`` epochs on the plain images ``(x, y)``: AdamW, cosine from
    :data:`SETTLE_LR`; the last part of an :data:`AUGMENTED` case's training."""
    import keras

    rate = keras.optimizers.schedules.CosineDecay(SETTLE_LR, epochs * int(np.ceil(len(x) / 128)))
    model.compile(keras.optimizers.AdamW(rate, weight_decay=WEIGHT_DECAY[case]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=2)
    return model


def _save(model, path: Path) -> None:
    """``model`` to ``path``, written under a temporary name first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def tflite_metric(case, content, xt, yt):
    from tfopt.tflite import predict

    return metric(case, predict(content, xt, batch_size=500), yt)


def latency(content, sample):
    from tfopt.tflite import latency_us

    return round(latency_us(content, sample, 1, runs=200, warmup=20, repeats=3)["median_us"], 1)


def int8(model, rep, float_ops=()):
    """``(content, note)``: tfopt's verified int8 file (``float_ops`` kept in float); a file its
    verification refuses by default is made again unchecked so that its metric is still measured,
    and the refusal is the note."""
    import tfopt
    from tfopt.tflite import VerificationFailed

    try:
        return tfopt.to_tflite(model, "int8", data=rep, float_ops=float_ops), ""
    except VerificationFailed as e:
        return (tfopt.to_tflite(model, "int8", data=rep, min_agreement=0.0, min_snr=-1e9, float_ops=float_ops),
                "refused by default: " + " ".join(str(e).split()))


def mixed_int8(case, name, model, rep, sample, record, attempt):
    """The int8 file with the op types of the case's family in float, and its 1-thread latency:
    :data:`tfopt.tflite.TRANSFORMER_FLOAT_OPS` for the ViT, :data:`tfopt.tflite.RECURRENT_FLOAT_OPS`
    for the LSTM."""
    from tfopt.tflite import RECURRENT_FLOAT_OPS, TRANSFORMER_FLOAT_OPS

    ops, what, label = {"vit": (TRANSFORMER_FLOAT_OPS, "LayerNorm, attention, GELU and residual sums", "TRANSFORMER_FLOAT_OPS"),
                        "lstm": (RECURRENT_FLOAT_OPS, "gate and state products and sums",
                                 "RECURRENT_FLOAT_OPS")}.get(case, ((), "", ""))
    if not ops:
        return
    got = attempt(f"{name}, {what} in float", lambda: int8(model, rep, ops))
    if got is not None:
        record(f"{name} (float_ops={label})", model, got[0], got[1], {"latency_us_1t": latency(got[0], sample)})


def tfmot_prune(case, model, x, y, target, epochs):
    """TFMOT's pruning on the tf_keras copy: ``(pruned model, note)``."""
    import tf_keras

    from tfopt.interop import import_tfmot, to_tf_keras

    tfmot = import_tfmot()
    sp = tfmot.sparsity.keras
    copy = to_tf_keras(model)
    steps = epochs * int(np.ceil(len(x) / FINE_TUNE["batch_size"]))
    schedule = sp.PolynomialDecay(0.0, target, begin_step=0, end_step=steps // 2, frequency=max(1, steps // 40))
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    skipped = []

    def wrap(layer):
        if PruneRegistry.supports(layer) and layer.weights:
            return sp.prune_low_magnitude(layer, pruning_schedule=schedule)
        if layer.weights and not isinstance(layer, tf_keras.layers.BatchNormalization) and \
                not isinstance(layer, tf_keras.layers.LayerNormalization):
            skipped.append(f"{layer.name} ({type(layer).__name__})")
        return layer

    wrapped = tf_keras.models.clone_model(copy, clone_function=wrap)
    for a, b in zip(wrapped.layers, copy.layers):
        (a.layer if hasattr(a, "pruning_schedule") else a).set_weights(b.get_weights())
    wrapped.compile(tf_keras.optimizers.Adam(FINE_TUNE["lr"]), "sparse_categorical_crossentropy")
    wrapped.fit(x, y, batch_size=FINE_TUNE["batch_size"], epochs=epochs, verbose=0,
                callbacks=[sp.UpdatePruningStep()])
    note = "all weights TFMOT prunes" if not skipped else "left dense by TFMOT: " + ", ".join(skipped)
    return sp.strip_pruning(wrapped), note


def run_case(case, args):
    import tfopt
    from tfopt.tflite import convert

    x, y, xt, yt = dataset(case, args.data)
    if args.quick:
        x, y, xt, yt = x[:3000], y[:3000], xt[:1000], yt[:1000]
    model, seconds = trained(case, x, y, Path(args.cache), args.quick, args.seed)
    rep = x[np.random.default_rng(0).permutation(len(x))[:500]]
    sample = xt[0]
    epochs = args.fine_tune_epochs or FINE_TUNE_EPOCHS[case]
    ft = dict(FINE_TUNE, epochs=epochs)
    rows = []

    def record(name, keras_model, content=None, note="", extra=None):
        row = {"bench": "families_real", "case": case, "variant": name,
               "keras_metric": round(metric(case, keras_model.predict(xt, batch_size=500, verbose=0), yt), 2)
               if keras_model is not None else None,
               "tflite_metric": round(tflite_metric(case, content, xt, yt), 2) if content is not None else None,
               "tflite_bytes": len(content) if content is not None else None,
               "params": int(keras_model.count_params()) if keras_model is not None else None,
               "sparsity": round(sparsity(keras_model), 3) if keras_model is not None else None,
               "note": note, **(extra or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def attempt(name, fn):
        t = time.time()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001  (a refusal or failure is a result to record)
            row = {"bench": "families_real", "case": case, "variant": name,
                   "failed": f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            return None
        print(json.dumps({"variant": name, "seconds": round(time.time() - t, 1)}), flush=True)
        return out

    f32 = tfopt.to_tflite(model, "float32", data=xt[:500])
    base = record("float", model, f32, f"trained {seconds:.0f} s" if seconds else "reused from the cache",
                  {"latency_us_1t": latency(f32, sample)})
    got = attempt("tfopt int8", lambda: int8(model, rep)) if "int8" in args.variants else None
    if got is not None:
        record("tfopt int8", None, got[0], got[1], {"latency_us_1t": latency(got[0], sample)})
        mixed_int8(case, "tfopt int8", model, rep, sample, record, attempt)

    s = SPARSITY[case]
    for allocation in args.allocations if "prune" in args.variants else ():
        label = f"tfopt prune {s:.0%} ({allocation})"
        pruned = attempt(label, lambda: tfopt.prune(model, (x, y), sparsity=s, allocation=allocation, **ft))
        if pruned is not None:
            content, note = attempt("int8", lambda: int8(pruned, rep)) or (None, "int8 failed")
            record(f"{label} + int8", pruned, content, note)
            mixed_int8(case, f"{label} + int8", pruned, rep, sample, record, attempt)

    cft = dict(ft, epochs=args.channels_epochs or epochs, lr=args.channels_lr or ft["lr"])
    skip = args.channels_skip or []
    skipped = f" (skip {', '.join(skip)})" if skip else ""
    label = f"tfopt prune_channels 0.5{skipped}, {cft['epochs']} epochs at {cft['lr']:g}"
    cdata = (x, y)
    settle = settle_epochs(case, args.quick)
    if settle:
        cdata = augmented(x, y, cft.pop("batch_size"), seed=args.seed)
        label += f" on augmented images, then {settle} on the plain ones as in training"
    smaller = attempt(label, lambda: tfopt.prune_channels(model, cdata, ratio=0.5, skip=skip, **cft)) \
        if "channels" in args.variants else None
    if smaller is not None and settle:
        smaller = settled(case, smaller, x, y, settle)
    if smaller is not None:
        f32s = tfopt.to_tflite(smaller, "float32", data=xt[:500])
        content, note = attempt("int8", lambda: int8(smaller, rep)) or (None, "int8 failed")
        record(f"{label} + int8", smaller, content, note,
               extra={"float_latency_us_1t": latency(f32s, sample), "float_latency_us_1t_before": latency(f32, sample),
                      "float_tflite_metric": round(tflite_metric(case, f32s, xt, yt), 2)})
        mixed_int8(case, f"{label} + int8", smaller, rep, sample, record, attempt)

    if "scratch" in args.variants:
        import keras

        shape = tfopt.prune_channels(model, ratio=0.5, skip=skip, epochs=0)
        epochs_f = 1 if args.quick else TRAIN_EPOCHS[case]
        t = time.time()
        # the same layers, fresh initial weights, the float model's recipe
        fresh = fit_fresh(case, keras.models.clone_model(shape), x, y, epochs_f, args.seed)
        if settle:
            settled(case, fresh, x, y, settle)
        record(f"the same architecture from scratch, {epochs_f} epochs", fresh,
               note=f"trained {time.time() - t:.0f} s as the float model was")

    tm = attempt(f"TFMOT prune {s:.0%}", lambda: tfmot_prune(case, model, x, y, s, epochs)) \
        if "tfmot" in args.variants else None
    if tm is not None:
        tk, note = tm
        content = attempt("TFMOT int8", lambda: convert(tk, "int8", representative=rep))
        record(f"TFMOT prune {s:.0%} + int8", tk, content, note)
    return base, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="+", default=["lstm", "vit", "unet"], choices=["lstm", "vit", "unet"])
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "families"))
    parser.add_argument("--data", default=os.environ.get("TFOPT_DATA_DIR", str(ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--fine-tune-epochs", type=int, default=None,
                        help="epochs of every fine-tune (default: 6 for lstm, 2 for vit, 3 for unet)")
    parser.add_argument("--allocations", nargs="+", default=["erk", "uniform"], choices=["erk", "er", "uniform"],
                        help="tfopt.prune's allocations to run")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the float model's initial weights and augmentation (cached per seed)")
    parser.add_argument("--quick", action="store_true", help="3000 training images, one epoch: a smoke run")
    parser.add_argument("--variants", nargs="+", default=["int8", "prune", "channels", "tfmot"],
                        choices=["int8", "prune", "channels", "tfmot", "scratch"],
                        help="what to run besides the float model")
    parser.add_argument("--channels-epochs", type=int, default=None, help="prune_channels' fine-tune epochs")
    parser.add_argument("--channels-lr", type=float, default=None, help="prune_channels' fine-tune peak rate")
    parser.add_argument("--channels-skip", nargs="+", default=None, help="layers whose channels prune_channels keeps")
    args = parser.parse_args()
    for case in args.case:
        run_case(case, args)


if __name__ == "__main__":
    main()
