"""Headline: chapter experiments on Fashion-MNIST, run by our pipeline against the notebook way.

    python -m benchmarks.headline                      # make bench's: 3 experiments, seed 42, 20,000 images: ~6 min
    python -m benchmarks.headline --experiments all --train-size 0 --seeds 42
                                        # every Fashion-MNIST experiment of params.yaml, full size, one seed
    python -m benchmarks.headline --experiments all --train-size 0 --seeds all
                                                       # the chapter's Fashion-MNIST sweeps in full (hours)

Both sides run the same jobs (each experiment's own sweep, narrowed to --seeds), with the
same epochs, seeds, batch sizes and data (at most the first --train-size training images;
0, or an experiment that uses fewer such as transfer_ab's 200: each experiment's own):

  pipeline  `python -m src.chapter` (one process: each experiment's sweep in turn on the
            same warm parallel-launcher workers) with the fastest safe settings, dvc repro's
            launch (params.yaml: hydra/launcher=parallel threads=1, two single-threaded jobs
            at a time) and the config's steps_per_execution=32 (the same updates, fewer
            Python round trips); everything else as a user gets it: MLflow runs into a fresh
            SQLite store, gradient diagnostics, resume state, the logged model, figures.
            --ways repro: make run's way, `python -m src.repro experiment@<name> ...` in a copy of
            the repository whose experiment files carry the narrowing (DVC's status and records
            included); --ways stages: plain dvc repro's, a `python -m src.train -m
            experiment=<name>` process per experiment (per stage), each starting its own workers.
  notebook  one Python process, plain Keras, one job after another with Keras's defaults
            (steps_per_execution=1, TensorFlow on every core): the job's model, optimizer and
            callbacks from our builders, model.fit on NumPy arrays (x/255, or standardised
            where the experiment says so), then evaluate on the test set, and MC dropout's
            passes where the experiment asks for them (the book's way: the whole test set
            per call). No tracking.

Order: the sides take turns going first, the notebook in the first round (--repeats 2:
notebook, pipeline, pipeline, notebook), so that drift on a shared machine weighs on both.
Timed: each side's wall time for all the jobs, start-up included (the notebook side counts from
its imports); per experiment: the notebook's jobs, and the pipeline's sweep from its parent
run's start to its end (in one process, a sweep's parent opens when its jobs are queued behind
the sweep before, so these overlap and add up to more than the wall time). The numbers: each
job's test accuracy on both sides, paired; the sides shuffle differently (Keras's shuffle vs
our per-epoch permutations), so they agree within seed noise, not to the digit. transfer_ab's
model A is trained once per recipe on both sides (the pipeline logs it and each job loads it;
the notebook keeps it in memory).
Target: the pipeline in at most half the notebook's time (--target: another speed-up; make bench
asks x3 of the whole chapter, x2 of init_activation alone, x1.5 of seed_notebook alone).
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import CHILD_ENV, REPO, figure, finish
from src.params import load_params
from src.paths import copy_repo
from src.sweep import experiment_jobs

TARGET = 2.0
WAYS = {"chapter": "one process for all experiments (python -m src.chapter)",
        "repro": "make run's way (python -m src.repro: the stale experiment stages of dvc repro in one process)",
        "stages": "a process per experiment (plain dvc repro's stages)"}


def shrink(name: str, train_size: int, seeds: str) -> list[str]:
    """Overrides that narrow one experiment: at most its first train_size images (0: its own
    size; an experiment that uses fewer, such as transfer_ab's 200, keeps its own), --seeds."""
    from src.config import compose  # noqa: PLC0415

    own = compose([f"experiment={name}"])["data"]["train_size"]
    capped = bool(train_size) and (own is None or own > train_size)
    return [*([f"data.train_size={train_size}"] if capped else []), *([] if seeds == "all" else [f"seed={seeds}"])]


def pipeline(experiments: list[str], extras: dict[str, list[str]], folder: Path, way: str) -> tuple[float, dict, dict]:
    """Our pipeline's wall time, seconds per experiment and {experiment: [(job overrides, test accuracy), ...]}."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    store = f"sqlite:///{folder}/mlflow.db"
    common = [f"tracking.uri={store}", f"state_dir={folder}/state"]
    sweeps = {name: [*extras[name], f"hydra.sweep.dir={folder}/sweeps/{name}"] for name in experiments}
    where, sweep_dirs = REPO, {name: folder / "sweeps" / name for name in experiments}
    if way == "chapter":
        commands = [["-m", "src.chapter", *(shlex.join([name, *sweeps[name]]) for name in experiments), "--", *common]]
    elif way == "repro":  # make run, in a copy whose experiment files carry the narrowing
        where = repro_copy(folder / "repo", {name: extras[name] for name in experiments}, common)
        commands = [["-m", "src.repro", *(f"experiment@{name}" for name in experiments)]]
        sweep_dirs = {name: where / "outputs" / "sweeps" / name / "dvc" for name in experiments}
    else:  # params.yaml's launch, as the chapter runner and dvc repro use it
        launch = shlex.split(load_params(REPO / "params.yaml")["experiments"]["launch"])
        commands = [["-m", "src.train", "-m", f"experiment={name}", *launch, *sweeps[name], *common]
                    for name in experiments]
    started = time.perf_counter()
    for command in commands:
        result = subprocess.run([sys.executable, *command], cwd=where, env=CHILD_ENV, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"pipeline ({way}) failed (exit {result.returncode}): {result.stderr[-1500:]}")
    total = time.perf_counter() - started
    client, seconds, accuracies = MlflowClient(store), {}, {}
    for name in experiments:
        record = json.loads((sweep_dirs[name] / "jobs.json").read_text())
        parent = client.get_run(record["parent_run_id"]).info
        seconds[name] = (parent.end_time - parent.start_time) / 1000
        accuracies[name] = [(job["params"], client.get_run(job["run_id"]).data.metrics["test_accuracy"])
                            for job in record["jobs"]]
    return total, seconds, accuracies


def repro_copy(work: Path, extras: dict[str, list[str]], common: list[str]) -> Path:
    """A copy of the repository (its tracked and untracked-but-not-ignored files) where `python -m
    src.repro` finds the experiments stale and narrowed: each experiment file takes its overrides
    (a Hydra override is not a DVC parameter), params.yaml's extra the store; the Fashion-MNIST data
    hard-linked and found in this repository's DVC cache, its hashes computed before the clock starts
    (a working copy has them cached)."""
    from omegaconf import OmegaConf  # noqa: PLC0415

    copy_repo(work)
    for path in [*REPO.glob("data/raw/fashion_mnist/*"), *REPO.glob("data/prepared/fashion_mnist.*")]:
        (work / path.relative_to(REPO)).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, work / path.relative_to(REPO))
    for name, overrides in extras.items():
        file = work / "conf" / "experiment" / f"{name}.yaml"
        config = OmegaConf.load(file)
        for override in overrides:
            key, value = override.split("=", 1)
            OmegaConf.update(config, "hydra.sweeper.params.seed" if key == "seed" else key, yaml.safe_load(value),
                             force_add=True)
        file.write_text("# @package _global_\n" + OmegaConf.to_yaml(config))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["experiments"]["extra"] = " ".join(common)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["config", "--local", "cache.dir", str(REPO / ".dvc" / "cache")],  # where the data's hashes are
                    ["status", "download@fashion_mnist", "prepare@fashion_mnist"]):
        subprocess.run([sys.executable, "-m", "dvc", *command], cwd=work, env=CHILD_ENV, capture_output=True,
                       check=True)
    return work


def notebook(jobs: dict[str, list[dict]], extras: dict[str, list[str]]) -> tuple[float, dict, dict]:
    """The same jobs the notebook way, in this process; its wall time (all, per experiment) and test accuracies.

    A transfer job reuses its recipe's model A, trained once in this process (as the
    pipeline trains it once and logs it), then trains frozen and unfrozen as the book does.
    """
    started = time.perf_counter()
    import keras  # noqa: PLC0415 (timed: the notebook pays its imports too)

    from src.config import compose, source_config  # noqa: PLC0415
    from src.data.load import load_prepared  # noqa: PLC0415

    full = load_prepared(REPO / "data" / "prepared" / "fashion_mnist.npz")
    sources, accuracies, seconds = {}, {}, {}
    whole = overrides(jobs, extras)  # the job's own values win over the narrowing (seed=42,43 is a sweep's)
    for name, records in jobs.items():
        accuracies[name], began = [], time.perf_counter()
        for params, job in zip(records, whole[name], strict=True):
            config = compose([f"experiment={name}", *(f"{k}={v}" for k, v in job.items())])
            source = None
            if config["transfer"]["source_classes"]:
                recipe = source_config(config)
                key = json.dumps(recipe, sort_keys=True)
                if key not in sources:
                    sources[key] = notebook_job(keras, recipe, full)[0]
                source = sources[key]
            _, accuracy = notebook_job(keras, config, full, source)
            accuracies[name].append((params, accuracy))
            keras.backend.clear_session()
        seconds[name] = time.perf_counter() - began
    return time.perf_counter() - started, seconds, accuracies


def notebook_job(keras, config: dict, full, source=None) -> tuple:
    """One job as a notebook cell would run it: NumPy arrays, model.fit with Keras's defaults."""
    import numpy as np  # noqa: PLC0415

    from src.data.load import reshape_splits, scaling, steps_per_epoch  # noqa: PLC0415
    from src.engine import compile_model, training_phases  # noqa: PLC0415
    from src.fitting import standard_callbacks  # noqa: PLC0415
    from src.models import build_mlp, reuse_layers  # noqa: PLC0415

    data = reshape_splits(full, config["data"]["train_size"], config["validation_split"], config["data"]["classes"])
    offset, factor = scaling(data, config["data"]["scale"])
    (x, y), (x_valid, y_valid), (x_test, y_test) = (
        ((images - offset) * factor, labels) for images, labels in map(data.split, ("train", "valid", "test")))
    keras.utils.set_random_seed(config["seed"])
    model = build_mlp(config["model"], x.shape[1:], len(data.class_names))
    reused = reuse_layers(model, source) if source is not None else []
    steps = steps_per_epoch(len(x), config["batch_size"])
    keras_loop = {**config, "steps_per_execution": 1}  # Keras's default loop, one Python call a batch
    begin = 0
    with tempfile.TemporaryDirectory() as workdir:
        callbacks = standard_callbacks(config, Path(workdir))
        for end, frozen in training_phases(config):
            for layer in reused:
                layer.trainable = not frozen
            compile_model(model, keras_loop, total_steps=steps * config["epochs"], steps=steps)
            model.fit(x, y, batch_size=config["batch_size"], epochs=end, initial_epoch=begin,
                      validation_data=(x_valid, y_valid), callbacks=callbacks, verbose=0)
            begin = end
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    if config["mc_dropout_samples"]:  # the same work as the pipeline, the book's way: whole-test-set passes
        np.stack([model(x_test, training=True) for _ in range(config["mc_dropout_samples"])]).mean(axis=0)
    return model, accuracy


