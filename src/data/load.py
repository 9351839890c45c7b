"""Prepared .npz -> tf.data pipelines, shaped as a data config asks (conf/data/*.yaml).

    data = load_prepared("data/prepared/fashion_mnist.npz")
    pipelines = make_datasets(data, batch_size=32, scale="unit", seed=42)
    model.fit(pipelines["train"], validation_data=pipelines["valid"])

Scaling modes (what the pixels become, as float32):
    none       0..255, unchanged
    unit       x / 255                                  (the book, the seed notebook)
    symmetric  x / 127.5 - 1, in [-1, 1]                (MobileNetV2's preprocess_input)
    standard   (x - mean) / std per pixel, from train   (what SELU's self-normalisation needs)
"""

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.data import SPLITS
from src.data.files import array_digest
from src.errors import ConfigError, DataError

SCALES = ("none", "unit", "symmetric", "standard")


@dataclass(frozen=True)
class Prepared:
    """The arrays of a prepared dataset and the metadata the prepare stage wrote."""

    arrays: dict[str, np.ndarray]
    meta: dict
    path: Path

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.arrays[f"x_{name}"], self.arrays[f"y_{name}"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]


def require_prepared(path: Path | str) -> Path:
    """The path of a prepared .npz that exists, or the one line that says how to make it (read nothing:
    a job checks it before it opens the store, a sweep before it starts any job)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise DataError(f"{path} is not a prepared dataset; point data.path at data/prepared/<dataset>.npz")
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro prepare@{path.stem}` (or `make data`) first")
    return path


def load_prepared(path: Path | str, verify: bool = True) -> Prepared:
    """Read a prepared .npz and its .json; check keys, dtypes and (if verify) every hash."""
    path = require_prepared(path)
    fix = f"delete it and run `dvc repro prepare@{path.stem}`"
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{meta_path} not found (it comes with {path.name}); {fix}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{meta_path} is corrupt ({error}); {fix}") from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(f"{path} is corrupt or truncated ({error}); {fix}") from None
    expected = {f"{kind}_{split}" for kind in "xy" for split in SPLITS}
    if set(arrays) != expected:
        raise DataError(f"{path} holds {sorted(arrays)}, expected {sorted(expected)}; {fix}")
    for split in SPLITS:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or len(x) != len(y):
            raise DataError(f"{path}: {split} has {x.dtype} images x{len(x)} and {len(y)} labels; {fix}")
    if verify:
        for key, value in arrays.items():
            if array_digest(value) != meta.get("array_sha256", {}).get(key):
                raise DataError(f"{path}: {key} does not match the hash in {meta_path.name}; {fix}")
    return Prepared(arrays, meta, path)


def reshape_splits(data: Prepared, train_size: int | None = None,
                   validation_split: float | None = None, classes: list[int] | None = None) -> Prepared:
    """The splits a run trains on.

    classes keeps only the images of those classes in every split, relabelled 0, 1, ... in
    the order given (the book's transfer tasks: [0, 2] makes T-shirt/top 0 and Pullover 1);
    it applies first, so train_size then counts images of the kept classes. train_size keeps the first train_size training images. validation_split works as
    Keras's fit argument does in the seed notebook: train and valid are rejoined into the
    full training file in its original order, cut to train_size, and its last fraction
    held out for validation.
    """
    if classes is not None:
        data = class_subset(data, classes)
    arrays = dict(data.arrays)
    x, y = arrays["x_train"], arrays["y_train"]
    if validation_split is not None:
        parts = ("valid", "train") if data.meta["split"]["valid_position"] == "first" else ("train", "valid")
        x = np.concatenate([arrays[f"x_{part}"] for part in parts])
        y = np.concatenate([arrays[f"y_{part}"] for part in parts])
    if train_size is not None:
        if train_size > len(x):
            raise ConfigError(f"data.train_size={train_size} but only {len(x)} training images exist; lower it")
        x, y = x[:train_size], y[:train_size]
    if validation_split is not None:
        held_out = int(len(x) * validation_split)
        if not 0 < held_out < len(x):
            raise ConfigError(f"validation_split={validation_split} of {len(x)} images leaves an empty split")
        arrays.update(x_valid=x[-held_out:], y_valid=y[-held_out:])
        x, y = x[:-held_out], y[:-held_out]
    arrays.update(x_train=x, y_train=y)
    return Prepared(arrays, data.meta, data.path)


def class_subset(data: Prepared, classes: list[int]) -> Prepared:
    names = data.class_names
    if len(set(classes)) != len(classes) or len(classes) < 2 or not all(0 <= c < len(names) for c in classes):
        raise ConfigError(f"data.classes={classes} must list at least 2 distinct class indices of "
                          f"{data.meta['dataset']} (0..{len(names) - 1})")
    relabel = np.full(len(names), -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    arrays = {}
    for split in SPLITS:
        x, y = data.split(split)
        keep = relabel[y] >= 0
        arrays.update({f"x_{split}": x[keep], f"y_{split}": relabel[y[keep]].astype(y.dtype)})
    return Prepared(arrays, {**data.meta, "class_names": [names[c] for c in classes]}, data.path)


def make_datasets(data: Prepared, batch_size: int, scale: str = "unit", flatten: bool = False,
                  resize: tuple[int, int] | None = None, seed: int = 42, cache: bool = True,
                  epochs: int = 1, start_epoch: int = 0) -> dict:
    """One tf.data pipeline per split: batched, scaled, prefetched.

    The training pipeline holds epochs start_epoch..epochs-1 back to back (pass
    steps_per_epoch to fit), each in its own order drawn from (seed, epoch): a run
    resumed at epoch k sees exactly the batches an uninterrupted run sees from k on.
    """
    import tensorflow as tf  # noqa: PLC0415 (TensorFlow loads only when pipelines are built)

    if scale not in SCALES:
        raise ConfigError(f"data.scale must be one of {', '.join(SCALES)}, found {scale!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, found {batch_size!r}")
    offset, factor = scaling(data, scale)

    def transform(images, labels):
        images = (tf.cast(images, tf.float32) - offset) * factor  # per-pixel stats: before resizing
        if resize is not None:
            images = tf.image.resize(images if images.shape.rank == 4 else images[..., None], resize)
        if flatten:
            images = tf.reshape(images, (tf.shape(images)[0], -1))
        return images, labels

    pipelines = {}
    for split in SPLITS:
        x, y = data.split(split)
        if split == "train":
            dataset = shuffled_epochs(tf, x, y, batch_size, seed, start_epoch, epochs)
        else:
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
        dataset = dataset.map(transform)
        if cache and resize is None and split != "train":
            dataset = dataset.cache()  # small evaluation splits: transform once
        pipelines[split] = untuned(tf, dataset.prefetch(PREFETCH))
    return pipelines


PREFETCH = 2  # batches made ahead of the training step, on a background thread


def untuned(tf, dataset):
    """The pipeline with tf.data's autotuning off.

    Autotuning runs a model thread per iterator that sleeps between rounds, each sleep twice
    the last (up to a minute), and deleting the iterator at the end of model.fit waited for
    that sleep to end: a worker sat idle for up to 40 s after a 20-epoch fit, 9-18 s after
    shorter ones, while the other worker trained (whole-chapter runs kept the two cores 80%
    busy). A job trains on one thread (two at most), which leaves nothing to tune: a plain map and
    a fixed prefetch give the same batches, in the same order, without the thread.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def shuffled_epochs(tf, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, start_epoch: int, epochs: int):
    """Batches of (x, y) for epochs start_epoch..epochs-1, each epoch a stateless permutation."""
    images, labels = tf.constant(x), tf.constant(y)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(x), dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return (tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_order)
            .map(lambda index: (tf.gather(images, index), tf.gather(labels, index))))


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return -(-n_examples // batch_size)


def scaling(data: Prepared, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 (offset, factor) so that scaled = (pixels - offset) * factor."""
    if scale == "standard":
        return standardising(data.split("train")[0])
    offset, factor = {"none": (0.0, 1.0), "unit": (0.0, 1 / 255), "symmetric": (127.5, 1 / 127.5)}[scale]
    return np.float32(offset), np.float32(factor)


def standardising(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset, factor) of standard scaling from these training images; a job asks three times
    (training, evaluation and diagnostics pipelines) for the same array: computed once."""
    if _standardised[0] is not images:
        mean, std = pixel_stats(images)
        _standardised[:] = images, (mean.astype(np.float32), (1.0 / np.maximum(std, 1e-7)).astype(np.float32))
    return _standardised[1]


_standardised: list = [None, None]  # the last training images standardised, and their (offset, factor)


def pixel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation, in float64 chunks (no full float copy)."""
    total = np.zeros(images.shape[1:])
    squares = np.zeros(images.shape[1:])
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64)
        total += block.sum(axis=0)
        squares += np.square(block).sum(axis=0)
    mean = total / len(images)
    return mean, np.sqrt(np.maximum(squares / len(images) - mean**2, 0.0))
