"""Compression on full MNIST with the LeNet-5-style recipe: size, latency and QAT accuracy.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_compress.py [--out benchmarks/out/compress]

Steps, all through tfopt's library (the same code as the CLI):
  1. fit recipes/lenet5_mnist.yaml (the float baseline; model.keras has no optimizer state);
  2. prune with the recipe's optimize.prune (90.5% of kernel weights), fine-tune, strip;
     then int8 post-training quantization;
  3. export the baseline to float32 and int8 TFLite;
  4. QAT on the baseline, int8 TFLite;
  5. tfopt report on all of it (accuracy on the 10,000 test images, gzip -9 sizes, LiteRT latency).
Prints one JSON line with the ratios the compression issue asks for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "compress"))
    ap.add_argument("--qat-epochs", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)

    from tfopt.steps.prune import run_prune
    from tfopt.steps.quantize import run_export, run_quantize
    from tfopt.steps.source import load_source
    from tfopt.config.recipe import load_recipe
    from tfopt.report.report import measure
    from tfopt.training.run import fit

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    recipe = load_recipe(ROOT / "recipes" / "lenet5_mnist.yaml", ["train.verbose=2"])
    base = fit(recipe, output=out, overwrite=True, log=log).run_dir
    pruned, pm = run_prune(load_source(base), {}, output=out, overwrite=True, log=log)
    pruned_int8, _ = run_quantize(load_source(pruned), {"mode": "int8"}, output=out, overwrite=True, log=log)
    exported, _ = run_export(load_source(base), {"tflite": ["float32", "int8"]}, output=out, overwrite=True,
                                      log=log)
    qat, qm = run_quantize(load_source(base), {"mode": "qat", "epochs": args.qat_epochs}, output=out,
                                    overwrite=True, log=log)
    rows = {r.name: r for r in measure([base, exported, pruned, pruned_int8, qat], runs=500, log=log)}
    b = rows[f"{base.name}/model.keras"]
    f32 = rows[f"{exported.name}/model_float32.tflite"]
    i8 = rows[f"{exported.name}/model_int8.tflite"]
    p8 = rows[f"{pruned_int8.name}/model_int8.tflite"]
    q8 = rows[f"{qat.name}/model_int8.tflite"]
    result = {
        "bench": "compress_mnist_lenet5",
        "baseline_accuracy": b.accuracy,
        "pruned_sparsity": round(pm["sparsity"], 4),
        "pruned_int8_accuracy": p8.accuracy,
        "pruned_int8_drop_points": round((b.accuracy - p8.accuracy) * 100, 2),
        "baseline_keras_gzip_bytes": b.size_gzip,
        "pruned_int8_tflite_gzip_bytes": p8.size_gzip,
        "gzip_size_ratio": round(b.size_gzip / p8.size_gzip, 2),
        "float32_param_bytes_over_gzip_tflite": round(4 * b.params / p8.size_gzip, 2),
        "float32_tflite_latency_us": round(f32.latency_1, 1),
        "int8_tflite_latency_us": round(i8.latency_1, 1),
        "int8_over_float32_latency": round(i8.latency_1 / f32.latency_1, 3),
        "pruned_int8_over_float32_latency": round(p8.latency_1 / f32.latency_1, 3),
        "latency_delegate": f32.delegate,
        "qat_float_accuracy": b.accuracy,
        "qat_int8_accuracy": q8.accuracy,
        "qat_gap_points": round((b.accuracy - q8.accuracy) * 100, 2),
        "qat_scheme": qm["scheme"],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
