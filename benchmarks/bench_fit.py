"""Core benchmarks: tfopt fit vs a plain tf_keras model.fit, MNIST time to 99%, and every recipe.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py overhead [--recipe R] [--epochs 2 --pairs 3]
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py time-to-99 [--recipe R] [--seeds 0,1,2]
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py pipeline [--recipe R]
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py recipes

Each prints one JSON line per measurement; RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def plain_fit(recipe, epochs):
    """What a user writes by hand: same model, data, batch size and optimizer; no callbacks."""
    import tensorflow as tf
    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.models.builder import build_model

    keras.utils.set_random_seed(recipe.seed)
    s = load_splits(recipe.data, recipe.seed)
    model = build_model(recipe.model, s.input_shape)
    model.compile(keras.optimizers.Adam(recipe.train.lr.initial), "sparse_categorical_crossentropy", ["accuracy"])
    train = tf.data.Dataset.from_tensor_slices((s.x_train, s.y_train)).shuffle(10000, seed=recipe.seed)
    train = train.batch(recipe.train.batch_size)
    aug = recipe.data.augment
    if aug is not None and aug.translate:  # the same augmentation the recipe asks tfopt for
        shift = keras.layers.RandomTranslation(aug.translate, aug.translate, fill_mode="constant", seed=recipe.seed)
        train = train.map(lambda a, b: (shift(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    train = train.prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((s.x_val, s.y_val)).batch(recipe.train.batch_size)
    t0 = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0)
    return time.perf_counter() - t0


def tfopt_fit(recipe, epochs, out):
    """``(training seconds, probe seconds, compile choice)`` of ``tfopt fit``."""
    from tfopt.training.run import fit

    r = recipe.model_copy(deep=True)
    r.train.epochs = epochs
    res = fit(r, output=out, overwrite=True, log=lambda *_: None)
    c = res.metrics["compile"]
    return res.metrics["fit_seconds"], c["probe_seconds"], (f"{c['precision']}, jit={c['jit']}, "
                                                            f"spe={c['steps_per_execution']} ({c['source']})")


def _load(args, extra=()):
    from tfopt.config.recipe import load_recipe

    return load_recipe(args.recipe, ["train.verbose=0", "output.saved_model=false", "output.plot=false",
                                     "output.tensorboard=false", *args.set, *extra])


def overhead(args):
    recipe = _load(args)
    ratios, with_probe = [], []
    with tempfile.TemporaryDirectory() as out:
        # a fresh probe cache: the first tfopt run probes, the later ones reuse its choice, as a user's would
        os.environ["TFOPT_CACHE_DIR"] = os.path.join(out, "cache")
        for i in range(args.pairs):
            plain = plain_fit(recipe, args.epochs)
            ours, probe, choice = tfopt_fit(recipe, args.epochs, out)
            ratios.append(ours / plain)
            with_probe.append((ours + probe) / plain)
            print(json.dumps({"bench": "fit_overhead", "recipe": recipe.name, "pair": i, "plain_s": round(plain, 2),
                              "tfopt_s": round(ours, 2), "probe_s": round(probe, 2), "choice": choice,
                              "ratio": round(ours / plain, 3), "ratio_with_probe": round(with_probe[-1], 3)}),
                  flush=True)
    print(json.dumps({"bench": "fit_overhead", "recipe": recipe.name, "median_ratio": round(statistics.median(ratios), 3),
                      "median_ratio_with_probe": round(statistics.median(with_probe), 3), "epochs": args.epochs,
                      "pairs": args.pairs}), flush=True)


def pipeline(args):
    """Step time of the recipe's model on its real input pipeline against the same steps fed from one
    batch already in memory (no pipeline at all), compiled the same way, in one process."""
    import tensorflow as tf
    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.models.builder import build_model
    from tfopt.training.run import compile_model, datasets

    recipe = _load(args)
    s = load_splits(recipe.data, recipe.seed)
    keras.utils.set_random_seed(recipe.seed)
    # compiled as tfopt fit trains it: many steps per call (float32, XLA off)
    model = compile_model(build_model(recipe.model, s.input_shape), recipe.train, recipe.train.lr.initial,
                          steps_per_execution=args.spe)
    train, _, _ = datasets(recipe, s)
    x, y = next(iter(train))
    fixed = tf.data.Dataset.from_tensors((x, y)).repeat()
    steps = args.steps
    out = {}
    for name, ds in (("pipeline", train.repeat()), ("in-memory batch", fixed)):
        model.fit(ds, steps_per_epoch=2 * args.spe, epochs=1, verbose=0)  # warm-up, tracing
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
            times.append((time.perf_counter() - t0) / steps * 1000)
        out[name] = round(min(times), 3)
    print(json.dumps({"bench": "input_pipeline", "recipe": recipe.name, "steps_per_execution": args.spe,
                      "ms_per_step": out,
                      "pipeline_cost": round(out["pipeline"] / out["in-memory batch"] - 1, 3)}), flush=True)


def reference_bn_cnn(epochs=3):
    """The hand-written reference: a 24k-parameter Conv-BN-ReLU CNN (the quickstart's layers) on MNIST,
    batch 128, Adam with a warm-up then a cosine decay to 0.01 of the peak, plain tf_keras."""
    import tensorflow as tf
    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.config.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", ["data.name=mnist", "data.validation_split=0.0",
                                                               "train.checkpoint.monitor=accuracy"])
    s = load_splits(r.data, r.seed)
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input(s.input_shape)
    h = inp
    for f in (16, 32):
        h = L.ReLU()(L.BatchNormalization()(L.Conv2D(f, 3, padding="same", use_bias=False)(h)))
    h = L.MaxPooling2D()(h)
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 3, padding="same", use_bias=False)(h)))
    h = L.Dropout(0.2)(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, L.Dense(10, activation="softmax")(h))
    steps = epochs * int(np.ceil(len(s.x_train) / 128))
    sched = keras.optimizers.schedules.CosineDecay(0.0, steps - 100, alpha=0.01, warmup_target=0.003,
                                                   warmup_steps=100)
    model.compile(keras.optimizers.Adam(sched), "sparse_categorical_crossentropy", ["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices((s.x_train, s.y_train)).shuffle(10000, seed=0).batch(128)
    t0 = time.perf_counter()
    model.fit(ds.prefetch(tf.data.AUTOTUNE), epochs=epochs, verbose=0)
    seconds = time.perf_counter() - t0
    acc = float(np.mean(model.predict(s.x_test, batch_size=1000, verbose=0).argmax(1) == s.y_test))
    return {"params": model.count_params(), "train_s": round(seconds, 1), "test_accuracy": round(acc, 4)}


def time_to_99(args):
    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.training.run import fit

    for seed in (int(v) for v in args.seeds.split(",")):
        _time_to_99(_load(args, [f"seed={seed}"]), keras, load_splits, fit)
    if args.reference:
        print(json.dumps({"bench": "mnist_reference_bn_cnn", **reference_bn_cnn()}), flush=True)


def _time_to_99(recipe, keras, load_splits, fit):
    s = load_splits(recipe.data, recipe.seed)

    class TestEveryEpoch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0, self.rows, self.paused = time.perf_counter(), [], 0.0

        def on_epoch_end(self, epoch, logs=None):
            t = time.perf_counter()
            train_s = t - self.t0 - self.paused  # evaluation time is not training time
            acc = self.model.evaluate(s.x_test, s.y_test, batch_size=1000, verbose=0)[1]
            self.paused += time.perf_counter() - t
            self.rows.append({"epoch": epoch + 1, "train_s": round(train_s, 1), "test_accuracy": round(acc, 4)})

    cb = TestEveryEpoch()
    with tempfile.TemporaryDirectory() as out:
        fit(recipe, output=out, callbacks=[cb], log=lambda *_: None)
    first = next((r for r in cb.rows if r["test_accuracy"] >= 0.99), None)
    print(json.dumps({"bench": "mnist_time_to_99", "recipe": recipe.name, "seed": recipe.seed, "epochs": cb.rows,
                      "reached": first}), flush=True)


def recipes(args):
    from tfopt.config.recipe import bundled_recipes, load_recipe
    from tfopt.training.run import fit

    with tempfile.TemporaryDirectory() as out:
        for name, path in bundled_recipes(searches=False).items():
            if args.only and name not in args.only:
                continue
            r = load_recipe(path, ["train.verbose=0"])
            t0 = time.perf_counter()
            m = fit(r, output=out, log=lambda *_: None).metrics
            print(json.dumps({"bench": "recipe", "recipe": name, "epochs": m["epochs"],
                              "fit_s": m["fit_seconds"], "wall_s": round(time.perf_counter() - t0, 1),
                              "test_accuracy": round(m["test_accuracy"], 4), "params": m["params"],
                              "macs": m["macs"]}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["overhead", "time-to-99", "pipeline", "recipes"])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "lenet5_mnist.yaml"))
    ap.add_argument("--set", action="append", default=[], help="recipe override (repeatable)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--spe", type=int, default=32, help="pipeline: steps per compiled call")
    ap.add_argument("--reference", action="store_true", help="time-to-99: also the hand-written BN CNN")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    {"overhead": overhead, "time-to-99": time_to_99, "pipeline": pipeline, "recipes": recipes}[a.what](a)
