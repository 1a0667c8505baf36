"""Shipped architectures on Fashion-MNIST: tfopt against TFMOT's documented pipelines, side by side.

For each bundled recipe (``fashion_mobilenetv2``, ``fashion_mobilenetv3_small``, ``fashion_resnet18``)
one run of this script:

1. trains it with ``tfopt fit`` (or reuses the run under ``--cache``) and records the wall time;
2. measures the float32 TFLite file: full test-set accuracy, raw and gzip bytes, 1- and 2-thread
   LiteRT latency;
3. runs TFMOT's documented pipelines on the same model: 50% magnitude pruning
   (``prune_low_magnitude``, polynomial decay, ``--tfmot-epochs`` of fine-tuning, ``strip_pruning``)
   then post-training int8; and quantization-aware training (``quantize_model``, the same epochs)
   to int8. Where TFMOT refuses the whole model (a layer outside its registry, such as the
   Rescaling of a hard-swish), its documented pattern for such models is used instead: the
   supported layers pruned or annotated through ``clone_model``, the rest left as they are (the
   QAT file's converter calibrates them from a representative set); the note says so. A pipeline
   that still fails is recorded with its error;
4. runs ``tfopt optimize --target latency`` and ``--target size`` (``--max-drop``,
   ``--time-budget``) as a user would, and measures the chosen files here, on the full test set;
5. measures XNNPACK's sparse float path: the model's 1×1 convolutions pruned to ``--sparse-share``
   zeros, stored dense and stored sparse (DENSIFY ops), same weights, 1- and 2-thread latency, and
   whether the graph meets the delegate's documented conditions for sparse inference.

Every file is measured in this process, in turn, over ``--rounds`` rounds (the median kept), so
drift on a shared machine touches all of them alike. Figures go to ``--json`` and to stdout as a
Markdown table.

Usage:
    .venv/bin/python benchmarks/bench_real_arch.py [--models mobilenetv2,mobilenetv3_small,resnet18]
        [--time-budget 40m] [--searches latency,size] [--tfmot-epochs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TFOPT = [sys.executable, "-m", "tfopt"]
MODELS = ("mobilenetv2", "mobilenetv3_small", "resnet18")
#: XNNPACK's sparse inference needs at least this share of zeros in the 1×1 convolutions.
XNNPACK_SPARSE_SHARE = 2 / 3


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def trained(name: str, cache: Path) -> tuple[Path, float | None]:
    """The run directory of ``recipes/fashion_<name>.yaml`` and its training wall time (None when reused)."""
    run = cache / f"fashion_{name}"
    if (run / "model.keras").is_file():
        return run, None
    t0 = time.perf_counter()
    subprocess.run(TFOPT + ["fit", str(ROOT / "recipes" / f"fashion_{name}.yaml"), "--output", str(cache)], check=True)
    seconds = time.perf_counter() - t0
    (run / "bench_fit_seconds.txt").write_text(f"{seconds:.1f}\n")
    return run, seconds


def sizes(content: bytes) -> dict:
    return {"raw_bytes": len(content), "gzip_bytes": len(gzip.compress(content, 9))}


def accuracy(content: bytes, x, y) -> float:
    from tfopt.tflite import predict

    return float(np.mean(np.argmax(predict(content, x, batch_size=500), -1) == y))


def representative(x):
    def gen():
        for i in range(0, 500, 1):
            yield [x[i:i + 1].astype(np.float32)]
    return gen


def ptq_int8(model, x) -> bytes:
    """TFMOT's documented post-training step: full-integer conversion with a representative dataset."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative(x)
    return conv.convert()


