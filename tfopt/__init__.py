"""tfopt: train CNNs from YAML recipes, then make them smaller and faster.

The top-level package imports no TensorFlow, so ``tfopt --help`` and recipe
validation stay fast. Heavy entry points are loaded on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "tfopt.recipe",
    "build_model": "tfopt.models.builder",
    "fit": "tfopt.training.run",
    "load_data": "tfopt.data",
    "gradcheck": "tfopt.finite_diff",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfopt' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
