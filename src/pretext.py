"""Pretext tasks: what a network can learn from images without their labels (`task=`).

The chapter's answer to scarce labels: pretrain the lower layers on a task whose targets come
from the images themselves, on every image, then reuse them in the classifier of the few
labelled ones (`transfer.pretrain`; the job trains the pretext model once as its own run and
src/models.py's reuse_layers copies its hidden_NN layers).

- autoencoder: the MLP's body, a mirrored decoder and a linear layer of the input's size,
  trained to reconstruct its (scaled) input under mean squared error: the stacked
  autoencoder of the book's "Unsupervised Pretraining" (chapter 17 builds it).
- rotation: every image turned by a seeded multiple of 90 degrees and the network asked
  which (4 classes): an auxiliary task whose labels cost nothing (Gidaris et al. 2018).
"""

import math

import keras
import numpy as np

from src.data import SPLITS
from src.data.load import Prepared
from src.models import activation_layer, build_mlp, depth_digits, hidden_widths, initializer, mlp_body

ROTATIONS = ("0 degrees", "90 degrees", "180 degrees", "270 degrees")  # the rotation task's classes


def task_data(data: Prepared, config: dict) -> Prepared:
    """The splits as the config's task sees them: unchanged, or (rotation) every image of every
    split turned by its own seeded quarter turn, labelled with it."""
    if config["task"] != "rotation":
        return data
    arrays = dict(data.arrays)
    for index, split in enumerate(SPLITS):
        images = arrays[f"x_{split}"]
        turns = np.random.default_rng([config["seed"], index]).integers(0, len(ROTATIONS), len(images))
        rotated = np.empty_like(images)
        for quarter in range(len(ROTATIONS)):
            chosen = turns == quarter
            rotated[chosen] = np.rot90(images[chosen], quarter, axes=(1, 2))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = rotated, turns.astype(arrays[f"y_{split}"].dtype)
    return Prepared(arrays, {**data.meta, "class_names": list(ROTATIONS)}, data.path)


def build_model(config: dict, input_shape: tuple[int, ...], n_classes: int) -> keras.Model:
    """The task's network: the autoencoder, or the MLP classifier (rotation's 4 classes included)."""
    if config["task"] == "autoencoder":
        return build_autoencoder(config["model"], input_shape)
    return build_mlp(config["model"], input_shape, n_classes)


def build_autoencoder(cfg: dict, input_shape: tuple[int, ...]) -> keras.Model:
    """The MLP's body (hidden_NN, what a classifier reuses), its widths in reverse as decoder_NN
    (the last hidden layer is the coding: not repeated), then a linear Dense of the input's
    size, reshaped to the input's shape."""
    layers = mlp_body(cfg, input_shape)
    for index, width in enumerate(reversed(hidden_widths(cfg)[:-1]), start=1):
        name = f"decoder_{index:0{depth_digits(cfg)}d}"
        layers += [keras.layers.Dense(width, kernel_initializer=initializer(cfg), name=name),
                   activation_layer(cfg, f"{name}_act")]
    layers += [keras.layers.Dense(math.prod(input_shape), dtype="float32", name="reconstruction"),
               keras.layers.Reshape(input_shape, dtype="float32", name="reconstruction_image")]
    return keras.Sequential(layers, name="autoencoder")


def with_targets(pipelines: dict, task: str) -> dict:
    """Datasets of (input, target): the labels, or (autoencoder) the scaled input itself."""
    if task != "autoencoder":
        return pipelines
    return {split: dataset.map(lambda images, labels: (images, images)) for split, dataset in pipelines.items()}


def loss(config: dict) -> str:
    if config["task"] == "autoencoder":
        return "mean_squared_error"
    return "binary_crossentropy" if config["model"]["output"] == "sigmoid" else "sparse_categorical_crossentropy"


def diagnostics_loss(config: dict) -> keras.losses.Loss | None:
    """The loss the gradient diagnostics differentiate: None for a classifier's cross-entropy."""
    return keras.losses.MeanSquaredError() if config["task"] == "autoencoder" else None
