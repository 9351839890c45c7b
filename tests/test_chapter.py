"""python -m src.chapter: several experiments' sweeps in one process, on the same workers."""

import json
import subprocess
import sys

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from src.tracking import PROCESS_TAG

pytestmark = pytest.mark.slow


def chapter(*arguments: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.chapter", *arguments], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def test_each_experiment_is_its_own_sweep_and_the_workers_serve_them_all(fashion_npz, store, tmp_path, cli_env):
    common = ["--", f"data.path={fashion_npz}", "data.train_size=300", "epochs=1", "tracking.log_model=false",
              f"tracking.uri={store}", f"state_dir={tmp_path / 'state'}"]
    first = chapter(f"seed_notebook seed=42 hydra.sweep.dir={tmp_path / 'seed_notebook'}",
                    f"batchnorm seed=42 hydra.sweep.dir={tmp_path / 'batchnorm'}", *common, env=cli_env)
    assert first.returncode == 0, first.stderr[-3000:]

    client, workers = MlflowClient(store), {}
    for name, jobs in (("seed_notebook", 3), ("batchnorm", 3)):  # the experiment's own sweep, narrowed by seed=
        record = json.loads((tmp_path / name / "jobs.json").read_text())
        parent = client.get_run(record["parent_run_id"])
        assert parent.info.status == "FINISHED"
        assert client.get_experiment(parent.info.experiment_id).name == name
        children = [client.get_run(job["run_id"]) for job in record["jobs"]]
        assert len(children) == jobs and not any(job["skipped"] for job in record["jobs"])
        assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
        assert all(run.info.status == "FINISHED" for run in children)
        workers[name] = {run.data.tags[PROCESS_TAG] for run in children}
    assert len(workers["seed_notebook"] | workers["batchnorm"]) <= 2  # the launcher's two processes ran all 6 jobs

    again = chapter(f"seed_notebook seed=42 hydra.sweep.dir={tmp_path / 'again'}", *common, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(job["skipped"] for job in json.loads((tmp_path / "again" / "jobs.json").read_text())["jobs"])


def test_a_sweep_that_fails_stops_the_run_before_the_next_experiment(store, tmp_path, cli_env):
    result = chapter(f"batchnorm epochs=-1 hydra.sweep.dir={tmp_path / 'batchnorm'}",
                     f"seed_notebook hydra.sweep.dir={tmp_path / 'seed_notebook'}", "--", f"tracking.uri={store}",
                     env=cli_env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "epochs" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "seed_notebook").exists()


def test_an_unknown_experiment_is_one_line_naming_the_choices(cli_env):
    result = chapter("batchnorm", "no_such_experiment", env=cli_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()] and "no_such_experiment" in result.stderr and "seed_notebook" in result.stderr
