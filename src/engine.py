"""The TensorFlow side of a run: runtime set-up, model, fit, evaluation.

train.py calls fit_and_evaluate() with a validated config inside an open MLflow run;
everything here is plain Keras, read top to bottom.
"""

import logging
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from src import callbacks as cbs
from src.data.load import Prepared, make_datasets, steps_per_epoch
from src.errors import TrainingError
from src.models import BUILDERS, mc_dropout_model, reuse_layers
from src.optim import build_optimizer, schedule_callbacks
from src.resume import Backup, ResumeState

log = logging.getLogger(__name__)
# MC dropout's passes over the test set run in batches this large, as the book's whole-set
# calls do: at the training batch size (32), 100 passes were 31,300 predict steps, each a
# Python round trip, and took longer than the training itself.
MC_DROPOUT_BATCH = 2048


def configure_runtime(config: dict) -> None:
    """Threads, seeds, determinism and precision: before any model is built."""
    threads = config["threads"]
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        try:  # only possible before TensorFlow's first op in this process
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:
            log.warning("threads=%s ignored: TensorFlow already started in this process", threads)
    keras.backend.clear_session()  # a fresh graph per job (in-process sweeps, reused workers)
    keras.utils.set_random_seed(config["seed"])
    if config["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():  # a previous job in this process turned it on
        tf_config.disable_op_determinism()  # only exposed under tensorflow.python
    keras.mixed_precision.set_global_policy(config["precision"])


def fit_and_evaluate(config: dict, data: Prepared, state: ResumeState, sink, workdir: Path,
                     source: keras.Model | None = None) -> dict:
    """Build, compile, (resume,) fit and evaluate; per-epoch metrics go to sink.

    With a source model (transfer), its hidden layers are copied in and training runs in
    phases: reused layers frozen for transfer.freeze_epochs, then all trainable under a
    freshly compiled optimizer, as the book does. Epoch numbers run on across phases.
    """
    configure_runtime(config)
    n_train, batch_size, epochs = len(data.split("train")[0]), config["batch_size"], config["epochs"]
    steps = steps_per_epoch(n_train, batch_size)
    model = BUILDERS[config["model"]["name"]](config["model"], data.split("train")[0].shape[1:], len(data.class_names))
    reused = reuse_layers(model, source) if source is not None else []
    phases = training_phases(config)
    stateful = standard_callbacks(config, workdir)  # their counters are part of the resume state
    progress = state.progress()
    start = progress["epochs_done"]
    if 0 < start < epochs:
        log.info("resuming at epoch %d of %d from %s", start + 1, epochs, state.latest())
    elif start:
        log.info("all %d epochs were done before the stop (%s): evaluating and recording", epochs, state.latest())
    history = progress["history"]
    backup = Backup(state, history, stateful)
    order = [cbs.EpochStats()]
    if config["diagnostics"]["enabled"]:
        order.append(diagnostics(config, data, sink))
    order += [*stateful, backup, cbs.MetricLogger(sink)]
    current = next(index for index, (end, _) in enumerate(phases) if start < end or index == len(phases) - 1)
    for index in range(current, len(phases)):
        end, frozen = phases[index]
        for layer in reused:
            layer.trainable = not frozen
        compile_model(model, config, total_steps=steps * epochs, steps=steps)
        if index == current:  # the saved optimizer state belongs to the phase it was saved in
            state.restore(model, stateful, optimizer=progress.get("phase", 0) == index)
        begin = max(start, phases[index - 1][0] if index else 0)
        if begin >= end:
            continue
        backup.phase = index
        pipelines = make_datasets(data, batch_size, scale=config["data"]["scale"], flatten=config["data"]["flatten"],
                                  resize=config["data"]["resize"], seed=config["seed"], epochs=end, start_epoch=begin)
        model.fit(pipelines["train"], epochs=end, initial_epoch=begin, steps_per_epoch=steps,
                  validation_data=pipelines["valid"], callbacks=order, shuffle=False,
                  verbose=1 if sys.stdout.isatty() else 2)  # one line per epoch in logs
        if history and not np.isfinite(history[-1].get("loss", np.nan)):
            break
    pipelines = make_datasets(data, batch_size, scale=config["data"]["scale"], flatten=config["data"]["flatten"],
                              resize=config["data"]["resize"], epochs=0)
    diverged = bool(history) and not np.isfinite(history[-1].get("loss", np.nan))
    if diverged and config["on_nan"] == "fail":
        raise TrainingError(f"loss became NaN at epoch {len(history)}; lower optimizer.learning_rate, "
                            "add clipping=norm, or check the inputs' scale")
    if diverged:
        log.warning("loss became NaN at epoch %d: recorded as diverged (on_nan=record)", len(history))
    return {**evaluate(model, pipelines, config), "epochs_run": len(history), "model": model,
            "example": next(iter(pipelines["test"]))[0].numpy()[:3], "diverged_at_epoch": len(history) if diverged else 0}


def training_phases(config: dict) -> list[tuple[int, bool]]:
    """(last epoch, reused layers frozen) per phase: one phase unless transfer freezes first."""
    freeze = config["transfer"]["freeze_epochs"] if config["transfer"]["source_classes"] else 0
    return [(freeze, True), (config["epochs"], False)] if freeze else [(config["epochs"], False)]


def compile_model(model: keras.Model, config: dict, total_steps: int, steps: int) -> None:
    binary = config["model"]["output"] == "sigmoid"
    model.compile(optimizer=build_optimizer(config, total_steps=total_steps),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_call(config["steps_per_execution"], steps))


def steps_per_call(requested: int, steps: int) -> int:
    """Batches per compiled call: the smallest divisor of an epoch's steps that is >= requested.

    Keras runs whole calls, and our training data is one stream across epochs: a call size
    that does not divide the epoch runs the epoch's last call on into the next epoch's
    batches, shifting every epoch boundary (per-epoch metrics, schedules, early stopping).
    """
    return next(size for size in range(min(requested, steps), steps + 1) if steps % size == 0)


def standard_callbacks(config: dict, workdir: Path) -> list[keras.callbacks.Callback]:
    stateful = schedule_callbacks(config)
    if config["early_stopping"]["patience"] is not None:
        stateful.append(keras.callbacks.EarlyStopping(
            patience=config["early_stopping"]["patience"],
            restore_best_weights=config["early_stopping"]["restore_best_weights"]))
    if config["checkpoint"]["best_only"]:
        stateful.append(keras.callbacks.ModelCheckpoint(workdir / "best.keras", save_best_only=True))
    if config["terminate_on_nan"]:
        stateful.append(keras.callbacks.TerminateOnNaN())
    return stateful


def diagnostics(config: dict, data: Prepared, sink) -> cbs.GradientDiagnostics:
    """Gradient diagnostics on a fixed batch: the first training images, transformed like the rest."""
    size = config["diagnostics"]["batch_size"]
    x, y = (array[:size] for array in data.split("train"))
    head = Prepared({**data.arrays, "x_valid": x, "y_valid": y}, data.meta, data.path)  # train stays: same scaling
    batch = make_datasets(head, size, scale=config["data"]["scale"], flatten=config["data"]["flatten"],
                          resize=config["data"]["resize"], cache=False, epochs=0)["valid"]
    images, labels = next(iter(batch))
    return cbs.GradientDiagnostics(images.numpy(), labels.numpy(), sink)


def evaluate(model: keras.Model, pipelines: dict, config: dict) -> dict[str, float]:
    """Test loss and accuracy; the validation split once more, with the weights training ended
    with (the best epoch's when early stopping restores them: the book's model.evaluate(X_valid));
    with mc_dropout_samples, MC-dropout accuracy on both (the book reports test for Fashion-MNIST,
    validation for CIFAR-10)."""
    scores = model.evaluate(pipelines["test"], verbose=0, return_dict=True)
    results = {"test_loss": float(scores["loss"]), "test_accuracy": float(scores["accuracy"])}
    samples = config["mc_dropout_samples"]
    if samples > 0:  # test first: its passes draw the same masks as before validation was added
        results["test_mc_dropout_accuracy"] = mc_dropout_accuracy(model, pipelines["test"], samples)
        results["val_mc_dropout_accuracy"] = mc_dropout_accuracy(model, pipelines["valid"], samples)
    scores = model.evaluate(pipelines["valid"], verbose=0, return_dict=True)
    return {**results, "final_val_loss": float(scores["loss"]), "final_val_accuracy": float(scores["accuracy"])}


def mc_dropout_accuracy(model: keras.Model, split, samples: int) -> float:
    """Accuracy of the class probabilities averaged over `samples` stochastic passes (MC dropout)."""
    batches = [(x.numpy(), y.numpy()) for x, y in split]
    images, labels = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    probabilities = mc_dropout_probabilities(model, images, samples)
    predicted = (probabilities[:, 0] > 0.5) if probabilities.shape[1] == 1 else probabilities.argmax(axis=1)
    return float(np.mean(predicted == labels))


def mc_dropout_probabilities(model: keras.Model, images: np.ndarray, samples: int) -> np.ndarray:
    """The class probabilities of `samples` stochastic passes over images, averaged (MC dropout).

    One traced call per MC_DROPOUT_BATCH images, as the book's whole-test-set calls: Keras's
    predict, called once a pass, traced its function again each time (or, kept, re-read the
    array into a dataset): 0.44 s a pass against 0.12 s for the same masks and numbers here.
    """
    sampler = mc_dropout_model(model)  # its dropout layers sample at inference
    sample = tf.function(lambda batch: sampler(batch, training=False))
    batches = [tf.constant(images[start:start + MC_DROPOUT_BATCH]) for start in range(0, len(images), MC_DROPOUT_BATCH)]
    return np.mean([np.concatenate([sample(batch).numpy() for batch in batches]) for _ in range(samples)], axis=0)


def predict(model: keras.Model, data, **kwargs) -> np.ndarray:
    """model.predict one batch per call, whatever steps_per_execution the model was compiled with.

    Keras's predict runs a multi-batch call as a Python loop unrolled into one traced graph
    (fit and evaluate use a while loop): at 313 batches a call, tracing a 20-layer MLP took
    47 s and MC dropout or a MobileNetV2 test pass ran 2x slower than the whole training.
    Predictions run after training, so the model's own setting is not needed any more.
    """
    model.steps_per_execution, model.predict_function = 1, None
    return model.predict(data, verbose=0, **kwargs)


def inference_copy(model: keras.Model) -> keras.Model:
    """The trained network without its optimizer: what gets logged as the MLflow model."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
