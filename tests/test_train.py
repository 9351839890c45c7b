"""The training engine end to end: the real config, shrunk, on a few hundred real
Fashion-MNIST images, into a temporary MLflow store read back with MlflowClient."""

import os
import time

import mlflow
import numpy as np
import pytest
from conftest import REPO, cli, history, parent_and_children, runs, shrunk
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from src.errors import TrackingError, TrainingError
from src.job import train
from src.tracking import load_dict

pytestmark = pytest.mark.slow


@pytest.fixture
def make_config(fashion_npz, store, tmp_path):
    """compose(overrides) -> the real config, pointed at the test data, store and state dir."""
    def make(*overrides: str):
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            return compose("config", [*shrunk(fashion_npz, store, tmp_path), *overrides])
    return make


def test_a_run_records_params_metrics_model_artifacts_and_tags(make_config, store, tmp_path, fashion_npz):
    cfg = make_config("model.dropout=0.2", "mc_dropout_samples=3", "schedule=one_cycle", "optimizer=nadam",
                      "optimizer.learning_rate=0.01")
    result = train(cfg, workdir=tmp_path / "job", overrides=["model.dropout=0.2", "schedule=one_cycle"])
    client = MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and not result["skipped"]
    assert run.data.params["model.depth"] == "3" and run.data.params["optimizer.name"] == "nadam"
    assert run.data.params["schedule.name"] == "one_cycle" and run.data.params["data.train_size"] == "500"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_time_s"):
        assert [step for step, _ in history(client, run.info.run_id, key)] == [1, 2], key
    assert [step for step, _ in history(client, run.info.run_id, "grad_norm/hidden_01")] == [0, 1, 2]
    for key in ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
                "process_cpu_percentage", "process_memory_rss_megabytes"):  # MLflow's system metrics, per epoch
        assert [step for step, _ in history(client, run.info.run_id, f"system/{key}")] == [1, 2], key
    assert run.data.metrics["system/process_memory_rss_megabytes"] > 100  # TensorFlow alone takes more
    assert 0 < run.data.metrics["system/process_cpu_percentage"] <= 100 * len(os.sched_getaffinity(0))
    assert {"grad_norm/output", "act_mean/hidden_03", "act_std/hidden_03"} <= set(run.data.metrics)
    assert 0.3 < run.data.metrics["test_accuracy"] == pytest.approx(result["test_accuracy"])
    assert 0.3 < run.data.metrics["test_mc_dropout_accuracy"] <= 1
    assert 0.3 < run.data.metrics["val_mc_dropout_accuracy"] <= 1  # the book's exercise 8 scores MC on validation
    # Calibration of both predictions on test: one deterministic pass's NLL is the test loss Keras reports.
    metrics = run.data.metrics
    assert metrics["test_nll"] == pytest.approx(metrics["test_loss"], rel=1e-4)
    for score in ("nll", "brier", "ece"):
        assert metrics[f"test_{score}"] >= 0 and metrics[f"test_mc_dropout_{score}"] >= 0, score
    record = load_dict(client, run.info.run_id, "calibration.json")
    assert record["samples"] == 3 and record["class_names"][9] == "Ankle boot"
    assert sum(record["reliability"]["mc_dropout"]["count"]) == sum(record["reliability"]["deterministic"]["count"])
    assert len(record["examples"]) == 3 and len(record["examples"][0]["mc_std"]) == 10
    # No early stopping here: the validation split evaluated after training is the last epoch's.
    last_epoch = history(client, run.info.run_id, "val_accuracy")[-1][1]
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(last_epoch)
    tags = run.data.tags
    assert len(tags["ch11.config_hash"]) == 64 and len(tags["ch11.code_hash"]) == 64
    prepared = __import__("json").loads(fashion_npz.with_suffix(".json").read_text())
    assert tags["ch11.data_hash"] == prepared["npz_sha256"]
    assert tags["override.schedule"] == "one_cycle" and tags["ch11.overrides"] == "model.dropout=0.2 schedule=one_cycle"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["ch11.git_dirty"] in ("True", "False")
    assert run.inputs.dataset_inputs[0].dataset.name == "fashion_mnist"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "figures", "calibration.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "figures")} == {
        "figures/learning_curves.png", "figures/gradients.png", "figures/reliability.png"}

    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    from src.data.load import load_prepared
    x_test, y_test = load_prepared(fashion_npz).split("test")
    accuracy = np.mean(model.predict(x_test / 255.0, verbose=0).argmax(axis=1) == y_test)
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-4)
    logged = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert logged.signature is not None
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())  # removed on success


