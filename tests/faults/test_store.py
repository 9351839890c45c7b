"""Scenario 8: the MLflow store's own faults (issue 24), met through the training command.

Each is one `error:` line naming the store and the fix, exit code 2, and nothing lost: the
store is left as it was (never upgraded behind the user's back), or the run's resume state is
kept and the same command finishes it once the store is back, each epoch logged once.
"""

import subprocess
import sys
import time

import pytest
from conftest import cli, history, runs, shrunk
from mlflow.tracking import MlflowClient

from faults.jobs import start_past_epoch_1

pytestmark = pytest.mark.slow


def one_error_line(stderr: str, returncode: int) -> str:
    assert returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def finished_once(store: str, run_id: str, epochs: int) -> None:
    """The store holds one run, run_id, FINISHED: each epoch and the test scores logged once, one
    READY model, its config and figures; no failure left on it."""
    client = MlflowClient(store)
    (run,) = runs(store)
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and "ch11.failure" not in run.data.tags
    assert [step for step, _ in history(client, run_id, "loss")] == list(range(1, epochs + 1))
    assert [step for step, _ in history(client, run_id, "test_accuracy")] == [epochs]
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert [str(model.status) for model in models] == ["READY"]
    assert {"config.yaml", "figures"} <= {item.path for item in client.list_artifacts(run_id)}
    assert "figures/learning_curves.png" in {item.path for item in client.list_artifacts(run_id, "figures")}


def test_an_artifact_folder_replaced_by_a_file_mid_run_fails_the_run_in_one_line_and_the_same_command_finishes_it(
        fashion_npz, store, tmp_path, cli_env, faults):
    """The local artifact store (mlartifacts/ beside the SQLite store) replaced by a file while the job
    trains: the run ends FAILED with the reason, one line naming the folder and the fix, exit 2, the
    resume state kept; with the folder back, the same command records the run once, complete."""
    args = [*shrunk(fashion_npz, store, tmp_path, train_size=15000), f"hydra.run.dir={tmp_path / 'run'}"]
    artifacts = tmp_path / "store" / "mlartifacts"
    job = start_past_epoch_1(args, cli_env, tmp_path / "state")
    artifacts.write_text("a file where the artifact folder was\n")
    faults.inject("artifact store unwritable", "mlartifacts/ replaced by a file after epoch 1")
    _, stderr = job.communicate(timeout=300)

    line = one_error_line(stderr, job.returncode)
    assert artifacts.as_uri() in line and "writable folder again" in line and "same command" in line, line
    (run,) = runs(store)
    assert run.info.status == "FAILED" and "MLflow artifact store" in run.data.tags["ch11.failure"]
    assert list((tmp_path / "state").glob("*/epoch_0002"))  # the resume state: every epoch trained

    artifacts.unlink()
    again = cli(*args, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all 2 epochs were done before the stop" in again.stdout + again.stderr
    finished_once(store, run.info.run_id, 2)
