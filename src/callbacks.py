"""Keras callbacks of a training run: epoch stats, gradient diagnostics, metric logging.

Order matters (engine.py builds the list): EpochStats adds its values to the epoch's
logs; the resume backup then saves them; MetricLogger records them.
"""

import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from src import compiled
from src.models import activation_layers, kernel_layers

MetricSink = Callable[[int, dict[str, float]], None]  # (step, metrics) -> recorded somewhere


class EpochStats(keras.callbacks.Callback):
    """Adds learning_rate (in effect at the end of the epoch) and epoch_time_s to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_time_s"] = time.perf_counter() - self.started
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class MetricLogger(keras.callbacks.Callback):
    """Sends each epoch's logs to a sink at step = epochs completed (1, 2, ...)."""

    def __init__(self, sink: MetricSink):
        super().__init__()
        self.sink = sink

    def on_epoch_end(self, epoch, logs=None):
        self.sink(epoch + 1, {key: float(value) for key, value in logs.items()})


class GradientDiagnostics(keras.callbacks.Callback):
    """Per-layer gradient norms and activation mean/std on one fixed training batch.

    Measured in training mode (dropout on, BN on batch statistics), as the optimizer sees
    the network, then every non-trainable variable (BN moving statistics, dropout seeds)
    is put back, so measuring changes nothing in the run. Step 0 is the initialisation.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, sink: MetricSink,
                 loss: keras.losses.Loss | None = None):
        super().__init__()
        self.images, self.targets, self.sink = tf.constant(images), tf.constant(targets), sink
        self.loss = loss  # None: the classifier's cross-entropy
        self.history: dict[int, dict[str, float]] = {}

    def set_model(self, model):
        super().set_model(model)
        # traced once per model: a model kept for the next job (src/compiled.py) keeps it too
        self._measure = compiled.traced(model, f"diagnostics {self.loss and self.loss.name}",
                                        lambda: measure_function(model, self.loss))

    def on_train_begin(self, logs=None):
        if not self.history and self.model.optimizer.iterations == 0:
            self.sink(0, self.measure(0))

    def on_epoch_end(self, epoch, logs=None):
        self.sink(epoch + 1, self.measure(epoch + 1))  # not in logs: Keras would print them all

    def measure(self, step: int) -> dict[str, float]:
        saved = [variable.numpy() for variable in self.model.non_trainable_variables]
        values = {key: float(value) for key, value in self._measure(self.images, self.targets).items()}
        for variable, value in zip(self.model.non_trainable_variables, saved, strict=True):
            variable.assign(value)
        self.history[step] = values
        return values


def measure_function(model: keras.Model, loss: keras.losses.Loss | None) -> Callable:
    """(images, targets) -> every Dense layer's gradient norm and every activation's mean and std."""
    activations, kernels = activation_layers(model), kernel_layers(model)
    probe = keras.Model(model.inputs, [layer.output for layer in activations] + list(model.outputs))

    def measure(images, targets) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            *hidden, predictions = probe(images, training=True)
            binary = predictions.shape[-1] == 1  # model.output=sigmoid
            classify = keras.losses.BinaryCrossentropy() if binary else keras.losses.SparseCategoricalCrossentropy()
            value = (loss or classify)(targets, predictions)
            value += tf.add_n(model.losses) if model.losses else 0.0
        gradients = tape.gradient(value, [layer.kernel for layer in kernels])
        values = {f"grad_norm/{layer.name}": tf.norm(g) for layer, g in zip(kernels, gradients, strict=True)}
        for layer, output in zip(activations, hidden, strict=True):
            output = tf.cast(output, tf.float32)
            values[f"act_mean/{layer.name.removesuffix('_act')}"] = tf.reduce_mean(output)
            values[f"act_std/{layer.name.removesuffix('_act')}"] = tf.math.reduce_std(output)
        return values

    return measure
