"""Datasets: configs (TF-free), loaders to numpy, and the tf.data pipeline."""

from tfopt.config.data import DATASETS  # noqa: F401


def load_data(data_cfg, seed=0):
    """Load a ``data`` config into a :class:`tfopt.data.pipeline.Splits` of numpy arrays."""
    from tfopt.data.pipeline import load_splits

    return load_splits(data_cfg, seed)