def test_same_config_and_seed_give_identical_metrics_in_deterministic_mode(make_config, store):
    first = train(make_config("deterministic=true", "force=true"))
    second = train(make_config("deterministic=true", "force=true"))
    client = MlflowClient(store)
    assert first["run_id"] != second["run_id"]
    for key in ("loss", "val_accuracy", "grad_norm/hidden_02"):
        assert history(client, first["run_id"], key) == history(client, second["run_id"], key)
    assert first["test_accuracy"] == second["test_accuracy"]


def test_a_nan_loss_ends_the_run_failed_with_the_reason(make_config, store):
    with pytest.raises(TrainingError, match="NaN at epoch 1"):
        train(make_config("optimizer.learning_rate=100"))
    (run,) = runs(store)
    assert run.info.status == "FAILED" and "NaN" in run.data.tags["ch11.failure"]


def test_on_nan_record_keeps_a_diverged_run_as_a_result(make_config, store):
    result = train(make_config("optimizer.learning_rate=100", "on_nan=record"))
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["ch11.diverged"] == "loss became NaN at epoch 1"
    assert result["diverged_at_epoch"] == 1 and run.data.metrics["diverged_at_epoch"] == 1


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:////proc/no/such/dir/mlflow.db"])
def test_an_unusable_tracking_store_fails_fast_before_training(make_config, uri, tmp_path):
    started = time.monotonic()
    with pytest.raises(TrackingError, match="MLflow"):
        train(make_config(f"tracking.uri={uri}"))
    assert time.monotonic() - started < 20
    assert not (tmp_path / "state").exists()


def test_a_sweep_is_one_parent_with_child_runs_and_a_rerun_skips_them(fashion_npz, store, tmp_path, cli_env):
    args = ["-m", "optimizer=adam,nadam", *shrunk(fashion_npz, store, tmp_path, train_size=300),
            "epochs=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = cli(*args, env=cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    parents, children = parent_and_children(store)
    assert len(parents) == 1 and len(children) == 2
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    assert {run.data.params["optimizer.name"] for run in children} == {"adam", "nadam"}
    assert all(run.info.status == "FINISHED" for run in runs(store))

    again = cli(*args[:-1], f"hydra.sweep.dir={tmp_path / 'sweep2'}", env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("skipped: this exact config") == 2
    second_parent = next(run for run in runs(store) if run.info.run_id != parents[0].info.run_id
                         and "mlflow.parentRunId" not in run.data.tags)
    assert second_parent.data.tags["ch11.skipped"] == "2"
    assert len(runs(store)) == 4  # two parents, the same two children


def test_a_failed_job_is_one_line_at_once_and_fail_fast_stops_the_jobs_not_yet_started(fashion_npz, store, tmp_path,
                                                                                         cli_env):
    missing = tmp_path / "damaged.npz"  # fails in the job (a missing file is refused before any job starts)
    missing.write_bytes(b"not an npz archive")
    given = [item for item in shrunk(fashion_npz, store, tmp_path, train_size=300) if not item.startswith("data.path=")]
    args = ["-m", f"data.path={missing},{fashion_npz}", "epochs=1", *given]
    fast = cli(*args, "hydra.sweeper.fail_fast=true", f"hydra.sweep.dir={tmp_path / 'fast'}", env=cli_env)
    assert fast.returncode == 2
    (notice,) = [line for line in fast.stderr.splitlines() if line.startswith("job 0 failed")]
    assert str(missing) in notice and "the jobs not yet started will not run" in notice
    (line,) = [line for line in fast.stderr.splitlines() if line.startswith("error:")]
    assert "1 of 2 jobs failed: job 0" in line and "1 not run (hydra.sweeper.fail_fast=true" in line
    parents, children = parent_and_children(store)
    assert children == [] and parents[0].info.status == "FAILED"  # job 1 never started a run

    on = cli(*args, f"hydra.sweep.dir={tmp_path / 'on'}", env=cli_env)  # the default: the other jobs go on
    assert on.returncode == 2
    (notice,) = [line for line in on.stderr.splitlines() if line.startswith("job 0 failed")]
    assert "the other jobs go on" in notice
    (line,) = [line for line in on.stderr.splitlines() if line.startswith("error:")]
    assert "1 of 2 jobs failed: job 0" in line and "not run" not in line
    assert [run.info.status for run in parent_and_children(store)[1]] == ["FINISHED"]


def test_a_dead_tracking_server_is_one_line_and_exit_2_on_the_command_line(tmp_path, cli_env):
    (tmp_path / "data.npz").touch()  # a dataset that exists: what is checked first (it is never read)
    result = cli("tracking.uri=http://127.0.0.1:9", f"data.path={tmp_path / 'data.npz'}",
                 f"hydra.run.dir={tmp_path / 'run'}", env=cli_env)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "http://127.0.0.1:9 is unreachable" in line and "MLFLOW_TRACKING_URI" in line
    assert "Traceback" not in result.stderr
