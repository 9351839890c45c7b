"""Fine-tuning a pretrained base (model.name=mobilenet_v2): the two phases, read top to bottom.

    phase 1  `epochs` epochs: base frozen, only the new head trains. With no augmentation
             and model.feature_cache set, the head trains on the base's pooled features,
             computed once (src/pretrained/features.py) instead of every epoch.
    phase 2  `model.fine_tune_epochs` more: the base's top (from model.fine_tune_from) is
             unfrozen, BN stays in inference mode, a fresh optimizer at learning rate x
             model.fine_tune_lr_factor. Epoch numbers run on, so the MLflow curve is continuous.
    or       model.train_base: `epochs` epochs of the whole network, BN in training mode (no
             feature cache, no phase 2): the from-scratch baseline of a transfer experiment.

Same contract as src.engine.fit_and_evaluate, and the same phased, resumable fit
(src/fitting.py); the result adds the test set's confusion matrix.
"""

import copy
import logging
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from src.data.load import Prepared, make_datasets, shuffled_epochs, steps_per_epoch
from src.fitting import Phase, Training, configure_runtime, predict, steps_per_call
from src.optim import build_optimizer
from src.paths import in_repo
from src.pretrained.features import cache_key, pooled_features
from src.pretrained.model import (
    TransferModel,
    build_transfer_model,
    unfreeze_top,
    weights_digest,
    weights_file,
)
from src.resume import ResumeState

log = logging.getLogger(__name__)
FEATURE_BATCH = 128  # inference only: a bigger batch is faster and changes nothing
HEAD_STEPS_PER_CALL = 64  # at least, for the head on cached features (same updates, fewer calls)


def fit_and_evaluate(config: dict, data: Prepared, state: ResumeState, sink, workdir: Path,
                     source: keras.Model | None = None) -> dict:
    configure_runtime(config)
    cfg, batch_size = config["model"], config["batch_size"]
    size = tuple(config["data"]["resize"])
    model = build_transfer_model(cfg, (*size, 3), len(data.class_names), weights_file(cfg, size[0]))
    if config["diagnostics"]["enabled"]:
        log.info("gradient diagnostics are for the MLP models: not computed for %s", cfg["name"])
    head_epochs, total = config["epochs"], config["epochs"] + cfg["fine_tune_epochs"]
    steps = steps_per_epoch(len(data.split("train")[0]), batch_size)
    cached = cfg["feature_cache"] is not None and cfg["augment"] == "none" and not cfg["train_base"]
    features, extra = {}, {}
    if cached:
        features, extra = head_features(config, data, model, ("train", "valid"))
    training = Training(config, state, sink, workdir)

    def phase(begin: int, end: int, fine_tune: bool) -> Phase:
        trained = model.head if cached and not fine_tune else model.full

        def enter() -> keras.Model:
            if fine_tune:
                unfrozen = unfreeze_top(model.base, cfg["fine_tune_from"])
                log.info("phase 2: %d base layers unfrozen from %s, learning rate x %s", unfrozen,
                         cfg["fine_tune_from"], cfg["fine_tune_lr_factor"])
            # The head on features: a step is tiny and Keras's per-call overhead dominates, so many per call.
            requested = max(config["steps_per_execution"], HEAD_STEPS_PER_CALL if trained is model.head else 1)
            compile_phase(trained, config, fine_tune, total_steps=steps * (end - begin),
                          steps_per_execution=steps_per_call(requested, steps))
            return trained

        def batches(first: int, last: int) -> tuple:
            return phase_pipelines(config, data, features if trained is model.head else None, first, last, steps)

        return Phase(end, enter, batches)

    phases = [phase(0, head_epochs, False)] + ([phase(head_epochs, total, True)] if total > head_epochs else [])
    training.fit(phases, steps)
    outcome = training.outcome(config["on_nan"], "lower optimizer.learning_rate (or model.fine_tune_lr_factor), "
                                                 "or check the inputs' scale")
    test = ordered(config, data, "test")
    if cached and len(phases) == 1:  # the base never changed: the head on its (cached) test features
        probabilities = predict(model.head, head_features(config, data, model, ("test",))[0]["test"],
                                batch_size=FEATURE_BATCH)
    else:
        probabilities = predict(model.full, test)
    return {**test_scores(probabilities, data.split("test")[1], len(data.class_names)), **extra, **outcome,
            "model": model.full, "example": next(iter(test))[0].numpy()[:3]}


