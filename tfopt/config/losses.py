"""Loss and metric configs.

Sparse losses take integer labels; ``categorical_crossentropy`` and ``mse`` take one-hot
labels, which the data pipeline produces when :attr:`Loss.one_hot` is true. Whether the
model outputs logits is read off the model's last activation, so recipes never say it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt

from tfopt.config.registry import Config, Registry

LOSSES = Registry("loss")
METRICS = Registry("metric")


class Loss(Config):
    one_hot: ClassVar[bool] = False

    def build(self, from_logits: bool):  # pragma: no cover
        raise NotImplementedError


@LOSSES.register
class SparseCategoricalCrossentropy(Loss):
    name: Literal["sparse_categorical_crossentropy"] = "sparse_categorical_crossentropy"

    def build(self, from_logits):
        import tf_keras

        return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


@LOSSES.register
class CategoricalCrossentropy(Loss):
    name: Literal["categorical_crossentropy"] = "categorical_crossentropy"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    one_hot: ClassVar[bool] = True

    def build(self, from_logits):
        import tf_keras

        return tf_keras.losses.CategoricalCrossentropy(
            from_logits=from_logits, label_smoothing=self.label_smoothing
        )


@LOSSES.register
class MeanSquaredError(Loss):
    """MSE between the model's output and one-hot labels: end such a model with softmax."""

    name: Literal["mse"] = "mse"
    one_hot: ClassVar[bool] = True

    def build(self, from_logits):
        import tf_keras

        return tf_keras.losses.MeanSquaredError()


class Metric(Config):
    def build(self, one_hot: bool):  # pragma: no cover
        raise NotImplementedError


@METRICS.register
class Accuracy(Metric):
    name: Literal["accuracy"] = "accuracy"

    def build(self, one_hot):
        import tf_keras

        cls = tf_keras.metrics.CategoricalAccuracy if one_hot else tf_keras.metrics.SparseCategoricalAccuracy
        return cls(name="accuracy")


@METRICS.register
class TopK(Metric):
    name: Literal["top_k"] = "top_k"
    k: PositiveInt = 5

    def build(self, one_hot):
        import tf_keras

        m = tf_keras.metrics
        cls = m.TopKCategoricalAccuracy if one_hot else m.SparseTopKCategoricalAccuracy
        return cls(k=self.k, name=f"top_{self.k}_accuracy")
