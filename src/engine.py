"""The MLP family's training (model.name=mlp): model, phases, evaluation, MC dropout, and the
pretext tasks (src/pretext.py) whose hidden layers a classifier can reuse.

The job calls fit_and_evaluate() with a validated config inside an open MLflow run; the
phased, resumable fit itself is src/fitting.py's, shared with the other families.
Everything here is plain Keras, read top to bottom.
"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from src import calibration, compiled, pretext
from src import callbacks as cbs
from src.data.load import Prepared, make_datasets, steps_per_epoch
from src.families import has_source
from src.fitting import Phase, Training, configure_runtime, steps_per_call
from src.models import mc_dropout_model, reuse_layers
from src.optim import build_optimizer
from src.resume import ResumeState

# MC dropout's passes over the test set run in batches this large, as the book's whole-set
# calls do: at the training batch size (32), 100 passes were 31,300 predict steps, each a
# Python round trip, and took longer than the training itself.
MC_DROPOUT_BATCH = 2048


def fit_and_evaluate(config: dict, data: Prepared, state: ResumeState, sink, workdir: Path,
                     source: keras.Model | None = None) -> dict:
    """Build, compile, (resume,) fit and evaluate; per-epoch metrics go to sink.

    With a source model (transfer), its hidden layers are copied in and training runs in
    phases: reused layers frozen for transfer.freeze_epochs, then all trainable under a
    freshly compiled optimizer, as the book does. Epoch numbers run on across phases.
    """
    configure_runtime(config)
    data = pretext.task_data(data, config)
    n_train, batch_size, epochs = len(data.split("train")[0]), config["batch_size"], config["epochs"]
    steps = steps_per_epoch(n_train, batch_size)
    model = pretext.build_model(config, data.split("train")[0].shape[1:], len(data.class_names))
    reused = reuse_layers(model, source) if source is not None else []
    extra = [diagnostics(config, data, sink)] if config["diagnostics"]["enabled"] else []
    training = Training(config, state, sink, workdir, extra)
    phases = training_phases(config)

    def phase(end: int, frozen: bool) -> Phase:
        def enter() -> keras.Model:
            for layer in reused:
                layer.trainable = not frozen
            # One phase: the job may train a kept model of the same graph (src/compiled.py). With
            # two, the second goes on from the first's weights in the same model, compiled anew.
            return compile_model(model, config, total_steps=steps * epochs, steps=steps, reuse=len(phases) == 1)

        def batches(begin: int, end: int) -> tuple:
            pipelines = datasets(data, config, seed=config["seed"], epochs=end, start_epoch=begin)
            return pipelines["train"], pipelines["valid"]

        return Phase(end, enter, batches)

    model = training.fit([phase(end, frozen) for end, frozen in phases], steps)
    pipelines = datasets(data, config, epochs=0)
    outcome = training.outcome(config["on_nan"], "lower optimizer.learning_rate, add clipping=norm, "
                                                 "or check the inputs' scale")
    return {**evaluate(model, pipelines, config), **outcome, "model": model,
            "example": next(iter(pipelines["test"]))[0].numpy()[:3]}


def datasets(data: Prepared, config: dict, batch_size: int | None = None, **kwargs) -> dict:
    """The splits' pipelines of (input, target) as the config's data and task want them."""
    pipelines = make_datasets(data, batch_size or config["batch_size"], scale=config["data"]["scale"],
                              flatten=config["data"]["flatten"], resize=config["data"]["resize"], **kwargs)
    return pretext.with_targets(pipelines, config["task"])


def training_phases(config: dict) -> list[tuple[int, bool]]:
    """(last epoch, reused layers frozen) per phase: one phase unless transfer freezes first."""
    freeze = config["transfer"]["freeze_epochs"] if has_source(config["transfer"]) else 0
    return [(freeze, True), (config["epochs"], False)] if freeze else [(config["epochs"], False)]


def compile_model(model: keras.Model, config: dict, total_steps: int, steps: int, reuse: bool = False) -> keras.Model:
    """The model compiled for the config's training; with reuse, possibly a kept twin (src/compiled.py)."""
    optimizer = build_optimizer(config, total_steps=total_steps)
    settings = {"loss": pretext.loss(config), "metrics": [] if config["task"] == "autoencoder" else ["accuracy"],
                "steps_per_execution": steps_per_call(config["steps_per_execution"], steps)}
    if reuse:
        return compiled.compile_or_reuse(model, optimizer, **settings)
    model.compile(optimizer=optimizer, **settings)
    return model


