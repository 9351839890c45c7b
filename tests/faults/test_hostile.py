"""Scenario 7: hostile values on the command line, in a copy of the repository.

Strings where numbers go, values big enough to exhaust memory, time or a C integer, path
traversal in names that become folder names, YAML tags and interpolations in overrides:
each is one `error:` line naming the key, exit code 2, no traceback, nothing executed,
and nothing written outside the project's output folders (outputs/, the MLflow store).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_repo, quiet_env

pytestmark = pytest.mark.slow
OUTPUT_FOLDERS = ("outputs", "mlflow.db", ".mlflow.db.lock", "mlartifacts")
HOSTILE = {  # override -> what the error line must name
    # strings where numbers go
    "epochs=ten": "epochs=ten",
    "batch_size='32'": "batch_size=32",
    "optimizer.learning_rate=fast": "optimizer.learning_rate=fast",
    "model.depth=1.5": "model.depth=1.5",
    "seed=-1": "seed=-1",
    "model.dropout=yes": "model.dropout",
    # huge values
    "epochs=99999999999999999999": "epochs=",
    "batch_size=1e30": "batch_size=",
    "model.width=1000000000": "model.width=",
    "model.depth=100000": "model.depth=",
    "model.width=[65536,65536,65536]": "weights",
    "seed=4294967296": "seed=",
    "mc_dropout_samples=1000000000": "mc_dropout_samples=",
    "optimizer.learning_rate=1e999": "optimizer.learning_rate=inf",
    # path traversal in names that become folder names
    "name=../../../../tmp/ch11-escaped": "name=",
    "name=/etc/ch11-escaped": "name=",
    "name=..": "name=",
    "experiment=../../../etc/passwd": "Could not find 'experiment/../../../etc/passwd'",
    "experiment=no_such_experiment": "Available options in 'experiment': activations, batchnorm",
    "data=../../../tmp/x": "data",
    # YAML and interpolation injection
    "name='!!python/object/apply:os.system [\"touch PWNED\"]'": "name=",
    "epochs='!!python/object/apply:os.system [touch PWNED]'": "epochs=",
    "+model.evil=1": "model.evil",
    "epochs=${oc.env:HOME}": "epochs=",
    "name=${oc.decode:'!!python/object/apply:os.system [touch PWNED]'}": "",  # a grammar error, one line
    "optimizer.learning_rate=[0.1]": "optimizer.learning_rate=",
    "model.activation='relu\\nevil: true'": "model.activation=",
}


def snapshot(root) -> set[str]:
    """Every file under root, except Python's bytecode caches: the interpreter writes __pycache__/ when it
    imports the copy's modules (unless PYTHONDONTWRITEBYTECODE is set), whatever the command does."""
    return {os.path.relpath(os.path.join(folder, name), root) for folder, _, names in os.walk(root)
            if "__pycache__" not in Path(folder).parts for name in names}


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    copy_repo(root / "repo")
    return root


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_hostile_overrides_are_refused_in_one_line_and_write_nothing_outside_the_outputs(repo_copy, sweep, faults):
    repo = repo_copy / "repo"
    before = snapshot(repo_copy)
    problems = []
    for override, named in HOSTILE.items():
        faults.inject("hostile override")  # the overrides are listed above, HOSTILE
        result = subprocess.run([sys.executable, "-m", "src.train", *(["-m"] if sweep else []), override, "epochs=1"
                                 if not override.startswith("epochs") else "threads=1"],
                                cwd=repo, env={**quiet_env(), "HOME": str(repo_copy)}, capture_output=True,
                                text=True, timeout=120)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if result.returncode != 2 or len(errors) != 1 or "Traceback" in result.stderr or named not in errors[0]:
            problems.append(f"{override}: exit {result.returncode}, {errors or result.stderr[-500:]}")
    assert not problems, "\n".join(problems)
    written = snapshot(repo_copy) - before
    assert all(path.split(os.sep)[1] in OUTPUT_FOLDERS for path in written), sorted(written)[:20]
    assert not (repo / "mlflow.db").exists()  # refused before the store was opened
    for folder in (repo_copy, repo, "/tmp", "/etc"):
        assert not os.path.exists(os.path.join(folder, "PWNED")) and not os.path.exists(
            os.path.join(folder, "ch11-escaped"))
