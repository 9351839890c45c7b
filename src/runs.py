"""Finished runs from the command line: what differs between two, one run again, the best, each arm.

    python -m src.runs diff A B                    # config, code, data, commit, versions, final metrics
    python -m src.runs rerun RUN [--dry-run]       # the run's job again as a new run; drift reported first
    python -m src.runs best EXPERIMENT [--metric val_accuracy] [--top 10] [--csv FILE]
    python -m src.runs table EXPERIMENT [--csv FILE]   # per arm: mean, std, n and 95% interval over seeds

A run is named by its id or its run name (one run in the store must have it). The store is
--tracking-uri, else MLFLOW_TRACKING_URI, else the project's mlflow.db, as for training. A
mistake (no such run or experiment, a name two runs share) is one line and exit code 2.

rerun composes the run's own overrides (its ch11.overrides tag) again with today's code and
configs, says what has moved since the run (commit, uncommitted changes, the resolved config,
result code, data, package versions), then trains it as a new run in the same store, tagged
ch11.rerun_of=<the run's id>, and prints both runs' final metrics side by side.
"""

import csv
import io
import json
import math
import re
import sys
from argparse import SUPPRESS
from pathlib import Path

from src.cli import ArgumentParser, error_line, one_line_errors
from src.errors import ConfigError, LabError
from src.paths import write_text

IDENTITY = (("commit", "mlflow.source.git.commit"), ("uncommitted changes", "ch11.git_dirty"),
            ("config hash", "ch11.config_hash"), ("code hash", "ch11.code_hash"), ("data hash", "ch11.data_hash"))
RERUN_SETS = ("tracking.uri", "force")  # a rerun's own: the run's store, and train even though it finished
SHOWN = ("test_accuracy", "val_accuracy", "test_loss", "val_loss")  # table's default metrics
LOWER_IS_BETTER = re.compile(r"loss|nll|brier|ece")


def connect(uri: str | None):
    from src import tracking  # noqa: PLC0415 (MLflow: only when a subcommand runs)
    from src.store_faults import sqlite_file  # noqa: PLC0415

    found = tracking.tracking_uri({"uri": uri})
    if (database := sqlite_file(found)) and not database.is_file():
        raise ConfigError(f"no MLflow store at {found} (this command reads runs, it makes no store); "
                          "pass --tracking-uri or set MLFLOW_TRACKING_URI to the store your runs are in")
    return tracking.connect({"uri": uri})


def find_run(client, reference: str):
    """The run with this id, else the one run with this name."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    if re.fullmatch(r"[0-9a-f]{32}", reference):
        try:
            return client.get_run(reference)
        except MlflowException:
            pass  # not an id here: maybe a name
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    quote = '"' if "'" in reference else "'"
    found = client.search_runs(experiments, f"attributes.run_name = {quote}{reference}{quote}",
                               max_results=20) if experiments else []
    if not found:
        raise ConfigError(f"no run has the id or name {reference!r} in {client.tracking_uri}; "
                          "`python -m src.runs best <experiment>` lists an experiment's runs")
    if len(found) > 1:
        raise ConfigError(f"{len(found)} runs are named {reference!r} ({', '.join(r.info.run_id for r in found)}): "
                          "name one by its id")
    return found[0]


def experiment_runs(client, name: str) -> list:
    """The experiment's finished training runs: no sweep parents, no source models."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise ConfigError(f"no experiment {name!r} in {client.tracking_uri} (experiments there: {known})")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    trained = [run for run in runs if "ch11.run_key" in run.data.tags and "ch11.role" not in run.data.tags]
    if not trained:
        raise ConfigError(f"experiment {name!r} has no finished training run yet")
    return trained


