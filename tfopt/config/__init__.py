"""The TensorFlow-free ground floor: the recipe schema and everything it is made of (registries,
validation, limits, choices, and the data, layer, train, step and tune configs).

Nothing here imports TensorFlow or a module above this folder, so ``tfopt --help`` and
``tfopt validate`` stay fast.
"""
