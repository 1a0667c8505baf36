"""Core benchmarks: tfopt fit vs a plain tf_keras model.fit, MNIST time to 99%, and every recipe.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py overhead [--epochs 2 --pairs 2]
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py time-to-99
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_fit.py recipes

Each prints one JSON line per measurement; RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    from tfopt.training.run import fit

    r = recipe.model_copy(deep=True)
    r.train.epochs = epochs
    res = fit(r, output=out, overwrite=True, log=lambda *_: None)
    return res.metrics["fit_seconds"]


def overhead(args):
    from tfopt.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "lenet5_mnist.yaml", ["train.verbose=0", "output.saved_model=false",
                                                                  "output.plot=false"])
    ratios = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.pairs):
            plain = plain_fit(recipe, args.epochs)
            ours = tfopt_fit(recipe, args.epochs, out)
            ratios.append(ours / plain)
            print(json.dumps({"bench": "fit_overhead", "pair": i, "plain_s": round(plain, 2),
                              "tfopt_s": round(ours, 2), "ratio": round(ours / plain, 3)}), flush=True)
    print(json.dumps({"bench": "fit_overhead", "median_ratio": round(statistics.median(ratios), 3),
                      "epochs": args.epochs, "pairs": args.pairs}), flush=True)


def time_to_99(args):
    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.recipe import load_recipe
    from tfopt.training.run import fit

    recipe = load_recipe(ROOT / "recipes" / "lenet5_mnist.yaml", ["train.verbose=0", "output.saved_model=false",
                                                                  "output.plot=false"])
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
    print(json.dumps({"bench": "mnist_time_to_99", "epochs": cb.rows, "reached": first}), flush=True)


def recipes(args):
    from tfopt.recipe import bundled_recipes, load_recipe
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
    ap.add_argument("what", choices=["overhead", "time-to-99", "recipes"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    {"overhead": overhead, "time-to-99": time_to_99, "recipes": recipes}[a.what](a)
