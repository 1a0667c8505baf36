"""tfopt: make Keras models smaller and faster; train CNNs from YAML recipes.

Any Keras model in (tf_keras or Keras 3), a new model of the same kind out::

    import tfopt
    pruned = tfopt.prune(model, data=(x, y), sparsity=0.8, epochs=2)
    blob = tfopt.to_tflite(pruned, mode="int8", data=x)

The top-level package imports no TensorFlow, so ``tfopt --help`` and recipe
validation stay fast. Heavy entry points are loaded on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "tfopt.config.recipe",
    "build_model": "tfopt.models.builder",
    "fit": "tfopt.training.run",
    "load_data": "tfopt.data",
    "gradcheck": "tfopt.finite_diff",
    "optimize": "tfopt.search.engine",
    **{name: "tfopt.api" for name in (
        "load_model", "model_kind", "prune", "prune_channels", "fold_batchnorm", "fold_pool", "remove_layers", "cluster",
        "quantize_aware", "to_tflite", "wrap_for_pruning", "pruning_callbacks", "wrap_for_clustering",
        "wrap_for_qat", "strip")},
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfopt' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
