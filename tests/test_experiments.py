"""Every chapter experiment (conf/experiment/*.yaml) composes with its whole sweep, and runs
end to end shrunk: a few hundred real images, one epoch, one seed."""

import collections
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PARAMS, REPO, quiet_env
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from src.config import validate
from src.report.summary import arm_label
from src.sweep import experiment_jobs
from src.tracking import PROCESS_TAG

EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
# One seed, one epoch, no model and no figures logged (seconds a job; the figures alone were a
# quarter of a shrunk job's CPU, and test_train checks them). src.chapter launches each sweep as the
# pipeline does (params.yaml experiments.launch: two single-threaded jobs at a time).
SHRUNK = {"seed": "42", "epochs": "1", "data.train_size": "300", "tracking.log_model": "false",
          "tracking.log_figures": "false"}
# Beyond that: the deep MLPs shrunk to 5 layers (a job's time there is TensorFlow tracing the train,
# test and diagnostics graphs, which grows with the layers and the optimizer's variables: 12 s of a
# 20-layer Nadam job's 1-epoch fit against 0.6 s for the epoch itself); transfer needs an epoch after
# the frozen one, its source model one epoch, and that model logged (the jobs load it from MLflow).
EXTRA_SHRINK = {"init_activation": {"model.depth": "5"}, "deep_selu_vs_relu": {"model.depth": "5"},
                "cifar10_mlp": {"model.depth": "5"}, "activations": {"model.depth": "5"},
                "guidelines": {"model.depth": "5"}, "guidelines_cifar10": {"model.depth": "5"},
                "transfer_ab": {"epochs": "2", "transfer.freeze_epochs": "1", "transfer.source_epochs": "1",
                                "tracking.log_model": "true"}}
# pretraining's sources train on the subset's 2,000 images; its frozen arms need an epoch after their 5 frozen ones
# (and keep them: one freeze_epochs for every arm would make two arms one config).
EXTRA_SHRINK["pretraining"] = {"epochs": "6", "transfer.source_epochs": "1", "tracking.log_model": "true"}
EXTRA_RUNS = {"transfer_ab": 1, "pretraining": 2}  # the source models, each trained once as its own child run
# MobileNetV2 on 32 x 32 inputs from a random init (every arm: the pretrained ones too).
EXTRA_SHRINK["mobilenet_v2_cifar10"] = {"data.resize": "[32,32]", "model.weights": "none", "batch_size": "64"}
# Arms that differ from others only in a name handed to Keras or in the input scale train once each,
# not in every combination (the sweep overridden from the command line): init_activation's eight
# activations with the default initializer (glorot_uniform trains in seed_notebook, lecun_normal in
# the SELU arms), activations' arms that are layers of their own (RReLU, PReLU) and the LeCun + SELU
# pair (the other six are Keras names on He init), MobileNetV2 without unit_fine_tuned and symmetric
# (each the combination of two arms kept: unit scale, fine-tuning), pretraining's scratch, autoencoder and
# rotation_frozen (both sources, both ways of reusing them). Every job of every experiment still composes
# and validates (above).
SWEEP_SHRINK = {"init_activation": {"model.kernel_initializer": "he_normal"},
                "activations": {"+variant/activations": "rrelu,prelu,selu"},
                "pretraining": {"+variant/pretraining": "scratch,autoencoder,rotation_frozen"},
                "mobilenet_v2_cifar10": {"+variant/mobilenet_v2_cifar10":
                                         "seed,seed_mixed_float16,symmetric_fine_tuned,scratch,scratch_fine_tuned"}}
DATASETS = {**PARAMS["experiments"]["datasets"], **PARAMS["experiments"]["pretrained"]}
# The data: the first 2,000 training, 500 validation and 1,000 test images of the real prepared
# file (conftest.SUBSET), as a prepared file of their own. With the whole file every job also
# evaluated (and MC-dropout sampled, up to 100 passes) all 5,000 validation and 10,000 test images,
# and transfer_ab's source model trained on the 44,000 images of its classes: the twelve sweeps took
# 782 s of CPU against 666 s (cifar10_mlp 73 against 48, MobileNetV2 147 against 124).


