"""Research ergonomics on real sweeps: each arm's seed aggregates on the sweep's parent run
(computed by hand here from the child runs), and `python -m src.runs` diff, rerun, best and table."""

import csv
import math
import shutil
import statistics
import subprocess
import sys

import pytest
from conftest import REPO, cli, parent_and_children, quiet_env, runs, shrunk, write_subset
from mlflow.tracking import MlflowClient

from src.aggregates import metric_name, seed_spread

T_975 = {1: 12.706204736174696, 2: 4.302652729749464}  # Student's t, two-sided 95%, by degrees of freedom


def test_a_spread_is_the_sample_std_and_students_interval_of_the_finite_values():
    spread = seed_spread([0.80, 0.84, float("nan"), None, 0.82])
    half = T_975[2] * statistics.stdev([0.80, 0.84, 0.82]) / math.sqrt(3)
    assert spread["n"] == 3 and spread["mean"] == pytest.approx(0.82)
    assert spread["std"] == pytest.approx(0.02)
    assert (spread["ci95_low"], spread["ci95_high"]) == pytest.approx((0.82 - half, 0.82 + half))
    assert seed_spread([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}  # no interval from one seed
    assert seed_spread([float("nan")]) == {}


def test_metric_names_group_by_metric_then_arm_in_the_characters_mlflow_allows():
    assert metric_name("test_accuracy", "relu, he_normal", "mean") == "test_accuracy/relu he_normal/mean"
    assert metric_name("val_loss", "[64,32]/x=1", "ci95_low") == "val_loss/_64_32__x_1/ci95_low"


@pytest.fixture(scope="module")
def swept(tmp_path_factory, fashion_npz):
    """A store with a deterministic sweep of 2 optimizers x seed 1, then the same sweep extended to
    seeds 1 and 2 (as a killed sweep is resumed: seed 1's runs are skipped), on their own data file."""
    folder = tmp_path_factory.mktemp("runs")
    data = write_subset(fashion_npz, folder / "data" / "fashion_mnist.npz", {"train": 300, "valid": 200, "test": 300})
    store = f"sqlite:///{folder / 'mlflow.db'}"
    common = [*shrunk(data, store, folder, train_size=300), "epochs=1", "deterministic=true"]
    for name, seeds in (("one", "1"), ("two", "1,2")):
        result = cli("-m", "optimizer=adam,nadam", f"seed={seeds}", *common, f"hydra.sweep.dir={folder / name}",
                     env=quiet_env())
        assert result.returncode == 0, result.stderr[-3000:]
    return store, folder, data


def runs_cli(store: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.runs", "--tracking-uri", store, *args], cwd=REPO,
                          env=quiet_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_parent_holds_each_arms_aggregates_also_after_a_partly_skipped_rerun(swept):
    store, folder, _ = swept
    parents, children = parent_and_children(store)
    parent = next(run for run in parents if run.data.tags["ch11.skipped"] == "2")
    assert len(children) == 4 and {run.data.tags["arm"] for run in children} == {"adam", "nadam"}
    client = MlflowClient(store)
    aggregates = client.get_run(parent.info.run_id).data.metrics
    for arm in ("adam", "nadam"):
        for metric in ("test_accuracy", "val_loss"):
            values = [run.data.metrics[metric] for run in children if run.data.tags["arm"] == arm]
            mean, std = statistics.fmean(values), statistics.stdev(values)
            half = T_975[1] * std / math.sqrt(2)
            assert aggregates[f"{metric}/{arm}/n"] == 2
            assert aggregates[f"{metric}/{arm}/mean"] == pytest.approx(mean, abs=1e-12)
            assert aggregates[f"{metric}/{arm}/std"] == pytest.approx(std, abs=1e-12)
            assert aggregates[f"{metric}/{arm}/ci95_low"] == pytest.approx(mean - half, abs=1e-12)
            assert aggregates[f"{metric}/{arm}/ci95_high"] == pytest.approx(mean + half, abs=1e-12)
    first_parent = next(run for run in parents if run.info.run_id != parent.info.run_id)
    assert first_parent.data.metrics["test_accuracy/adam/n"] == 1  # its own sweep: one seed

    table = list(csv.DictReader((folder / "two" / "aggregates.csv").open()))
    assert {(row["arm"], row["metric"]) for row in table} >= {("adam", "test_accuracy"), ("nadam", "val_loss")}
    row = next(row for row in table if row["arm"] == "nadam" and row["metric"] == "test_accuracy")
    assert float(row["mean"]) == pytest.approx(aggregates["test_accuracy/nadam/mean"])
    assert "aggregates.csv" in {item.path for item in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_best_ranks_runs_and_table_gives_the_parents_aggregates_in_the_terminal_and_as_csv(swept, tmp_path):
    store, _, _ = swept
    _, children = parent_and_children(store)
    best = runs_cli(store, "best", "test", "--metric", "test_loss", "--csv", str(tmp_path / "best.csv"))
    assert best.returncode == 0, best.stderr[-2000:]
    assert "the 4 best of 4 runs by test_loss (lower is better)" in best.stdout
    ranked = list(csv.DictReader((tmp_path / "best.csv").open()))
    assert [float(row["test_loss"]) for row in ranked] == sorted(run.data.metrics["test_loss"] for run in children)
    assert {row["arm"] for row in ranked} == {"adam", "nadam"} and {row["seed"] for row in ranked} == {"1", "2"}

    table = runs_cli(store, "table", "test", "--csv", str(tmp_path / "table.csv"))
    assert table.returncode == 0, table.stderr[-2000:]
    assert "test: 2 arms, 4 runs" in table.stdout
    parent = next(run for run in parent_and_children(store)[0] if run.data.tags["ch11.skipped"] == "2")
    rows = {(row["arm"], row["metric"]): row for row in csv.DictReader((tmp_path / "table.csv").open())}
    for arm in ("adam", "nadam"):
        assert float(rows[(arm, "test_accuracy")]["mean"]) == pytest.approx(
            parent.data.metrics[f"test_accuracy/{arm}/mean"], abs=1e-12)
        assert float(rows[(arm, "val_loss")]["ci95_high"]) == pytest.approx(
            parent.data.metrics[f"val_loss/{arm}/ci95_high"], abs=1e-12)

    unknown = runs_cli(store, "table", "nope")
    assert unknown.returncode == 2 and unknown.stderr.strip().startswith("error: no experiment 'nope' in ")
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_diff_shows_only_what_differs_and_accepts_ids_and_run_names(swept):
    store, _, _ = swept
    _, children = parent_and_children(store)
    adam = next(run for run in children if run.data.params["optimizer.name"] == "adam")
    nadam = next(run for run in children if run.data.params["optimizer.name"] == "nadam"
                 and run.data.params["seed"] == adam.data.params["seed"])
    result = runs_cli(store, "diff", adam.info.run_id, nadam.info.run_name)
    assert result.returncode == 0, result.stderr[-2000:]
    differing = result.stdout.split("\nidentity")[0].split("values differ")[1]
    assert "optimizer.name" in differing and "seed" not in differing
    assert "data.path" not in differing  # the same in both: not shown
    lines = result.stdout.splitlines()
    assert next(line for line in lines if line.startswith("data hash")).endswith("same")
    assert next(line for line in lines if line.startswith("config hash")).endswith("differs")
    gap = nadam.data.metrics["test_accuracy"] - adam.data.metrics["test_accuracy"]
    assert next(line for line in lines if line.startswith("test_accuracy")).endswith(f"{gap:+.4f}")

    missing = runs_cli(store, "diff", adam.info.run_id, "no-such-run")
    assert missing.returncode == 2 and "error: no run has the id or name 'no-such-run'" in missing.stderr


@pytest.mark.slow
def test_rerun_reports_drift_then_reproduces_a_deterministic_run_to_the_bit(swept, tmp_path):
    store, _, data = swept
    _, children = parent_and_children(store)
    original, client = children[0], MlflowClient(store)
    again = runs_cli(store, "rerun", original.info.run_name)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "final metrics identical to the bit" in again.stdout, again.stdout
    assert "resolve to other values" not in again.stdout  # the rerun's own force=true is not drift
    rerun = next(run for run in runs(store) if run.data.tags.get("ch11.rerun_of") == original.info.run_id)
    client.delete_run(rerun.info.run_id)  # the module's other tests count the sweep's runs
    assert rerun.info.status == "FINISHED" and rerun.info.run_id != original.info.run_id
    assert rerun.data.metrics["test_accuracy"] == original.data.metrics["test_accuracy"]
    assert rerun.data.tags["ch11.run_key"] == original.data.tags["ch11.run_key"]  # same config, code and data

    # a run made at another commit, and data that changed since: both named before anything trains
    kept = {suffix: (tmp_path / f"kept{suffix}").write_bytes(data.with_suffix(suffix).read_bytes())
            for suffix in (".npz", ".json")}
    other = write_subset(data, tmp_path / "other.npz", {"train": 300, "valid": 200, "test": 250})
    try:
        client.set_tag(original.info.run_id, "mlflow.source.git.commit", "0" * 40)
        for suffix in kept:  # the same path, other images
            shutil.copy(other.with_suffix(suffix), data.with_suffix(suffix))
        count = len(runs(store))
        dry = runs_cli(store, "rerun", original.info.run_id, "--dry-run")
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert f"commit: the run's {'0' * 40}, the checkout's " in dry.stdout
        assert f"data: the run's {original.data.tags['ch11.data_hash'][:12]}, today's " in dry.stdout
        assert "python -m src.train optimizer=" in dry.stdout and len(runs(store)) == count  # nothing trained
    finally:
        client.set_tag(original.info.run_id, "mlflow.source.git.commit", original.data.tags["mlflow.source.git.commit"])
        for suffix in kept:
            shutil.copy(tmp_path / f"kept{suffix}", data.with_suffix(suffix))
