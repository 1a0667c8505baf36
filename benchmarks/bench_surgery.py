"""Structured channel pruning on full MNIST: latency and MACs against the float32 baseline.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_surgery.py [--ratio 0.6] [--baseline RUN]

Fits recipes/lenet5_mnist.yaml (or takes --baseline, a finished run of it), removes channels as its
optimize.structured says (or --ratio of every conv and hidden dense layer), fine-tunes, exports float32 and int8
TFLite files of both models, and measures them with tfopt's report code in one process.
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
    ap.add_argument("--ratio", type=float, help="default: the recipe's optimize.structured")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--baseline", help="a finished lenet5_mnist run to start from")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "surgery"))
    args = ap.parse_args()
    out = Path(args.out)

    from tfopt.steps.quantize import run_export
    from tfopt.steps.structured import run_structured
    from tfopt.steps.source import load_source
    from tfopt.config.recipe import load_recipe
    from tfopt.report.report import measure
    from tfopt.training.run import fit

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    if args.baseline:
        base = Path(args.baseline)
    else:
        base = fit(load_recipe(ROOT / "recipes" / "lenet5_mnist.yaml", ["train.verbose=2"]), output=out,
                   overwrite=True, log=log).run_dir
    given = {"ratio": args.ratio, "epochs": args.epochs, "lr": args.lr}
    if args.ratio is not None:
        given["per_layer"] = {}
    pruned, pm = run_structured(load_source(base), given, output=out, overwrite=True, log=log)
    base_x, _ = run_export(load_source(base), {"tflite": ["float32"]}, output=out, overwrite=True, log=log)
    pruned_x, _ = run_export(load_source(pruned), {"tflite": ["float32", "int8"]}, output=out,
                                      overwrite=True, log=log)
    rows = {r.name: r for r in measure([base_x, pruned_x], runs=500, log=log)}
    b = rows[f"{base_x.name}/model_float32.tflite"]
    bk = rows[f"{base_x.name}/model.keras"]
    pf = rows[f"{pruned_x.name}/model_float32.tflite"]
    pi = rows[f"{pruned_x.name}/model_int8.tflite"]
    print(json.dumps({
        "bench": "structured_mnist_lenet5", "settings": {k: v for k, v in given.items() if v is not None},
        "baseline_accuracy": bk.accuracy, "channels": pm["channels"]["kept"],
        "macs_before": pm["macs_before"], "macs_after": pm["macs"], "mac_ratio": round(pm["macs"] / pm["macs_before"], 3),
        "pruned_float32_accuracy": pf.accuracy, "pruned_int8_accuracy": pi.accuracy,
        "drop_points_int8": round((bk.accuracy - pi.accuracy) * 100, 2),
        "drop_points_float32": round((bk.accuracy - pf.accuracy) * 100, 2),
        "baseline_float32_latency_us": round(b.latency_1, 1), "pruned_float32_latency_us": round(pf.latency_1, 1),
        "pruned_int8_latency_us": round(pi.latency_1, 1),
        "pruned_float32_over_baseline": round(pf.latency_1 / b.latency_1, 3),
        "pruned_int8_over_baseline": round(pi.latency_1 / b.latency_1, 3),
    }), flush=True)


if __name__ == "__main__":
    main()