def table_text(header: list[str], rows: list[list]) -> str:
    cells = [[cell if isinstance(cell, str) else shown(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def shown(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def csv_out(path: Path, header: list[str], rows: list[list]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    write_text(path, out.getvalue())
    print(f"wrote {path}")


# -- diff -----------------------------------------------------------------------------------------

def diff(client, first: str, second: str) -> None:
    from src.report.summary import FINAL  # noqa: PLC0415

    a, b = find_run(client, first), find_run(client, second)
    print(f"A {a.info.run_id} ({a.info.run_name}, {a.info.status})\nB {b.info.run_id} ({b.info.run_name}, "
          f"{b.info.status})")
    params = sorted(key for key in a.data.params.keys() | b.data.params.keys()
                    if a.data.params.get(key) != b.data.params.get(key))
    print(f"\nconfig: {len(params)} of {len(a.data.params.keys() | b.data.params.keys())} values differ")
    if params:
        print(table_text(["key", "A", "B"], [[key, a.data.params.get(key, "-"), b.data.params.get(key, "-")]
                                             for key in params]))
    print("\nidentity")
    short = 12  # of a commit or a hash: enough to tell them apart here
    versions = [versions_of(run) for run in (a, b)]
    moved = sorted(name for name in versions[0].keys() | versions[1].keys()
                   if versions[0].get(name) != versions[1].get(name))
    print(table_text(["", "A", "B", ""], [
        *([what, a.data.tags.get(tag, "-")[:short], b.data.tags.get(tag, "-")[:short],
           "same" if a.data.tags.get(tag) == b.data.tags.get(tag) else "differs"] for what, tag in IDENTITY),
        ["package versions", *(" ".join(f"{name}={found.get(name, '-')}" for name in moved) or "-"
                               for found in versions), "differs" if moved else "same"]]))
    metrics = [key for key in FINAL if key in a.data.metrics or key in b.data.metrics]
    print("\nfinal metrics")
    print(table_text(["metric", "A", "B", "B - A"], [
        [key, a.data.metrics.get(key), b.data.metrics.get(key),
         f"{b.data.metrics[key] - a.data.metrics[key]:+.4f}" if key in a.data.metrics and key in b.data.metrics
         else "-"] for key in metrics]))


def versions_of(run) -> dict[str, str]:
    """The package versions a run recorded (its ch11.versions tag), by package."""
    return parse_versions(run.data.tags.get("ch11.versions", ""))


def parse_versions(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split())


# -- rerun ----------------------------------------------------------------------------------------

def drift(run, config: dict) -> list[str]:
    """What has moved since the run: each a line; none when today's checkout would give the same run."""
    from src import tracking  # noqa: PLC0415
    from src.config import flatten, run_identity  # noqa: PLC0415
    from src.paths import in_repo  # noqa: PLC0415

    tags, moved = run.data.tags, []
    now = tracking.git_tags()
    if (commit := tags.get("mlflow.source.git.commit")) != now.get("mlflow.source.git.commit"):
        moved.append(f"commit: the run's {commit or 'unknown'}, the checkout's {now.get('mlflow.source.git.commit')}")
    if tags.get("ch11.git_dirty") == "True":
        moved.append("the run was made with uncommitted changes: they may be gone")
    if now.get("ch11.git_dirty") == "True":
        moved.append("the checkout has uncommitted changes")
    then, resolved = run.data.params, flatten(config)
    changed = sorted(key for key, value in resolved.items()
                     if key in then and then[key] != str(value) and key not in RERUN_SETS)
    if changed:
        moved.append("the overrides now resolve to other values: " + ", ".join(
            f"{key} {then[key]} -> {resolved[key]}" for key in changed[:8]) + (" ..." if len(changed) > 8 else ""))
    meta = in_repo(config["data"]["path"]).with_suffix(".json")
    try:
        data_hash = json.loads(meta.read_text())["npz_sha256"]
    except (OSError, ValueError, KeyError):
        data_hash = "missing"
        moved.append(f"data: {meta} is missing or unreadable (the job will say how to prepare it)")
    identity = run_identity(config, data_hash, tracking.code_hash(config["model"]["name"]))
    for what, key in (("result code", "code_hash"), ("data", "data_hash")):
        if tags.get(f"ch11.{key}") != identity[key] and identity[key] != "missing":
            moved.append(f"{what}: the run's {str(tags.get(f'ch11.{key}'))[:12]}, today's {identity[key][:12]}")
    versions, today = versions_of(run), parse_versions(tracking.package_versions())
    if not versions:
        moved.append("package versions: not recorded by the run")
    moved += [f"{name}: the run's {versions[name]}, today's {today.get(name, 'absent')}"
              for name in versions if versions[name] != today.get(name)]
    return moved


def rerun(client, reference: str, dry_run: bool) -> None:
    from src.config import compose  # noqa: PLC0415
    from src.report.summary import FINAL  # noqa: PLC0415

    run = find_run(client, reference)
    if "ch11.run_key" not in run.data.tags:
        raise ConfigError(f"run {run.info.run_id} is not a training run (a sweep's parent or another tool's): "
                          "name one of its jobs")
    overrides = [item for item in run.data.tags.get("ch11.overrides", "").split() if item]
    kept = [item for item in overrides if not item.startswith(tuple(f"{key}=" for key in RERUN_SETS))]
    job = [*kept, f"tracking.uri={client.tracking_uri}", "force=true"]
    config = compose(job)
    print(f"run {run.info.run_id} ({run.info.run_name}): python -m src.train {' '.join(job)}")
    moved = drift(run, config)
    print("drift since the run: " + ("none" if not moved else f"{len(moved)}\n  " + "\n  ".join(moved)))
    if dry_run:
        return
    from src.job import run_job  # noqa: PLC0415 (TensorFlow: only when it trains)

    result = run_job(config, overrides=kept, tags={"ch11.rerun_of": run.info.run_id})
    again = client.get_run(result["run_id"])
    metrics = [key for key in FINAL if key in run.data.metrics]
    same = all(again.data.metrics.get(key) == run.data.metrics[key] for key in metrics)
    print(f"\nnew run {again.info.run_id}: final metrics {'identical to the bit' if same else 'differ'}")
    print(table_text(["metric", "then", "now"], [[key, run.data.metrics[key], again.data.metrics.get(key)]
                                                 for key in metrics]))


# -- best, table ----------------------------------------------------------------------------------

def arms(runs: list) -> dict[str, str]:
    """{run id: its arm}: the run's arm tag (a sweep's children have one), else, for a run of a sweep
    made before the tag existed, the values of its override tags that vary between the runs, the seed aside."""
    from src.aggregates import ARM_TAG  # noqa: PLC0415

    def overrides(run) -> dict[str, str]:
        return {key: value for key, value in run.data.tags.items()
                if key.startswith("override.") and key != "override.seed"}

    given = [overrides(run) for run in runs]
    varying = sorted(key for key in set().union(*given) if len({values.get(key) for values in given}) > 1)
    return {run.info.run_id: run.data.tags.get(ARM_TAG) or ", ".join(overrides(run).get(key, "-") for key in varying)
            or run.data.tags.get("ch11.overrides", "-") for run in runs}


def best(client, experiment: str, metric: str, top: int, csv_path: Path | None) -> None:
    runs = [run for run in experiment_runs(client, experiment) if metric in run.data.metrics]
    if not runs:
        raise ConfigError(f"no finished run of {experiment!r} has the metric {metric!r}; try --metric val_accuracy")
    lower = bool(LOWER_IS_BETTER.search(metric))
    ranked = sorted(runs, key=lambda run: run.data.metrics[metric], reverse=not lower)[:top]
    header = ["rank", metric, "arm", "seed", "run", "name"]
    arm = arms(runs)
    rows = [[rank, run.data.metrics[metric], arm[run.info.run_id], run.data.params.get("seed", "-"), run.info.run_id,
             run.info.run_name] for rank, run in enumerate(ranked, start=1)]
    print(f"{experiment}: the {len(rows)} best of {len(runs)} runs by {metric} ({'lower' if lower else 'higher'} "
          "is better)")
    print(table_text(header, rows))
    if csv_path:
        csv_out(csv_path, header, rows)


def table(client, experiment: str, metrics: list[str], csv_path: Path | None) -> None:
    """Per arm over the seeds of the experiment's finished runs (one run per arm and seed: the latest)."""
    from src.aggregates import seed_spread  # noqa: PLC0415

    found = experiment_runs(client, experiment)
    arm, latest = arms(found), {}
    for run in sorted(found, key=lambda run: run.info.end_time or 0):
        latest[(arm[run.info.run_id], run.data.params.get("seed", "-"))] = run
    grouped: dict[str, list] = {}
    for (label, _), run in sorted(latest.items(), key=lambda item: item[0]):
        grouped.setdefault(label, []).append(run)
    header = ["arm", "metric", "mean", "std", "n", "ci95_low", "ci95_high"]
    rows = [[label, metric, *(spread.get(stat) for stat in header[2:])] for label, runs in grouped.items()
            for metric in metrics if (spread := seed_spread([run.data.metrics.get(metric) for run in runs]))]
    print(f"{experiment}: {len(grouped)} arms, {len(latest)} runs (mean, sample std, n and Student's 95% interval "
          "over the seeds; one run per arm and seed, the latest)")
    print(table_text(header, rows))
    if csv_path:
        csv_out(csv_path, header, rows)


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m src.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", help="the MLflow store (default: MLFLOW_TRACKING_URI, else mlflow.db)")
    store = ArgumentParser(add_help=False)  # --tracking-uri after the subcommand too, where users write it
    store.add_argument("--tracking-uri", default=SUPPRESS, help="the MLflow store")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("diff", parents=[store], help="what differs between two runs")
    command.add_argument("first", metavar="A")
    command.add_argument("second", metavar="B")
    command = commands.add_parser("rerun", parents=[store],
                                  help="a run's job again, as a new run tagged with the run's id")
    command.add_argument("run")
    command.add_argument("--dry-run", action="store_true", help="only say what would run and what has drifted")
    command = commands.add_parser("best", parents=[store], help="an experiment's best runs by a metric")
    command.add_argument("experiment")
    command.add_argument("--metric", default="val_accuracy")
    command.add_argument("--top", type=int, default=10)
    command.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    command = commands.add_parser("table", parents=[store], help="an experiment's arms: each metric over the seeds")
    command.add_argument("experiment")
    command.add_argument("--metric", nargs="+", default=list(SHOWN), dest="metrics")
    command.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    client = connect(args.tracking_uri)
    if args.command == "diff":
        diff(client, args.first, args.second)
    elif args.command == "rerun":
        rerun(client, args.run, args.dry_run)
    elif args.command == "best":
        best(client, args.experiment, args.metric, args.top, args.csv)
    else:
        table(client, args.experiment, args.metrics, args.csv)


if __name__ == "__main__":
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with one_line_errors((LabError, HydraException, OmegaConfBaseException), describe=error_line):
        main(sys.argv[1:])
