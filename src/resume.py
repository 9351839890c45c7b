"""Resume a killed run where it stopped: state kept per run key under cfg.state_dir.

    <state_dir>/<run key>/lock              held while a process trains this config
                          run.json          the MLflow run to continue
                          epoch_0007/       state.npz (weights, optimizer state, dropout seeds)
                                            and progress.json (epochs done, every epoch's logs,
                                            callback counters)

Each epoch is written to a temporary folder and renamed into place, so a kill at any
moment leaves the previous epoch intact. The backup is saved before the epoch's metrics
go to MLflow; on resume, epochs in the backup but missing from MLflow are logged then,
so every epoch is logged exactly once. The folder is removed when the run finishes.
"""

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from src.errors import DataError, storage_error
from src.paths import write_json

log = logging.getLogger(__name__)

COUNTERS = ("wait", "best", "cooldown_counter", "stopped_epoch")  # EarlyStopping / ReduceLROnPlateau state


class ResumeState:
    def __init__(self, root: Path):
        """Take the config's lock, waiting while another process trains this exact config.

        The kernel drops a flock when its process dies, however it dies: no stale locks.
        """
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = open(root / "lock", "w")  # noqa: SIM115 (held for the life of the run)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a second sweep, or parallel jobs sharing a transfer source
            log.info("another process is training this exact config: waiting for it (lock %s)", root / "lock")
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    @property
    def run_id(self) -> str | None:
        path = self.root / "run.json"
        return json.loads(path.read_text())["run_id"] if path.is_file() else None

    def remember_run(self, run_id: str) -> None:
        write_json(self.root / "run.json", {"run_id": run_id})

    def latest(self) -> Path | None:
        done = sorted(self.root.glob("epoch_[0-9][0-9][0-9][0-9]"))
        return done[-1] if done else None

    def progress(self) -> dict:
        latest = self.latest()
        return json.loads((latest / "progress.json").read_text()) if latest else {"epochs_done": 0, "history": []}

    def restore(self, model: keras.Model, callbacks: list[keras.callbacks.Callback], optimizer: bool = True) -> dict:
        """Load the last finished epoch into model (built and compiled) and callbacks.

        optimizer=False loads the weights only: a new training phase starts a fresh optimizer.
        """
        latest = self.latest()
        if latest is None:
            return self.progress()
        model.optimizer.build(model.trainable_variables)
        groups = state_variables(model)
        if not optimizer:
            groups["optimizer"] = []
        with np.load(latest / "state.npz") as saved:
            for group, variables in groups.items():
                held = sum(name.startswith(f"{group}_") for name in saved.files)
                if variables and held != len(variables):
                    raise DataError(f"{latest} holds {held} {group} variables, this run has {len(variables)}; "
                                    f"delete {self.root} to start afresh")
                for index, variable in enumerate(variables):
                    variable.assign(saved[f"{group}_{index}"])
        progress = self.progress()
        for callback, counters in zip(callbacks, progress["callbacks"], strict=False):
            for name, value in counters.items():
                setattr(callback, name, value)
        return progress

    def save(self, model: keras.Model, callbacks: list, epochs_done: int, history: list[dict], phase: int = 0) -> None:
        final = self.root / f"epoch_{epochs_done:04d}"
        partial = self.root / f".{final.name}.partial"
        try:
            self._write(partial, final, model, callbacks, epochs_done, history, phase)
        except OSError as error:
            shutil.rmtree(partial, ignore_errors=True)  # give back what the half-written epoch took
            kept = self.latest()
            raise storage_error(error, str(partial), f"free space there (or set state_dir) and run the same command: "
                                f"it resumes from {kept.name if kept else 'the start'}") from error
        for older in self.root.glob("epoch_[0-9][0-9][0-9][0-9]"):
            if older != final:
                shutil.rmtree(older, ignore_errors=True)

    def _write(self, partial: Path, final: Path, model, callbacks, epochs_done, history, phase) -> None:
        """The epoch's state into partial, then renamed to final: a kill or a full disk leaves no half epoch."""
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        np.savez(partial / "state.npz", **{f"{group}_{i}": np.asarray(v) for group, variables
                                           in state_variables(model).items() for i, v in enumerate(variables)})
        progress = {
            "epochs_done": epochs_done, "history": history, "phase": phase,
            "callbacks": [{name: _plain(getattr(cb, name)) for name in COUNTERS if hasattr(cb, name)}
                          for cb in callbacks],
        }
        write_json(partial / "progress.json", progress)
        shutil.rmtree(final, ignore_errors=True)  # only there if this epoch was saved before a crash
        os.replace(partial, final)

    def finish(self) -> None:
        """The run is recorded: drop the state (the lock goes with the process)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self._lock.close()

    def release(self) -> None:
        self._lock.close()


class Backup(keras.callbacks.Callback):
    """Saves the resume state at the end of every epoch, with the logs of all epochs so far."""

    def __init__(self, state: ResumeState, history: list[dict], watched: list[keras.callbacks.Callback]):
        super().__init__()
        self.state, self.history, self.watched = state, history, watched
        self.phase = 0  # the training phase (transfer: frozen, then unfrozen) the saved optimizer belongs to

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({key: float(value) for key, value in logs.items()})
        if np.isfinite(logs.get("loss", 0.0)):  # never resume from a diverged state
            self.state.save(self.model, self.watched, epoch + 1, self.history, self.phase)


def state_variables(model: keras.Model) -> dict[str, list]:
    """Everything training changes: weights, BN statistics, dropout seeds, optimizer slots and step.

    Plain arrays in a fixed order (np.savez: a few ms an epoch, a fifth of Keras's .h5 save),
    model and optimizer apart: a new training phase reloads the first without the second.
    """
    return {"model": model.variables, "optimizer": model.optimizer.variables}


def _plain(value):
    return float(value) if isinstance(value, np.floating | np.integer) else value
