"""A Keras 3 user's own model through tfopt: magnitude pruning, channel pruning, int8 TFLite.

Run it with ``python examples/keras3_user.py`` (add ``--json FILE`` to write the figures).
Nothing here imports tf_keras: the models going in and coming out are plain Keras 3 models.
"""

import json
import sys

import keras
import numpy as np
from sklearn.datasets import load_digits

import tfopt

digits = load_digits()
x = (digits.images[..., None] / 16.0).astype("float32")
y = digits.target
x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]

keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((8, 8, 1)),
    keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
    keras.layers.MaxPooling2D(),
    keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
    keras.layers.Flatten(),
    keras.layers.Dense(64, activation="relu"),
    keras.layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0)

pruned = tfopt.prune(model, data=(x_train, y_train), sparsity=0.8, epochs=5)       # a Keras 3 model
slim = tfopt.prune_channels(model, data=(x_train, y_train), ratio=0.5, epochs=5)   # a Keras 3 model
blob = tfopt.to_tflite(slim, mode="int8", data=x_test)  # bytes, checked against `slim` on x_test


def accuracy(m):
    return float(np.mean(m.predict(x_test, verbose=0).argmax(1) == y_test))


kernels = [w.numpy() for layer in pruned.layers for w in layer.weights if w.name.endswith("kernel")]
from tfopt.tflite import predict  # noqa: E402  (LiteRT's interpreter; any TFLite runtime works)

agreement = float(np.mean(predict(blob, x_test).argmax(1) == slim.predict(x_test, verbose=0).argmax(1)))
figures = {
    "kinds": [type(m).__module__.split(".")[0] for m in (pruned, slim)],
    "accuracy": {"model": accuracy(model), "pruned": accuracy(pruned), "slim": accuracy(slim)},
    "sparsity": sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels),
    "params": {"model": model.count_params(), "slim": slim.count_params()},
    "int8_bytes": len(blob),
    "int8_agreement": agreement,
}
print(json.dumps(figures, indent=2))
if "--json" in sys.argv:
    with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
        json.dump(figures, f)
