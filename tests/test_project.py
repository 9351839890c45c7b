"""The project's own promises: pinned dependencies, the Makefile's targets, CI's command."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml
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
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[\w,]+\])?==([\w.]+)", requirement).groups()
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


# -- what a result depends on: the run key's code hash and the experiment stages' deps agree -------

# Modules that choose, record, print or draw, and the data stages (DVC tracks those by their own deps).
WIRING = {"src/__init__.py", "src/train.py", "src/job.py", "src/config.py", "src/rules.py", "src/families.py",
          "src/paths.py", "src/lr_finder.py", "src/interrupts.py",
          "src/tracking.py", "src/sweep.py", "src/launcher.py", "src/hpo.py", "src/pruning.py", "src/repro.py",
          "src/aggregates.py", "src/runs.py", "src/system_metrics.py", "src/slurm.py", "src/store_faults.py",
          "src/store_template.py", "src/cli.py", "src/chapter.py", "src/errors.py", "src/figures.py", "src/params.py",
          "src/data/download.py", "src/data/prepare.py", "src/data/idx.py", "src/data/cifar.py", "src/data/shared.py"}


def test_every_module_is_result_code_or_declared_wiring():
    from src.tracking import RESULT_CODE, result_files

    computing = {str(path.relative_to(REPO)) for family in RESULT_CODE if family != "common"
                 for path in result_files(family)}
    modules = {str(path.relative_to(REPO)) for path in (REPO / "src").rglob("*.py")}
    report = {str(path.relative_to(REPO)) for path in (REPO / "src/report").rglob("*.py")}
    unclassified = modules - computing - WIRING - report
    assert not unclassified, (f"add {sorted(unclassified)} to a family's code or COMMON_CODE in src/families.py "
                              "(and dvc.yaml) or to WIRING")
    assert not computing & WIRING


def test_the_lr_finder_stage_depends_on_the_finder_and_the_code_it_trains_with():
    from src.tracking import RESULT_CODE

    deps = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["lr_finder"]["deps"])
    assert {"src/lr_finder.py", *RESULT_CODE["mlp"], "src/optim.py", "src/fitting.py", "src/data/load.py",
            "conf/model/mlp.yaml", "conf/schedule", "conf/experiment/cifar10_mlp.yaml"} <= deps


@pytest.mark.parametrize(("stage", "family"), [("experiment", "mlp"), ("pretrained", "mobilenet_v2")])
def test_experiment_stages_depend_on_exactly_the_result_code_of_their_family(stage, family):
    from src.tracking import RESULT_CODE

    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["do"]["deps"]
    code = {dep for dep in deps if dep.startswith("src/")}
    assert code == {*RESULT_CODE["common"], *RESULT_CODE[family], "src/report/summary.py"}


def test_a_familys_code_hash_leaves_out_the_other_familys_code():
    from src.tracking import code_hash, result_files

    mlp = {str(path.relative_to(REPO)) for path in result_files("mlp")}
    assert not any(name.startswith("src/pretrained/") for name in mlp)
    assert "src/pretrained/engine.py" in {str(path.relative_to(REPO)) for path in result_files("mobilenet_v2")}
    assert code_hash("mlp") != code_hash("mobilenet_v2") and len(code_hash("mlp")) == 64


def test_every_mutation_of_the_mutation_check_still_finds_its_text_and_its_test():
    """make mutants runs outside the suite: code moved under one of its edits must fail here, not on the
    day the check is re-run (each edit's text once in its file, each guarding test still there)."""
    sys.path.insert(0, str(REPO / "tests" / "faults"))
    try:
        from mutate import MUTATIONS
    finally:
        sys.path.remove(str(REPO / "tests" / "faults"))
    for protection, test, edits in MUTATIONS:
        path, name = test.split("[")[0].split("::")  # a parametrized test: its function
        assert f"def {name}(" in (REPO / path).read_text(), protection
        for file, text, _ in edits:
            assert (REPO / file).read_text().count(text) == 1, f"{protection}: {file} no longer holds {text!r}"
