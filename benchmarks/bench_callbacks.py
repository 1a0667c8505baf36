"""GradientNormMonitor overhead: epoch wall time with the monitor ÷ without, in one process.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_callbacks.py [--pairs 3] [--limit N]

One compiled LeNet-5-style model (recipes/lenet5_mnist.yaml) on MNIST; after a warm-up epoch, each
round fits one epoch without a monitor, one with GradientNormMonitor at its default frequency
(every 100 steps) and one checking every step, in turn, so drift hits all three alike. Each
monitor is new, so its tracing cost is counted. Prints one JSON line per round and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="training samples (default: all)")
    args = ap.parse_args()

    import tf_keras as keras

    from tfopt.callbacks import GradientNormMonitor
    from tfopt.data.pipeline import load_splits
    from tfopt.config.recipe import load_recipe
    from tfopt.training.run import compile_model, datasets

    overrides = [f"data.limit={args.limit}"] if args.limit else []
    recipe = load_recipe(ROOT / "recipes" / "lenet5_mnist.yaml", overrides)
    keras.utils.set_random_seed(0)
    splits = load_splits(recipe.data, recipe.seed)
    from tfopt.models.builder import build_model

    model = compile_model(build_model(recipe.model, splits.input_shape), recipe.train, 1e-3)
    train, _, _ = datasets(recipe, splits)
    probe = (splits.x_train[:64], splits.y_train[:64])
    model.fit(train, epochs=1, verbose=0)  # warm-up: trace the train function once

    def epoch(callbacks):
        t0 = time.perf_counter()
        model.fit(train, epochs=1, verbose=0, callbacks=callbacks)
        return time.perf_counter() - t0

    r_default, r_every = [], []
    steps = int(train.cardinality())
    for i in range(args.pairs):
        base = epoch([])
        default = epoch([GradientNormMonitor(probe, verbose=0)])
        every = epoch([GradientNormMonitor(probe, every_n_steps=1, verbose=0)])
        r_default.append(default / base)
        r_every.append(every / base)
        print(json.dumps({"bench": "grad_monitor_overhead", "round": i, "steps_per_epoch": steps,
                          "plain_s": round(base, 2), "every_100_s": round(default, 2), "every_step_s": round(every, 2),
                          "ratio_default": round(default / base, 3), "ratio_every_step": round(every / base, 3)}),
              flush=True)
    print(json.dumps({"bench": "grad_monitor_overhead", "median_ratio_default": round(statistics.median(r_default), 3),
                      "median_ratio_every_step": round(statistics.median(r_every), 3), "rounds": args.pairs}), flush=True)


if __name__ == "__main__":
    main()
