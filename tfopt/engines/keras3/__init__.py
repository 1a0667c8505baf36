"""Keras 3-native compression: pruning, clustering and weight fake-quantization, per variable.

Each step takes a Keras 3 model (functional, Sequential, subclassed, nested, with custom
layers) and returns a new model of the same class; the input is never changed. Work is done
on the variables of a copy with ``keras.ops`` only, so it runs under the TensorFlow and JAX
backends alike, without rebuilding the model's graph.

Example::

    from tfopt.engines import keras3

    pruned = keras3.prune(model, (x, y), sparsity=0.8, epochs=2)
    shared = keras3.cluster(pruned, (x, y), clusters=16, epochs=1)
    ready = keras3.quantize_aware(shared, (x, y), bits=8, epochs=1)
"""

from tfopt.engines.keras3.clustering import cluster
from tfopt.engines.keras3.copying import CopyError, copy_model
from tfopt.engines.keras3.losses import head_distillation, head_kinds, infer_loss
from tfopt.engines.keras3.masks import Blocks, MByN, Schedule, Unstructured
from tfopt.engines.keras3.pruning import allocate, prune, sparsity_of
from tfopt.engines.keras3.quantization import fake_quantize, quantization_error, quantize_aware
from tfopt.engines.keras3.selection import WeightEntry, select_weights
from tfopt.engines.keras3.training import FineTune

__all__ = ["Blocks", "CopyError", "FineTune", "MByN", "Schedule", "Unstructured", "WeightEntry",
           "allocate", "cluster", "copy_model", "fake_quantize", "head_distillation", "head_kinds",
           "infer_loss", "prune", "quantization_error", "quantize_aware", "select_weights",
           "sparsity_of"]
