"""The project's own promises: pinned dependencies, the Makefile's targets, CI's command."""

import re
import subprocess
import tomllib

from conftest import REPO


def locked_versions() -> dict[str, str]:
    lines = (REPO / "requirements.lock").read_text().splitlines()
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins.items()}


def test_every_dependency_is_pinned_exactly_and_agrees_with_the_lock():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = project["dependencies"] + project["optional-dependencies"]["test"]
    locked = locked_versions()
    for requirement in direct:
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.]+)", requirement).groups()
        assert locked[re.sub(r"[-_.]+", "-", name).lower()] == version, requirement
    assert locked["tensorflow"].startswith("2.21.") and locked["keras"].startswith("3.")
    assert locked["hydra-core"].startswith("1.3.") and locked["omegaconf"].startswith("2.3.")
    assert locked["mlflow"].startswith("3.") and locked["dvc"].startswith("3.")


def test_make_help_lists_the_two_commands():
    listing = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for target in ("run", "test", "install", "lock"):
        assert re.search(rf"make {target}\s+\S", listing), listing


def test_ci_runs_make_test_with_the_mirror():
    script = (REPO / ".ci" / "run").read_text()
    assert "make test" in script and "CH11_DATA_MIRROR" in script and "shared/mirror" in script
