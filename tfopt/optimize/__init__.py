"""Compression: magnitude pruning, weight clustering and quantization (TFMOT + TFLite).

TFMOT is imported only inside the functions that run it: importing it sets
``TF_USE_LEGACY_KERAS`` for the whole process.
"""
