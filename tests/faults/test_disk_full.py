"""Scenario 4: the disk that holds the job's resume state and outputs fills up mid-run.

A real small tmpfs (root may mount one; CI runs as root) holds state_dir and the job's
folder; the MLflow store lives elsewhere, as a team's server would. When the disk fills
after the first epoch, the job must stop with one line naming the file and the fix, mark
its run FAILED with that reason, keep its last good epoch loadable, and resume from it
once space is back.
"""

import errno
import os
import subprocess
import sys

import pytest
from conftest import cli, history, runs, shrunk
from mlflow.tracking import MlflowClient
from services import MlflowServer

from faults.jobs import start_past_epoch_1

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a tmpfs (run as root): {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder) -> int:
    """Write a file until the disk refuses: bytes written."""
    written = 0
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 2**20)
                filler.flush()
                written += 2**20
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return written


def test_a_disk_full_mid_run_is_one_line_a_failed_run_and_the_last_epoch_resumes(small_disk, fashion_npz, store,
                                                                                 tmp_path, cli_env, faults):
    args = [*shrunk(fashion_npz, store, small_disk, train_size=15000), "epochs=4", "deterministic=true",
            f"hydra.run.dir={small_disk / 'run'}"]
    job = start_past_epoch_1(args, cli_env, small_disk / "state")
    filled = fill(small_disk)
    kept = sorted((small_disk / "state").glob("*/epoch_*"))
    faults.inject("ENOSPC", f"{filled >> 20} MiB filler after {kept[-1].name if kept else 'no epoch'}")
    _, stderr = job.communicate(timeout=300)

    assert job.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "No space left on device" in errors[0] and str(small_disk) in errors[0] and "free space" in errors[0]
    (run,) = runs(store)
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["ch11.failure"]
    saved = sorted((small_disk / "state").glob("*/epoch_*"))
    assert len(saved) == 1 and not list((small_disk / "state").glob("*/.epoch_*.partial"))  # no half epoch kept
    good = int(saved[0].name[-4:])
    assert good >= 1

    (small_disk / "filler").unlink()
    resumed = cli(*args, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at epoch {good + 1} of 4" in resumed.stdout + resumed.stderr
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and "ch11.failure" not in run.data.tags
    assert [step for step, _ in history(MlflowClient(store), run.info.run_id, "loss")] == [1, 2, 3, 4]


def test_a_disk_already_full_is_one_line_before_any_run_starts(small_disk, fashion_npz, store, cli_env, faults):
    fill(small_disk)
    faults.inject("ENOSPC", "disk full before the job starts")
    result = cli(*shrunk(fashion_npz, store, small_disk), f"hydra.run.dir={small_disk / 'run'}", env=cli_env)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "No space left on device" in errors[0] and str(small_disk / "run") in errors[0] and "free space" in errors[0]
    assert all(run.info.status != "RUNNING" for run in runs(store))


def remount(mount, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)


def test_a_store_on_a_read_only_disk_is_one_line_and_the_same_command_works_once_it_is_writable(
        small_disk, fashion_npz, tmp_path, cli_env, faults):
    """The MLflow store's disk remounted read-only: one line naming the store and the fix, exit 2,
    the store untouched; remounted read-write, the same command trains and records the run."""
    database = small_disk / "mlflow.db"
    store = f"sqlite:///{database}"
    subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "  # a store that exists;
                    f"MlflowClient({store!r}).search_experiments()"], check=True, capture_output=True)  # no open file
    before = database.read_bytes()
    remount(small_disk, "ro")
    faults.inject("read-only store", "its disk remounted read-only")
    args = [*shrunk(fashion_npz, store, tmp_path, train_size=300), "epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    refused = cli(*args, env=cli_env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert store in line and "remount it read-write" in line and "tracking.uri" in line, line
    assert database.read_bytes() == before
    remount(small_disk, "rw")
    again = cli(*args, env=cli_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [run.info.status for run in runs(store)] == ["FINISHED"]


def test_a_store_whose_disk_fills_mid_run_is_one_line_and_the_same_command_finishes_the_run(
        small_disk, fashion_npz, tmp_path, cli_env, faults):
    """The SQLite store's own disk (its artifacts beside it) fills after epoch 1: one line naming the
    store and the fix, exit 2, the resume state kept; with space back, the same command resumes the
    run to FINISHED, each epoch logged once."""
    store = f"sqlite:///{small_disk / 'mlflow.db'}"
    args = [*shrunk(fashion_npz, store, tmp_path, train_size=15000), "epochs=3", f"hydra.run.dir={tmp_path / 'run'}"]
    job = start_past_epoch_1(args, cli_env, tmp_path / "state")
    filled = fill(small_disk)
    faults.inject("ENOSPC (store)", f"{filled >> 20} MiB filler beside the store after epoch 1")
    _, stderr = job.communicate(timeout=300)

    assert job.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert store in line and "disk is full" in line and "free space" in line and "same command" in line, line
    assert list((tmp_path / "state").glob("*/epoch_*"))  # the resume state is kept

    (small_disk / "filler").unlink()
    resumed = cli(*args, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and "ch11.failure" not in run.data.tags
    assert [step for step, _ in history(MlflowClient(store), run.info.run_id, "loss")] == [1, 2, 3]


def test_a_servers_artifact_folder_made_read_only_mid_run_fails_the_run_in_one_line_and_the_same_command_finishes_it(
        small_disk, fashion_npz, tmp_path, cli_env, faults):
    """`mlflow server --artifacts-destination` on a disk remounted read-only while the job trains: the
    tracking store answers, so the run ends FAILED with the reason; one line names the server's artifact
    store and the fix, exit 2. Remounted read-write, the same command finishes the run, recorded once."""
    env = {**cli_env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}  # MLflow retries a refused upload for minutes
    with MlflowServer("server", f"sqlite:///{tmp_path / 'server.db'}", small_disk / "artifacts",
                      tmp_path / "server.log") as server:
        args = ["tracking=server", *shrunk(fashion_npz, server.uri, tmp_path, train_size=15000),
                f"hydra.run.dir={tmp_path / 'run'}"]
        job = start_past_epoch_1(args, env, tmp_path / "state")
        remount(small_disk, "ro")
        faults.inject("artifact store read-only", "the server's --artifacts-destination remounted read-only after "
                      "epoch 1")
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
        (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert "artifact store mlflow-artifacts:" in line and server.uri in line and "--artifacts-destination" in line
        assert "same command" in line, line
        (run,) = runs(server.uri)
        assert run.info.status == "FAILED" and "MLflow artifact store" in run.data.tags["ch11.failure"]

        remount(small_disk, "rw")
        again = cli(*args, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        client = MlflowClient(server.uri)
        (done,) = runs(server.uri)
        assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
        assert [step for step, _ in history(client, done.info.run_id, "loss")] == [1, 2]
        assert [step for step, _ in history(client, done.info.run_id, "test_accuracy")] == [2]
        models = client.search_logged_models([done.info.experiment_id],
                                             filter_string=f"source_run_id = '{done.info.run_id}'")
        assert [str(model.status) for model in models] == ["READY"] and list(small_disk.rglob("MLmodel"))
