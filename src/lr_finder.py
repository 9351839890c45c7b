"""The book's learning-rate finder over any MLP training config, recorded as an MLflow run.

    python -m src.lr_finder                                   # conf/config.yaml as it stands
    python -m src.lr_finder optimizer=sgd batch_size=128 data=cifar10 --max-rate 1
    python -m src.lr_finder experiment=cifar10_mlp +variant/cifar10_mlp=one_cycle

Hydra overrides work as for src.train. One epoch (--epochs) trains with the learning rate grown
exponentially from --min-rate to --max-rate (the notebook's defaults: 1e-4 and 1), one step at a
time, as its find_learning_rate() does; the loss of each batch is plotted against its rate on a
log axis. The suggested rate is the bottom of the (smoothed) curve, where the notebook says
1cycle's peak belongs; the divergence rate is the first one past it where the loss is back above
where it started. The run (experiment `lr_finder`) holds both, the curve as metrics, and the plot.
"""

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from src.cli import ArgumentParser, error_line, one_line_errors
from src.config import compose, flatten
from src.errors import ConfigError, LabError
from src.paths import in_repo, write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
EXPERIMENT = "lr_finder"
WINDOW = 0.05        # the curve is smoothed over this share of its steps: batch losses are noisy
TRAILING = 0.98      # while it runs, a trailing average (bias-corrected) watches for the blow-up:
BLOWN_UP = 4.0       # the sweep stops once it exceeds this multiple of its lowest


@dataclass(frozen=True)
class Curve:
    rates: list[float]
    losses: list[float]        # each batch's own loss (Keras logs the epoch's running mean)
    smoothed: list[float]

    @property
    def bottom(self) -> int:
        return min(range(len(self.smoothed)), key=self.smoothed.__getitem__)

    def suggestion(self) -> float:
        """The rate at the bottom of the curve: 1cycle's peak, as the notebook picks it."""
        return self.rates[self.bottom]

    def divergence(self) -> float | None:
        """The first rate past the bottom where the loss is back above its start (None: it never is)."""
        start = self.smoothed[0]
        return next((rate for rate, loss in zip(self.rates[self.bottom:], self.smoothed[self.bottom:], strict=True)
                     if loss > start), None)

    def found(self) -> dict[str, float | None]:
        """Both rates, under the names the MLflow run, the stage's JSON and the report use."""
        return {"suggested_learning_rate": self.suggestion(), "divergence_learning_rate": self.divergence()}


