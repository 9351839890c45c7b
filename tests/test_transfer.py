"""Reusing pretrained layers (the book's task A -> task B): class subsets, the sigmoid head,
copying layers, training in phases (frozen, then unfrozen) and resuming across the phases."""

import numpy as np
import pytest
from test_engine_parts import config

from src.config import source_config
from src.data.load import load_prepared, reshape_splits
from src.engine import fit_and_evaluate, training_phases
from src.errors import ConfigError
from src.models import build_mlp, kernel_layers, reuse_layers
from src.resume import ResumeState

TASK_A = "[1,3,4,5,6,7,8,9]"
TRANSFER = ("data.classes=[0,2]", "data.train_size=200", "model.output=sigmoid", f"transfer.source_classes={TASK_A}",
            "transfer.freeze_epochs=1", "epochs=2", "batch_size=50", "deterministic=true", "diagnostics.batch_size=64")


@pytest.fixture(scope="module")
def fashion(fashion_npz):
    return load_prepared(fashion_npz)


def test_a_class_subset_keeps_those_classes_in_every_split_relabelled_in_order(fashion):
    data = reshape_splits(fashion, train_size=200, classes=[0, 2])
    assert data.class_names == ["T-shirt/top", "Pullover"]
    x_train, y_train = data.split("train")
    assert len(x_train) == 200 and set(np.unique(y_train)) == {0, 1}
    first_pullover = np.flatnonzero(fashion.split("train")[1] == 2)[0]
    assert np.array_equal(x_train[y_train == 1][0], fashion.split("train")[0][first_pullover])
    for split in ("valid", "test"):  # all their images of the two classes: 1,000 of each in test
        original = fashion.split(split)[1]
        assert len(data.split(split)[1]) == np.isin(original, [0, 2]).sum()
    assert len(data.split("test")[1]) == 2000


@pytest.mark.parametrize("classes", [[0, 0], [3], [0, 10], [-1, 2]])
def test_a_bad_class_list_is_refused_with_the_valid_range(fashion, classes):
    with pytest.raises(ConfigError, match=r"data.classes=.* \(0..9\)"):
        reshape_splits(fashion, classes=classes)


def test_a_sigmoid_head_needs_two_classes_and_freezing_needs_epochs_after_it():
    with pytest.raises(ConfigError, match="model.output=sigmoid is a binary head"):
        config("model.output=sigmoid")
    with pytest.raises(ConfigError, match="transfer.freeze_epochs=4 must be below epochs=4"):
        config(f"transfer.source_classes={TASK_A}", "transfer.freeze_epochs=4", "epochs=4")
    assert training_phases(config(*TRANSFER)) == [(1, True), (2, False)]
    assert training_phases(config("transfer.freeze_epochs=3")) == [(10, False)]  # nothing reused: one phase


def test_the_source_model_is_the_same_body_on_the_source_task_with_its_own_seed_and_epochs():
    target = config(*TRANSFER, "seed=7", "force=true", "mc_dropout_samples=0")
    source = source_config(target)
    assert source["data"]["classes"] == [1, 3, 4, 5, 6, 7, 8, 9] and source["data"]["train_size"] is None
    assert source["model"] == {**target["model"], "output": "softmax"}
    assert (source["seed"], source["epochs"], source["force"]) == (42, 20, False)
    assert source["transfer"]["source_classes"] is None and source["tracking"]["log_model"] is True
    assert target["data"]["classes"] == [0, 2]  # the target config is left as it was


def test_reused_layers_are_copies_and_the_output_is_new():
    settings = config(*TRANSFER)["model"]
    source = build_mlp({**settings, "output": "softmax"}, (28, 28), 8)
    target = build_mlp(settings, (28, 28), 2)
    reused = reuse_layers(target, source)
    assert [layer.name for layer in reused] == ["hidden_01", "hidden_02", "hidden_03"]
    assert np.array_equal(target.get_layer("hidden_02").kernel.numpy(), source.get_layer("hidden_02").kernel.numpy())
    target.get_layer("hidden_02").kernel.assign(np.zeros((100, 100)))
    assert np.abs(source.get_layer("hidden_02").kernel.numpy()).sum() > 0  # a clone, not shared
    assert kernel_layers(target)[-1].units == 1
    wider = build_mlp({**settings, "width": 50}, (28, 28), 2)
    with pytest.raises(ConfigError, match="no layer hidden_01 shaped like this one"):
        reuse_layers(wider, source)


class StopAfterFirstEpoch(ResumeState):
    """A kill right after epoch 1 was saved: the end of the frozen phase."""

    def save(self, model, callbacks, epochs_done, history, phase=0):
        super().save(model, callbacks, epochs_done, history, phase)
        if epochs_done == 1:
            raise KeyboardInterrupt


def test_frozen_then_unfrozen_training_resumes_across_the_phases_to_the_same_result(fashion, tmp_path):
    settings = config(*TRANSFER)
    data = reshape_splits(fashion, settings["data"]["train_size"], classes=settings["data"]["classes"])
    source = build_mlp({**settings["model"], "output": "softmax"}, (28, 28), 8)
    logged = []

    def sink(step, values):
        logged.append((step, dict(values)))

    whole = fit_and_evaluate(settings, data, ResumeState(tmp_path / "whole"), sink, tmp_path, source)
    changed = whole["model"].get_layer("hidden_01").kernel.numpy()
    assert not np.array_equal(changed, source.get_layer("hidden_01").kernel.numpy())  # unfrozen in phase 2

    with pytest.raises(KeyboardInterrupt):
        fit_and_evaluate(settings, data, StopAfterFirstEpoch(tmp_path / "split"), sink, tmp_path, source)
    state = ResumeState(tmp_path / "split")
    assert state.progress()["phase"] == 0
    with np.load(state.latest() / "state.npz") as saved:  # frozen for epoch 1: hidden_01's kernel untouched
        kernels = [saved[name] for name in saved.files if name.startswith("model_")]
    assert any(np.array_equal(kernel, source.get_layer("hidden_01").kernel.numpy()) for kernel in kernels)
    resumed = fit_and_evaluate(settings, data, state, sink, tmp_path, source)
    assert resumed["epochs_run"] == 2
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["test_loss"] == whole["test_loss"]
    assert 0.5 <= whole["test_accuracy"] <= 1
