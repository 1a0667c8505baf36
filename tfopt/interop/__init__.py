"""Keras 3 <-> tf_keras: convert models at tfopt's door and back, checked numerically.

tfopt works in tf_keras (TFMOT prunes, clusters and quantizes only tf_keras models), while
``import keras`` is Keras 3 since TensorFlow 2.16. :func:`to_tf_keras` rebuilds a Keras 3
Sequential or functional model layer by layer from translated configs (:mod:`.translate`,
:mod:`.builder`), copies its weights and checks the two models agree on sample inputs
(:mod:`.check`); :func:`from_tf_keras` does the reverse. Layers that hold arbitrary code
(``Lambda``, custom classes) are refused before any work. :mod:`.models` tells a model's or a
file's kind and loads, copies and saves either; :mod:`.legacy` imports TFMOT without changing
the user's process.
"""

from tfopt.interop.check import ROUNDING_FACTOR, TOLERANCE, max_relative_difference, sample_inputs, verify
from tfopt.interop.convert import from_tf_keras, load_as_tf_keras, save_like, to_tf_keras
from tfopt.interop.legacy import LEGACY_VAR, import_tfmot, legacy_keras
from tfopt.interop.models import KINDS, file_kind, load_model, model_kind, plain_copy, save_atomic
from tfopt.interop.translate import LAYERS

__all__ = ["KINDS", "LAYERS", "LEGACY_VAR", "ROUNDING_FACTOR", "TOLERANCE", "file_kind", "from_tf_keras",
           "import_tfmot", "legacy_keras", "load_as_tf_keras", "load_model", "max_relative_difference",
           "model_kind", "plain_copy", "sample_inputs", "save_atomic", "save_like", "to_tf_keras", "verify"]
