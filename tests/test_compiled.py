"""Compiled models kept across jobs (src/compiled.py): a job on a kept model records exactly
what a fresh build records, and only jobs of the same graph share one."""

import gc
import weakref

import keras
import pytest
import tensorflow as tf
from conftest import REPO, cli, parent_and_children, shrunk
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from src import compiled
from src.config import validate
from src.job import train
from src.launcher import graph_tasks
from src.optim import build_optimizer
from src.pretext import build_model

# BN (moving statistics), dropout (seed state), a per-step schedule (inside the graph),
# gradient diagnostics, MC dropout passes and calibration: every kind of state a job carries.
STATEFUL = ("model.batch_norm=before", "model.dropout=0.2", "mc_dropout_samples=3", "optimizer=nadam",
            "deterministic=true", "threads=1", "force=true", "tracking.log_figures=false")

SCHEDULE = ("schedule=exponential", "schedule.decay_steps=20")


def every_metric(store: str, run_id: str) -> dict[str, float]:
    """Every value of every metric the run recorded, but wall times and the machine's load (system/)."""
    client = MlflowClient(store)
    return {f"{key}@{point.step}": point.value for key in client.get_run(run_id).data.metrics
            if key != "epoch_time_s" and not key.startswith("system/")
            for point in client.get_metric_history(run_id, key)}


@pytest.fixture
def job(fashion_npz, store, tmp_path):
    """job(*overrides) -> every metric value its run recorded."""
    def run(*overrides: str) -> dict[str, float]:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", [*shrunk(fashion_npz, store, tmp_path), *STATEFUL, *overrides])
        return every_metric(store, train(cfg)["run_id"])
    compiled.forget()
    yield run
    compiled.forget()


@pytest.mark.slow
@pytest.mark.parametrize(("earlier", "later"), [
    (["seed=42", *SCHEDULE], ["seed=43", *SCHEDULE]),  # the seeds of an arm
    (["seed=42", "model.kernel_initializer=glorot_uniform", "optimizer.learning_rate=0.01"],
     ["seed=43", "model.kernel_initializer=he_normal", "optimizer.learning_rate=0.002"]),
], ids=["another seed", "another learning rate and initializer"])
def test_a_job_on_a_kept_model_records_exactly_what_a_fresh_build_records(job, earlier, later):
    fresh = job(*later)
    compiled.forget()
    job(*earlier)
    reuses = compiled.reuses
    on_kept = job(*later)
    assert compiled.reuses == reuses + 1, "the later job should have trained the earlier job's compiled model"
    assert len(fresh) > 50 and {"grad_norm/hidden_01@0", "test_mc_dropout_accuracy@2", "val_loss@2"} <= set(fresh)
    assert on_kept == fresh  # every value, to the bit


def model_and_optimizer(*overrides: str) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        config = validate(compose("config", list(overrides)))
    keras.backend.clear_session()
    return build_model(config, (28, 28), 10), build_optimizer(config, total_steps=100)


def key(*overrides: str) -> str:
    return compiled.graph_key(*model_and_optimizer("model.depth=3", *overrides),
                              {"loss": "sparse_categorical_crossentropy", "steps_per_execution": 1})


def test_jobs_that_differ_only_in_initial_values_or_a_constant_learning_rate_share_a_graph():
    assert key() == key("seed=7") == key("model.kernel_initializer=he_normal") == key("optimizer.learning_rate=0.5")
    assert key("model.dropout=0.2") == key("model.dropout=0.2", "seed=9")


@pytest.mark.parametrize("change", ["model.activation=selu", "model.depth=4", "model.batch_norm=before",
                                    "model.dropout=0.2", "optimizer=nadam", "optimizer.momentum=0.5",
                                    "clipping=norm", "schedule=exponential", "model.l2=0.01"])
def test_anything_else_is_another_graph(change):
    assert key() != key(change)


def test_a_schedule_with_another_starting_rate_is_another_graph():
    # a per-step schedule computes the rate inside the traced step, from its constants
    assert key("schedule=exponential") != key("schedule=exponential", "optimizer.learning_rate=0.5")


def test_frozen_layers_are_another_graph():
    model, optimizer = model_and_optimizer("model.depth=3")
    before = compiled.graph_key(model, optimizer, {})
    model.get_layer("hidden_01").trainable = False
    assert compiled.graph_key(model, optimizer, {}) != before


def test_a_traced_function_lives_as_long_as_its_model():
    """Kept models keep their traced functions; a model that is neither kept nor used any more is
    freed with them (two-phase jobs build a fresh model per phase: none may outlive its job)."""
    model, _ = model_and_optimizer("model.depth=3")
    function = compiled.traced(model, "predict", lambda model=model: predictor(model))
    function(tf.zeros((2, 28, 28)))
    assert compiled.traced(model, "predict", lambda: None) is function  # made and traced once
    alive = weakref.ref(model)
    del model, function
    gc.collect()
    assert alive() is None


def predictor(model: keras.Model):
    return lambda images: model(images)  # holds its model, as GradientDiagnostics' function does


def test_the_launcher_keeps_the_jobs_of_a_graph_together_and_splits_groups_only_to_keep_workers_busy():
    arms = [[f"model.activation={activation}", f"model.kernel_initializer={init}", "seed=42"]
            for activation in ("relu", "selu", "elu", "tanh") for init in ("he_normal", "lecun_normal")]
    assert graph_tasks(arms, workers=2) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # initializers share a graph
    seeds = [[f"+variant/seed_notebook={model}", f"seed={seed}"] for model in ("a", "b", "c") for seed in range(5)]
    tasks = graph_tasks(seeds, workers=2)  # 3 groups for 2 workers: each split in two, largest first
    assert tasks == [[2, 3, 4], [7, 8, 9], [12, 13, 14], [0, 1], [5, 6], [10, 11]]
    assert graph_tasks([["optimizer=adam"], ["optimizer=nadam"]], workers=2) == [[0], [1]]
    assert graph_tasks([], workers=2) == []


@pytest.mark.slow
def test_a_parallel_sweep_traces_each_graph_once(fashion_npz, store, tmp_path, cli_env):
    sweep = tmp_path / "sweep"
    result = cli("-m", "hydra/launcher=parallel", "threads=1", "epochs=1", "model.activation=relu,selu,elu,tanh",
                 "seed=1,2", *shrunk(fashion_npz, store, tmp_path, train_size=300), f"hydra.sweep.dir={sweep}",
                 env=cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,), children = parent_and_children(store)
    assert len(children) == 8 and all(child.info.status == "FINISHED" for child in children)
    logs = {path.parent.name: path.read_text() for path in sweep.glob("*/train.log")}
    reused = sorted(int(job) for job, text in logs.items() if "compiled model of an earlier job" in text)
    assert reused == [1, 3, 5, 7]  # each activation's second seed, in the worker that ran its first
