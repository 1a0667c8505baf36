"""How TFLite int8 files of pruned and clustered models spend their gzip bytes.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_encoding.py scales RUN [RUN ...]
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_encoding.py bound RUN [RUN ...]
    .venv/bin/python benchmarks/bench_encoding.py runs

``scales`` converts each run's model to int8 twice in one process, with one weight scale per
dense unit (TFLite's default) and with one per dense kernel (tfopt's default for clustered
models), and prints raw bytes, gzip bytes and the accuracy of both files on the selection split
(the recipe's held-out part of the training data, what ``tfopt optimize`` judges by) and on the
test split, as JSON lines.

``bound`` reads each run's model (pruned and clustered) and prints, beside its int8 file's gzip
bytes, what an ideal coder would need for its kernels alone: for each kernel, its zero/non-zero
pattern at the entropy of its density (as if the positions were independent) plus each kept
weight's value at the entropy of the kernel's value counts; biases and the file's structure are
left out, so the real file can only be larger.

``runs`` needs no data: a 300×784 int8 kernel (LeNet-300-100's first layer, in TFLite's
unit-by-unit order) with 2% or 4% of its weights kept, drawn from 4 values, kept one by one or
in runs of 2, 4 or 8 consecutive inputs; it prints gzip bits per kept weight.
"""

from __future__ import annotations

import argparse
import gzip
import json


def scales(args):
    from tfopt import tflite
    from tfopt.data.pipeline import load_splits
    from tfopt.steps.quantize import representative
    from tfopt.steps.source import load_source

    for run in args.run:
        src = load_source(run)
        splits = load_splits(src.recipe.data, src.recipe.seed)
        rep = representative(splits.x_train, 500, src.recipe.seed)
        row = {"run": run, "clustered": tflite.shared_dense_values(src.model)}
        for name, per_tensor in (("per_unit", False), ("per_kernel", True)):
            blob = tflite.convert(src.model, "int8", representative=rep, dense_per_tensor=per_tensor)
            row[name] = {**tflite.sizes(blob),
                         "selection_accuracy": round(tflite.accuracy(blob, splits.x_val, splits.y_val), 4),
                         "test_accuracy": round(tflite.accuracy(blob, splits.x_test, splits.y_test), 4)}
        print(json.dumps(row), flush=True)


def _entropy(counts):
    import numpy as np

    p = np.asarray(counts, np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def bound(args):
    import numpy as np

    from tfopt import tflite
    from tfopt.data.pipeline import load_splits
    from tfopt.layer_kinds import prunable_weights
    from tfopt.steps.quantize import representative
    from tfopt.steps.source import load_source

    for run in args.run:
        src = load_source(run)
        splits = load_splits(src.recipe.data, src.recipe.seed)
        rep = representative(splits.x_train, 500, src.recipe.seed)
        blob = tflite.convert(src.model, "int8", representative=rep)
        layers, total_bits = {}, 0.0
        for layer in src.model.layers:
            for w in prunable_weights(layer):
                v = w.numpy().ravel()
                nz = v[v != 0]
                _, counts = np.unique(nz, return_counts=True)
                bits = v.size * _entropy([v.size - nz.size, nz.size]) + nz.size * _entropy(counts)
                total_bits += bits
                layers[layer.name] = {"weights": int(v.size), "nonzero": int(nz.size), "values": int(len(counts)),
                                      "ideal_bytes": round(bits / 8)}
        print(json.dumps({"run": run, "kernels_ideal_bytes": round(total_bits / 8), **tflite.sizes(blob),
                          "test_accuracy": round(tflite.accuracy(blob, splits.x_test, splits.y_test), 4),
                          "layers": layers}), flush=True)


def runs(args):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    values = np.array([-100, -40, 40, 100], np.int8)
    for keep in (0.02, 0.04):
        for run in (1, 2, 4, 8):
            kept = np.repeat(rng.random((300, 784 // run)) < keep, run, axis=1)
            kernel = np.where(kept, rng.choice(values, kept.shape), 0).astype(np.int8)
            bits = 8 * len(gzip.compress(kernel.tobytes(), 9)) / kept.sum()
            print(json.dumps({"kept": keep, "run": run, "nonzero": int(kept.sum()),
                              "gzip_bits_per_nonzero": round(float(bits), 1)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scales")
    s.add_argument("run", nargs="+")
    b = sub.add_parser("bound")
    b.add_argument("run", nargs="+")
    r = sub.add_parser("runs")
    r.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    {"scales": scales, "bound": bound, "runs": runs}[args.cmd](args)


if __name__ == "__main__":
    main()
