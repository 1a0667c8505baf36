"""Tiny Keras 3 models of each family the Keras 3 engine serves, with data to fine-tune them.

Every builder returns ``(model, (x, y))``: a built model and 64 rows of seeded synthetic
data. Importable under any Keras backend (the JAX test runs them in a subprocess).
"""

import keras
import numpy as np

ROWS = 64
CLASSES = 4


def _rng(seed=0):
    return np.random.default_rng(seed)


def _labels(rng):
    return rng.integers(0, CLASSES, ROWS)


def cnn2d():
    rng = _rng(1)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ], name="cnn2d")
    return model, (rng.random((ROWS, 8, 8, 1), dtype="float32"), _labels(rng))


def conv1d():
    rng = _rng(2)
    inputs = keras.Input((16, 3))
    x = keras.layers.Conv1D(8, 3, activation="relu")(inputs)
    x = keras.layers.Conv1D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="conv1d"), (rng.random((ROWS, 16, 3), dtype="float32"), _labels(rng))


def _recurrent(layer, name, seed):
    rng = _rng(seed)
    model = keras.Sequential([keras.Input((6, 4)), layer, keras.layers.Dense(CLASSES, activation="softmax")],
                             name=name)
    return model, (rng.random((ROWS, 6, 4), dtype="float32"), _labels(rng))


def lstm():
    return _recurrent(keras.layers.LSTM(8), "lstm", 3)


def gru():
    return _recurrent(keras.layers.GRU(8), "gru", 4)


def bilstm():
    return _recurrent(keras.layers.Bidirectional(keras.layers.LSTM(6)), "bilstm", 5)


def embedding():
    rng = _rng(6)
    model = keras.Sequential([
        keras.Input((10,), dtype="int32"),
        keras.layers.Embedding(40, 8),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ], name="embedding")
    return model, (rng.integers(0, 40, (ROWS, 10)).astype("int32"), _labels(rng))


def transformer():
    rng = _rng(7)
    inputs = keras.Input((6, 8))
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(inputs, inputs)
    x = keras.layers.LayerNormalization()(inputs + attended)
    ffn = keras.layers.Dense(16, activation="relu")(x)
    ffn = keras.layers.Dense(8)(ffn)
    x = keras.layers.LayerNormalization()(x + ffn)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="transformer"), (rng.random((ROWS, 6, 8), dtype="float32"), _labels(rng))


def two_heads():
    rng = _rng(8)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(16, activation="relu")(inputs)
    label = keras.layers.Dense(3, activation="softmax", name="label")(x)
    value = keras.layers.Dense(1, name="value")(x)
    model = keras.Model(inputs, [label, value], name="two_heads")
    x_data = rng.random((ROWS, 8), dtype="float32")
    y = {"label": rng.integers(0, 3, ROWS), "value": x_data.sum(1, keepdims=True)}
    return model, (x_data, y)


def nested():
    rng = _rng(9)
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu")], name="inner")
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(inner(inputs))
    return keras.Model(inputs, outputs, name="nested"), (rng.random((ROWS, 8), dtype="float32"), _labels(rng))


@keras.saving.register_keras_serializable(package="tfopt_tests")
class SubclassedNet(keras.Model):
    """A subclassed model: two Dense layers and a softmax head."""

    def __init__(self, units=16, classes=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.units, self.classes = units, classes
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.middle = keras.layers.Dense(units, activation="relu")
        self.head = keras.layers.Dense(classes, activation="softmax")

    def call(self, inputs, training=False):
        return self.head(self.middle(self.hidden(inputs)))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "classes": self.classes}


def subclassed():
    rng = _rng(10)
    model = SubclassedNet(name="subclassed")
    x = rng.random((ROWS, 8), dtype="float32")
    model(x[:2])
    return model, (x, _labels(rng))


