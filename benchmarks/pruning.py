"""An Optuna search with the median pruner against the same search without it: time, and the best value.

    python -m benchmarks.pruning                         # 20 trials of 10 epochs, 2 repeats: ~20 min
    python -m benchmarks.pruning --trials 20 --epochs 10 --train-size 20000 --repeats 2 --json out.json

The search is a user's: `python -m src.train -m hydra/sweeper=hpo` over Adam's learning rate
(log-uniform, 1e-5 to 0.1) and the MLP's depth (range(1, 5): 1 to 5, as the plugin includes
the stop) on Fashion-MNIST, each trial a child run in a fresh SQLite store. Both sides sample
with Optuna's RandomSampler and its seed, so they try the same trials (checked) and differ
only in the pruner; TPE's later trials would depend on the pruned trials' partial curves.
pruned: the same command with hydra/sweeper/pruner=median (none pruned before 3 trials
finished; from epoch 2, a trial below the median of the finished trials at that epoch stops).
Sides alternate (full, pruned, full, ...). Timed: the whole command. Recorded: each search's
best val_accuracy and its trial, trials pruned, epochs trained.
Target: the pruned search at least 1.3x faster, with the same best val_accuracy (within 0.5
points: the median pruner may stop the eventual best trial if it starts slowly).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import CHILD_ENV, REPO, figure, finish, spread

TARGET = 1.3
TOLERANCE = 0.5  # points of best val_accuracy, pruned vs full
SAMPLER = ["hydra.sweeper.sampler._target_=optuna.samplers.RandomSampler"]  # its seed: 42, from hpo.yaml
SIDES = {"full": SAMPLER, "pruned": [*SAMPLER, "hydra/sweeper/pruner=median"]}


def one_search(side: str, trials: int, epochs: int, train_size: int) -> dict:
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        command = [sys.executable, "-m", "src.train", "-m", "hydra/sweeper=hpo", f"hydra.sweeper.n_trials={trials}",
                   "optimizer=adam", "optimizer.learning_rate=tag(log, interval(1e-5, 0.1))",
                   "model.depth=range(1, 5)", "name=pruning", f"epochs={epochs}", f"data.train_size={train_size}",
                   "tracking.log_model=false", f"tracking.uri={store}", f"state_dir={folder}/state",
                   f"hydra.sweep.dir={folder}/sweep", *SIDES[side]]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=3600)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{side} search failed (exit {result.returncode}): {result.stderr[-2000:]}")
        results = yaml.safe_load((Path(folder) / "sweep" / "optimization_results.yaml").read_text())
        client = MlflowClient(store)
        runs = client.search_runs([client.get_experiment_by_name("pruning").experiment_id])
        children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
        return {"seconds": seconds, "best_value": results["best_value"], "best_params": results["best_params"],
                "trials": results["trials"], "children": len(children),
                "sampled": sorted((run.data.params["optimizer.learning_rate"], run.data.params["model.depth"])
                                  for run in children),
                "epochs": sum(int(run.data.metrics.get("epochs_run", run.data.tags.get("ch11.pruned_at_epoch", 0)))
                              for run in children)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (full, pruned)")
    parser.add_argument("--trials", type=int, default=20, help="trials per search")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (at most)")
    parser.add_argument("--train-size", type=int, default=20000, help="first N training images")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    began = time.perf_counter()
    runs = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES:
            runs[side].append(one_search(side, args.trials, args.epochs, args.train_size))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{side} {values[-1]['seconds']:.1f} s, best {values[-1]['best_value']:.4f}, "
            f"{values[-1]['epochs']} epochs, {values[-1]['trials']}" for side, values in runs.items()), flush=True)
    full, pruned = runs["full"], runs["pruned"]
    times = {side: spread([run["seconds"] for run in values]) for side, values in runs.items()}
    gaps = [100 * (p["best_value"] - f["best_value"]) for f, p in zip(full, pruned, strict=True)]
    speed = figure(f"{args.trials}-trial Optuna search: median pruner vs none, wall time",
                   [f["seconds"] / p["seconds"] for f, p in zip(full, pruned, strict=True)], TARGET,
                   f"{times['pruned']['median']:.0f} s vs {times['full']['median']:.0f} s; epochs trained "
                   f"{pruned[0]['epochs']} vs {full[0]['epochs']}; trials {pruned[0]['trials']}")
    same_trials = all(run["sampled"] == full[0]["sampled"] for run in full + pruned)
    best = figure("best val_accuracy, pruned minus full search", gaps, -TOLERANCE,
                  f"best {pruned[0]['best_value']:.4f} ({pruned[0]['best_params']}) vs {full[0]['best_value']:.4f} "
                  f"({full[0]['best_params']}); the same {args.trials} trials sampled on both sides: "
                  f"{'yes' if same_trials else 'NO'}", unit="pts")
    best["met"] = best["met"] and same_trials
    finish("pruning", args.json, [speed, best], settings=vars(args) | {"json": None}, runs=runs,
           seconds=time.perf_counter() - began)


if __name__ == "__main__":
    main()
