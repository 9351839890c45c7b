"""Team scale, started for real on 127.0.0.1: an MLflow tracking server on PostgreSQL, the
submitit launcher, `mlflow run` of the MLproject, the DVC remote round trip.

Every sweep is shrunk (300 real Fashion-MNIST images, 1-3 epochs) to keep the suite short.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
from conftest import LINKED_CACHE, REPO, cli, copy_repo, dvc, history, parent_and_children, runs, shrunk
from mlflow.tracking import MlflowClient
from services import MlflowServer, postgres

pytestmark = pytest.mark.slow


# -- tracking=server: MLflow server on PostgreSQL --------------------------------------------------

@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with postgres() as database, MlflowServer("server", database, folder / "artifacts",
                                               folder / "server.log") as server:
        yield server


def test_a_sweep_logs_parent_children_metrics_and_models_to_a_server_on_postgresql(tracking_server, fashion_npz,
                                                                                  tmp_path, cli_env):
    args = ["-m", "tracking=server", "optimizer=adam,nadam",
            *shrunk(fashion_npz, tracking_server.uri, tmp_path, train_size=300), "epochs=1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = cli(*args, env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]

    (parent,), children = parent_and_children(tracking_server.uri)
    assert len(children) == 2 and all(run.info.status == "FINISHED" for run in (parent, *children))
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert {run.data.params["optimizer.name"] for run in children} == {"adam", "nadam"}
    client = MlflowClient(tracking_server.uri)
    mlflow.set_tracking_uri(tracking_server.uri)
    for child in children:
        assert 0.1 < child.data.metrics["test_accuracy"] <= 1
        assert [step for step, _ in history(client, child.info.run_id, "val_accuracy")] == [1]
        info = mlflow.models.get_model_info(f"runs:/{child.info.run_id}/model")
        assert "keras" in info.flavors and tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (
            -1, 28, 28)
        assert "figures" in {artifact.path for artifact in client.list_artifacts(child.info.run_id)}
    model = mlflow.keras.load_model(f"runs:/{children[0].info.run_id}/model")  # read back through the server
    assert model.predict(np.zeros((2, 28, 28), "float32"), verbose=0).shape == (2, 10)
    # the server stored the artifacts (proxied): the clients wrote none of them
    assert list((tracking_server.artifacts).rglob("MLmodel")) and not (tmp_path / "mlartifacts").exists()


def test_a_run_is_orphaned_only_when_its_process_on_this_host_is_gone():
    from src.tracking import process_gone, process_id

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{socket.gethostname()}:{finished.stdout.strip()}:1"
    assert not process_gone(process_id())  # this process
    assert process_gone(dead)  # a process that has exited (or whose pid now belongs to a newer one)
    assert not process_gone(dead.replace(socket.gethostname(), "another-node"))  # cannot be seen from here
    assert not process_gone("")  # runs from before the tag: left alone


def test_a_server_stopped_mid_sweep_is_one_clear_error_and_no_run_stays_silently_running(
        tracking_server, fashion_npz, tmp_path, cli_env):
    env = {**cli_env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    shrunk_args = [arg.replace("name=test", "name=stopped")
                   for arg in shrunk(fashion_npz, tracking_server.uri, tmp_path, train_size=3000)]
    args = ["-m", "tracking=server", "optimizer=sgd,momentum", *shrunk_args, "epochs=3",
            "tracking.log_model=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    sweep = subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(tracking_server.uri)
    deadline = time.monotonic() + 300
    while not any(history(client, run.info.run_id, "loss") for run in runs(tracking_server.uri, "stopped")):
        assert sweep.poll() is None and time.monotonic() < deadline, "the first job never logged an epoch"
        time.sleep(0.2)
    tracking_server.stop()  # mid-job: epoch 1 logged, epochs 2-3 to come
    try:
        _, stderr = sweep.communicate(timeout=300)
    finally:
        tracking_server.start()  # same port, same database
    assert sweep.returncode == 2, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert tracking_server.uri in line and "stays RUNNING" in line and "same command" in line
    assert "Traceback" not in stderr
    (parent,), (child,) = parent_and_children(tracking_server.uri, "stopped")
    assert parent.info.status == child.info.status == "RUNNING"  # the store could not be told

    again = cli(*args, env=env)  # the same command, with the server back
    assert again.returncode == 0, again.stderr[-3000:]
    parents, children = parent_and_children(tracking_server.uri, "stopped")
    old = next(run for run in parents if run.info.run_id == parent.info.run_id)
    assert old.info.status == "KILLED" and "ended without closing it" in old.data.tags["ch11.failure"]
    assert all(run.info.status == "FINISHED" for run in (*children, *parents) if run is not old)
    assert len(children) == 2 and child.info.run_id in {run.info.run_id for run in children}  # resumed
    new = next(run for run in parents if run is not old)
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {new.info.run_id}
    for run in children:
        assert [step for step, _ in history(client, run.info.run_id, "loss")] == [1, 2, 3]  # each epoch once


# -- launchers ---------------------------------------------------------------------------------------

def test_the_submitit_launcher_runs_children_of_the_sweep_and_a_rerun_skips_them(fashion_npz, store, tmp_path,
                                                                                 cli_env):
    """hydra/launcher=slurm's engine (submitit), with its local executor: jobs in other processes."""
    args = ["-m", "hydra/launcher=submitit_local", "threads=1", "optimizer=adam,nadam",
            *shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1", "tracking.log_model=false"]
    first = cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", env=cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    (parent,), children = parent_and_children(store)
    assert len(children) == 2 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert all(run.info.status == "FINISHED" for run in (parent, *children))
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # ran as submitit jobs
    assert {run.data.tags["ch11.process"].split(":")[1] for run in children}.isdisjoint({str(os.getpid())})

    again = cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep2'}", env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    parents, children_after = parent_and_children(store)
    assert len(parents) == 2 and len(children_after) == 2  # nothing trained twice
    assert next(run for run in parents if run.info.run_id != parent.info.run_id).data.tags["ch11.skipped"] == "2"


def test_the_slurm_launcher_config_composes_with_our_defaults():
    result = subprocess.run([sys.executable, "-m", "src.train", "hydra/launcher=slurm", "--cfg", "hydra",
                             "-p", "hydra.launcher"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout and "max_num_timeout: 3" in result.stdout


def test_an_optuna_search_is_a_parent_run_with_a_child_per_trial_and_its_best_trial_tagged(fashion_npz, store,
                                                                                           tmp_path, cli_env):
    args = ["-m", "hydra/sweeper=hpo", "hydra.sweeper.n_trials=3",
            "optimizer.learning_rate=tag(log, interval(0.001, 0.3))",
            *shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1", "tracking.log_model=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = cli(*args, env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children = parent_and_children(store)
    assert len(children) == 3 and all(run.info.status == "FINISHED" for run in (parent, *children))
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    rates = {float(run.data.params["optimizer.learning_rate"]) for run in children}
    assert len(rates) == 3 and all(0.001 <= rate <= 0.3 for rate in rates)  # sampled, log scale
    best = max(children, key=lambda run: run.data.metrics["val_accuracy"])
    assert float(parent.data.tags["ch11.best_value"]) == pytest.approx(best.data.metrics["val_accuracy"])
    assert parent.data.tags["ch11.best_params"].startswith("optimizer.learning_rate=")
    assert "optimization_results.yaml" in {a.path for a in MlflowClient(store).list_artifacts(parent.info.run_id)}

    wrong = cli(*args[:2], "hydra.sweeper.n_trials=1", "hydra.sweeper.objective=val_acc", *args[3:-1],
                f"hydra.sweep.dir={tmp_path / 'sweep2'}", env=cli_env)
    assert wrong.returncode == 2
    (line,) = [line for line in wrong.stderr.splitlines() if line.startswith("error:")]
    assert "objective 'val_acc'" in line and "val_accuracy" in line and "grad_norm" not in line


# -- MLproject ---------------------------------------------------------------------------------------

def test_mlflow_run_of_the_sweep_entry_point_keeps_the_sweeps_parent_and_children(fashion_npz, store, tmp_path,
                                                                                  cli_env):
    """`mlflow run` opens a run and hands its id to the command (MLFLOW_RUN_ID): it must not
    swallow the sweep's runs."""
    overrides = " ".join(["optimizer=adam,nadam", *shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1",
                          "tracking.log_model=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    result = subprocess.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "sweep", "-P", f"overrides={overrides}",
                             "--env-manager", "local", "--experiment-name", "launches"],
                            cwd=REPO, env={**cli_env, "MLFLOW_TRACKING_URI": store}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (launch,) = runs(store, "launches")
    assert launch.info.status == "FINISHED" and launch.data.tags["mlflow.project.entryPoint"] == "sweep"
    (parent,), children = parent_and_children(store)
    assert len(children) == 2 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert all(run.info.status == "FINISHED" for run in (parent, *children))


# -- DVC remote --------------------------------------------------------------------------------------

def test_dvc_push_then_pull_in_a_fresh_clone_restores_the_data_and_repro_has_nothing_to_do(pipeline, tmp_path):
    """The committed remote setting (.dvc/config `storage`), pointed at a folder per clone."""
    work, env, _ = pipeline
    remote = tmp_path / "remote"
    source = copy_repo(tmp_path / "source")
    for folder in ("raw", "prepared"):  # the data stages' outputs, made once per session (read-only: linked)
        shutil.copytree(work / "data" / folder, source / "data" / folder, copy_function=os.link)
    for args in (LINKED_CACHE,
                 ("commit", "--force"),  # record these outputs and this working tree's code, whatever their state
                 ("remote", "modify", "--local", "storage", "url", str(remote)), ("push",)):
        done = dvc(*args, cwd=source, env=env)
        assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    subprocess.run(["git", "add", "-A"], cwd=source, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], cwd=source,
                   check=True)

    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(source), str(fresh)], check=True)
    assert not (fresh / "data" / "prepared").exists()
    for args in (("remote", "modify", "--local", "storage", "url", str(remote)), LINKED_CACHE, ("pull",)):
        done = dvc(*args, cwd=fresh, env=env)
        assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    for name in ("fashion_mnist", "cifar10"):
        assert (fresh / "data" / "prepared" / f"{name}.npz").read_bytes() == (
            work / "data" / "prepared" / f"{name}.npz").read_bytes()
    assert (fresh / "runs" / "batchnorm" / "summary.json").is_file()  # the summaries: in git
    status = dvc("status", cwd=fresh, env=env)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    repro = dvc("repro", cwd=fresh, env=env)
    assert repro.returncode == 0 and not re.search(r"Running stage", repro.stdout), repro.stdout[-3000:]