def tfmot_pruned_int8(model, train, x_calib, epochs: int, batch_size: int):
    """50% magnitude pruning as TFMOT's guide does it, fine-tuned, stripped, then int8."""
    import tf_keras

    from tfopt.interop import import_tfmot

    sp = import_tfmot().sparsity.keras
    steps = epochs * int(np.ceil(len(train[0]) / batch_size))
    schedule = sp.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=max(1, steps // 2), frequency=max(1, steps // 40))
    how = "whole model"
    try:
        pruned = sp.prune_low_magnitude(model, pruning_schedule=schedule)
    except ValueError as exc:
        # TFMOT's guide for a model with a layer its registry refuses: prune the layers it supports
        from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

        log(f"    whole model refused ({' '.join(str(exc).split())[:120]}...); pruning the supported layers")
        pruned = tf_keras.models.clone_model(
            model, clone_function=lambda layer: sp.prune_low_magnitude(layer, pruning_schedule=schedule)
            if PruneRegistry.supports(layer) and layer.weights else layer)
        how = "TFMOT's prune-some-layers pattern: the whole model was refused"
    pruned.compile(tf_keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    pruned.fit(*train, batch_size=batch_size, epochs=epochs, verbose=2, callbacks=[sp.UpdatePruningStep()])
    return ptq_int8(sp.strip_pruning(pruned), x_calib), how


def tfmot_qat_int8(model, train, x_calib, epochs: int, batch_size: int):
    """Quantization-aware training as TFMOT's guide does it: ``quantize_model``, fine-tune, convert."""
    import tensorflow as tf
    import tf_keras

    from tfopt.interop import import_tfmot

    qk = import_tfmot().quantization.keras
    conv_args, how = {}, "whole model"
    try:
        q = qk.quantize_model(model)
    except RuntimeError as exc:
        # TFMOT's guide for a model with a layer its 8-bit scheme refuses: annotate the layers it
        # supports, quantize_apply; the converter calibrates the rest from a representative set
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry \
            import Default8BitQuantizeRegistry

        log(f"    whole model refused ({' '.join(str(exc).split())[:120]}...); quantizing the supported layers")
        registry = Default8BitQuantizeRegistry()
        annotated = tf_keras.models.clone_model(
            model, clone_function=lambda layer: qk.quantize_annotate_layer(layer) if registry.supports(layer) else layer)
        q = qk.quantize_apply(annotated)
        conv_args["representative_dataset"] = representative(x_calib)
        how = "TFMOT's quantize-some-layers pattern (the rest calibrated by the converter): the whole model was refused"
    q.compile(tf_keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    q.fit(*train, batch_size=batch_size, epochs=epochs, verbose=2)
    conv = tf.lite.TFLiteConverter.from_keras_model(q)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    for key, value in conv_args.items():
        setattr(conv, key, value)
    return conv.convert(), how


def searched(run: Path, target: str, max_drop: float, budget: str, out: Path) -> tuple[dict, bytes, float]:
    """``tfopt optimize`` on ``run`` as a user runs it: its JSON result, the chosen file, wall seconds."""
    folder = out / f"{run.name}-optimized"
    t0 = time.perf_counter()
    proc = subprocess.run(TFOPT + ["optimize", str(run), "--target", target, "--max-drop", str(max_drop),
                                   "--time-budget", budget, "--output", str(out), "--json"]
                          + (["--resume"] if folder.is_dir() and any(folder.iterdir()) else []),
                          check=True, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    result = json.loads(proc.stdout)
    chosen = folder / "chosen"
    files = [chosen / "model_float32.tflite", chosen / "model_int8.tflite"]
    path = files[0] if files[0].is_file() else files[1]
    return result, path.read_bytes(), seconds


def ops(content: bytes) -> list[str]:
    """The op names of a TFLite file, in order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    return [d["op_name"] for d in it._get_ops_details()]


def sparse_conditions(model) -> list[str]:
    """Which of XNNPACK's documented conditions for sparse inference the float graph misses."""
    import tf_keras

    convs = [layer for layer in model.layers if type(layer) is tf_keras.layers.Conv2D]
    missed = []
    if convs:
        first = convs[0]
        if first.kernel_size != (3, 3) or first.strides != (2, 2) or first.input.shape[-1] != 3:
            missed.append(f"the first convolution ({first.name}) is {first.kernel_size[0]}×{first.kernel_size[1]}, "
                          f"stride {first.strides[0]}, on {first.input.shape[-1]} channel(s); the sparse subgraph "
                          f"starts at a 3×3 stride-2 convolution on 3 channels")
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.DepthwiseConv2D) and layer.kernel_size not in ((3, 3), (5, 5)):
            missed.append(f"{layer.name}: a {layer.kernel_size} depthwise kernel")
        if type(layer) is tf_keras.layers.Conv2D and layer.kernel_size not in ((1, 1),) and layer is not convs[0]:
            missed.append(f"{layer.name}: a {layer.kernel_size[0]}×{layer.kernel_size[1]} full convolution")
    return missed


def pointwise_pruned(model, train, share: float, epochs: int, batch_size: int):
    """The model with its 1×1 convolutions pruned to ``share`` zeros (tfopt's prune, those layers only)."""
    import tf_keras

    import tfopt

    pointwise = [layer.name for layer in model.layers
                 if type(layer) is tf_keras.layers.Conv2D and layer.kernel_size == (1, 1)]
    if not pointwise:
        return None, []
    from tfopt.search.measure import prunable_layers

    others = [n for n in prunable_layers(model) if n not in pointwise]
    pruned = tfopt.prune(model, train, sparsity=share, per_layer=dict.fromkeys(pointwise, share), skip=others,
                         epochs=epochs, batch_size=batch_size)
    return pruned, pointwise


def measure_latency(files: dict, sample, rounds: int) -> dict:
    """``{name: {1: µs, 2: µs}}``: each file's median 1- and 2-thread latency, files in turn over rounds."""
    from tfopt.tflite import latency_us

    got = {name: {1: [], 2: []} for name in files}
    for _ in range(rounds):
        for name, content in files.items():
            for threads in (1, 2):
                got[name][threads].append(latency_us(content, sample, threads, runs=100, warmup=10,
                                                     repeats=1)["median_us"])
    return {name: {t: float(np.median(v)) for t, v in per.items()} for name, per in got.items()}


def run_model(name: str, args) -> dict:
    from tfopt.data.pipeline import load_splits
    from tfopt.steps.source import load_source
    from tfopt.tflite import convert

    cache = Path(args.cache)
    run, fit_seconds = trained(name, cache)
    if fit_seconds is None and (run / "bench_fit_seconds.txt").is_file():
        fit_seconds = float((run / "bench_fit_seconds.txt").read_text())
    src = load_source(run)
    r = src.recipe
    splits = load_splits(r.data, r.seed)
    train = (splits.x_train, splits.y_train)
    xt, yt = splits.x_test, splits.y_test
    sample = xt[0]
    batch = r.train.batch_size
    rec = {"model": name, "fit_seconds": fit_seconds, "files": {}, "notes": {}}
    files = {"float32": convert(src.model, "float32")}

    def attempt(label, make):
        log(f"[{name}] {label}")
        t0 = time.perf_counter()
        try:
            made = make()
            files[label], how = made if isinstance(made, tuple) else (made, None)
            rec["notes"][label] = f"{time.perf_counter() - t0:.0f} s" + (f"; {how}" if how else "")
        except Exception as exc:  # a refused pipeline is a result
            rec["notes"][label] = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log(f"[{name}] {label}: {rec['notes'][label]}")

    from tfopt.interop import to_tf_keras

    def fresh():
        import tf_keras

        m = tf_keras.models.clone_model(src.model)
        m.set_weights(src.model.get_weights())
        return to_tf_keras(m)

    if "tfmot" in args.parts:
        attempt("TFMOT prune 50% + int8", lambda: tfmot_pruned_int8(fresh(), train, train[0],
                                                                      args.tfmot_epochs, batch))
        attempt("TFMOT QAT int8", lambda: tfmot_qat_int8(fresh(), train, train[0], args.tfmot_epochs, batch))
    if "sparse" in args.parts:
        pruned, pointwise = pointwise_pruned(src.model, train, args.sparse_share, args.tfmot_epochs, batch)
        if pruned is not None:
            files["float32, 1×1 convs pruned, dense storage"] = convert(pruned, "float32")
            packed = convert(pruned, "float32", sparse=True)
            files["float32, 1×1 convs pruned, sparse storage"] = packed
            rec["sparse"] = {"pointwise_layers": len(pointwise), "share": args.sparse_share,
                             "densify_ops": ops(packed).count("DENSIFY"),
                             "missed_conditions": sparse_conditions(src.model)}
    out = cache / "searches"
    for target in args.searches:
        label = f"tfopt optimize --target {target}"

        def go(target=target):
            result, content, seconds = searched(run, target, args.max_drop, args.time_budget, out / target)
            rec.setdefault("searches", {})[target] = {"seconds": seconds, "chosen": result.get("chosen"),
                                                         "confirmation": result.get("confirmation")}
            return content
        attempt(label, go)
    lat = measure_latency(files, sample, args.rounds)
    ref = files["float32"]
    for label, content in files.items():
        acc = accuracy(content, xt, yt)
        rec["files"][label] = {**sizes(content), "test_accuracy": acc,
                               "latency_us_1t": lat[label][1], "latency_us_2t": lat[label][2],
                               "latency_vs_float_1t": lat[label][1] / lat["float32"][1],
                               "gzip_vs_float": sizes(ref)["gzip_bytes"] / sizes(content)["gzip_bytes"]}
        log(f"[{name}] {label}: {acc:.2%}, {rec['files'][label]['gzip_bytes']:,} B gzip, "
            f"{lat[label][1]:.0f}/{lat[label][2]:.0f} µs")
    return rec


def table(recs) -> str:
    lines = ["| model | file | test acc. | drop (pt) | raw B | gzip B | gzip × | 1-thread µs | × float | 2-thread µs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rec in recs:
        base = rec["files"]["float32"]["test_accuracy"]
        for label, f in rec["files"].items():
            lines.append(f"| {rec['model']} | {label} | {f['test_accuracy']:.2%} | {(base - f['test_accuracy']) * 100:+.2f} | "
                         f"{f['raw_bytes']:,} | {f['gzip_bytes']:,} | {f['gzip_vs_float']:.1f} | "
                         f"{f['latency_us_1t']:.0f} | {f['latency_vs_float_1t']:.2f} | {f['latency_us_2t']:.0f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--parts", default="tfmot,sparse", help="comma-separated: tfmot, sparse")
    ap.add_argument("--searches", default="latency,size", help="comma-separated targets of tfopt optimize ('' for none)")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--time-budget", default="40m")
    ap.add_argument("--tfmot-epochs", type=int, default=2)
    ap.add_argument("--sparse-share", type=float, default=0.75)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "real_arch"))
    ap.add_argument("--json")
    args = ap.parse_args()
    args.parts = [p for p in args.parts.split(",") if p]
    args.searches = [s for s in args.searches.split(",") if s]
    if args.sparse_share < XNNPACK_SPARSE_SHARE:
        ap.error(f"--sparse-share below {XNNPACK_SPARSE_SHARE:.3f} cannot meet XNNPACK's sparse-inference condition")
    os.environ.setdefault("TFOPT_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    recs = []
    for name in args.models.split(","):
        recs.append(run_model(name, args))
        if args.json:  # each model's figures kept as soon as they are measured
            Path(args.json).write_text(json.dumps(recs, indent=1))
    print(table(recs))
    for rec in recs:
        print(f"\n{rec['model']}: trained in {rec['fit_seconds'] or 0:.0f} s; notes: {json.dumps(rec['notes'])}"
              + (f"; sparse path: {json.dumps(rec['sparse'])}" if "sparse" in rec else ""))


if __name__ == "__main__":
    main()
