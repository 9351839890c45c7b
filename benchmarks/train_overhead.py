"""Per-epoch and per-job cost of our tracked training against a bare Keras fit of the same model and data.

    python -m benchmarks.train_overhead                       # 4 epochs x 5 repeats, full train set: ~2.5 min
    python -m benchmarks.train_overhead --epochs 4 --repeats 5 --train-size 10000 --json out.json
    python -m benchmarks.train_overhead --jobs 5              # also: 5 one-epoch jobs on 3,000 images, each way

Target (the issue): with tracking and diagnostics on, an epoch costs at most 5% more than a
bare model.fit. The config is conf/config.yaml as it stands, with force=true, MLflow in a
fresh SQLite store and the resume state in a temporary folder (deleted at the end).

  bare     fitting.configure_runtime, then the model, optimizer, compile and tf.data pipelines
           that src.engine builds, and model.fit(...) with no callbacks of ours.
  tracked  src.job.train(cfg): the whole job (EpochStats, GradientDiagnostics, resume
           Backup, MetricLogger to MLflow; then evaluation, model logging, figures).

How an epoch is timed, the same way on both sides: a Clock callback appended after every
callback fit is given (for train(), by wrapping keras.Model.fit while it runs) stamps the
time when each epoch's on_epoch_end hooks are all done. Epoch k costs stamp(k) - stamp(k-1):
its training steps, validation and *every* hook of ours (diagnostics measure + log, the resume
backup, MLflow log_batch), which the logged epoch_time_s misses (EpochStats takes it before
they run). Epoch 1 (tracing) is left out; once-per-run costs (model logging, evaluation,
figures) fall outside every epoch. A run's number is its mean over epochs 2..E. Bare and
tracked runs alternate in one process (bare, tracked, bare, ...) so machine noise hits both;
the ratio is median(tracked) / median(bare) over the repeats. Also shown: each side's
steps + validation time (epoch begin to end, minus our hooks) and each hook of ours, timed:
on a shared machine the ratio moves by a few percent from one invocation to the next, and
the hooks line is the part of the overhead that noise does not blur.

Per job (--jobs N, target: at most 1 s more than bare): what a short job costs beyond its
training, as a sweep's jobs run one after another in one worker. N pairs, alternating: a
bare job (configure_runtime, build, compile, a one-epoch fit, model.evaluate on the test set:
the notebook way, which traces its functions every job) and train(cfg) of the same config
(everything above, with the MLflow run, diagnostics, resume state, the logged model, figures;
from its second job on, the compiled model of the first: src/compiled.py). The figure is the
median of the N differences, tracked minus bare, in seconds.
"""

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
from hydra import compose, initialize_config_dir

from benchmarks.common import figure, finish
from src import fitting
from src.config import validate
from src.data.load import load_prepared, make_datasets, reshape_splits, steps_per_epoch
from src.job import train
from src.models import build_mlp
from src.optim import build_optimizer
from src.paths import REPO, in_repo

TARGET = 1.05
JOB_TARGET_S = 1.0  # seconds a short job may cost beyond a bare notebook cell
VERBOSE = 1 if sys.stdout.isatty() else 2  # what src.engine passes to fit


class Clock(keras.callbacks.Callback):
    """Stamps each epoch's begin, and its end once every other on_epoch_end hook has run."""

    def __init__(self):
        super().__init__()
        self.begins, self.ends, self.hooks = [], [], {}  # hooks: name -> seconds per epoch (2..E)

    def set_model(self, model):
        super().set_model(model)
        self.model_seen = model

    def on_epoch_begin(self, epoch, logs=None):
        self.begins.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

    def result(self) -> dict:
        """Means over epochs 2..E: whole epoch, steps + validation, each hook of ours."""
        hooks = {name: statistics.mean(values) for name, values in self.hooks.items()}
        inside = statistics.mean(end - begin for begin, end in zip(self.begins[1:], self.ends[1:], strict=True))
        return {"epoch": (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1),
                "steps": inside - sum(hooks.values()), "hooks": hooks}


