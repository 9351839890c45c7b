"""A pretrained convolutional base with a new head: the keras-io transfer-learning recipe.

    image -> [augmentation] -> base(training=False) -> GlobalAveragePooling -> Dropout -> Dense(classes)

The base is called with training=False, so its Batch Normalization layers keep their
moving statistics in both phases (unfrozen BN layers would otherwise re-learn them from
a few small batches and wreck the pretrained features). The head's layers are shared by
the full model and by a head-only model that trains on cached pooled features.

With model.train_base the base is no pretrained part but a network trained whole from the
first epoch, as one trains from scratch: every layer trainable, BN on batch statistics while
fitting and on its moving statistics when evaluated.
"""

import hashlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras.src.backend.config import keras_home  # $KERAS_HOME, else ~/.keras (not public API)

from src.errors import ConfigError, DataError, one_line
from src.paths import in_repo

log = logging.getLogger(__name__)

# Where Keras finds ImageNet weights: keras/src/applications/mobilenet_v2.py.
IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


@dataclass
class TransferModel:
    full: keras.Model        # image -> class probabilities: what is evaluated and logged
    base: keras.Model        # the pretrained convolutional base (frozen, then its top unfrozen)
    head: keras.Model        # pooled features -> class probabilities: the same head layers


def imagenet_file(alpha: float, size: int) -> str:
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}_no_top.h5"


def weights_file(cfg: dict, size: int) -> Path | None:
    """The file the base's weights come from (None: random init), or one line saying how to get it.

    imagenet is fetched the way Keras does (and cached under $KERAS_HOME/models, default
    ~/.keras/models): once, here, before any run starts, so a machine without internet
    fails at once with the fix instead of in the middle of a sweep.
    """
    weights = cfg["weights"]
    if weights == "none" or not cfg["pretrained"]:
        return None
    if weights != "imagenet":
        path = in_repo(weights)
        if not path.is_file():
            raise DataError(f"model.weights={weights}: no such file; pass a weights file of the base "
                            "(e.g. saved with base.save_weights), model.weights=imagenet or model.weights=none")
        return path
    name = imagenet_file(cfg["alpha"], size)
    cached = Path(keras_home()) / "models" / name
    if cached.is_file():
        return cached
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a firewall that drops packets would otherwise hang the job
    try:
        return Path(keras.utils.get_file(name, IMAGENET_URL + name, cache_subdir="models"))
    except Exception as error:  # noqa: BLE001 (urllib, HTTP and OS errors: the same fix)
        raise DataError(f"ImageNet weights for MobileNetV2 (alpha {cfg['alpha']}, {size}x{size}) are not in "
                        f"Keras's cache ({cached}) and cannot be downloaded ({one_line(error, 120)}); put "
                        f"{IMAGENET_URL}{name} there, or pass model.weights=/path/to/{name} "
                        "(or model.weights=none for random init)") from None
    finally:
        socket.setdefaulttimeout(previous)


def build_transfer_model(cfg: dict, input_shape: tuple[int, int, int], n_classes: int,
                         weights: Path | None) -> TransferModel:
    """The base (frozen, or trained whole: cfg["train_base"]) with a new head; cfg is the model config
    (conf/model/mobilenet_v2.yaml)."""
    try:
        base = keras.applications.MobileNetV2(input_shape=input_shape, alpha=cfg["alpha"], include_top=False,
                                              weights=None if weights is None else str(weights))
    except (ValueError, OSError) as error:
        raise DataError(f"cannot load the base's weights from {weights} ({one_line(error, 160)}); it must be a "
                        f"weights file of MobileNetV2 alpha {cfg['alpha']} without its top") from None
    base.trainable = cfg["train_base"]
    if cfg["bn_momentum"] is not None:  # read by each BN layer's call, so set before the model is traced
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = cfg["bn_momentum"]
    pooling = keras.layers.GlobalAveragePooling2D(name="pool")
    dropout = keras.layers.Dropout(cfg["dropout"], name="head_dropout")
    # float32 output: softmax and the loss stay accurate under mixed precision.
    output = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="output")

    images = keras.Input(shape=input_shape, name="image")
    # training=None: Keras's own flag, True while fitting, so a base trained whole runs BN in training mode.
    probabilities = output(dropout(pooling(base(images, training=None if cfg["train_base"] else False))))
    features = keras.Input(shape=(base.output_shape[-1],), name="features")
    head = keras.Model(features, output(dropout(features)), name="head")
    return TransferModel(keras.Model(images, probabilities, name=f"{base.name}_transfer"), base, head)


def unfreeze_top(base: keras.Model, start: int | str) -> int:
    """Make base layers from `start` (an index, or a layer name) on trainable; returns how many.

    Batch Normalization layers stay frozen too: with the base called with training=False
    they run in inference mode anyway, and leaving their gamma/beta alone is the keras-io advice.
    """
    names = [layer.name for layer in base.layers]
    if isinstance(start, str):
        if start not in names:
            raise ConfigError(f"model.fine_tune_from={start}: the base has no such layer (e.g. block_13_expand, "
                              f"or an index 0..{len(names) - 1})")
        start = names.index(start)
    if not 0 <= start < len(names):
        raise ConfigError(f"model.fine_tune_from={start} must be a layer index 0..{len(names) - 1} or a layer name")
    base.trainable = True
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in base.layers[start:] if layer.trainable)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of a model's weights: what identifies a base, whichever way it was made."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
