"""Datasets: configs (TF-free), loaders to numpy, the tf.data pipeline and the coercion of plain data."""

from tfopt.config.data import DATASETS  # noqa: F401
from tfopt.data.pipeline import load_splits


def load_data(data_cfg, seed=0):
    """Load a ``data`` config into numpy arrays.

    Args:
        data_cfg: a :class:`tfopt.config.data.Data` (``recipe.data``).
        seed: the seed of the validation split and of synthetic data.

    Returns:
        A :class:`tfopt.data.pipeline.Splits` (train, validation and test arrays).

    Raises:
        TfoptError: a dataset that is missing or malformed, named with where it was looked for.
    """
    return load_splits(data_cfg, seed)
