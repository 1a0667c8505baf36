"""The door of the tf_keras paths: a user's model in as a private tf_keras copy, the result out as
the kind that came in.

TFMOT (a tf_keras model's prune, cluster, quantize_aware) and the graph path (prune_channels,
fold_batchnorm, remove_layers, fold_pool, for either kind) work on tf_keras; a Keras 3 model is
converted here and checked numerically (:mod:`tfopt.interop`), and the result converted back. A
Keras 3 model's prune, cluster, quantize_aware and to_tflite do not come through here: the Keras
3 engine (:mod:`tfopt.engines.keras3`) works on the model itself.
"""

from __future__ import annotations

from tfopt import interop, layer_kinds
from tfopt.errors import TfoptError
from tfopt.surgery.graph import inline_nested


def enter(model, what: str = "model"):
    """``(kind, private tf_keras copy)`` of a user's model; a layer class tfopt does not know is
    refused here, by name, before any work."""
    kind = interop.model_kind(model)
    if kind == "keras3":
        work = inline_nested(interop.to_tf_keras(model))
        layer_kinds.check_known(work)
        return kind, work
    if not getattr(model, "_is_graph_network", False):
        raise TfoptError(f"{what} '{model.name}' is a subclassed tf_keras model; tfopt needs a Sequential or "
                         f"functional model (its layers are rebuilt from their configs).")
    import tf_keras as keras

    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise TfoptError(f"{what} '{model.name}' is a Sequential model without a known input shape; build it "
                             f"first (start it with keras.Input(shape) or call it on data).")
        # The steps rebuild graphs: work on the functional view of the same layers.
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    inlined = inline_nested(model)  # a nested Sequential or functional model's layers join the graph
    layer_kinds.check_known(inlined)
    return kind, (inlined if inlined is not model else interop.plain_copy(model))


def leave(model, kind: str):
    """``model`` (tf_keras) as the ``kind`` the user's model was."""
    if kind == "tf_keras":
        return model
    return interop.from_tf_keras(model, kind)
