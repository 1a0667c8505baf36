"""How TFLite int8 files of pruned and clustered models spend their gzip bytes.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_encoding.py scales RUN [RUN ...]
    .venv/bin/python benchmarks/bench_encoding.py runs

``scales`` converts each run's model to int8 twice in one process, with one weight scale per
dense unit (TFLite's default) and with one per dense kernel (tfopt's default for clustered
models), and prints raw bytes, gzip bytes and test accuracy of both files as JSON lines.

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
            row[name] = {**tflite.sizes(blob), "test_accuracy": round(tflite.accuracy(blob, splits.x_test,
                                                                                   splits.y_test), 4)}
        print(json.dumps(row), flush=True)


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
    r = sub.add_parser("runs")
    r.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    {"scales": scales, "runs": runs}[args.cmd](args)


if __name__ == "__main__":
    main()