def timed(callback: keras.callbacks.Callback, hooks: dict[str, list[float]]) -> None:
    inner, name = callback.on_epoch_end, type(callback).__name__

    def on_epoch_end(epoch, logs=None):
        start = time.perf_counter()
        inner(epoch, logs)
        if epoch > 0:
            hooks.setdefault(name, []).append(time.perf_counter() - start)
    callback.on_epoch_end = on_epoch_end


@contextlib.contextmanager
def clocked_fit(clock: Clock):
    """While open, keras.Model.fit times its callbacks' on_epoch_end and runs clock after them."""
    original = keras.Model.fit

    def fit(model, *args, callbacks=None, **kwargs):
        for callback in callbacks or []:
            timed(callback, clock.hooks)
        return original(model, *args, callbacks=[*(callbacks or []), clock], **kwargs)

    keras.Model.fit = fit
    try:
        yield
    finally:
        keras.Model.fit = original


def bare_fit(config: dict, data, clock: Clock) -> None:
    """src.engine.fit_and_evaluate up to fit, without our callbacks."""
    fitting.configure_runtime(config)
    x_train, batch, epochs, d = data.split("train")[0], config["batch_size"], config["epochs"], config["data"]
    steps = steps_per_epoch(len(x_train), batch)
    model = build_mlp(config["model"], x_train.shape[1:], len(data.class_names))
    model.compile(optimizer=build_optimizer(config, total_steps=steps * epochs), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=config["steps_per_execution"])
    pipelines = make_datasets(data, batch, scale=d["scale"], flatten=d["flatten"], resize=d["resize"],
                              seed=config["seed"], epochs=epochs)
    model.fit(pipelines["train"], epochs=epochs, steps_per_epoch=steps, validation_data=pipelines["valid"],
              callbacks=[clock], shuffle=False, verbose=VERBOSE)


def bare_job(config: dict, data) -> float:
    """A whole one-job notebook cell: build, compile, fit, evaluate; its wall time."""
    started = time.perf_counter()
    clock = Clock()
    bare_fit(config, data, clock)
    model = clock.model_seen
    d = config["data"]
    test = make_datasets(data, config["batch_size"], scale=d["scale"], flatten=d["flatten"], resize=d["resize"],
                         epochs=0)["test"]
    model.evaluate(test, verbose=0)
    return time.perf_counter() - started


