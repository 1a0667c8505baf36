"""Which activations an int8 file runs fast on LiteRT's CPU path, and which the XNNPACK delegate leaves
to the built-in kernels.

One small MobileNet-like stack (a stride-2 stem, six 1×1 conv + 3×3 depthwise pairs on 14×14×32,
a mean and a dense head) is built once per activation form, converted to float32 and to int8
(post-training, calibrated on random images), and timed at 1 thread twice in this process: with the
default XNNPACK delegate and with the built-in kernels only. An op XNNPACK takes costs far less
under the delegate than under the built-in kernels; an op it leaves out costs the same under both,
and splits the delegated graph around it. The forms:

- ``relu``: ReLU fused into the convolutions (the reference);
- ``hard_swish``: x·relu6(x+3)/6 from stock layers, which the converter fuses into ``HARD_SWISH``;
- ``x*relu6(x+3)``: the same without the division (``ADD`` with a fused RELU6, then ``MUL``);
- ``x*relu6(x+3), then /6``: the division as a multiply by a constant after it;
- ``relu, read twice``: a ReLU whose input is also read by an Add, so it cannot fuse into the conv
  (a standalone ``RELU``).

Then the bundled ``fashion_mobilenetv3_small`` recipe's architecture (untrained; latency does not
depend on the weights) with its hard swish, and with relu6 in its place.

Usage:
    .venv/bin/python benchmarks/bench_int8_activations.py [--runs 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def stack(act):
    import tf_keras as K

    i = K.Input((28, 28, 1))
    x = K.layers.Conv2D(16, 3, strides=2, padding="same")(i)
    for _ in range(6):
        x = act(K.layers.Conv2D(32, 1)(x))
        x = act(K.layers.DepthwiseConv2D(3, padding="same")(x))
    x = K.layers.GlobalAveragePooling2D()(x)
    return K.Model(i, K.layers.Dense(10)(x))


def forms():
    import tf_keras as K

    L = K.layers

    def relu(x):
        return L.ReLU()(x)

    def gate(x):
        return L.ReLU(6.0)(L.Rescaling(1.0, offset=3.0)(x))

    def hard_swish(x):
        return L.Multiply()([x, L.Rescaling(1 / 6)(gate(x))])

    def no_division(x):
        return L.Multiply()([x, gate(x)])

    def divided_after(x):
        return L.Rescaling(1 / 6)(L.Multiply()([x, gate(x)]))

    def relu_read_twice(x):
        return L.Add()([x, L.ReLU()(x)])

    return {"relu": relu, "hard_swish": hard_swish, "x*relu6(x+3)": no_division,
            "x*relu6(x+3), then /6 (a constant multiply)": divided_after, "relu, read twice": relu_read_twice}


def op_counts(content: bytes) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    names = [d["op_name"] for d in Interpreter(model_content=content)._get_ops_details()]
    return {k: v for k, v in Counter(names).items() if k not in ("QUANTIZE", "DEQUANTIZE")}


def timed(content: bytes, sample, runs: int, builtin: bool) -> float:
    from tfopt import tflite

    it, _ = tflite.interpreter(content, 1, builtin=builtin)
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], tflite._quantize(np.asarray(sample, np.float32)[None], inp))
    for _ in range(20):
        it.invoke()
    best = None
    for _ in range(3):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            it.invoke()
            times.append(time.perf_counter_ns() - t0)
        med = float(np.median(times)) / 1000
        best = med if best is None else min(best, med)
    return best


def measure(model, calib, runs):
    from tfopt import tflite

    out = {}
    for mode in ("float32", "int8"):
        content = tflite.convert(model, mode, calib)
        out[mode] = {"ops": op_counts(content), "xnnpack_us": timed(content, calib[0], runs, False),
                     "builtin_us": timed(content, calib[0], runs, True)}
    return out


def recipe_models():
    from tfopt.config.recipe import load_recipe
    from tfopt.models.builder import build_model
    import tempfile

    text = (Path(__file__).resolve().parents[1] / "recipes" / "fashion_mobilenetv3_small.yaml").read_text()
    for label, t in (("MobileNetV3-Small recipe, hard swish", text),
                     ("MobileNetV3-Small recipe, relu6 in its place", text.replace("activation: hard_swish",
                                                                                   "activation: relu6"))):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(t)
        try:
            recipe = load_recipe(f.name)
        finally:
            os.unlink(f.name)
        yield label, build_model(recipe.model, (28, 28, 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    calib = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    rows = {}
    for label, act in forms().items():
        rows[label] = measure(stack(act), calib, args.runs)
    for label, model in recipe_models():
        rows[label] = measure(model, calib, args.runs)
    ref = rows["relu"]
    print("| model | float32 XNNPACK µs | int8 XNNPACK µs | int8 built-in µs | int8 µs over relu: XNNPACK / built-in "
          "| int8 ops |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        extra = (f"{r['int8']['xnnpack_us'] - ref['int8']['xnnpack_us']:+.0f} / "
                 f"{r['int8']['builtin_us'] - ref['int8']['builtin_us']:+.0f}") if label in forms() else "—"
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["int8"]["ops"].items()))
        print(f"| {label} | {r['float32']['xnnpack_us']:.0f} | {r['int8']['xnnpack_us']:.0f} | "
              f"{r['int8']['builtin_us']:.0f} | {extra} | {ops} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
