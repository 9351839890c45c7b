"""Scenario 6: jobs and sweeps racing on one fresh SQLite store.

Nothing lost (every job a FINISHED run with all its epochs), nothing duplicated (one run
per config), nothing corrupted (no lock or schema errors, each run's artifacts its own).
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import cli, history, parent_and_children, runs, shrunk
from mlflow.tracking import MlflowClient

from faults.jobs import start, wait_for

pytestmark = pytest.mark.slow
RACE_ERRORS = r"database is locked|IntegrityError|UNIQUE constraint|already exists|Traceback"
OPTIMIZERS = ("sgd", "momentum", "adam", "nadam")


def launch(args, env) -> subprocess.Popen:
    return start(args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_four_jobs_started_together_on_a_fresh_store_each_record_one_complete_run(fashion_npz, store, tmp_path,
                                                                                 cli_env, faults):
    """Four processes, no experiment and no database yet: each creates them if missing, at once, in their
    default job folders (same second: they must not share one)."""
    base = [*shrunk(fashion_npz, store, tmp_path, train_size=300), "threads=1"]
    jobs = [launch([*base, f"optimizer={name}"], {**cli_env, "PYTHONHASHSEED": str(index)})
            for index, name in enumerate(OPTIMIZERS)]
    faults.inject("4 concurrent jobs", "one fresh SQLite store")
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    for job, output in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, output[-3000:]
        assert not re.search(RACE_ERRORS, output), output[-3000:]
    found = runs(store)
    assert sorted(run.data.tags["override.optimizer"] for run in found) == sorted(OPTIMIZERS)  # one run each
    client = MlflowClient(store)
    for run in found:
        assert run.info.status == "FINISHED"
        assert [step for step, _ in history(client, run.info.run_id, "loss")] == [1, 2]
        logged = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / run.info.run_id))
        optimizer = yaml.safe_load(Path(logged).read_text())["optimizer"]  # its own config, not a neighbour's
        assert {f"optimizer.{key}": str(value) for key, value in optimizer.items()} == {
            key: value for key, value in run.data.params.items() if key.startswith("optimizer.")}


def test_two_sweeps_of_the_same_experiment_started_together_train_each_config_once(fashion_npz, store, tmp_path,
                                                                                  cli_env, faults):
    """The second sweep waits for each config the first is training, then records it as done: two parents,
    one child per config, both sweeps exit 0 and list the same runs."""
    args = ["-m", "optimizer=sgd,adam", *shrunk(fashion_npz, store, tmp_path, train_size=2000)]
    sweeps = [launch([*args, f"hydra.sweep.dir={tmp_path / name}"], cli_env) for name in ("a", "b")]
    faults.inject("2 concurrent sweeps", "same experiment and configs")
    outputs = [sweep.communicate(timeout=600)[0] for sweep in sweeps]
    for sweep, output in zip(sweeps, outputs, strict=True):
        assert sweep.returncode == 0, output[-3000:]
        assert not re.search(RACE_ERRORS, output), output[-3000:]
    parents, children = parent_and_children(store)
    assert [run.info.status for run in parents] == ["FINISHED", "FINISHED"]
    assert sorted(run.data.params["optimizer.name"] for run in children) == ["adam", "sgd"]  # no duplicate
    assert all(run.info.status == "FINISHED" for run in children)
    assert sum(int(run.data.tags["ch11.skipped"]) for run in parents) == 2  # each config trained by one sweep
    listed = [{job["run_id"] for job in json.loads((tmp_path / name / "jobs.json").read_text())["jobs"]}
              for name in ("a", "b")]
    assert listed[0] == listed[1] == {run.info.run_id for run in children}
    for child in children:
        assert [step for step, _ in history(MlflowClient(store), child.info.run_id, "loss")] == [1, 2]


def test_a_second_sweep_in_the_same_folder_is_refused_and_the_first_is_untouched(fashion_npz, store, tmp_path,
                                                                                 cli_env, faults):
    args = ["-m", "optimizer=sgd,adam", *shrunk(fashion_npz, store, tmp_path, train_size=300),
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = launch(args, cli_env)
    wait_for((tmp_path / "sweep" / "mlflow_parent.json").is_file, first, "the first sweep's parent run", 120)
    faults.inject("2 sweeps, one folder", "second started while the first trains")
    second = cli(*args, env=cli_env)
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    (line,) = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert "another sweep is running in" in line and "hydra.sweep.dir" in line
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 0, output[-3000:]
    (parent,), children = parent_and_children(store)
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert json.loads((tmp_path / "sweep" / "mlflow_parent.json").read_text())["run_id"] == parent.info.run_id


def test_a_parallel_sweep_of_four_jobs_on_a_fresh_store_makes_four_children(fashion_npz, store, tmp_path, cli_env,
                                                                          faults):
    """4 jobs, two processes, one fresh SQLite store: no lock, schema or duplicate-row errors.

    The jobs used to race to insert the new dataset's row (sqlite3.IntegrityError); the
    parent now logs it before they start."""
    faults.inject("4 parallel jobs", "hydra/launcher=parallel (joblib), one fresh SQLite store")
    result = cli("-m", "hydra/launcher=parallel", "threads=1", "optimizer=sgd,momentum,adam,nadam",
                 *shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}", env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not re.search(r"database is locked|IntegrityError|UNIQUE constraint", result.stdout + result.stderr)
    (parent,), children = parent_and_children(store)
    assert [run.data.tags["mlflow.parentRunId"] for run in children] == [parent.info.run_id] * 4
    assert all(run.info.status == "FINISHED" for run in runs(store))
    assert {run.inputs.dataset_inputs[0].dataset.name for run in (parent, *children)} == {"fashion_mnist"}
