"""Where int8 pays on this CPU: LiteRT latency of float32 vs int8 TFLite files for single layers
and for three small MNIST-shaped architectures (random weights: latency does not depend on them).

Usage:
    .venv/bin/python benchmarks/bench_int8_layers.py

Each line: median of 300 single-image invocations after 50 warm-up, one thread, default
delegate (XNNPACK), float32 then int8 of the same model, measured in one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    import tf_keras as keras

    from tfopt.tflite import convert, latency_us

    L = keras.layers

    def model(*layers, shape=(28, 28, 1)):
        return keras.Sequential([keras.Input(shape), *layers])

    cases = {
        "conv 5x5 1->16 same (28x28x1)": model(L.Conv2D(16, 5, padding="same", activation="relu")),
        "conv 5x5 1->6 valid (28x28x1)": model(L.Conv2D(6, 5, activation="relu")),
        "conv 3x3 16->32 valid (14x14x16)": model(L.Conv2D(32, 3, activation="relu"), shape=(14, 14, 16)),
        "conv 3x3 32->64 valid (12x12x32)": model(L.Conv2D(64, 3, activation="relu"), shape=(12, 12, 32)),
        "conv 5x5 16->32 valid (14x14x16)": model(L.Conv2D(32, 5, activation="relu"), shape=(14, 14, 16)),
        "dense 800->128": model(L.Dense(128, activation="relu"), shape=(800,)),
        "lenet5_mnist recipe (conv-heavy)": model(
            L.Conv2D(16, 5, padding="same", activation="relu"), L.MaxPool2D(), L.Conv2D(32, 5, activation="relu"),
            L.MaxPool2D(), L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")),
        "strided convs + dense 512 (dense-heavy)": model(
            L.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            L.Conv2D(16, 3, strides=2, padding="same", activation="relu"), L.Flatten(),
            L.Dense(512, activation="relu"), L.Dense(10, activation="softmax")),
    }
    rng = np.random.default_rng(0)
    for name, m in cases.items():
        rep = rng.uniform(0, 1, (100, *m.input_shape[1:])).astype("float32")
        sample = rep[0]
        f32 = latency_us(convert(m, "float32"), sample, 1, runs=300, warmup=50)["median_us"]
        i8 = latency_us(convert(m, "int8", representative=rep), sample, 1, runs=300, warmup=50)["median_us"]
        print(json.dumps({"bench": "int8_vs_float32", "case": name, "params": m.count_params(),
                          "float32_us": round(f32, 1), "int8_us": round(i8, 1), "ratio": round(i8 / f32, 2)}),
              flush=True)


if __name__ == "__main__":
    main()
