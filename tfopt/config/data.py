"""The ``data`` section: one config class per source, chosen by ``name``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt

from tfopt.config.registry import Config, Registry

DATASETS = Registry("dataset")


class Augment(Config):
    """Random training-time augmentation; factors follow tf_keras's preprocessing layers."""

    translate: float = Field(0.0, ge=0, le=0.5, description="max shift, as a fraction of height/width")
    rotate: float = Field(0.0, ge=0, le=0.5, description="max rotation, as a fraction of a full turn")
    zoom: float = Field(0.0, ge=0, le=0.9, description="max zoom in or out, as a fraction")
    flip: Literal["none", "horizontal", "vertical", "both"] = "none"

    def any(self) -> bool:
        return bool(self.translate or self.rotate or self.zoom or self.flip != "none")


class Data(Config):
    validation_split: float = Field(0.1, ge=0, lt=1, description="fraction of training data held out")
    normalize: Literal["scale", "standardize", "none"] = Field(
        "scale", description="scale: to [0, 1] by the pixel range; standardize: per-channel z-score"
    )
    augment: Optional[Augment] = None
    limit: Optional[PositiveInt] = Field(None, description="use at most this many training samples")
    shuffle_buffer: PositiveInt = 10000

    def input_shape(self) -> Optional[tuple]:
        """The image shape when it is known without reading the data."""
        return None


@DATASETS.register
class Digits(Data):
    """scikit-learn's bundled 1,797 8×8 digits; no download."""

    name: Literal["digits"] = "digits"
    test_split: float = Field(0.2, gt=0, lt=1)

    def input_shape(self):
        return (8, 8, 1)


@DATASETS.register
class Mnist(Data):
    """MNIST or Fashion-MNIST from the original IDX .gz files (see :mod:`tfopt.data.sources`)."""

    name: Literal["mnist", "fashion_mnist"]
    path: Optional[str] = Field(None, description="folder holding the four IDX .gz files")

    def input_shape(self):
        return (28, 28, 1)


@DATASETS.register
class Npz(Data):
    """An ``.npz`` file with ``x_train``, ``y_train``, ``x_test`` and ``y_test``."""

    name: Literal["npz"]
    path: str


@DATASETS.register
class ImageDir(Data):
    """A folder with one sub-folder of images per class."""

    name: Literal["image_dir"]
    path: str
    image_size: tuple[PositiveInt, PositiveInt] = (32, 32)
    color_mode: Literal["grayscale", "rgb"] = "rgb"
    test_split: float = Field(0.2, gt=0, lt=1)

    def input_shape(self):
        return (*self.image_size, 1 if self.color_mode == "grayscale" else 3)


@DATASETS.register
class Synthetic(Data):
    """Learnable random images: one fixed pattern per class plus noise. For tests."""

    name: Literal["synthetic"]
    samples: PositiveInt = 512
    test_samples: PositiveInt = 128
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (8, 8, 1)
    classes: int = Field(10, ge=2)
    noise: float = Field(0.5, ge=0)

    def input_shape(self):
        return tuple(self.shape)