def test_params_list_every_experiment_file():
    assert sorted(DATASETS) == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_file_opens_with_how_to_run_it_what_the_book_reports_and_the_time(name):
    header = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text().split("\n\n")[0]
    assert header.startswith("# @package _global_")
    assert f"python -m src.train -m experiment={name}" in header
    assert "# Published:" in header and "# Time here:" in header


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_of_an_experiment_composes_and_validates(name):
    jobs = experiment_jobs(name, [])
    seeds = collections.Counter(arm_label(name, job) for job in jobs)
    assert min(seeds.values()) >= 3, "several seeds an arm: the report shows mean and spread"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for job in jobs:
            cfg = compose("config", [f"experiment={name}", *(f"{key}={value}" for key, value in job.items())])
            with open_dict(cfg):
                cfg.pop("hydra", None)
            config = validate(cfg)
            assert config["name"] == name and config["seed"] == int(job["seed"])


def sweep_spec(name: str, common: dict, sweep_dir: Path, tmp_path: Path) -> str:
    """One src.chapter argument: the experiment with the common overrides, shrunk further where it
    needs it (these win: they come last), into sweep_dir."""
    shrink = {**common, **EXTRA_SHRINK.get(name, {}), **SWEEP_SHRINK.get(name, {}), "hydra.sweep.dir": str(sweep_dir)}
    if name in PARAMS["experiments"]["pretrained"]:
        shrink["model.feature_cache"] = str(tmp_path / "features")
    return shlex.join([name, *(f"{key}={value}" for key, value in shrink.items())])


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_every_experiment_runs_end_to_end_shrunk_on_one_pair_of_workers(dataset, request, tmp_path, prepared_subset):
    """The experiments of a dataset in one `python -m src.chapter` (the launch `dvc repro` makes, on
    warm workers): each its own MLflow experiment with one parent run and a FINISHED child per arm.
    The first experiment runs a second time at the end: every job is found finished and skipped."""
    names = [name for name in EXPERIMENTS if DATASETS[name] == dataset]
    npz = prepared_subset(request.getfixturevalue("cifar_npz" if dataset == "cifar10" else "fashion_npz"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = {**SHRUNK, "data.path": str(npz), "tracking.uri": store, "state_dir": str(tmp_path / "state")}
    specs = [sweep_spec(name, common, tmp_path / name, tmp_path) for name in names]
    specs.append(sweep_spec(names[0], common, tmp_path / "again", tmp_path))
    result = subprocess.run([sys.executable, "-m", "src.chapter", *specs], cwd=REPO, env=quiet_env(),
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]

    client, served = MlflowClient(store), {}
    for name in names:
        record = json.loads((tmp_path / name / "jobs.json").read_text())
        parent = client.get_run(record["parent_run_id"])
        assert client.get_experiment(parent.info.experiment_id).name == name
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        arms = len(experiment_jobs(name, [*(f"{key}={value}" for key, value in SWEEP_SHRINK.get(name, {}).items()),
                                          "seed=42"]))
        assert len(record["jobs"]) == arms and not any(job["skipped"] for job in record["jobs"]), name
        assert len(children) == arms + EXTRA_RUNS.get(name, 0), name
        assert all(run.info.status == "FINISHED" for run in (parent, *children)), name
        classifiers = [run for run in children if "autoencoder" not in run.data.tags.get("ch11.role", "")]
        assert all(0 <= run.data.metrics["test_accuracy"] <= 1 for run in classifiers), name
        assert len(classifiers) == len(children) - (name == "pretraining"), name  # the autoencoder: a test_loss
        for run in children:
            served.setdefault(run.data.tags[PROCESS_TAG], set()).add(name)
    logged = {artifact.path for artifact in client.list_artifacts(children[0].info.run_id)}
    assert "config.yaml" in logged and "figures" not in logged, logged  # tracking.log_figures=false
    # The workers outlive a sweep (joblib's loky restarts one whose memory grew by 300 MB, so not
    # always the same two for ten experiments).
    assert max(len(experiments) for experiments in served.values()) > 1, served
    rerun = json.loads((tmp_path / "again" / "jobs.json").read_text())["jobs"]
    assert rerun and all(job["skipped"] for job in rerun)
