"""MobileNetV2 (alpha 0.35, 96×96 RGB, random weights): MACs and 1-thread LiteRT latency of the
float32 model, its int8 model and the channel-pruned models (float32 and int8), side by side in one process.

Usage:
    .venv/bin/python benchmarks/bench_mobilenet.py [--kind keras3|tf_keras] [--ratios 0.25,0.5] [--rounds 5]

Every model goes through the public API (``tfopt.prune_channels``, ``tfopt.to_tflite``) as a
user's Keras 3 model would. Latency: median of ``--runs`` single-image invocations, the models
measured in turn for ``--rounds`` rounds (so drift on a shared machine touches all of them alike),
and the median over rounds reported. Random weights are enough for latency and MACs; the int8
files' top-1 agreement with their Keras model is printed but not checked (random outputs are
nearly tied).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(kind: str):
    if kind == "keras3":
        import keras
    else:
        import tf_keras as keras
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["keras3", "tf_keras"], default="keras3")
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import tfopt
    from tfopt.interop import to_tf_keras
    from tfopt.models.stats import model_stats
    from tfopt.tflite import latency_us, predict

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, size=(64, 96, 96, 3)).astype("float32")
    model = build(args.kind)

    def stats(m):
        return model_stats(to_tf_keras(m) if tfopt.model_kind(m) == "keras3" else m)

    variants = {"float32": (model, "float32"), "int8": (model, "int8")}
    for r in (float(v) for v in args.ratios.split(",")):
        log(f"channel pruning at ratio {r}")
        slim = tfopt.prune_channels(model, ratio=r, epochs=0)
        variants[f"channels {r:g}, float32"] = (slim, "float32")
        variants[f"channels {r:g}, int8"] = (slim, "int8")
    blobs, rows = {}, {}
    for name, (m, mode) in variants.items():
        log(f"converting {name}")
        blobs[name] = tfopt.to_tflite(m, mode=mode, data=calib, min_agreement=0.0)
        s = stats(m)
        ref = m.predict(calib[:32], verbose=0).argmax(1)
        rows[name] = {"macs": s["macs"], "params": s["params"], "tflite_bytes": len(blobs[name]),
                      "delegate": latency_us(blobs[name], calib[0], num_threads=1, runs=1)["delegate"],
                      "agreement": float(np.mean(predict(blobs[name], calib[:32]).argmax(1) == ref)), "lat": []}
    for i in range(args.rounds):
        for name, blob in blobs.items():
            rows[name]["lat"].append(latency_us(blob, calib[0], num_threads=1, runs=args.runs)["median_us"])
        log(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{n} {r['lat'][-1]:.0f} µs" for n, r in rows.items()))
    base_lat, base_macs = np.median(rows["float32"]["lat"]), rows["float32"]["macs"]
    print("| model | MACs | × MACs | params | TFLite bytes | 1-thread latency µs | × latency |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        lat = float(np.median(r["lat"]))
        r["latency_us"] = lat
        print(f"| {name} | {r['macs']:,} | {r['macs'] / base_macs:.2f} | {r['params']:,} | {r['tflite_bytes']:,} | "
              f"{lat:.0f} | {lat / base_lat:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
