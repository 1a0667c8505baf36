"""A Keras 3 model as a TFLite (LiteRT) file, without a tf_keras copy.

The model's own call, ``model(inputs, training=False)``, is traced into a serving function
by Keras 3's :class:`keras.export.ExportArchive` (the path of ``model.export(path,
format="litert")`` in Keras 3.15), written to a temporary SavedModel and converted by
``tf.lite.TFLiteConverter.from_saved_model``. The function takes the model's inputs
flattened (``input_0``, ``input_1``... in ``keras.tree.flatten`` order: list order, or the
sorted keys of a dict) and returns its outputs flattened (``output_0``, ``output_1``...), so
a multi-input or multi-output file is fed and read by name through its signature.

Recurrent layers are traced unrolled (their ``unroll`` attribute is set for the trace and
put back): the converter cannot give a ``while`` loop over a list of tensors a dynamic
batch, and int8 calibration of such a loop crashes. Unrolling needs a known sequence
length, which the input signature gets from ``data``. Only the TensorFlow backend can trace
a model for TFLite.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import keras
import numpy as np

from tfopt.engines.keras3.selection import all_layers
from tfopt.errors import TfoptError
from tfopt.tflite import finish, hard_swish_for_xnnpack

INPUT = "input_{}"
OUTPUT = "output_{}"


@contextlib.contextmanager
def unrolled(model, on: bool = True):
    """Every recurrent layer of ``model`` unrolled for the time of the block."""
    changed = [layer for layer in all_layers(model)
               if on and isinstance(layer, keras.layers.RNN) and not layer.unroll]
    for layer in changed:
        layer.unroll = True
    try:
        yield bool(changed)
    finally:
        for layer in changed:
            layer.unroll = False


def _declared_inputs(model):
    """The model's input structure with leaves that have ``shape`` and ``dtype``, or None."""
    try:
        from keras.src.export.export_utils import get_input_signature

        specs = get_input_signature(model)
    except Exception:  # a model built without recorded shapes: nothing to read
        return None
    if isinstance(specs, (list, tuple)) and len(specs) == 1:
        specs = specs[0]
    return specs if keras.tree.flatten(specs) else None


def _dtype(dtype) -> str:
    name = str(getattr(dtype, "name", dtype))
    return "float32" if name == "float64" else name


def signature(model, x=None):
    """``(structure, [(shape, dtype)] flat)`` of the serving function's inputs.

    Every dimension but the batch comes from ``x`` when given (so a sequence length the model
    leaves open is fixed to the data's), else from the model's declared inputs.
    """
    if x is not None:
        structure = keras.tree.map_structure(np.asarray, x)
        leaves = keras.tree.flatten(structure)
        return structure, [((None, *a.shape[1:]), _dtype(a.dtype)) for a in leaves]
    declared = _declared_inputs(model)
    if declared is None:
        raise TfoptError(f"to_tflite: the model '{model.name}' ({type(model).__name__}) declares no inputs: pass "
                         f"data=x (a batch of its inputs) so that the file's input signature is known.")
    leaves = keras.tree.flatten(declared)
    flat = [((None, *tuple(t.shape)[1:]), _dtype(t.dtype)) for t in leaves]
    return keras.tree.pack_sequence_as(declared, list(range(len(leaves)))), flat


def _check_backend():
    if keras.backend.backend() != "tensorflow":
        raise TfoptError(
            f"to_tflite: a Keras 3 model is traced into a TFLite file by TensorFlow, and this process runs Keras "
            f"on the {keras.backend.backend()} backend. Save the model (model.save('model.keras')) and convert it "
            f"in a process started with KERAS_BACKEND=tensorflow; prune, cluster and quantize_aware work on any "
            f"backend.")


