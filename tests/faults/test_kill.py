"""Scenarios 1-2: a training job killed at random points (SIGKILL) or preempted (SIGTERM).

The job: 4 epochs of an MLP with dropout, Batch Normalization and Nesterov momentum on
real Fashion-MNIST images in deterministic mode, so the dropout seeds, the moving
statistics and the optimizer slots must all come back for a resumed run to match. And the
stop's timing: a Ctrl-C or SIGTERM never lands inside a store call (src/interrupts.py).
"""

import random
import signal
import subprocess
import time

import pytest
import sqlalchemy
from conftest import cli, history, parent_and_children, runs, shrunk
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from faults.jobs import start, start_past_epoch_1, wait_for

pytestmark = pytest.mark.slow
CURVES = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def job_args(fashion_npz, store, tmp_path, seed: int, train_size: int = 3000) -> list[str]:
    return [*shrunk(fashion_npz, store, tmp_path, train_size=train_size), "epochs=4", "deterministic=true",
            "model.dropout=0.2", "model.batch_norm=after", "optimizer=nesterov", f"seed={seed}",
            f"hydra.run.dir={tmp_path / 'run'}"]


def progress(tmp_path, store) -> str:
    """Where a job stands: epochs in its resume state and epochs its run has logged."""
    saved = sorted(path.name for path in (tmp_path / "state").glob("*/epoch_*"))
    open_runs = [run for run in runs(store) if run.info.status == "RUNNING"]
    logged = len(history(MlflowClient(store), open_runs[0].info.run_id, "loss")) if open_runs else 0
    if not open_runs:
        finished = any(run.info.status == "FINISHED" for run in runs(store))
        return "after its run was recorded FINISHED" if finished else "before its run started"
    return f"{saved[-1] if saved else 'no epoch'} saved, {logged} epochs logged"


def appeared(path_glob, tmp_path) -> bool:
    return bool(list((tmp_path / "state").glob(path_glob)))


KILLS = 5  # one reference run, then up to five kills: the kill points are what varies, not the job


def test_sigkill_at_random_points_then_the_same_command_gives_the_uninterrupted_result(
        fashion_npz, store, tmp_path, cli_env, faults):
    """Killed up to 5 times, each in a random epoch still to do (or in the evaluation and recording after
    the last) at a random moment of it, then run to the end: same curves and test accuracy as a run never
    killed, bit for bit; each epoch logged once; one FINISHED run and model, no run left RUNNING."""
    seed = 1
    args = job_args(fashion_npz, store, tmp_path, seed, train_size=15000)  # epochs long enough to land in
    env = {**cli_env, "PYTHONUNBUFFERED": "1"}  # Keras's "Epoch 3/4" reaches the log as it is printed
    reference = start([*args, "name=reference"], env)
    marks = {}
    while reference.poll() is None:
        for epoch in range(1, 5):
            if epoch not in marks and appeared(f"*/epoch_{epoch:04d}", tmp_path):
                marks[epoch] = time.monotonic()
        time.sleep(0.01)
    assert reference.returncode == 0 and len(marks) == 4
    epoch_time, finish_time = (marks[4] - marks[2]) / 2, time.monotonic() - marks[4]
    rng = random.Random(seed)
    for attempt in range(KILLS):
        if any(run.info.status == "FINISHED" for run in runs(store)):
            break  # the last kill came after the run was recorded: nothing is left to interrupt
        saved = sorted((tmp_path / "state").glob("*/epoch_*"))
        done = int(saved[-1].name[-4:]) if saved else 0
        target = rng.randint(done + 1, 5)  # epoch 5: evaluation, model and figures after the last epoch
        log = tmp_path / f"attempt{attempt}.log"
        with open(log, "w") as output:
            job = start(args, env, stdout=output, stderr=subprocess.STDOUT)
        if target <= 4:
            wait_for(lambda log=log, target=target: f"Epoch {target}/4" in log.read_text(), job, f"epoch {target}")
            delay = rng.uniform(0, 0.9) * epoch_time
        else:
            wait_for(lambda: appeared("*/epoch_0004", tmp_path), job, "the last epoch")
            delay = rng.uniform(0, 0.9) * finish_time
        time.sleep(delay)
        if job.poll() is not None:
            assert job.returncode == 0
            break
        where = progress(tmp_path, store)
        job.kill()
        job.wait()
        phase = f"epoch {target}" if target <= 4 else "recording"
        faults.inject("SIGKILL", f"seed {seed}, {phase} + {delay:.2f} s ({where})")

    final = cli(*args, env=cli_env)
    assert final.returncode == 0, final.stderr[-3000:]
    client = MlflowClient(store)
    (expected,) = runs(store, "reference")
    finished = [run for run in runs(store) if run.info.status == "FINISHED"]
    assert len(finished) == 1, [run.info.status for run in runs(store)]
    (run,) = finished
    for other in runs(store):  # killed before it could note its run id: closed by the next start, empty
        if other.info.run_id != run.info.run_id:
            assert other.info.status == "KILLED" and not history(client, other.info.run_id, "loss")
    for key in CURVES:
        logged = history(client, run.info.run_id, key)
        assert [step for step, _ in logged] == [1, 2, 3, 4], key  # each epoch exactly once
        assert logged == history(client, expected.info.run_id, key), key
    assert run.data.metrics["test_accuracy"] == expected.data.metrics["test_accuracy"]
    models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [str(model.status) for model in models] == ["READY"]  # none left half-written by a kill
    assert not list((tmp_path / "state").glob("*/epoch_*"))  # removed once the run is recorded


