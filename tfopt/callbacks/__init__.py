"""Keras callbacks for any training loop, tf_keras or Keras 3.

Every callback subclasses ``tf_keras.callbacks.Callback``, which runs inside both a tf_keras
and a Keras 3 ``model.fit``. This package imports TensorFlow and tf_keras's Callback base
only: never tensorflow_model_optimization, and it sets no environment variables.

Example:
    >>> from tfopt.callbacks import GradientNormMonitor, LearningRateDecay, LRFinder
    >>> model.fit(x, y, epochs=5, callbacks=[LearningRateDecay("cosine", initial_lr=1e-3, warmup=100),
    ...                                      GradientNormMonitor((x[:64], y[:64]), every_n_steps=100)])
"""

from tfopt.callbacks.batchnorm import BatchNormRefresh, refresh_batch_norm
from tfopt.callbacks.gradients import GradientNormMonitor
from tfopt.callbacks.lr import LearningRateDecay
from tfopt.callbacks.lr_finder import LRFinder, find_lr
from tfopt.callbacks.weights import WeightStatsMonitor

__all__ = ["BatchNormRefresh", "GradientNormMonitor", "LearningRateDecay", "LRFinder", "WeightStatsMonitor", "find_lr", "refresh_batch_norm"]
