"""Compression engines: ``keras3`` works weight by weight on Keras 3 models, on any backend."""
