"""XNNPACK's sparse float path: does LiteRT take it on this machine?

A MobileNet-style float network built to the XNNPACK delegate's documented conditions for sparse
inference (a 3×3 stride-2 first convolution on 3 channels, 1×1 convolutions with 80% zeros, 3×3
depthwise convolutions, a spatial mean at the end), converted twice with the same weights: stored dense
(``tfopt.tflite.convert(model, "float32")``) and stored sparse (``sparse=True``: DENSIFY ops in the file,
which make the delegate ask XNNPACK for sparse inference). Where the sparse kernels run, the sparse file
is faster; where they do not, both run alike. Three layouts: explicit 1-pixel padding, SAME padding on an
odd size (symmetric) and on an even size. Median latency, the two files in turn over 3 rounds.

Usage:
    .venv/bin/python benchmarks/bench_sparse_path.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sys, numpy as np, tf_keras as keras
from tfopt import tflite

def dw(x, stride, explicit):
    if stride == 2 and explicit:
        x = keras.layers.ZeroPadding2D(1)(x)
        return keras.layers.DepthwiseConv2D(3, strides=2, padding="valid", activation="relu6")(x)
    return keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", activation="relu6")(x)

def block(x, cin, cout, stride, explicit, expand=4):
    h = keras.layers.Conv2D(cin * expand, 1, activation="relu6")(x)
    h = dw(h, stride, explicit)
    h = keras.layers.Conv2D(cout, 1)(h)
    return keras.layers.Add()([x, h]) if stride == 1 and cin == cout else h

def model(size, width, explicit, zeros):
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = keras.layers.ZeroPadding2D(1)(inp) if explicit else inp
    x = keras.layers.Conv2D(width, 3, strides=2, padding="valid" if explicit else "same", activation="relu6")(x)
    for cout, s in ((width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2), (4 * width, 1), (8 * width, 2), (8 * width, 1)):
        x = block(x, x.shape[-1], cout, s, explicit)
    x = keras.layers.Conv2D(16 * width, 1, activation="relu6")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(10)(x)
    m = keras.Model(inp, out)
    rng = np.random.default_rng(1)
    for layer in m.layers:
        if type(layer) is keras.layers.Conv2D and layer.kernel_size == (1, 1):
            w = layer.get_weights()
            layer.set_weights([w[0] * (rng.random(w[0].shape) >= zeros)] + w[1:])
    return m

rows = []
for size, explicit in ((224, True), (225, False), (224, False)):
    m = model(size, 16, explicit, 0.8)
    dense = tflite.convert(m, "float32")
    packed = tflite.convert(m, "float32", sparse=True)
    x = np.random.default_rng(0).random((1, size, size, 3), np.float32)
    lat = {(k, t): [] for k in ("dense", "sparse") for t in (1, 2)}
    for _ in range(3):
        for k, c in (("dense", dense), ("sparse", packed)):
            for t in (1, 2):
                lat[k, t].append(tflite.latency_us(c, x[0], num_threads=t, runs=30, warmup=5, repeats=1)["median_us"])
    med = {k: float(np.median(v)) for k, v in lat.items()}
    from ai_edge_litert.interpreter import Interpreter
    ops = [d["op_name"] for d in Interpreter(model_content=packed)._get_ops_details()]
    diff = np.abs(tflite.predict(dense, x) - tflite.predict(packed, x)).max()
    print(f"{size}x{size}x3, {'explicit 1-pixel padding' if explicit else 'SAME padding'}: dense {med['dense',1]:.0f} / "
          f"{med['dense',2]:.0f} us, sparse-stored {med['sparse',1]:.0f} / {med['sparse',2]:.0f} us (1 / 2 threads): "
          f"{med['dense',1]/med['sparse',1]:.2f}x at 1 thread; {ops.count('DENSIFY')} DENSIFY ops; max |diff| {diff:.1e}",
          flush=True)