def per_job(jobs: int, train_size: int) -> list[tuple[float, float]]:
    """(bare, tracked) seconds of `jobs` one-epoch job pairs, alternating in this process."""
    store = Path(tempfile.mkdtemp(prefix="ch11-bench-"))
    try:
        overrides = [f"tracking.uri=sqlite:///{store}/mlflow.db", f"state_dir={store}/state", "name=bench",
                     "force=true", "epochs=1", f"data.train_size={train_size}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose("config", overrides=overrides)
        config = validate(cfg)
        data = reshape_splits(load_prepared(in_repo(config["data"]["path"])), train_size, config["validation_split"])
        pairs = []
        for job in range(jobs):
            bare = bare_job(config, data)
            started = time.perf_counter()
            train(cfg)
            pairs.append((bare, time.perf_counter() - started))
            print(f"job {job + 1}/{jobs}: bare {bare:.2f} s, tracked {pairs[-1][1]:.2f} s", flush=True)
        return pairs
    finally:
        shutil.rmtree(store, ignore_errors=True)


def measure(epochs: int, repeats: int, train_size: int | None) -> dict[str, list[dict]]:
    store = Path(tempfile.mkdtemp(prefix="ch11-bench-"))
    try:
        overrides = [f"tracking.uri=sqlite:///{store}/mlflow.db", f"state_dir={store}/state", "name=bench",
                     "force=true", f"epochs={epochs}", f"data.train_size={train_size or 'null'}"]
        with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
            cfg = compose("config", overrides=overrides)
        config = validate(cfg)  # plain dicts, as the engine sees them
        data = reshape_splits(load_prepared(in_repo(config["data"]["path"])), config["data"]["train_size"],
                              config["validation_split"])
        runs = {"bare": [], "tracked": []}
        for repeat in range(repeats):
            bare_fit(config, data, clock := Clock())
            runs["bare"].append(clock.result())
            with clocked_fit(clock := Clock()):
                train(cfg)
            runs["tracked"].append(clock.result())
            print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(
                f"{side} {values[-1]['epoch']:.3f} s/epoch" for side, values in runs.items()), flush=True)
        return runs
    finally:
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, >= 2 (epoch 1 is not timed)")
    parser.add_argument("--repeats", type=int, default=5, help="bare/tracked pairs")
    parser.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    parser.add_argument("--jobs", type=int, default=0, help="also time this many one-epoch job pairs (0: none)")
    parser.add_argument("--job-train-size", type=int, default=3000, help="training images of those jobs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.epochs < 2 or args.repeats < 1:
        parser.error("--epochs must be >= 2 and --repeats >= 1")
    began = time.perf_counter()
    runs = measure(args.epochs, args.repeats, args.train_size)

    stats = {}
    for side, values in runs.items():
        epochs = [run["epoch"] for run in values]
        stats[side] = {"median": statistics.median(epochs), "min": min(epochs), "max": max(epochs),
                       "steps": statistics.median(run["steps"] for run in values)}
    tracked = runs["tracked"]
    hooks = {name: statistics.median(run["hooks"][name] for run in tracked) for name in tracked[0]["hooks"]}
    ratio = stats["tracked"]["median"] / stats["bare"]["median"]
    print(f"\nseconds per epoch (epochs 2..{args.epochs}; {args.repeats} runs each)")
    print(f"{'':<8}{'median':>8}{'min':>8}{'max':>8}{'steps+valid':>13}")
    for side, row in stats.items():
        print(f"{side:<8}{row['median']:>8.3f}{row['min']:>8.3f}{row['max']:>8.3f}{row['steps']:>13.3f}")
    spent = sum(hooks.values())
    print(f"our on_epoch_end hooks: {spent:.4f} s/epoch = {spent / stats['bare']['median']:.1%} of a bare epoch ("
          + ", ".join(f"{name} {seconds:.4f}" for name, seconds in hooks.items() if seconds >= 5e-5) + ")")
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"overhead: tracked/bare epoch time = {ratio:.2f} (median of {args.repeats}; target <= {TARGET}: {verdict})")
    seconds = time.perf_counter() - began
    print(f"benchmark took {seconds:.0f} s")
    row = figure("tracked train() vs bare model.fit: seconds per epoch (lower is better)",
                 [t["epoch"] / b["epoch"] for t, b in zip(runs["tracked"], runs["bare"], strict=True)], TARGET,
                 f"{stats['tracked']['median']:.3f} vs {stats['bare']['median']:.3f} s an epoch; our hooks "
                 f"{spent * 1000:.0f} ms an epoch", higher_is_better=False)
    rows, pairs = [row], per_job(args.jobs, args.job_train_size) if args.jobs else []
    if pairs:
        bare, tracked = (statistics.median(side) for side in zip(*pairs, strict=True))
        rows.append(figure(f"per-job overhead: a one-epoch job on {args.job_train_size:,} images, tracked train() "
                           "minus a bare notebook cell (build, compile, fit, evaluate), seconds",
                           [t - b for b, t in pairs], JOB_TARGET_S,
                           f"{tracked:.2f} vs {bare:.2f} s a job (medians of {len(pairs)})", higher_is_better=False,
                           unit="s"))
    finish("train_overhead", args.json, rows, epochs=args.epochs, repeats=args.repeats, train_size=args.train_size,
           runs=runs, stats=stats, hooks_s=hooks, seconds=time.perf_counter() - began, job_pairs_s=pairs)


if __name__ == "__main__":
    main()
