"""What every model family's training shares: runtime set-up, callbacks and the one phased fit.

A family's engine (src/engine.py, src/pretrained/engine.py) describes its training as phases
(Phase: which model trains, compiled how, on which batches, up to which epoch) and hands them
to fit_phases(), which runs them, backs up every epoch and resumes a stopped run.

The resume rule, for every family: the saved state belongs to the phase it was saved in. It
is restored into that phase's model; the optimizer's state too only if the stop fell inside
that phase (a phase that ended hands its weights to the next, which starts a fresh optimizer,
as the book does). Phases before it are skipped; epoch numbers run on across phases.
"""

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from src import callbacks as cbs
from src.errors import TrainingError
from src.optim import schedule_callbacks
from src.resume import Backup, ResumeState

log = logging.getLogger(__name__)


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


def standard_callbacks(config: dict, workdir: Path) -> list[keras.callbacks.Callback]:
    """The config's callbacks whose counters are part of the resume state."""
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


def steps_per_call(requested: int, steps: int) -> int:
    """Batches per compiled call: the smallest divisor of an epoch's steps that is >= requested.

    Keras runs whole calls, and our training data is one stream across epochs: a call size
    that does not divide the epoch runs the epoch's last call on into the next epoch's
    batches, shifting every epoch boundary (per-epoch metrics, schedules, early stopping).
    """
    return next(size for size in range(min(requested, steps), steps + 1) if steps % size == 0)


@dataclass
class Phase:
    """Epochs up to `end` of one compiled model.

    enter() makes the phase's layers trainable (or frozen), compiles and returns the model
    that trains; batches(begin, end) gives the (train, valid) datasets of those epochs.
    """

    end: int
    enter: Callable[[], keras.Model]
    batches: Callable[[int, int], tuple]


class Training:
    """A job's resumable training: its callbacks, the epochs' history and the phased fit."""

    def __init__(self, config: dict, state: ResumeState, sink, workdir: Path, extra_callbacks=()):
        self.state, self.progress = state, state.progress()
        self.history = self.progress["history"]
        self.stateful = standard_callbacks(config, workdir)  # their counters are part of the resume state
        self.backup = Backup(state, self.history, self.stateful)
        self.callbacks = [cbs.EpochStats(), *extra_callbacks, *self.stateful, self.backup, cbs.MetricLogger(sink)]

    def fit(self, phases: list[Phase], steps: int) -> keras.Model:
        """Run the phases from where the saved state stopped (see the module's resume rule);
        returns the model the last phase trained."""
        start, saved = self.progress["epochs_done"], self.progress.get("phase", 0)
        total = phases[-1].end
        if 0 < start < total:
            log.info("resuming at epoch %d of %d from %s", start + 1, total, self.state.latest())
        elif start:
            log.info("all %d epochs were done before the stop (%s): evaluating and recording", total,
                     self.state.latest())
        for index, phase in enumerate(phases):
            if index < saved:
                continue  # finished before the stop: the saved state belongs to a later phase
            model = phase.enter()
            if index == saved and start:
                self.state.restore(model, self.stateful, optimizer=start < phase.end)
            begin = max(start, phases[index - 1].end if index else 0)
            if begin >= phase.end:
                continue
            self.backup.phase = index
            train, valid = phase.batches(begin, phase.end)
            model.fit(train, epochs=phase.end, initial_epoch=begin, steps_per_epoch=steps,
                      validation_data=valid, callbacks=self.callbacks, shuffle=False,
                      verbose=1 if sys.stdout.isatty() else 2)  # one line per epoch in logs
            if self.diverged_at():
                break
        return model

    def diverged_at(self) -> int:
        """The epoch whose loss became NaN (training stops there), else 0."""
        return len(self.history) if self.history and not np.isfinite(self.history[-1].get("loss", np.nan)) else 0

    def outcome(self, on_nan: str, advice: str) -> dict:
        """Epochs run and divergence, or (on_nan=fail) the TrainingError that names the fix."""
        diverged = self.diverged_at()
        if diverged and on_nan == "fail":
            raise TrainingError(f"loss became NaN at epoch {diverged}; {advice}")
        if diverged:
            log.warning("loss became NaN at epoch %d: recorded as diverged (on_nan=record)", diverged)
        return {"epochs_run": len(self.history), "diverged_at_epoch": diverged}


def predict(model: keras.Model, data, **kwargs) -> np.ndarray:
    """model.predict one batch per call, whatever steps_per_execution the model was compiled with.

    Keras's predict runs a multi-batch call as a Python loop unrolled into one traced graph
    (fit and evaluate use a while loop): at 313 batches a call, tracing a 20-layer MLP took
    47 s and MC dropout or a MobileNetV2 test pass ran 2x slower than the whole training.
    Predictions run after training, so the model's own setting is not needed any more.
    """
    model.steps_per_execution, model.predict_function = 1, None
    return model.predict(data, verbose=0, **kwargs)
