"""TFLite: conversion, the LiteRT interpreter (XNNPACK with a fallback), verification, latency."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np

from tfopt.config.choices import TFLITE_MODES
from tfopt.config.validation import did_you_mean
from tfopt.errors import TfoptError
from tfopt.layer_kinds import prunable_weights
from tfopt.surgery.hard_swish import ABSORBING, POINTWISE, defer_hard_swish_scale

MODES = TFLITE_MODES


class VerificationFailed(TfoptError):
    """A TFLite file disagrees with its Keras model more than the threshold allows."""

    exit_code = 1


#: A dense kernel with at most this many distinct values counts as clustered (int8 has 256 codes).
SHARED_VALUES = 256


def shared_dense_values(model) -> bool:
    """Whether most of ``model``'s dense weights sit in clustered kernels (at most
    :data:`SHARED_VALUES` distinct values each).

    int8 keeps a clustered kernel's few values as few codes only with one scale for the whole
    kernel: one scale per unit maps the same values to different codes in every unit, and gzip
    pays for each of them.
    """
    total = shared = 0
    for layer in model.layers:
        if type(layer).__name__ != "Dense":
            continue
        for w in prunable_weights(layer):
            values = w.numpy()
            total += values.size
            shared += values.size if len(np.unique(values)) <= SHARED_VALUES else 0
    return total > 0 and 2 * shared >= total


def convert(model, mode: str = "float32", representative=None, int8_io: bool = False, qat: bool = False,
            sparse: bool = False, dense_per_tensor: bool | None = None, float_ops=()) -> bytes:
    """Convert a tf_keras model to a TFLite flatbuffer.

    Args:
        mode: ``float32``; ``dynamic`` (int8 weights, float activations); ``float16``
            (float16 weights); ``int8`` (full integer, needs ``representative`` images unless ``qat``).
        representative: float32 images drawn from the training data, for int8 calibration.
        int8_io: with ``int8``, take int8 input and give int8 output instead of float.
        qat: the model was trained with quantization-aware training (no calibration needed).
        sparse: store pruned weights in TFLite's compressed sparse format
            (``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``): the converter encodes a weight tensor
            sparsely where that is smaller. Measured here on a 90%-sparse model: raw bytes fall
            about 3×, but gzip bytes rise (the index arrays compress worse than runs of zeros)
            and int8/dynamic kernels run 3-4× slower. See :func:`sizes`.
        dense_per_tensor: with ``int8`` or ``dynamic``, one weight scale per dense kernel instead
            of one per unit; default (None): when most dense weights are clustered
            (:func:`shared_dense_values`), so their shared values stay shared codes in the file,
            unless that file's top-1 agrees with the model on the ``representative`` images less
            than the per-unit file does (by more than :data:`PER_KERNEL_SLACK`): then the per-unit
            file. A quantization-aware model keeps the scales it trained with.
        float_ops: with ``int8``, TFLite op types kept in float (see :func:`finish`).

    An ``int8`` file writes each hard swish it can as x · relu6(x + 3), the division by 6 moved into
    the layers that read it (:func:`tfopt.surgery.hard_swish.defer_hard_swish_scale`): the same
    function, in ops the XNNPACK delegate runs in int8. Such a file is first prepared by XNNPACK in
    a separate process: see :func:`hard_swish_for_xnnpack`.
    """
    def once(m):
        return _converted(m, mode, representative, int8_io, qat, sparse, dense_per_tensor, float_ops)

    return hard_swish_for_xnnpack(model, once, float_ops) if mode == "int8" and not qat else once(model)


def hard_swish_for_xnnpack(model, convert, float_ops=()) -> bytes:
    """``convert(model)`` (an int8 conversion), the model's hard swishes first written as
    x · relu6(x + 3) with the division by 6 in the layers that read them, which XNNPACK runs in
    int8 where it leaves ``HARD_SWISH`` to the built-in kernels
    (:func:`tfopt.surgery.hard_swish.defer_hard_swish_scale`; tf_keras or Keras 3). The file is
    prepared by XNNPACK in a separate process (:func:`probe_xnnpack`): where that crashed, the
    division moves into 1×1 convolutions and dense layers only, and where it crashes again, the
    model converts as it is. ``float_ops`` naming ``HARD_SWISH`` keeps them as they are."""
    if "HARD_SWISH" in {str(op).upper() for op in float_ops or ()}:
        return convert(model)
    for readers in (ABSORBING, POINTWISE):
        rewritten, moved = defer_hard_swish_scale(model, readers)
        if not moved:
            break
        content = convert(rewritten)
        if probe_xnnpack(content):
            return content
    return convert(model)


def _converted(model, mode, representative, int8_io, qat, sparse, dense_per_tensor, float_ops) -> bytes:
    """:func:`convert` once the hard swish is settled."""
    auto = dense_per_tensor is None and mode in ("int8", "dynamic") and not qat
    per_kernel = shared_dense_values(model) if auto else bool(dense_per_tensor)
    content = _convert(model, mode, representative, int8_io, qat, sparse, per_kernel, float_ops)
    if mode == "int8":
        content = widened_dead_ranges(content)
    if qat:  # XNNPACK has crashed preparing quantization-aware files (tf_keras EfficientNetB0's)
        probe_xnnpack(content)
    if not (auto and per_kernel and representative is not None):
        return content
    rep = np.asarray(representative, np.float32)
    reference = model.predict(rep, verbose=0)
    if not isinstance(reference, np.ndarray) or reference.ndim != 2 or reference.shape[-1] < 2:
        return content  # top-1 agreement is a classifier's measure
    per_unit = widened_dead_ranges(_convert(model, mode, representative, int8_io, qat, sparse, False, float_ops))
    agree = {k: float(np.mean(predict(v, rep).argmax(-1) == reference.argmax(-1)))
             for k, v in (("kernel", content), ("unit", per_unit))}
    return content if agree["kernel"] >= agree["unit"] - PER_KERNEL_SLACK else per_unit


#: XNNPACK refuses a quantized convolution whose requantization scale (input scale × weight scale /
#: output scale) reaches 256, and then runs none of the file; :func:`widened_dead_ranges` keeps it below this.
REQUANTIZATION_LIMIT = 128.0
#: Ops that requantize what they read, so a tensor read only by them may take another scale.
_REQUANTIZING = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "QUANTIZE", "DEQUANTIZE")


def _builtin_ops() -> dict:
    """``{builtin op code: its name}`` of the TFLite schema (``CONV_2D``, ``HARD_SWISH``, ...)."""
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}


def widened_dead_ranges(content: bytes) -> bytes:
    """``content`` with the output scale of each int8 convolution or dense layer whose calibrated
    range collapsed (a channel that was always zero after its ReLU: a channel-pruned
    squeeze-excite reduce conv, scale 8e-9) raised so that its requantization scale is at most
    :data:`REQUANTIZATION_LIMIT`. Values that were zero stay zero; the rest are clipped less. The
    XNNPACK delegate refuses the whole file otherwise (MobileNetV3-Small, channel-pruned: 332 µs on
    the built-in kernels, 37 µs once widened). A tensor read by an op that does not requantize, or
    that is an output of the file, is left as it is; so is a file with nothing to widen."""
    from tensorflow.lite.tools import flatbuffer_utils as fb

    model = fb.convert_bytearray_to_object(bytearray(content))
    names = _builtin_ops()
    codes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    widened = 0
    for graph in model.subgraphs:
        readers = {}
        for op in graph.operators:
            for i in op.inputs:
                readers.setdefault(i, []).append(codes[op.opcodeIndex])
        for op in graph.operators:
            if codes[op.opcodeIndex] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op.inputs) < 2:
                continue
            x, w, y = (graph.tensors[i] for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
            quants = [t.quantization for t in (x, w, y)]
            if any(q is None or q.scale is None or len(q.scale) == 0 for q in quants) or len(quants[2].scale) != 1:
                continue
            top = quants[0].scale[0] * float(np.max(quants[1].scale))
            if top / quants[2].scale[0] < REQUANTIZATION_LIMIT or op.outputs[0] in graph.outputs or not all(
                    r in _REQUANTIZING for r in readers.get(op.outputs[0], [])):
                continue
            quants[2].scale = [top / REQUANTIZATION_LIMIT]
            widened += 1
    return bytes(fb.convert_object_to_bytearray(model)) if widened else content


#: Per-kernel dense scales are kept while their file agrees with the model on at most this much
#: less of the calibration images than the per-unit file.
PER_KERNEL_SLACK = 0.002


def _convert(model, mode, representative, int8_io, qat, sparse, per_kernel, float_ops=()) -> bytes:
    import tensorflow as tf

    if mode not in MODES:
        raise TfoptError(f"unknown TFLite mode '{mode}'; available: {', '.join(MODES)}")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    optimizations = [] if mode == "float32" else [tf.lite.Optimize.DEFAULT]
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if optimizations:
        conv.optimizations = optimizations
    if mode == "float16":
        conv.target_spec.supported_types = [tf.float16]
    if mode in ("int8", "dynamic") and not qat:
        conv._experimental_disable_per_channel_quantization_for_dense_layers = per_kernel
    if mode == "int8":
        if representative is None and not qat:
            raise TfoptError("int8 conversion needs representative images from the training data")
        if representative is not None:
            rep = np.asarray(representative, _input_dtype(model))
            conv.representative_dataset = lambda: ([rep[i : i + 1]] for i in range(len(rep)))
        if not qat:  # a QAT model carries its own ranges; its fake-quant ops become int8 kernels
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    return finish(conv, float_ops if mode == "int8" and not qat else ())


#: Op types that keep a Transformer's int8 file near its float model when kept in float: the
#: decomposed LayerNormalization (mean, variance, reciprocal square root), attention's matmuls and
#: softmax, the GELU, and the sums of the residual stream, whose few large values an int8 scale
#: shared by the whole tensor rounds the rest away with. The dense kernels and their inputs stay int8.
TRANSFORMER_FLOAT_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "BATCH_MATMUL", "ADD", "SOFTMAX", "GELU")
#: Op types that keep a recurrent layer's int8 file near its float model when kept in float: the
#: element-wise products and sums of its gates and cell state (an LSTM, GRU or SimpleRNN converts
#: unrolled, one step after another, so an int8 rounding of the state is carried to every later
#: step). Its kernels (``FULLY_CONNECTED``) stay int8.
RECURRENT_FLOAT_OPS = ("MUL", "ADD")


def check_float_ops(float_ops, mode: str) -> tuple:
    """``float_ops`` as a tuple of TFLite builtin op names, checked.

    Args:
        float_ops: op type names such as ``"MEAN"`` or ``"BATCH_MATMUL"``.
        mode: the conversion mode; op types are kept in float only in ``int8``.

    Returns:
        The names, upper-cased.

    Raises:
        TfoptError: a name that is not a TFLite builtin op (with the closest), or op types with
            another mode than ``int8``.
    """
    names = tuple(str(op).upper() for op in (float_ops or ()))
    if names and mode != "int8":
        raise TfoptError(f"to_tflite: float_ops keeps op types in float inside an int8 file; mode is {mode}")
    known = list(_builtin_ops().values())
    for name in names:
        if name not in known:
            raise TfoptError(f"to_tflite: '{name}' in float_ops is not a TFLite op type{did_you_mean(name, known)}; "
                             f"e.g. {', '.join(TRANSFORMER_FLOAT_OPS)}")
    return names


def finish(converter, float_ops=()) -> bytes:
    """The converter's file; with ``float_ops`` (TFLite op types, e.g. :data:`TRANSFORMER_FLOAT_OPS`),
    an int8 file whose ops of those types stay in float, quantizing and dequantizing around them
    (selective quantization through TFLite's quantization debugger, calibrated on the
    converter's representative dataset). A model whose int8 error comes from a few op types
    (a Transformer's LayerNormalization and attention matmuls) keeps the rest of its int8 speed
    and size."""
    import tensorflow as tf

    if not float_ops:
        return converter.convert()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    with warnings.catch_warnings():  # the debugger runs TensorFlow's deprecated interpreter, which warns
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=converter.representative_dataset,
                                                             debug_options=options)
        return debugger.get_nondebug_quantized_model()


def _input_dtype(model):
    """The numpy type of a tf_keras model's first input: float32, or an integer type (token ids)."""
    import tensorflow as tf

    dtype = tf.as_dtype(getattr(model.inputs[0], "dtype", None) or tf.float32)
    return dtype.as_numpy_dtype if dtype.is_integer else np.float32


def sizes(content: bytes) -> dict:
    """``{"raw_bytes", "gzip_bytes"}`` of a TFLite file: what a phone ships (raw; app stores
    and APKs compress it, but the model lands on disk and in memory raw) and gzip -9."""
    import gzip

    return {"raw_bytes": len(content), "gzip_bytes": len(gzip.compress(bytes(content), compresslevel=9))}


def smallest(model, mode: str = "float32", representative=None, int8_io: bool = False, qat: bool = False,
             by: str = "raw_bytes") -> tuple[bytes, dict]:
    """The dense and the sparse encodings of ``model`` (see :func:`convert`), and the smaller one
    by ``by`` (``raw_bytes`` or ``gzip_bytes``). Returns ``(content, info)``, where ``info`` has
    both sizes of both encodings and ``sparse`` (which one was kept)."""
    if by not in ("raw_bytes", "gzip_bytes"):
        raise TfoptError(f"smallest: by must be 'raw_bytes' or 'gzip_bytes'; got {by!r}")
    dense = convert(model, mode, representative, int8_io, qat)
    packed = convert(model, mode, representative, int8_io, qat, sparse=True)
    d, p = sizes(dense), sizes(packed)
    keep_sparse = p[by] < d[by]
    info = {"dense_raw_bytes": d["raw_bytes"], "dense_gzip_bytes": d["gzip_bytes"], "sparse_raw_bytes": p["raw_bytes"],
            "sparse_gzip_bytes": p["gzip_bytes"], "sparse": keep_sparse}
    return (packed if keep_sparse else dense), info


#: Files (by SHA-1) whose preparation by the XNNPACK delegate crashed the process that tried:
#: :func:`interpreter` runs them with the built-in kernels.
XNNPACK_CRASHES: set = set()

_PROBE = ("import sys; from ai_edge_litert.interpreter import Interpreter; "
          "Interpreter(model_path=sys.argv[1], num_threads=1).allocate_tensors()")


def probe_xnnpack(content: bytes) -> bool:
    """Whether the XNNPACK delegate prepares ``content`` without crashing, tried once in a
    separate process (a crash there, unlike an error, would end this one). A file it crashes on
    is recorded in :data:`XNNPACK_CRASHES` and run by the built-in kernels from then on.

    Args:
        content: a ``.tflite`` file's bytes.

    Returns:
        False when the probe process died of a signal.
    """
    fd, path = tempfile.mkstemp(suffix=".tflite", prefix="tfopt-probe-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        code = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, timeout=600).returncode
    finally:
        os.unlink(path)
    if code < 0:
        XNNPACK_CRASHES.add(hashlib.sha1(content).hexdigest())
    return code >= 0


def interpreter(content: bytes, num_threads: int = 1, log=None, builtin: bool = False):
    """A LiteRT interpreter with tensors allocated; falls back to the built-in kernels (and says
    so) when the XNNPACK delegate cannot prepare the model or crashed on it
    (:func:`probe_xnnpack`), or at once with ``builtin``. Returns ``(interpreter, delegate)``.
    """
    from ai_edge_litert import interpreter as litert

    if not builtin and hashlib.sha1(content).hexdigest() in XNNPACK_CRASHES:
        builtin = True
        if log:
            log("XNNPACK crashed preparing this file (tried in a separate process); using the built-in kernels, "
                "which are slower: latencies are not comparable with XNNPACK ones")
    if not builtin:
        try:
            it = litert.Interpreter(model_content=content, num_threads=num_threads)
            it.allocate_tensors()
            return it, "xnnpack"
        except (RuntimeError, ValueError) as exc:
            _fallback(exc, log)
    it = litert.Interpreter(model_content=content, num_threads=num_threads,
                            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it, "builtin"


def _fallback(exc, log) -> None:
    if log:
        log(f"XNNPACK could not prepare the model ({str(exc).splitlines()[0]}); "
            f"using the built-in kernels, which are slower: latencies are not comparable with XNNPACK ones")


def _xnnpack_failed(exc, delegate) -> bool:
    """An error of the XNNPACK delegate preparing a resized model (int8 recurrent layers at a
    new batch size) or creating its runtime at the first run (an int8 LSTM's unrolled steps): the
    built-in kernels run such a file."""
    return delegate == "xnnpack" and isinstance(exc, (RuntimeError, ValueError)) and "XNNPACK" in str(exc)


def _quantize(x, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _dequantize(y, detail):
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def predict(content: bytes, x, batch_size: int = 256, num_threads: int = 2, log=None) -> np.ndarray:
    """Float outputs of a TFLite model on ``x`` (int8 input/output quantized and dequantized)."""
    return _with_fallback(content, num_threads, log, lambda it, _: _predict(it, x, batch_size))


def _with_fallback(content, num_threads, log, run):
    """``run(interpreter, delegate)`` with XNNPACK, again with the built-in kernels when the delegate
    fails on a resized model or at the first run."""
    it, delegate = interpreter(content, num_threads, log)
    try:
        return run(it, delegate)
    except (RuntimeError, ValueError) as exc:
        if not _xnnpack_failed(exc, delegate):
            raise
        _fallback(exc, log)
        return run(interpreter(content, num_threads, log, builtin=True)[0], "builtin")


def _predict(it, x, batch_size) -> np.ndarray:
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    results = []
    current = None
    for start in range(0, len(x), batch_size):
        chunk = np.asarray(x[start : start + batch_size], np.float32)
        if current != len(chunk):
            it.resize_tensor_input(inp["index"], [len(chunk), *chunk.shape[1:]])
            it.allocate_tensors()
            inp, out = it.get_input_details()[0], it.get_output_details()[0]
            current = len(chunk)
        it.set_tensor(inp["index"], _quantize(chunk, inp))
        it.invoke()
        results.append(_dequantize(it.get_tensor(out["index"]), out))
    return np.concatenate(results)


def run_signature(content: bytes, feeds: dict, batch_size: int = 256, num_threads: int = 2, log=None,
                  signature: str | None = None) -> dict:
    """Float outputs of a TFLite file's signature, by output name, on ``feeds`` (input name →
    array, all of one length): inputs and outputs matched by name, not by position, so a file
    with several of either is read right. int8 inputs/outputs are quantized and dequantized."""
    return _with_fallback(content, num_threads, log, lambda it, _: _run_signature(it, feeds, batch_size, signature))


def _run_signature(it, feeds, batch_size, signature) -> dict:
    runner = it.get_signature_runner(signature)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    unknown = sorted(set(feeds) ^ set(inputs))
    if unknown:
        raise TfoptError(f"the TFLite file takes the inputs {sorted(inputs)}, not {sorted(feeds)}")
    n = len(next(iter(feeds.values())))
    results = {name: [] for name in outputs}
    for start in range(0, n, batch_size):
        got = runner(**{name: _quantize(np.asarray(a[start : start + batch_size]), inputs[name])
                        for name, a in feeds.items()})
        for name in outputs:
            results[name].append(_dequantize(got[name], outputs[name]))
    return {name: np.concatenate(parts) for name, parts in results.items()}


def accuracy(content: bytes, x, y, log=None) -> float:
    """Top-1 accuracy of a TFLite model's predictions."""
    return float(np.mean(predict(content, x, log=log).argmax(1) == y))


@dataclass
class Verification:
    mode: str
    agreement: float
    max_abs_diff: float
    tflite_accuracy: float
    keras_accuracy: float
    threshold: float
    samples: int

    @property
    def passed(self) -> bool:
        return self.agreement >= self.threshold

    def line(self) -> str:
        return (f"{self.mode}: top-1 agreement with Keras {self.agreement:.2%} on {self.samples} held-out images "
                f"(threshold {self.threshold:.2%}), max |Δoutput| {self.max_abs_diff:.3g}, accuracy "
                f"{self.tflite_accuracy:.2%} vs Keras {self.keras_accuracy:.2%}: "
                f"{'ok' if self.passed else 'FAILED'}")


def verify(keras_model, content: bytes, x, y, mode: str, threshold: float, log=None) -> Verification:
    """Compare TFLite outputs with Keras outputs on held-out data."""
    ref = keras_model.predict(x, batch_size=256, verbose=0)
    got = predict(content, x, log=log)
    return Verification(
        mode=mode,
        agreement=float(np.mean(ref.argmax(1) == got.argmax(1))),
        max_abs_diff=float(np.max(np.abs(ref - got))),
        tflite_accuracy=float(np.mean(got.argmax(1) == y)),
        keras_accuracy=float(np.mean(ref.argmax(1) == y)),
        threshold=threshold,
        samples=int(len(x)),
    )


def latency_us(content: bytes, sample, num_threads: int = 1, runs: int = 200, warmup: int = 20, log=None,
               repeats: int = 1) -> dict:
    """Median single-image latency in microseconds after ``warmup`` runs. With ``repeats`` > 1,
    ``runs`` invocations are timed that many times and the block with the lowest median is
    reported: on a shared machine another process's burst slows a whole block, never speeds one.
    A file the XNNPACK delegate fails on at its first run is timed with the built-in kernels, and
    ``delegate`` says so."""

    def timed(it, delegate):
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], _quantize(np.asarray(sample, np.float32)[None], inp))
        for _ in range(warmup):
            it.invoke()
        blocks = []
        for _ in range(max(1, repeats)):
            times = []
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                it.invoke()
                times.append(time.perf_counter_ns() - t0)
            blocks.append(times)
        times = min(blocks, key=np.median)
        return {"median_us": float(np.median(times)) / 1000, "p90_us": float(np.percentile(times, 90)) / 1000,
                "threads": num_threads, "runs": runs, "repeats": max(1, repeats), "delegate": delegate}

    return _with_fallback(content, num_threads, log, timed)
