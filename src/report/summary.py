"""One experiment's results, from MLflow to a small JSON file: the pipeline's per-experiment output.

    python -m src.report.summary <experiment> <sweep dir> <output .json>

Reads <sweep dir>/jobs.json (written by the validating sweeper when every job succeeded),
fetches each job's run from the MLflow store the jobs logged to, and writes, atomically:
per arm (the swept values other than the seed) each seed's final metrics and the
per-epoch curves the report draws. Skipped jobs point at the run that finished earlier,
so the summary is the same whichever sweep trained the runs; MLflow stays the record.
"""

import json
import math
from pathlib import Path

from omegaconf import OmegaConf

from src.calibration import ARTIFACT
from src.cli import run_main
from src.errors import ConfigError, TrackingError
from src.paths import write_json

# Final numbers kept per run; each logged once at the end (test_*) or per epoch (the rest: last value).
FINAL = ("test_accuracy", "test_loss", "test_mc_dropout_accuracy", "val_mc_dropout_accuracy", "final_val_accuracy",
         "final_val_loss", "val_accuracy", "val_loss", "accuracy", "loss",
         *(f"test_{kind}{score}" for kind in ("", "mc_dropout_") for score in ("nll", "brier", "ece")))
CURVES = ("val_accuracy", "accuracy", "val_loss", "loss", "learning_rate")


def summarize(experiment: str, sweep_dir: Path) -> dict:
    from src import tracking  # noqa: PLC0415 (MLflow loads only here)

    jobs_file = sweep_dir / "jobs.json"
    if not jobs_file.is_file():
        raise TrackingError(f"{jobs_file} not found: the sweep of {experiment} did not finish every job; "
                            f"run `python -m src.train -m experiment={experiment}` and fix what it reports")
    jobs = json.loads(jobs_file.read_text())["jobs"]
    client = tracking.connect(job_tracking(sweep_dir))
    arms: dict[str, list[dict]] = {}
    sources: dict[str, dict] = {}
    for job in jobs:
        run = client.get_run(job["run_id"])
        if not tracking.is_finished(run.info.status):
            raise TrackingError(f"run {job['run_id']} of {experiment} is {run.info.status}; re-run the sweep")
        record = run_record(client, tracking, run, job["params"])
        arms.setdefault(arm_label(experiment, job["params"]), []).append(record)
        if (source := run.data.tags.get(f"{tracking.TAG}source_run")) and source not in sources:
            source_run = client.get_run(source)
            sources[source] = {**run_record(client, tracking, source_run, {}),
                               "role": source_run.data.tags.get(f"{tracking.TAG}role")}
    summary = {"experiment": experiment,
               "parent_run_ids": sorted({r["parent_run_id"] for runs in arms.values() for r in runs} - {None}),
               "arms": {label: sorted(runs, key=lambda r: r["seed"]) for label, runs in arms.items()}}
    if sources:
        summary["source_runs"] = sources
    return summary


def job_tracking(sweep_dir: Path) -> dict:
    """The tracking settings the sweep's jobs used (their saved config), e.g. a tracking.uri override."""
    for config in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        return OmegaConf.to_container(OmegaConf.load(config).tracking)
    return {"uri": None}


def run_record(client, tracking, run, params: dict) -> dict:
    metrics, tags = run.data.metrics, run.data.tags
    histories = tracking.metric_histories(client, run.info.run_id, (*CURVES, "grad_norm/"))
    record = {
        "run_id": run.info.run_id, "parent_run_id": tags.get("mlflow.parentRunId"),
        "seed": int(run.data.params["seed"]), "params": params,
        "duration_s": round((run.info.end_time - run.info.start_time) / 1000, 1),
        "epochs_run": int(metrics.get("epochs_run", 0)),
        "diverged": f"{tracking.TAG}diverged" in tags,
        **{key: finite(metrics[key]) for key in FINAL if key in metrics},
        "curves": {key: [finite(value) for _, value in histories[key]] for key in CURVES if key in histories},
    }
    if "test_ece" in metrics:  # MC dropout's calibration record: reliability tables and example images
        record["calibration"] = tracking.load_dict(client, run.info.run_id, ARTIFACT)
    if "val_accuracy" in histories:
        record["best_val_accuracy"] = max((v for _, v in histories["val_accuracy"] if math.isfinite(v)), default=None)
    norms = {key.removeprefix("grad_norm/"): values for key, values in histories.items()
             if key.startswith("grad_norm/")}
    if norms:  # gradient norm per layer at initialisation (step 0) and after the last epoch
        record["grad_norm"] = {"initial": {layer: finite(values[0][1]) for layer, values in sorted(norms.items())},
                               "final": {layer: finite(values[-1][1]) for layer, values in sorted(norms.items())}}
    return record


def arm_label(experiment: str, params: dict) -> str:
    """The swept values other than the seed: "adam", "relu, he_normal", "model1"."""
    values = [value for key, value in params.items() if key != "seed"]
    return ", ".join(values) or experiment


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise ConfigError("usage: python -m src.report.summary <experiment> <sweep dir> <output .json>")
    experiment, sweep_dir, output = argv
    summary = summarize(experiment, Path(sweep_dir))
    write_json(Path(output), summary)
    runs = sum(len(runs) for runs in summary["arms"].values())
    print(f"summary of {experiment}: {len(summary['arms'])} arms, {runs} runs -> {output}")


if __name__ == "__main__":
    run_main(main)