def diagnostics(config: dict, data: Prepared, sink) -> cbs.GradientDiagnostics:
    """Gradient diagnostics on a fixed batch: the first training images, transformed like the rest."""
    size = config["diagnostics"]["batch_size"]
    x, y = (array[:size] for array in data.split("train"))
    head = Prepared({**data.arrays, "x_valid": x, "y_valid": y}, data.meta, data.path)  # train stays: same scaling
    batch = datasets(head, config, size, cache=False, epochs=0)["valid"]
    images, targets = next(iter(batch))
    return cbs.GradientDiagnostics(images.numpy(), targets.numpy(), sink, pretext.diagnostics_loss(config))


def evaluate(model: keras.Model, pipelines: dict, config: dict) -> dict:
    """Test loss and accuracy; the validation split once more, with the weights training ended
    with (the best epoch's when early stopping restores them: the book's model.evaluate(X_valid));
    with mc_dropout_samples, MC-dropout accuracy on both (the book reports test for Fashion-MNIST,
    validation for CIFAR-10) and, on test, the calibration of the deterministic and the MC
    predictions (src/calibration.py: metrics, and their record under "calibration")."""
    scores = model.evaluate(pipelines["test"], verbose=0, return_dict=True)
    results = {"test_loss": float(scores["loss"]),
               **({"test_accuracy": float(scores["accuracy"])} if "accuracy" in scores else {})}
    samples = config["mc_dropout_samples"]
    if samples > 0:  # test first: its passes draw the same masks as before validation was added
        images, labels = split_arrays(pipelines["test"])
        passes = mc_dropout_passes(model, images, samples)
        results["test_mc_dropout_accuracy"] = accuracy(passes.mean(axis=0), labels)
        metrics, results["calibration"] = calibration.compare(predict(model, images), passes, labels)
        results.update(metrics)  # the deterministic pass draws no mask: validation's passes stay as they were
        images, labels = split_arrays(pipelines["valid"])
        results["val_mc_dropout_accuracy"] = accuracy(mc_dropout_passes(model, images, samples).mean(axis=0), labels)
    scores = model.evaluate(pipelines["valid"], verbose=0, return_dict=True)
    return {**results, "final_val_loss": float(scores["loss"]),
            **({"final_val_accuracy": float(scores["accuracy"])} if "accuracy" in scores else {})}


def split_arrays(split) -> tuple[np.ndarray, np.ndarray]:
    """A split's pipeline as two arrays: the images as the model sees them, and the labels."""
    batches = [(x.numpy(), y.numpy()) for x, y in split]
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    predicted = (probabilities[:, 0] > 0.5) if probabilities.shape[1] == 1 else probabilities.argmax(axis=1)
    return float(np.mean(predicted == labels))


def predict(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The class probabilities of one deterministic pass (dropout off), in MC_DROPOUT_BATCH chunks."""
    return batched(tf.function(lambda batch: model(batch, training=False)), images)


def mc_dropout_passes(model: keras.Model, images: np.ndarray, samples: int) -> np.ndarray:
    """The class probabilities of `samples` stochastic passes over images (samples x images x classes);
    their mean over passes is MC dropout's prediction.

    One traced call per MC_DROPOUT_BATCH images, as the book's whole-test-set calls: Keras's
    predict, called once a pass, traced its function again each time (or, kept, re-read the
    array into a dataset): 0.44 s a pass against 0.12 s for the same masks and numbers here.
    """
    sampler = mc_dropout_model(model)  # its dropout layers sample at inference
    sample = tf.function(lambda batch: sampler(batch, training=False))
    return np.stack([batched(sample, images) for _ in range(samples)])


def batched(call, images: np.ndarray) -> np.ndarray:
    return np.concatenate([call(tf.constant(images[start:start + MC_DROPOUT_BATCH])).numpy()
                           for start in range(0, len(images), MC_DROPOUT_BATCH)])
