"""Scenario 3: `dvc repro` killed (SIGKILL to its whole process group) in the middle of a stage.

In a copy of the repository with one experiment shrunk: killed first while preparing the
data, then while the experiment's sweep trains. The next `dvc repro` must finish, with no
stale lock, no half-written output taken for a good one, no run left RUNNING and no run
trained twice.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from conftest import copy_repo, dvc, dvc_env, history, parent_and_children
from mlflow.tracking import MlflowClient

from src.data.load import load_prepared

pytestmark = pytest.mark.slow
STAGE = "experiment@seed_notebook"
QUICK = "seed=42 epochs=2 data.train_size=3000 tracking.log_model=false"


@pytest.fixture
def repo(tmp_path):
    work = copy_repo(tmp_path / "repo")
    shutil.rmtree(work / "runs", ignore_errors=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["experiments"].update(datasets={"seed_notebook": "fashion_mnist"}, pretrained={}, extra=QUICK)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return work, store, dvc_env(MLFLOW_TRACKING_URI=store, TF_CPP_MIN_LOG_LEVEL="3")


def kill_repro_when(work, env, log, ready, delay: float) -> str:
    """Start `dvc repro STAGE`, wait until ready(output) is true, then delay seconds, then SIGKILL its group."""
    with open(log, "w") as out:
        repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro", STAGE], cwd=work, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready(log.read_text()):
        assert repro.poll() is None, f"dvc repro ended before the kill point:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(delay)
    assert repro.poll() is None, "dvc repro finished before the kill"
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()
    return log.read_text()


def test_dvc_repro_killed_mid_stage_then_rerun_completes_with_nothing_stale_lost_or_doubled(repo, tmp_path, faults):
    work, store, env = repo
    rng = random.Random(3)
    delay = rng.uniform(0, 1.0)
    kill_repro_when(work, env, tmp_path / "first.log", lambda out: "Running stage 'prepare@fashion_mnist'" in out,
                    delay)
    faults.inject("SIGKILL dvc repro", f"prepare@fashion_mnist, {delay:.1f} s in")
    prepared = work / "data" / "prepared" / "fashion_mnist.npz"
    if prepared.exists():
        load_prepared(prepared)  # a kill mid-write leaves no half file under the real name

    delay = rng.uniform(0.5, 3.0)
    kill_repro_when(work, env, tmp_path / "second.log",
                    lambda out: f"Running stage '{STAGE}'" in out and (work / "outputs" / "state").is_dir(), delay)
    faults.inject("SIGKILL dvc repro", f"{STAGE}, {delay:.1f} s after its first job started")
    _, children = parent_and_children(store, "seed_notebook")
    assert any(run.info.status == "RUNNING" for run in children)  # the kill landed mid-job

    final = dvc("repro", STAGE, cwd=work, env=env)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    status = dvc("status", STAGE, cwd=work, env=env)
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout
    rwlock = work / ".dvc" / "tmp" / "rwlock"  # entries of killed processes may stay: DVC skips dead pids
    held = json.loads(rwlock.read_text() or "{}") if rwlock.exists() else {}
    holders = [entry["pid"] for kind in held.values() for entries in kind.values()
               for entry in (entries if isinstance(entries, list) else [entries])]
    assert not any(psutil.pid_exists(pid) for pid in holders)  # so none can block the next command
    load_prepared(prepared)  # every array matches its recorded hash

    parents, children = parent_and_children(store, "seed_notebook")
    assert sum(run.info.status == "FINISHED" for run in parents) == 1
    assert all(run.info.status in ("FINISHED", "KILLED") for run in parents + children)  # none left RUNNING
    finished = [run for run in children if run.info.status == "FINISHED"]
    for run in finished:
        assert [step for step, _ in history(MlflowClient(store), run.info.run_id, "loss")] == [1, 2]
    summary = json.loads((work / "runs" / "seed_notebook" / "summary.json").read_text())
    assert {arm: len(runs) for arm, runs in summary["arms"].items()} == {"model1": 1, "model2": 1, "model2_fast_bn": 1}
    assert {run["run_id"] for runs in summary["arms"].values() for run in runs} == {r.info.run_id for r in finished}

    # An output left half-written (a writer without write-then-rename) is never taken for a good one:
    good = prepared.read_bytes()
    prepared.write_bytes(good[: len(good) // 2])
    faults.inject("half-written output", "data/prepared/fashion_mnist.npz truncated")
    repaired = dvc("repro", STAGE, cwd=work, env=env)
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-3000:]
    assert "prepare@fashion_mnist' is cached - skipping run, checking out outputs" in repaired.stdout  # restored
    assert prepared.read_bytes() == good and f"Running stage '{STAGE}'" not in repaired.stdout
