"""python -m src.chapter: several experiments' sweeps in one process, on the same workers.

Every experiment running through it, its workers reused and a finished config skipped:
tests/test_experiments.py (the shrunk end-to-end runs). Here: how one sweep's jobs queue behind
the one before, and how it fails."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, parent_and_children

from src.tracking import PROCESS_TAG

pytestmark = pytest.mark.slow


def chapter(*arguments: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.chapter", *arguments], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


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


def small(name: str, folder, data, *overrides: str) -> str:
    return " ".join([name, "seed=42", "epochs=1", f"data.path={data}", "data.train_size=2000",
                     f"hydra.sweep.dir={folder / name}", *overrides])


def test_the_next_sweep_s_jobs_start_while_the_last_jobs_of_the_one_before_run(store, tmp_path, cli_env,
                                                                               fashion_npz):
    result = chapter(small("seed_notebook", tmp_path, fashion_npz), small("batchnorm", tmp_path, fashion_npz),
                     "--", f"tracking.uri={store}", f"state_dir={tmp_path / 'state'}", env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    (first_parent,), first = parent_and_children(store, "seed_notebook")
    (second_parent,), second = parent_and_children(store, "batchnorm")
    for parent, children, name in ((first_parent, first, "seed_notebook"), (second_parent, second, "batchnorm")):
        assert parent.info.status == "FINISHED" and len(children) == 3
        assert all(child.info.status == "FINISHED" for child in children)
        recorded = json.loads((tmp_path / name / "jobs.json").read_text())
        assert {job["run_id"] for job in recorded["jobs"]} == {child.info.run_id for child in children}
    # one set of workers for both sweeps, and no idle worker between them
    assert len({child.data.tags[PROCESS_TAG].split(":")[1] for child in first + second}) == 2
    assert min(child.info.start_time for child in second) < max(child.info.end_time for child in first)


def test_a_sweep_whose_jobs_fail_stops_the_run_once_the_sweep_queued_behind_it_is_recorded(store, tmp_path,
                                                                                          cli_env, fashion_npz):
    (tmp_path / "damaged.npz").write_bytes(b"not an npz archive")  # each job fails on it (a missing file: at once)
    result = chapter(small("batchnorm", tmp_path, tmp_path / "damaged.npz"),
                     small("seed_notebook", tmp_path, fashion_npz), "--", f"tracking.uri={store}",
                     f"state_dir={tmp_path / 'state'}", env=cli_env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 of 3 jobs failed" in errors[0] and "damaged.npz" in errors[0], result.stderr
    (failed,), _ = parent_and_children(store, "batchnorm")
    (behind,), children = parent_and_children(store, "seed_notebook")
    assert failed.info.status == "FAILED" and not (tmp_path / "batchnorm" / "jobs.json").exists()
    assert behind.info.status == "FINISHED" and len(children) == 3
    assert (tmp_path / "seed_notebook" / "jobs.json").exists()
