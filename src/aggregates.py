"""Seed aggregates on a sweep's parent run: each arm's final metrics over its seeds, in MLflow itself.

An arm is a sweep's jobs that differ only in their seed (the swept values other than the seed,
as the report names it: "adam", "relu, he_normal"). When a sweep ends, its parent run gets, for
each final metric M of each arm A:

    M/A/mean   M/A/std   M/A/n   M/A/ci95_low   M/A/ci95_high

(std: the sample standard deviation; the interval: Student's t over the n finite values, none
with one seed), so that MLflow's chart view shows one section per metric with the arms side by
side and the run page's metric list sorts them by metric, then arm. The same numbers go into
aggregates.csv, in the sweep folder and among the parent's artifacts, and every child run gets
an `arm` tag, so the UI's "Group by" tag shows one row per arm. A skipped job counts with the
run that finished earlier (jobs.json names it), so a resumed sweep's parent holds the whole
sweep's aggregates. A run whose metric is missing or not finite (a diverged run) is left out of
that metric's n.
"""

import csv
import io
import math
import re
import statistics
import time
from pathlib import Path

from src.paths import write_text
from src.report.summary import FINAL, arm_label

ARM_TAG = "arm"
TABLE = "aggregates.csv"
STATS = ("mean", "std", "n", "ci95_low", "ci95_high")
UNNAMEABLE = re.compile(r"[^\w.\- ]")  # what MLflow refuses in a metric name (and "/", which nests it)


def seed_spread(values: list[float]) -> dict[str, float]:
    """mean, std, n and the 95% interval of the mean of the finite values (std 0 and no interval for one)."""
    from scipy.stats import t as student  # noqa: PLC0415 (scipy only when a sweep ends)

    kept = [value for value in values if value is not None and math.isfinite(value)]
    if not kept:
        return {}
    mean, n = statistics.fmean(kept), len(kept)
    if n == 1:
        return {"mean": mean, "std": 0.0, "n": 1}
    std = statistics.stdev(kept)
    half = float(student.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95_low": mean - half, "ci95_high": mean + half}


def arm_table(experiment: str, jobs: list[dict], final_metrics: dict[str, dict[str, float]]) -> dict[str, dict]:
    """{arm: {metric: seed_spread}} from jobs.json's records and each run's final metrics."""
    arms: dict[str, list[dict[str, float]]] = {}
    for job in jobs:
        arms.setdefault(arm_label(experiment, job["params"]), []).append(final_metrics[job["run_id"]])
    return {arm: {metric: spread for metric in FINAL
                  if (spread := seed_spread([run.get(metric) for run in runs]))}
            for arm, runs in arms.items()}


def metric_name(metric: str, arm: str, stat: str) -> str:
    """M/A/stat, the arm in the characters MLflow allows in a name ("relu, he_normal" -> "relu he_normal")."""
    return f"{metric}/{UNNAMEABLE.sub('_', arm.replace(', ', ' '))}/{stat}"


def csv_text(table: dict[str, dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["arm", "metric", *STATS])
    for arm, metrics in table.items():
        for metric, spread in metrics.items():
            writer.writerow([arm, metric, *(spread.get(stat, "") for stat in STATS)])
    return out.getvalue()


def record(client, parent_run_id: str, experiment: str, jobs: list[dict], sweep_dir: Path) -> dict[str, dict]:
    """Tag each child with its arm; log the arms' aggregates and aggregates.csv on the parent."""
    from mlflow.entities import Metric, RunTag  # noqa: PLC0415

    from src.tracking import BATCH  # noqa: PLC0415

    final_metrics = {}
    for job in jobs:
        final_metrics[job["run_id"]] = client.get_run(job["run_id"]).data.metrics
        client.log_batch(job["run_id"], tags=[RunTag(ARM_TAG, arm_label(experiment, job["params"]))])
    table = arm_table(experiment, jobs, final_metrics)
    now = int(time.time() * 1000)
    metrics = [Metric(metric_name(metric, arm, stat), float(value), now, 0)
               for arm, spreads in table.items() for metric, spread in spreads.items()
               for stat, value in spread.items()]
    for start in range(0, len(metrics), BATCH):
        client.log_batch(parent_run_id, metrics=metrics[start : start + BATCH])
    client.log_artifact(parent_run_id, str(write_text(sweep_dir / TABLE, csv_text(table))))
    return table
