"""Datasets: configs (TF-free), loaders to numpy, the tf.data pipeline and the coercion of plain data."""

from tfopt.config.data import DATASETS  # noqa: F401
from tfopt.data.pipeline import load_splits


def load_data(data_cfg, seed=0):
    """Load a ``data`` config into a :class:`tfopt.data.pipeline.Splits` of numpy arrays."""
    return load_splits(data_cfg, seed)