@keras.saving.register_keras_serializable(package="tfopt_tests")
class OwnKernel(keras.layers.Layer):
    """A custom layer holding its own kernel ``w`` (rank 2), bias ``b`` and gain ``g``."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")
        self.g = self.add_weight(name="g", shape=(), initializer="ones")

    def call(self, inputs):
        return keras.ops.relu(self.g * keras.ops.matmul(inputs, self.w) + self.b)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def custom_layer():
    rng = _rng(11)
    inputs = keras.Input((8,))
    x = OwnKernel(32, name="own")(inputs)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="custom_layer"), (rng.random((ROWS, 8), dtype="float32"), _labels(rng))


@keras.saving.register_keras_serializable(package="tfopt_tests")
class AddPosition(keras.layers.Layer):
    """A learned position embedding added to a sequence of patches: a custom weight of rank 2."""

    def build(self, input_shape):
        self.position = self.add_weight(name="position", shape=tuple(input_shape[1:]), initializer="random_normal")

    def call(self, inputs):
        return inputs + self.position


def vit():
    """A ViT-style patch model: 4×4 patches embedded by a strided conv, positions, one attention block."""
    rng = _rng(12)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(16, 4, strides=4, name="patches")(inputs)
    x = keras.layers.Reshape((16, 16))(x)
    x = AddPosition(name="position")(x)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x, x)
    x = keras.layers.LayerNormalization()(x + attended)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="vit"), (rng.random((ROWS, 16, 16, 1), dtype="float32"), _labels(rng))


def _conv_bn(x, filters, name):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def unet():
    """A U-Net: conv-BN blocks down and up, a skip connection, a per-pixel softmax over 3 classes."""
    rng = _rng(13)
    inputs = keras.Input((16, 16, 1))
    down = _conv_bn(inputs, 8, "down")
    x = keras.layers.MaxPooling2D()(down)
    x = _conv_bn(x, 16, "middle")
    x = keras.layers.Conv2DTranspose(8, 2, strides=2, name="up_transpose")(x)
    x = keras.layers.Concatenate()([x, down])
    x = _conv_bn(x, 8, "up")
    outputs = keras.layers.Conv2D(3, 1, activation="softmax", name="mask")(x)
    x_data = rng.random((ROWS, 16, 16, 1), dtype="float32")
    masks = np.digitize(x_data[..., 0], [0.33, 0.66]).astype("int32")  # each pixel's class by its brightness
    return keras.Model(inputs, outputs, name="unet"), (x_data, masks)


def squeeze_excite():
    """A conv-BN block whose channels are reweighted by a squeeze-and-excitation branch."""
    rng = _rng(14)
    inputs = keras.Input((8, 8, 3))
    x = _conv_bn(inputs, 16, "block")
    gate = keras.layers.GlobalAveragePooling2D()(x)
    gate = keras.layers.Dense(4, activation="relu", bias_initializer=keras.initializers.Constant(0.1),
                              name="squeeze")(gate)
    gate = keras.layers.Dense(16, activation="sigmoid", name="excite")(gate)
    x = keras.layers.Multiply()([x, keras.layers.Reshape((1, 1, 16))(gate)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="squeeze_excite")
    return model, (rng.random((ROWS, 8, 8, 3), dtype="float32"), _labels(rng))


def regression():
    """A regression model, not compiled: one linear output, float targets."""
    rng = _rng(15)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)], name="regression")
    x = rng.random((ROWS, 8), dtype="float32")
    return model, (x, (x @ np.linspace(-1, 1, 8) + 0.5).astype("float32")[:, None])


def multi_input():
    """Two named inputs (an image and a vector of features) given as a dict; one softmax head."""
    rng = _rng(16)
    image = keras.Input((8, 8, 1), name="image")
    features = keras.Input((5,), name="features")
    x = keras.layers.Conv2D(8, 3, activation="relu")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(features)])
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(x)
    model = keras.Model({"image": image, "features": features}, outputs, name="multi_input")
    x_data = {"image": rng.random((ROWS, 8, 8, 1), dtype="float32"),
              "features": rng.random((ROWS, 5), dtype="float32")}
    return model, (x_data, _labels(rng))


def mobilenet_v2():
    """keras.applications.MobileNetV2 at its smallest (32×32 input, alpha 0.35, no weights), 4 classes."""
    rng = _rng(17)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=CLASSES)
    return model, (rng.random((ROWS, 32, 32, 3), dtype="float32"), _labels(rng))


FAMILIES = {
    "cnn2d": cnn2d, "conv1d": conv1d, "lstm": lstm, "gru": gru, "bilstm": bilstm,
    "embedding": embedding, "transformer": transformer, "two_heads": two_heads,
    "nested": nested, "subclassed": subclassed, "custom_layer": custom_layer,
    "vit": vit, "unet": unet, "squeeze_excite": squeeze_excite, "regression": regression,
    "multi_input": multi_input,
}

def _application(builder, seed, **kwargs):
    rng = _rng(seed)
    model = builder(input_shape=(32, 32, 3), weights=None, classes=CLASSES, **kwargs)
    return model, (rng.random((ROWS, 32, 32, 3), dtype="float32"), _labels(rng))


def mobilenet_v3_small():
    """keras.applications.MobileNetV3Small (squeeze-excite, hard-swish, its Rescaling), 32×32, alpha 0.75."""
    return _application(keras.applications.MobileNetV3Small, 18, alpha=0.75)


def efficientnet_b0():
    """keras.applications.EfficientNetB0 (its Rescaling and Normalization layers, squeeze-excite), 32×32."""
    return _application(keras.applications.EfficientNetB0, 19)


def resnet50():
    """keras.applications.ResNet50, 32×32 input, no weights (23.5 million weights)."""
    return _application(keras.applications.ResNet50, 20)


def densenet121():
    """keras.applications.DenseNet121, 32×32 input, no weights (concatenating dense blocks)."""
    return _application(keras.applications.DenseNet121, 21)


def convnext_tiny():
    """keras.applications.ConvNeXtTiny (its Sequential stem, LayerScale, LayerNormalization), 32×32."""
    return _application(keras.applications.ConvNeXtTiny, 22)


#: keras.applications models, larger than the families above (from a few hundred thousand weights
#: to tens of millions).
APPLICATIONS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small,
                "efficientnet_b0": efficientnet_b0, "resnet50": resnet50, "densenet121": densenet121,
                "convnext_tiny": convnext_tiny}
