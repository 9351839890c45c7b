"""A 4-job sweep run by the parallel (joblib) launcher against the default, one job at a time.

    python -m benchmarks.sweep                           # 2 repeats of each: ~3 min
    python -m benchmarks.sweep --repeats 2 --epochs 2 --train-size 10000 --json out.json

The sweep is experiment=optimizers with 4 optimizers (sgd, momentum, adam, nadam), one
seed, run as a user runs it: `python -m src.train -m ...` in a fresh process, into a fresh
SQLite store each time. basic: Hydra's default launcher, one job after another, TensorFlow
on every core. parallel: hydra/launcher=parallel threads=1, two single-threaded jobs at a
time. Sides alternate (basic, parallel, basic, ...). Timed: the whole command, start-up
included. Checked each time: exit code 0, one parent run with 4 FINISHED children in the
store, and no "database is locked" or other SQLite error in the output.
Target (the issue): parallel at least 1.3x faster on 2 cores.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import CHILD_ENV, REPO, figure, finish, spread

TARGET = 1.3
OPTIMIZERS = "sgd,momentum,adam,nadam"
LAUNCHERS = {"basic": [], "parallel": ["hydra/launcher=parallel", "threads=1"]}
DATABASE_ERRORS = re.compile(r"database is locked|OperationalError|IntegrityError|UNIQUE constraint", re.I)


def one_sweep(launcher: str, epochs: int, train_size: int) -> dict:
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        store = f"sqlite:///{folder}/mlflow.db"
        command = [sys.executable, "-m", "src.train", "-m", "experiment=optimizers", f"optimizer={OPTIMIZERS}",
                   "seed=42", f"epochs={epochs}", f"data.train_size={train_size}", f"tracking.uri={store}",
                   f"state_dir={folder}/state", f"hydra.sweep.dir={folder}/sweep", *LAUNCHERS[launcher]]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{launcher} sweep failed (exit {result.returncode}): {result.stderr[-2000:]}")
        client = MlflowClient(store)
        experiment = client.get_experiment_by_name("optimizers")
        runs = client.search_runs([experiment.experiment_id])
        children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
        return {"seconds": seconds, "runs": len(runs), "children": len(children),
                "finished_children": sum(run.info.status == "FINISHED" for run in children),
                "database_errors": len(DATABASE_ERRORS.findall(result.stdout + result.stderr))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (basic, parallel)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job")
    parser.add_argument("--train-size", type=int, default=10000, help="first N training images")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    began = time.perf_counter()
    runs = {launcher: [] for launcher in LAUNCHERS}
    for repeat in range(args.repeats):
        for launcher in LAUNCHERS:
            runs[launcher].append(one_sweep(launcher, args.epochs, args.train_size))
        print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{launcher} {values[-1]['seconds']:.1f} s" for launcher, values in runs.items()), flush=True)
    sound = all(run["runs"] == 5 and run["finished_children"] == 4 and not run["database_errors"]
                for values in runs.values() for run in values)
    times = {launcher: spread([run["seconds"] for run in values]) for launcher, values in runs.items()}
    row = figure("4-job sweep: parallel launcher (2 jobs x 1 thread) vs one job at a time, wall time",
                 [b["seconds"] / p["seconds"] for b, p in zip(runs["basic"], runs["parallel"], strict=True)], TARGET,
                 f"{times['parallel']['median']:.1f} s vs {times['basic']['median']:.1f} s; every sweep: 1 parent + "
                 f"4 FINISHED children, no database errors: {'yes' if sound else 'NO'}")
    row["met"] = row["met"] and sound
    finish("sweep", args.json, [row], settings=vars(args) | {"json": None}, runs=runs,
           seconds=time.perf_counter() - began)


if __name__ == "__main__":
    main()
