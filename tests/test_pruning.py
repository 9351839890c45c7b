"""Pruned Optuna searches (hydra/sweeper=hpo with a pruner, src/hpo.py and src/pruning.py) on
real Fashion-MNIST images: a pruned trial stops inside our training loop, its run says so, Optuna
is told, and the parent records the best trial and the parameters' importances.
"""

import subprocess
import sys

import numpy as np
import optuna
import pytest
import yaml
from conftest import REPO, cli, history, parent_and_children, shrunk
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

GOOD, BAD = 0.01, 1e-7  # Adam's learning rates: about 70% after one epoch on 1,000 images, against chance


def search(fashion_npz, store, tmp_path, *extra: str, trials: int = 2, epochs: int = 3) -> list[str]:
    return ["-m", "hydra/sweeper=hpo", f"hydra.sweeper.n_trials={trials}", "tracking.log_model=false",
            *shrunk(fashion_npz, store, tmp_path, train_size=1000), f"epochs={epochs}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]


def test_a_pruned_trial_stops_after_the_epoch_its_pruner_says_and_optuna_is_told(fashion_npz, store, tmp_path,
                                                                                 cli_env):
    """Optuna's ThresholdPruner stops the learning rate that learns nothing after its first epoch,
    whichever order the grid's two trials run in; the other trains its 3 epochs."""
    result = cli(*search(fashion_npz, store, tmp_path, f"optimizer.learning_rate=choice({GOOD}, {BAD})",
                         "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
                         "~hydra.sweeper.sampler.seed", "+hydra.sweeper.sampler._partial_=true",
                         "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 0.3}"),
                 env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children = parent_and_children(store)
    client = MlflowClient(store)
    by_rate = {float(run.data.params["optimizer.learning_rate"]): run for run in children}
    good, bad = by_rate[GOOD], by_rate[BAD]

    assert bad.info.status == "KILLED" and bad.data.tags["ch11.trial_state"] == "PRUNED"
    assert bad.data.tags["ch11.pruned_at_epoch"] == "1"
    assert bad.data.tags["ch11.pruned"] == "pruned by Optuna's ThresholdPruner after epoch 1"
    assert "ch11.failure" not in bad.data.tags
    assert [step for step, _ in history(client, bad.info.run_id, "val_accuracy")] == [1]
    assert "test_accuracy" not in bad.data.metrics  # stopped before the test set
    assert good.info.status == "FINISHED" and good.data.tags["ch11.trial_state"] == "COMPLETE"
    assert [step for step, _ in history(client, good.info.run_id, "val_accuracy")] == [1, 2, 3]

    assert parent.info.status == "FINISHED" and parent.data.tags["ch11.pruned_trials"] == "1"
    assert parent.data.tags["ch11.best_run"] == good.info.run_id
    assert float(parent.data.tags["ch11.best_value"]) == pytest.approx(good.data.metrics["val_accuracy"])

    study = optuna.load_study(study_name="test", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    states = {trial.user_attrs["run_id"]: trial for trial in study.trials}
    assert states[bad.info.run_id].state == optuna.trial.TrialState.PRUNED
    assert states[bad.info.run_id].intermediate_values == {1: pytest.approx(bad.data.metrics["val_accuracy"])}
    assert states[good.info.run_id].intermediate_values == dict(history(client, good.info.run_id, "val_accuracy"))
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["trials"] == {"COMPLETE": 1, "PRUNED": 1} and results["best_run"] == good.info.run_id


def test_a_median_pruned_search_records_its_best_trial_and_the_parameters_importances(fashion_npz, store, tmp_path,
                                                                                      cli_env):
    """hydra/sweeper/pruner=median on a seeded TPE search of two parameters: a trial whose
    val_accuracy after an epoch (from the second on) is below the median of the trials finished
    before it stops there; the parent gets Optuna's importance of each parameter and the best trial."""
    result = cli(*search(fashion_npz, store, tmp_path, "hydra/sweeper/pruner=median",
                         "hydra.sweeper.pruner.n_startup_trials=2",
                         "optimizer.learning_rate=tag(log, interval(1e-6, 0.03))", "model.depth=choice(1, 2)",
                         trials=6, epochs=4),
                 env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children = parent_and_children(store)  # oldest first: the trials in order
    client = MlflowClient(store)
    curves = {run.info.run_id: dict(history(client, run.info.run_id, "val_accuracy")) for run in children}
    finished = []
    for run in children:
        state, curve = run.data.tags["ch11.trial_state"], curves[run.info.run_id]
        if state == "PRUNED":
            epoch = int(run.data.tags["ch11.pruned_at_epoch"])
            median = np.median([curves[done][epoch] for done in finished])
            assert len(finished) >= 2 and epoch >= 2 and list(curve) == list(range(1, epoch + 1))
            assert max(curve.values()) < median  # Optuna compares the trial's best so far
        else:
            assert state == "COMPLETE" and list(curve) == [1, 2, 3, 4]
            finished.append(run.info.run_id)
    pruned = len(children) - len(finished)
    assert len(children) == 6 and pruned >= 1 and parent.data.tags["ch11.pruned_trials"] == str(pruned)
    importances = {key: value for key, value in parent.data.metrics.items() if key.startswith("importance/")}
    assert set(importances) == {"importance/optimizer.learning_rate", "importance/model.depth"}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert importances["importance/optimizer.learning_rate"] > importances["importance/model.depth"]
    best = max(finished, key=lambda run_id: curves[run_id][4])
    assert parent.data.tags["ch11.best_run"] == best


def test_pruning_needs_an_objective_measured_every_epoch(fashion_npz, store, tmp_path, cli_env):
    result = cli(*search(fashion_npz, store, tmp_path, "hydra/sweeper=hpo", "hydra/sweeper/pruner=median",
                         "hydra.sweeper.objective=test_accuracy", "optimizer.learning_rate=choice(0.01, 0.001)",
                         trials=1, epochs=1), env=cli_env)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "'test_accuracy'" in line and "val_accuracy" in line and "every epoch" in line


def test_a_pruner_that_cannot_be_built_is_one_line_before_any_trial(fashion_npz, store, tmp_path, cli_env):
    result = cli(*search(fashion_npz, store, tmp_path, "hydra.sweeper.pruner={_target_: optuna.pruners.Nope}",
                         "optimizer.learning_rate=choice(0.01, 0.001)", trials=1, epochs=1), env=cli_env)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "optuna.pruners.Nope" in line and "hydra.sweeper.pruner" in line
    assert parent_and_children(store) == ([], [])


@pytest.mark.parametrize(("option", "pruner"), [("median", optuna.pruners.MedianPruner),
                                                ("halving", optuna.pruners.SuccessiveHalvingPruner)])
def test_each_pruner_option_builds_its_optuna_pruner(option, pruner):
    from hydra.utils import instantiate

    result = subprocess.run([sys.executable, "-m", "src.train", "hydra/sweeper=hpo", f"hydra/sweeper/pruner={option}",
                             "--cfg", "hydra", "-p", "hydra.sweeper.pruner"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert isinstance(instantiate(yaml.safe_load(result.stdout)), pruner)
