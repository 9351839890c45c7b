"""Scenario 9: hydra/launcher=slurm on a real single-node Slurm cluster (tests/slurm_cluster.py).
Each job of a sweep is a Slurm job, held on a drained node, cancelled or preempted, and the sweep
still ends as one parent run with children whose final metrics equal a local run's, bit for bit
(deterministic=true).

The cluster has no accounting (no slurmdbd), like many small sites: job states come from squeue.
Its node is this host; the sweep folder, state and store are on this host's disk, which the
one node shares by construction.
"""

import subprocess
import time

import pytest
from conftest import cli, history, parent_and_children, quiet_env, runs, shrunk
from mlflow.tracking import MlflowClient
from slurm_cluster import slurm_cluster

from faults.jobs import start, wait_for

pytestmark = pytest.mark.slow
FINAL = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")
# Small and single-threaded: two jobs share the node's 2 CPUs; 6,000 images keep an epoch long
# enough (about a second) for a signal to land between the first saved epoch and the end.
JOB = ["epochs=3", "deterministic=true", "threads=1", "tracking.log_model=false", "model.batch_norm=after",
       "model.dropout=0.2"]
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
            "hydra.launcher.timeout_min=20"]


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def local_finals(fashion_npz, tmp_path_factory):
    """The reference: the same jobs run locally, one after another ({optimizer: final metrics})."""
    folder = tmp_path_factory.mktemp("local")
    store = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    done = cli("-m", "optimizer=adam,nesterov", *job_args(fashion_npz, store, folder), "hydra/launcher=basic",
               f"hydra.sweep.dir={folder / 'sweep'}", env=quiet_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return {run.data.tags["override.optimizer"]: finals(run) for run in parent_and_children(store)[1]}


def job_args(fashion_npz, store, tmp_path) -> list[str]:
    return [*shrunk(fashion_npz, store, tmp_path, train_size=6000), *JOB]


def finals(run) -> dict[str, float]:
    return {key: run.data.metrics[key] for key in FINAL}


@pytest.fixture(autouse=True)
def no_sweep_left():
    """A sweep command a failed test left waiting is stopped with the test."""
    yield
    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.communicate()
    STARTED.clear()


STARTED: list[subprocess.Popen] = []


def sweep(fashion_npz, store, tmp_path, cluster, *extra: str) -> subprocess.Popen:
    """The sweep command on the cluster, in the background (its output piped)."""
    STARTED.append(start(["-m", *job_args(fashion_npz, store, tmp_path), *ON_SLURM,
                          f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra],
                         {**quiet_env(), **cluster.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return STARTED[-1]


def queued(cluster) -> list[dict[str, str]]:
    return [each for each in cluster.jobs() if each["JobState"] in {"PENDING", "RUNNING"}]


def saved_epoch_1(tmp_path) -> bool:
    return any((tmp_path / "state").glob("*/epoch_0001"))


def saved_epochs(tmp_path) -> str:
    return ", ".join(sorted(path.name for path in (tmp_path / "state").glob("*/epoch_*")))


def slurm_job_of_the_run(store) -> str:
    (run,) = [run for run in runs(store) if "mlflow.parentRunId" in run.data.tags]
    return run.data.tags["ch11.slurm_job"]


def test_a_sweep_on_a_drained_node_waits_then_runs_each_job_as_a_slurm_job_with_the_local_metrics(
        fashion_npz, tmp_path, store, cluster, local_finals, faults):
    cluster.set_node("DRAIN", "maintenance")
    faults.inject("drained node", "before the sweep's 2 jobs were submitted; resumed 5 s after they queued")
    try:
        job = sweep(fashion_npz, store, tmp_path, cluster, "optimizer=adam,nesterov")
        wait_for(lambda: queued(cluster), job, "the job array in the queue", poll_s=0.1)
        time.sleep(5)
        assert {each["JobState"] for each in queued(cluster)} == {"PENDING"}
        assert not [run for run in runs(store) if "mlflow.parentRunId" in run.data.tags]  # no job started
    finally:
        cluster.set_node("RESUME")
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    (parent,), children = parent_and_children(store)
    assert len(children) == 2 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parent.info.run_id}
    assert all(run.info.status == "FINISHED" for run in (parent, *children))
    (array_job,) = {run.data.tags["ch11.slurm_job"].split("_")[0] for run in children}  # one job array
    assert {run.data.tags["ch11.slurm_job"] for run in children} == {f"{array_job}_0", f"{array_job}_1"}
    assert {each["JobState"] for each in cluster.jobs() if each["ArrayJobId"] == array_job} == {"COMPLETED"}
    for run in children:
        assert finals(run) == local_finals[run.data.tags["override.optimizer"]]  # bit for bit


def test_a_cancelled_job_fails_the_sweep_in_one_line_and_the_same_command_resumes_it_to_the_local_metrics(
        fashion_npz, tmp_path, store, cluster, local_finals, faults):
    job = sweep(fashion_npz, store, tmp_path, cluster, "optimizer=nesterov")
    wait_for(lambda: saved_epoch_1(tmp_path), job, "epoch 1 saved", poll_s=0.1)
    cancelled = slurm_job_of_the_run(store)
    cluster.run("scancel", cancelled)
    faults.inject("scancel", f"job {cancelled}, {saved_epochs(tmp_path)} saved")
    out, err = job.communicate(timeout=120)  # job states are polled every 30 s
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert job.returncode == 2, err[-3000:]
    assert len(lines) == 1 and f"Slurm job {cancelled} ended CANCELLED without a result" in lines[0], err[-3000:]
    assert "run the same command: it resumes" in lines[0]
    (run,) = [run for run in runs(store) if "mlflow.parentRunId" in run.data.tags]
    assert run.info.status in {"KILLED", "RUNNING"}  # KILLED by its SIGTERM, or closed by the next start

    again = sweep(fashion_npz, store, tmp_path, cluster, "optimizer=nesterov")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    parents, children = parent_and_children(store)
    (resumed,) = children
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["ch11.slurm_job"] != cancelled  # the run's new Slurm job
    assert [step for step, _ in history(MlflowClient(store), resumed.info.run_id, "loss")] == [1, 2, 3]
    assert finals(resumed) == local_finals["nesterov"]


def test_a_preempted_job_marks_its_run_killed_and_the_requeued_job_finishes_it(
        fashion_npz, tmp_path, store, cluster, local_finals, faults):
    job = sweep(fashion_npz, store, tmp_path, cluster, "optimizer=nesterov")
    wait_for(lambda: saved_epoch_1(tmp_path), job, "epoch 1 saved", poll_s=0.1)
    preempted = slurm_job_of_the_run(store)
    cluster.run("scancel", "--signal=TERM", preempted)
    faults.inject("scancel --signal=TERM", f"job {preempted}, {saved_epochs(tmp_path)} saved")
    wait_for(lambda: runs(store)[-1].info.status == "KILLED", job, "the run KILLED", timeout_s=60, poll_s=0.1)
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    (parent,), (run,) = parent_and_children(store)
    assert run.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert run.data.tags["ch11.slurm_job"] == preempted  # the same job, requeued
    (record,) = cluster.jobs(preempted)
    assert record["Restarts"] == "1" and record["JobState"] == "COMPLETED"
    assert [step for step, _ in history(MlflowClient(store), run.info.run_id, "loss")] == [1, 2, 3]
    assert finals(run) == local_finals["nesterov"]


def test_a_job_preempted_once_more_than_max_num_timeout_allows_is_not_requeued_and_fails_its_sweep_in_one_line(
        fashion_npz, tmp_path, store, cluster, faults):
    job = sweep(fashion_npz, store, tmp_path, cluster, "optimizer=nesterov", "hydra.launcher.max_num_timeout=0")
    wait_for(lambda: saved_epoch_1(tmp_path), job, "epoch 1 saved", poll_s=0.1)
    preempted = slurm_job_of_the_run(store)
    cluster.run("scancel", "--signal=TERM", preempted)
    faults.inject("scancel --signal=TERM", f"job {preempted} (max_num_timeout=0), {saved_epochs(tmp_path)} saved")
    out, err = job.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert job.returncode == 2 and len(lines) == 1, err[-3000:]
    assert f"Slurm job {preempted} ended FAILED without a result" in lines[0]
    (run,) = [run for run in runs(store) if "mlflow.parentRunId" in run.data.tags]
    assert run.info.status == "KILLED" and "preempted by Slurm (SIGTERM" in run.data.tags["ch11.failure"]
    (record,) = cluster.jobs(preempted)
    assert record["Restarts"] == "0"