def overrides(jobs: dict[str, list[dict]], extras: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Each job's whole set of overrides, {experiment: [{key: value}, ...]}, from its swept values and the
    experiment's narrowing: the same jobs compare equal whichever keys a way's sweep counts as swept
    (the repro way's files make a single seed a fixed value)."""
    return {name: [dict(item.split("=", 1) for item in extras[name]) | job for job in records]
            for name, records in jobs.items()}


def fashion_experiments() -> list[str]:
    """The chapter's Fashion-MNIST experiments, in dvc repro's order (params.yaml)."""
    datasets = load_params(REPO / "params.yaml")["experiments"]["datasets"]
    return [name for name, dataset in datasets.items() if dataset == "fashion_mnist"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=["seed_notebook", "batchnorm", "optimizers"],
                        help="experiment names, or all: every Fashion-MNIST experiment of params.yaml")
    parser.add_argument("--train-size", type=int, default=20000,
                        help="at most the first N training images; 0: each experiment's own (all; transfer_ab: 200)")
    parser.add_argument("--seeds", default="42", help="a seed, a Hydra list (42,43) or all (the sweep's own)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of both sides, taking turns first")
    parser.add_argument("--ways", default="chapter", help="how our pipeline runs, comma-separated: "
                        + "; ".join(f"{way}: {meaning}" for way, meaning in WAYS.items()))
    parser.add_argument("--target", type=float, default=TARGET, help="the speed-up the figure must reach")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.experiments == ["all"]:
        args.experiments = fashion_experiments()
    ways = args.ways.split(",")
    if unknown := set(ways) - set(WAYS):
        parser.error(f"unknown --ways {', '.join(sorted(unknown))}; choose from {', '.join(WAYS)}")
    began, extras = time.perf_counter(), {name: shrink(name, args.train_size, args.seeds) for name in args.experiments}
    jobs = {name: experiment_jobs(name, extras[name]) for name in args.experiments}  # known before either side runs
    runs = []
    for repeat in range(args.repeats):
        # The sides take turns going first (at --repeats 2: notebook, pipeline, pipeline, notebook), so that a
        # shared machine slowing down or speeding up during the run weighs on both sides alike.
        notebook_first = repeat % 2 == 0
        if notebook_first:
            theirs, theirs_each, theirs_accuracy = notebook(jobs, extras)
        ours = {}
        for way in ways:
            with tempfile.TemporaryDirectory(prefix="bench-headline-") as folder:
                total, each, accuracy = pipeline(args.experiments, extras, Path(folder), way)
            ours[way] = {"pipeline_s": total, "seconds_per_experiment": each, "accuracy": accuracy}
            ran = {name: [params for params, _ in records] for name, records in accuracy.items()}
            if overrides(ran, extras) != overrides(jobs, extras):
                raise SystemExit(f"pipeline ({way}) ran other jobs than the notebook side: {ran} vs {jobs}")
        if not notebook_first:
            theirs, theirs_each, theirs_accuracy = notebook(jobs, extras)
        runs.append({"notebook_first": notebook_first, "notebook_s": theirs,
                     "notebook_seconds_per_experiment": theirs_each, "notebook": theirs_accuracy, "pipeline": ours})
        for way in ways:
            print(f"repeat {repeat + 1}/{args.repeats}, {way}: pipeline {ours[way]['pipeline_s']:.0f} s, notebook "
                  f"{theirs:.0f} s; per experiment: " + ", ".join(
                      f"{name} {ours[way]['seconds_per_experiment'][name]:.0f}/{theirs_each[name]:.0f} s"
                      for name in args.experiments), flush=True)
    rows = []
    for way in ways:
        gaps = [a - b for run in runs for name in args.experiments
                for (_, a), (_, b) in zip(run["pipeline"][way]["accuracy"][name], run["notebook"][name], strict=True)]
        count = len(gaps) // len(runs)
        rows.append(figure(
            f"headline: {', '.join(args.experiments)} ({count} jobs, seeds {args.seeds}, {args.train_size or 'all'} "
            f"images), notebook way vs our pipeline, {WAYS[way]}: wall time",
            [run["notebook_s"] / run["pipeline"][way]["pipeline_s"] for run in runs], args.target,
            f"pipeline {statistics.median(r['pipeline'][way]['pipeline_s'] for r in runs):.0f} s vs notebook "
            f"{statistics.median(r['notebook_s'] for r in runs):.0f} s; test accuracy, pipeline minus notebook, "
            f"per job: mean {statistics.mean(gaps) * 100:+.2f} pts, largest {max(gaps, key=abs) * 100:+.2f} pts"))
    finish("headline", args.json, rows, settings=vars(args) | {"json": None}, runs=runs,
           seconds=time.perf_counter() - began)


if __name__ == "__main__":
    main()
