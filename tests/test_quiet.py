"""Quiet refusals: a refused command prints its one `error:` line and nothing else, exit code 2.

No TensorFlow start-up lines (a parallel sweep's workers import it), no MLflow schema notices,
no Hydra log lines, no argparse usage block: each command below runs as a new user would type it,
with no data prepared, and its whole output (stdout and stderr together) is compared.
"""

import os
import subprocess
import sys

import pytest
from conftest import REPO

STORE_FILE_TEXT = "notes, not a database\n"


def refusals(tmp):
    """(name, arguments) of each refusal; tmp holds a text file posing as a store and an empty .npz."""
    store, absent, data = f"sqlite:///{tmp / 'notadb'}", f"sqlite:///{tmp / 'absent.db'}", f"data.path={tmp / 'x.npz'}"
    return {
        "train: unknown key": ["src.train", "optimizr=adam"],
        "train: bad value": ["src.train", "model.depth=-1"],
        "train: no dataset": ["src.train", f"data.path={tmp / 'none.npz'}", f"tracking.uri={absent}"],
        "train: unusable store": ["src.train", data, f"tracking.uri={store}"],
        "sweep: bad value": ["src.train", "-m", "model.depth=-1,2"],
        "sweep: no dataset": ["src.train", "-m", "seed=1,2", f"data.path={tmp / 'none.npz'}", f"tracking.uri={absent}"],
        "parallel sweep: unusable store": ["src.train", "-m", "hydra/launcher=parallel", "threads=1", "seed=1,2", data,
                                           f"tracking.uri={store}"],
        "runs: no such run": ["src.runs", "rerun", "nosuch", "--tracking-uri", store],
        "runs: store absent": ["src.runs", "diff", "a", "b", "--tracking-uri", absent],
        "runs: unknown subcommand": ["src.runs", "frob"],
        "chapter: unknown experiment": ["src.chapter", "nosuch"],
        "repro: option": ["src.repro", "--force"],
        "lr_finder: bad rates": ["src.lr_finder", "--min-rate", "2", "--max-rate", "1"],
        "lr_finder: no dataset": ["src.lr_finder", f"data.path={tmp / 'none.npz'}"],
        "download: unknown dataset": ["src.data.download", "nosuch"],
        "prepare: unknown dataset": ["src.data.prepare", "nosuch"],
        "pretrain: no arguments": ["src.pretrained.pretrain"],
        "summary: no arguments": ["src.report.summary"],
        "report: unknown option": ["src.report.build", "--nosuch"],
    }


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Their folder, and every refusal's (exit code, whole output), run two at a time."""
    tmp = tmp_path_factory.mktemp("quiet")
    (tmp / "notadb").write_text(STORE_FILE_TEXT)
    (tmp / "x.npz").write_bytes(b"")  # exists: what a job checks before it opens the store
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "MLFLOW_", "HYDRA_"))}
    env |= {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    commands = refusals(tmp)
    results = {}
    names = list(commands)
    for pair in (names[index:index + 2] for index in range(0, len(names), 2)):
        running = {name: subprocess.Popen([sys.executable, "-m", *commands[name]], cwd=tmp, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in pair}
        for name, process in running.items():
            output, _ = process.communicate(timeout=180)
            results[name] = (process.returncode, output)
    return tmp, results


@pytest.mark.parametrize("name", list(refusals(REPO)))
def test_a_refusal_is_one_error_line_and_exit_2(outputs, name):
    status, output = outputs[1][name]
    assert status == 2 and len(output.splitlines()) == 1 and output.startswith("error: "), output


def test_refusals_leave_the_store_as_it_was_and_make_none(outputs):
    tmp = outputs[0]
    assert (tmp / "notadb").read_text() == STORE_FILE_TEXT and not (tmp / "absent.db").exists()
