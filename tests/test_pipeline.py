"""The experiment stages and the report, through `python -m src.repro` (make run) and `dvc repro`,
in a copy of the repository: two experiments shrunk (one seed, one epoch, 300 images) on real
Fashion-MNIST."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import LINKED_CACHE, copy_repo, dvc, dvc_env
from mlflow.tracking import MlflowClient

from src.tracking import PROCESS_TAG

pytestmark = pytest.mark.slow
EXPERIMENTS = {"seed_notebook": 3, "batchnorm": 3}  # name -> arms (jobs, at one seed)
QUICK = "seed=42 epochs=1 data.train_size=300 tracking.log_model=false tracking.log_figures=false"
# Stages the report depends on that this test does not re-run: the data (checked out from the session's
# cache) and the learning-rate finder (its committed output kept, its CIFAR-10 input checked out).
DATA = ("download@fashion_mnist", "prepare@fashion_mnist", "download@cifar10", "prepare@cifar10")
KEPT = (*DATA, "lr_finder")


@pytest.fixture
def repro(tmp_path, pipeline):
    """`python -m src.repro report` (dvc repro, the sweep stages in one process) run once in a copy of
    the repository whose data stages are checked out from the cache of the session's data pipeline
    (conftest.pipeline), not run again."""
    work = copy_repo(tmp_path / "repo")
    for summary in (work / "runs").glob("*/summary.json"):  # the committed summaries of the full run
        summary.unlink()
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["experiments"].update(datasets={name: "fashion_mnist" for name in EXPERIMENTS}, pretrained={}, extra=QUICK)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    store = f"sqlite:///{work.parent / 'mlflow.db'}"
    env = dvc_env(MLFLOW_TRACKING_URI=store, TF_CPP_MIN_LOG_LEVEL="3")
    for command in (("config", "--local", "cache.dir", str(pipeline[0] / ".dvc" / "cache")), LINKED_CACHE,
                    ("checkout", *DATA)):
        done = dvc(*command, cwd=work, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    first = subprocess.run([sys.executable, "-m", "src.repro", "report"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=900)
    assert not any(f"Running stage '{stage}'" in first.stdout for stage in KEPT), first.stdout[-3000:]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return work, env, store, first.stdout


def test_repro_runs_the_experiments_and_the_report_then_only_what_an_edit_changed(repro):
    """One test, not three: each part reads the repository the one before left (the edit comes last),
    and tests of one module can land on both xdist workers, which would each build it (about 100 s)."""
    runs_each_experiment_as_one_parent_run_with_its_children(*repro)
    the_report_is_made_from_the_summaries(*repro)
    a_second_repro_runs_nothing_and_an_edited_experiment_reruns_only_itself_and_the_report(*repro)


def runs_each_experiment_as_one_parent_run_with_its_children(work, env, store, output):
    client = MlflowClient(store)
    for name, arms in EXPERIMENTS.items():
        assert f"Running stage 'experiment@{name}'" in output
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
        children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
        assert len(parents) == 1 and len(children) == arms
        assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
        summary = json.loads((work / "runs" / name / "summary.json").read_text())
        assert summary["parent_run_ids"] == [parents[0].info.run_id]
        recorded = {run["run_id"] for runs in summary["arms"].values() for run in runs}
        assert recorded == {run.info.run_id for run in children}
    # src.repro ran both stale sweep stages in one process, their jobs on the same two workers
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id for name in EXPERIMENTS])
    parents, children = ({run.data.tags[PROCESS_TAG].split(":")[1] for run in runs
                          if ("mlflow.parentRunId" in run.data.tags) == child} for child in (False, True))
    assert len(parents) == 1 and len(children) == 2 and not parents & children, (parents, children)


def the_report_is_made_from_the_summaries(work, env, store, output):
    results = (work / "reports" / "results.md").read_text()
    assert "| seed_notebook | model1 | model1 | test_accuracy |" in results
    assert "| batchnorm | after | after | val_accuracy |" in results
    assert "## seed_notebook" in results and "## batchnorm" in results
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    assert set(metrics) == set(EXPERIMENTS) and metrics["batchnorm"]["after"]["n"] == 1
    assert (work / "reports" / "figures" / "batchnorm_val_accuracy.png").stat().st_size > 0
    shown = dvc("metrics", "show", "--json", cwd=work, env=env)
    assert shown.returncode == 0 and "seed_notebook" in shown.stdout


def a_second_repro_runs_nothing_and_an_edited_experiment_reruns_only_itself_and_the_report(work, env, store, output):
    again = dvc("repro", "report", cwd=work, env=env)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout

    experiment = work / "conf" / "experiment" / "batchnorm.yaml"
    experiment.write_text(experiment.read_text().replace("  depth: 2\n", "  depth: 2\n  l2: 0.0001\n"))
    edited = dvc("repro", "report", cwd=work, env=env)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert stages_run(edited) == {"experiment@batchnorm", "report"}

    arm = work / "conf" / "variant" / "seed_notebook" / "model2.yaml"  # one experiment's arm, not its file
    arm.write_text(arm.read_text() + "# edited\n")
    edited = dvc("repro", "report", cwd=work, env=env)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert "experiment@seed_notebook" in stages_run(edited) and "experiment@batchnorm" not in stages_run(edited)


def stages_run(repro) -> set[str]:
    return {line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage")}