def test_sigterm_saves_the_state_marks_the_run_killed_and_the_next_start_resumes_it(
        fashion_npz, store, tmp_path, cli_env, faults):
    """A cluster's preemption: exit 130 with one line, the run KILLED with the reason, the last
    epoch's state on disk; the same command resumes that run to FINISHED, each epoch once."""
    args = job_args(fashion_npz, store, tmp_path, seed=3)
    job = start_past_epoch_1(args, cli_env, tmp_path / "state")
    time.sleep(random.Random(3).uniform(0, 1))
    faults.inject("SIGTERM", progress(tmp_path, store))
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: interrupted; the run is marked KILLED and the same command resumes it from its last finished epoch"]
    (stopped,) = runs(store)
    assert stopped.info.status == "KILLED" and "SIGTERM" in stopped.data.tags["ch11.failure"]
    saved = list((tmp_path / "state").glob("*/epoch_*"))
    assert saved and (saved[0] / "state.npz").is_file()

    resumed = cli(*args, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch {int(saved[0].name[-4:]) + 1} of 4" in resumed.stdout + resumed.stderr
    (run,) = runs(store)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert "ch11.failure" not in run.data.tags
    assert [step for step, _ in history(MlflowClient(store), run.info.run_id, "loss")] == [1, 2, 3, 4]


def test_sigterm_stops_a_sweep_and_the_same_sweep_command_finishes_it(fashion_npz, store, tmp_path, cli_env,
                                                                      faults):
    """Preempted in its first job, a 2-job sweep ends KILLED (parent and job); run again, it resumes that
    job and trains the other under a new parent: two FINISHED children, nothing left RUNNING."""
    args = ["-m", "optimizer=sgd,adam", *shrunk(fashion_npz, store, tmp_path, train_size=3000), "epochs=3",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    job = start_past_epoch_1(args, cli_env, tmp_path / "state")  # the sweep's first job
    faults.inject("SIGTERM", f"sweep, job 0: {progress(tmp_path, store)}")
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 130, stderr[-3000:]
    parents, children = parent_and_children(store)
    assert [run.info.status for run in parents + children] == ["KILLED", "KILLED"]

    again = cli(*args, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    parents, children = parent_and_children(store)
    assert sorted(run.info.status for run in parents) == ["FINISHED", "KILLED"]
    assert [run.info.status for run in children] == ["FINISHED", "FINISHED"]
    assert {run.data.params["optimizer.name"] for run in children} == {"sgd", "adam"}
    for child in children:
        assert [step for step, _ in history(MlflowClient(store), child.info.run_id, "loss")] == [1, 2, 3]


def stop_inside_the_next_commit(signals: int, reached: list) -> None:
    """Signal this process `signals` times from inside SQLAlchemy's next commit (Python runs the handler
    there, before the database commits), then note that the commit went on."""
    def signal_mid_commit(connection) -> None:
        for _ in range(signals):
            signal.raise_signal(signal.SIGUSR1)
        reached.append("the commit")
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", signal_mid_commit, once=True)


def test_a_stop_signalled_inside_a_store_write_stops_once_the_write_is_complete(tmp_path):
    """Raised inside SQLAlchemy's commit, the KeyboardInterrupt of a SIGTERM or Ctrl-C left SQLite locked
    against the job's own closing write (run marked KILLED): "database is locked", the run RUNNING. Now
    the stop waits for the store call: the metric is written, then the stop comes, and the same client
    closes the run. A second signal while the first waits stops at once (a hung store traps nobody)."""
    from src import interrupts
    from src.tracking import StoreClient

    client = StoreClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("test")).info.run_id
    reached = []
    with interrupts.handled(signals=(signal.SIGUSR1,)):  # SIGUSR1 for SIGTERM: the test process keeps its own
        stop_inside_the_next_commit(1, reached)
        with pytest.raises(KeyboardInterrupt):
            client.log_batch(run_id, metrics=[Metric("loss", 0.5, 0, 1)])
        assert reached == ["the commit"]
        assert history(client, run_id, "loss") == [(1, 0.5)]
        client.set_terminated(run_id, "KILLED")
        assert client.get_run(run_id).info.status == "KILLED"

        reached.clear()
        stop_inside_the_next_commit(2, reached)
        with pytest.raises(KeyboardInterrupt):
            client.set_tag(run_id, "after", "the second stop")
        assert reached == []  # stopped inside the call