def head_features(config: dict, data: Prepared, model: TransferModel, splits: tuple[str, ...]) -> tuple[dict, dict]:
    """The pooled features of these splits, from the cache or computed (and cached) now."""
    started = time.perf_counter()
    key = cache_key(data, splits, weights_digest(model.base), config)
    folder = Path(config["model"]["feature_cache"])
    extractor = keras.Model(model.full.input, model.full.get_layer("pool").output)

    def compute() -> dict[str, np.ndarray]:
        return {split: extractor.predict(ordered(config, data, split), verbose=0).astype(np.float32)
                for split in splits}

    features, hit = pooled_features(in_repo(folder), key, splits, compute)
    return features, {"feature_cache_hit": float(hit), "feature_time_s": time.perf_counter() - started}


def ordered(config: dict, data: Prepared, split: str):
    """One split in file order, scaled and resized like training batches (for inference)."""
    x, y = data.split(split)
    alone = Prepared({**data.arrays, "x_valid": x, "y_valid": y}, data.meta, data.path)
    return make_datasets(alone, FEATURE_BATCH, scale=config["data"]["scale"], resize=tuple(config["data"]["resize"]),
                         cache=False, epochs=0)["valid"]


def phase_pipelines(config: dict, data: Prepared, features: dict | None, begin: int, end: int, steps: int):
    """(train, valid) of epochs begin..end-1: on features when given, else on images (augmented if asked)."""
    seed, batch_size = config["seed"], config["batch_size"]
    if features is not None:
        train = shuffled_epochs(tf, features["train"], data.split("train")[1], batch_size, seed, begin, end)
        valid = tf.data.Dataset.from_tensor_slices((features["valid"], data.split("valid")[1])).batch(batch_size)
        return train.prefetch(tf.data.AUTOTUNE), valid.prefetch(tf.data.AUTOTUNE)
    pipelines = make_datasets(data, batch_size, scale=config["data"]["scale"], resize=tuple(config["data"]["resize"]),
                              seed=seed, epochs=end, start_epoch=begin)
    train = pipelines["train"]
    if config["model"]["augment"] != "none":
        train = augmented(train, config["model"], seed, first_step=begin * steps)
    return train, pipelines["valid"]


def augmented(batches, cfg: dict, seed: int, first_step: int):
    """Random horizontal flips (and shifts of up to model.translate of the size, zero-filled).

    Stateless: batch n of the run draws from (seed, n), so a resumed run sees the same
    augmented images as an uninterrupted one.
    """
    def augment(step, batch):
        images, labels = batch
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(first_step, tf.int64) + step])
        images = tf.image.stateless_random_flip_left_right(images, seed=key)
        if cfg["augment"] == "flip_translate":
            count, height = tf.shape(images)[0], tf.cast(tf.shape(images)[1], tf.float32)
            reach = tf.round(cfg["translate"] * (height - 1))
            shifts = tf.round(tf.random.stateless_uniform((count, 2), seed=key + 1, minval=-reach, maxval=reach))
            offsets = shifts / (height - 1)  # a box shifted by whole pixels, sampled pixel for pixel
            boxes = tf.concat([offsets, offsets + 1.0], axis=1)
            images = tf.image.crop_and_resize(images, boxes, tf.range(count), tf.shape(images)[1:3], method="nearest")
        return images, labels

    return batches.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def compile_phase(model: keras.Model, config: dict, fine_tune: bool, total_steps: int,
                  steps_per_execution: int) -> None:
    """Phase 2 gets a fresh optimizer at the lower learning rate (what was learned for the head stays)."""
    if fine_tune:
        config = copy.deepcopy(config)
        config["optimizer"]["learning_rate"] *= config["model"]["fine_tune_lr_factor"]
    model.compile(optimizer=build_optimizer(config, total_steps=total_steps), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)


def test_scores(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Accuracy, cross-entropy (clipped as Keras does) and the confusion matrix (rows: true class)."""
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return {"test_accuracy": float(np.mean(predicted == labels)), "test_loss": float(-np.mean(np.log(picked))),
            "confusion_matrix": matrix.tolist()}