def convert(model, mode: str = "float32", x=None, representative=None, int8_io: bool = False, float_ops=()) -> bytes:
    """TFLite bytes of a Keras 3 model.

    Args:
        model: A built Keras 3 model (any kind: functional, Sequential, subclassed, nested,
            with custom layers, recurrent, attention, several inputs or outputs).
        mode: ``float32``, ``dynamic`` (int8 weights), ``float16`` or ``int8`` (full integer).
        x: Inputs in the model's structure; they fix the input signature (all but the batch).
        representative: Inputs (same structure) to calibrate ``int8`` on.
        int8_io: With ``int8``, int8 float inputs and outputs instead of float.
        float_ops: With ``int8``, TFLite op types kept in float (:func:`tfopt.tflite.finish`).

    Raises:
        TfoptError: not the TensorFlow backend; int8 without representative inputs; a model
            the converter cannot take (in one paragraph, with the converter's first line).
    """
    _check_backend()
    if mode == "int8" and representative is None:
        raise TfoptError("to_tflite: int8 calibrates on training images: pass data=x (a few hundred images)")
    if mode == "int8":
        return hard_swish_for_xnnpack(model, lambda m: _exported(m, mode, x, representative, int8_io, float_ops),
                                      float_ops)
    return _exported(model, mode, x, representative, int8_io, float_ops)


def _exported(model, mode, x, representative, int8_io, float_ops) -> bytes:
    """:func:`convert` once the hard swish is settled."""
    import tensorflow as tf

    structure, flat = signature(model, x if x is not None else representative)
    specs = [tf.TensorSpec(shape, tf.as_dtype(dtype), name=INPUT.format(i)) for i, (shape, dtype) in enumerate(flat)]

    def serve(*args):
        inputs = keras.tree.pack_sequence_as(structure, list(args))
        outputs = model(inputs, training=False)
        return {OUTPUT.format(i): t for i, t in enumerate(keras.tree.flatten(outputs))}

    problems = []
    for unroll in (True, False):
        try:
            return _convert(model, serve, specs, mode, representative, int8_io, unroll, float_ops)
        except TfoptError:
            raise
        except Exception as e:  # unrolling needs a known sequence length: then the loop as it is
            problems.append(f"{type(e).__name__}: {_first_line(e)}")
    tried = problems[-1] if problems[0] == problems[-1] else f"unrolled: {problems[0]}; as it is: {problems[-1]}"
    raise TfoptError(f"to_tflite: TensorFlow's converter could not turn the model '{model.name}' "
                     f"({type(model).__name__}) into a {mode} TFLite file ({tried}). Recurrent layers "
                     f"convert when their sequence length is known: pass data=x with the lengths the file should take.")


def _first_line(e) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line[line.index("error:"):][:300]
    return (lines[0] if lines else "")[:300]


def _convert(model, serve, specs, mode, representative, int8_io, unroll, float_ops=()) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="tfopt-litert-") as folder, unrolled(model, unroll):
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", serve, input_signature=specs)
        path = os.path.join(folder, "saved_model")
        archive.write_out(path, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=["serve"])
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            rows = [np.asarray(a) for a in keras.tree.flatten(representative)]
            rows = [a.astype(np.float32) if a.dtype == np.float64 else a for a in rows]
            n = len(rows[0])
            converter.representative_dataset = lambda: (
                {INPUT.format(j): a[i:i + 1] for j, a in enumerate(rows)} for i in range(n))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        return finish(converter, float_ops if mode == "int8" else ())


def run(content: bytes, x, batch_size: int = 256, log=None) -> list:
    """The file's outputs on ``x`` (the model's input structure), flattened in output order."""
    from tfopt.tflite import run_signature

    flat = [np.asarray(a) for a in keras.tree.flatten(x)]
    feeds = {INPUT.format(i): a.astype(np.float32) if a.dtype == np.float64 else a for i, a in enumerate(flat)}
    outputs = run_signature(content, feeds, batch_size=batch_size, log=log)
    return [outputs[OUTPUT.format(i)] for i in range(len(outputs))]
