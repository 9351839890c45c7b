"""python -m src.chapter: several experiments' sweeps in one process, on the same workers.

Every experiment running through it, its workers reused and a finished config skipped:
tests/test_experiments.py (the shrunk end-to-end runs). Here: how it fails."""

import subprocess
import sys

import pytest
from conftest import REPO

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