def smooth(losses: list[float], share: float = WINDOW) -> list[float]:
    """A centred running mean over `share` of the steps: no lag, so its bottom is where the curve's is
    (a trailing average would place it later, at a higher rate)."""
    width = max(1, int(len(losses) * share)) | 1  # odd: centred
    padded = np.pad(np.asarray(losses, dtype=float), width // 2, mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid").tolist()


def sweep(config: dict, data, min_rate: float, max_rate: float, epochs: int) -> Curve:
    """Train a fresh model of config on data with the rate grown from min_rate to max_rate."""
    import keras  # noqa: PLC0415 (TensorFlow: only once the config and the data are good)

    from src.data.load import steps_per_epoch  # noqa: PLC0415
    from src.engine import compile_model, datasets  # noqa: PLC0415
    from src.fitting import configure_runtime  # noqa: PLC0415
    from src.pretext import build_model, task_data  # noqa: PLC0415

    configure_runtime(config)
    data = task_data(data, config)
    steps = steps_per_epoch(len(data.split("train")[0]), config["batch_size"]) * epochs
    factor = (max_rate / min_rate) ** (1 / max(steps - 1, 1))
    # The rate lives in the optimizer as a per-step schedule (exponential "decay" by a factor > 1),
    # one step per call so that each batch's loss is seen with the rate it was trained at.
    grown = {**config, "optimizer": {**config["optimizer"], "learning_rate": min_rate}, "steps_per_execution": 1,
             "schedule": {"name": "exponential_decay", "per": "step", "decay_steps": 1, "decay_rate": factor,
                          "staircase": False}}
    model = build_model(config, data.split("train")[0].shape[1:], len(data.class_names))
    compile_model(model, grown, total_steps=steps, steps=steps)
    losses = []

    class BatchLosses(keras.callbacks.Callback):
        lowest, average = math.inf, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.total = 0.0

        def on_train_batch_end(self, batch, logs=None):
            total = logs["loss"] * (batch + 1)  # the running mean back to a sum, as the notebook does
            losses.append(total - self.total)
            self.total = total
            self.average = TRAILING * self.average + (1 - TRAILING) * losses[-1]
            smoothed = self.average / (1 - TRAILING ** len(losses))
            self.lowest = min(self.lowest, smoothed)
            if not math.isfinite(smoothed) or smoothed > BLOWN_UP * self.lowest:
                self.model.stop_training = True  # past the divergence: the rest of the sweep says nothing

    train = datasets(data, config, seed=config["seed"], epochs=epochs)["train"]
    model.fit(train, epochs=epochs, steps_per_epoch=steps // epochs, callbacks=[BatchLosses()], shuffle=False,
              verbose=0)  # the pipeline shuffles each epoch itself
    finite = [loss for loss in losses if math.isfinite(loss)]
    return Curve([min_rate * factor**step for step in range(len(finite))], finite, smooth(finite))


def record(config: dict, curve: Curve, found: dict, settings: dict) -> str:
    """The sweep as an MLflow run of experiment lr_finder: settings, curve, the rates found and plot."""
    from src import figures, tracking  # noqa: PLC0415

    client = tracking.connect(config["tracking"])
    experiment_id = tracking.ensure_experiment(client, EXPERIMENT, config["tracking"])
    run_id = tracking.start_run(client, experiment_id, None, None, f"{config['name']} lr finder",
                                {f"{tracking.TAG}role": "lr_finder"})
    tracking.log_params(client, run_id, {**flatten(config), **{f"lr_finder.{k}": v for k, v in settings.items()}})
    sink = tracking.MetricSink(client, run_id)
    for step, (rate, loss, smoothed) in enumerate(zip(curve.rates, curve.losses, curve.smoothed, strict=True)):
        sink(step, {"lr_finder_rate": rate, "lr_finder_loss": loss, "lr_finder_smoothed_loss": smoothed})
    sink(len(curve.rates), {key: rate for key, rate in found.items() if rate is not None})
    with tempfile.TemporaryDirectory() as folder:
        plot = figures.lr_vs_loss(curve.rates, curve.losses, curve.smoothed, found["suggested_learning_rate"],
                                  found["divergence_learning_rate"], Path(folder) / "lr_vs_loss.png")
        tracking.log_artifact(client, run_id, plot, "figures")
    tracking.end_run(client, run_id, "FINISHED")
    return run_id


def compose_config(overrides: list[str]) -> dict:
    """conf/config.yaml with Hydra overrides, validated as src.train validates a job, for the MLP family."""
    config = compose(overrides)
    if config["model"]["name"] != "mlp":
        raise ConfigError(f"model={config['model']['name']}: the finder trains the MLP family; use model=mlp")
    return config


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m src.lr_finder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-rate", type=float, default=1e-4, help="the first step's rate (default 1e-4)")
    parser.add_argument("--max-rate", type=float, default=1.0, help="the last step's rate (default 1)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs the sweep spans (default 1)")
    parser.add_argument("--output", type=Path, help="also write the rates found to this JSON file (a DVC stage's)")
    options, overrides = parser.parse_known_args(argv)
    if not 0 < options.min_rate < options.max_rate or options.epochs < 1:
        raise ConfigError(f"--min-rate {options.min_rate}, --max-rate {options.max_rate}, --epochs {options.epochs}: "
                          "need 0 < min < max and at least 1 epoch")
    config = compose_config(overrides)
    from src.data.load import reshape_splits  # noqa: PLC0415
    from src.data.shared import prepared_once  # noqa: PLC0415

    data = reshape_splits(prepared_once(in_repo(config["data"]["path"])), config["data"]["train_size"],
                          config["validation_split"], config["data"]["classes"])
    curve = sweep(config, data, options.min_rate, options.max_rate, options.epochs)
    if len(curve.rates) < 2:
        raise ConfigError(f"the loss was not finite from the first steps at --min-rate {options.min_rate}; lower it")
    found = curve.found()
    run_id = record(config, curve, found, {key: value for key, value in vars(options).items() if key != "output"})
    if options.output:
        write_json(in_repo(options.output), {
            "overrides": overrides, "configured_learning_rate": config["optimizer"]["learning_rate"], **found,
            "min_rate": options.min_rate, "max_rate": options.max_rate, "epochs": options.epochs,
            "steps": len(curve.rates), "run_id": run_id})
    divergence = found["divergence_learning_rate"]
    climbs = f"climbs back above its start at {divergence:.3g}" if divergence else "never climbs back above its start"
    print(f"suggested learning rate {found['suggested_learning_rate']:.3g} (the bottom of the curve); the loss "
          f"{climbs} (MLflow run {run_id}, experiment {EXPERIMENT})")


if __name__ == "__main__":
    with one_line_errors((LabError, HydraException, OmegaConfBaseException), describe=error_line):
        main(sys.argv[1:])
