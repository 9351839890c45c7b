"""Pretraining without labels (task=autoencoder|rotation, transfer.pretrain): the pretext data and
models, their rules, and their training on real Fashion-MNIST images."""

import numpy as np
import pytest
from conftest import cli, quiet_env, runs
from test_engine_parts import config

from src.config import source_config, source_role
from src.data.load import load_prepared, make_datasets, reshape_splits
from src.engine import fit_and_evaluate, training_phases
from src.errors import ConfigError
from src.models import build_mlp, reuse_layers
from src.pretext import ROTATIONS, build_autoencoder, task_data
from src.resume import ResumeState

SMALL = ("data.train_size=1000", "epochs=1", "batch_size=50", "optimizer=nadam", "deterministic=true",
         "diagnostics.batch_size=64", "model.depth=2")


@pytest.fixture(scope="module")
def fashion(fashion_npz, prepared_subset):
    return load_prepared(prepared_subset(fashion_npz))


def test_the_rotation_task_turns_each_image_by_its_seeded_quarter_turn_and_labels_it_so(fashion):
    rotated = task_data(fashion, config("task=rotation", "seed=7"))
    assert rotated.class_names == list(ROTATIONS) and fashion.class_names[0] == "T-shirt/top"  # the original stays
    for split in ("train", "valid", "test"):
        images, turns = rotated.split(split)
        originals = fashion.split(split)[0]
        assert images.shape == originals.shape and set(np.unique(turns)) == {0, 1, 2, 3}
        for index in (0, 1, 2, 3, len(images) - 1):
            assert np.array_equal(images[index], np.rot90(originals[index], turns[index]))
    again, other = task_data(fashion, config("task=rotation", "seed=7")), task_data(fashion, config("task=rotation"))
    assert np.array_equal(again.split("train")[1], rotated.split("train")[1])
    assert not np.array_equal(other.split("train")[1], rotated.split("train")[1])
    assert task_data(fashion, config()) is fashion  # classify: the data as it is


def test_the_autoencoder_is_the_mlp_body_a_mirrored_decoder_and_an_image_shaped_output():
    settings = config("task=autoencoder", "model.width=[300,100,50]", "model.depth=3")["model"]
    model = build_autoencoder(settings, (28, 28))
    dense = [(layer.name, layer.units) for layer in model.layers if hasattr(layer, "units")]
    assert dense == [("hidden_01", 300), ("hidden_02", 100), ("hidden_03", 50), ("decoder_01", 100),
                     ("decoder_02", 300), ("reconstruction", 784)]
    assert model.output_shape == (None, 28, 28)
    classifier = build_mlp(settings, (28, 28), 10)  # a classifier of the same body takes the encoder's layers
    assert [layer.name for layer in reuse_layers(classifier, model)] == ["hidden_01", "hidden_02", "hidden_03"]
    assert np.array_equal(classifier.get_layer("hidden_03").kernel.numpy(), model.get_layer("hidden_03").kernel.numpy())


def test_the_autoencoder_learns_to_reconstruct_real_images_and_its_gradients_are_measured(fashion, tmp_path):
    settings = config(*SMALL, "task=autoencoder")
    logged = {}
    result = fit_and_evaluate(settings, reshape_splits(fashion, 1000), ResumeState(tmp_path / "state"),
                              lambda step, values: logged.setdefault(step, {}).update(values), tmp_path)
    assert "test_accuracy" not in result and result["epochs_run"] == 1
    test = make_datasets(fashion, 1000, epochs=0)["test"]  # data.scale=unit: pixels / 255
    pixels = np.concatenate([images.numpy() for images, _ in test])
    mean_image_error = float(np.mean((pixels - pixels.mean(axis=0)) ** 2))
    assert result["test_loss"] < 0.8 * mean_image_error, (result["test_loss"], mean_image_error)
    assert result["final_val_loss"] > 0 and "final_val_accuracy" not in result
    # The gradient diagnostics differentiate the reconstruction error, decoder included.
    assert {"grad_norm/hidden_01", "grad_norm/decoder_01", "grad_norm/reconstruction"} <= set(logged[1])
    assert logged[1]["grad_norm/decoder_01"] > 0


def test_the_rotation_task_trains_a_four_way_classifier_above_chance(fashion, tmp_path):
    result = fit_and_evaluate(config(*SMALL, "task=rotation"), reshape_splits(fashion, 1000),
                              ResumeState(tmp_path / "state"), lambda step, values: None, tmp_path)
    assert result["model"].output_shape == (None, 4)
    assert result["test_accuracy"] > 0.5  # chance: 0.25


def test_a_pretrained_source_is_the_same_body_on_every_training_image_without_its_labels():
    target = config("transfer.pretrain=autoencoder", "transfer.freeze_epochs=2", "data.train_size=500",
                    "data.classes=[0,2]", "model.output=sigmoid", "seed=7", "mc_dropout_samples=0")
    source = source_config(target)
    assert source["task"] == "autoencoder" and source["transfer"]["pretrain"] is None
    assert source["data"]["train_size"] is None and source["data"]["classes"] is None  # every image, every class
    assert (source["seed"], source["epochs"], source["transfer"]["freeze_epochs"]) == (42, 20, 0)
    assert source["model"] == {**target["model"], "output": "softmax"}
    assert source_role(target) == "source model (autoencoder pretraining, no labels)"
    assert training_phases(target) == [(2, True), (10, False)]
    assert target["task"] == "classify" and target["data"]["train_size"] == 500  # left as it was


@pytest.mark.parametrize(("overrides", "message"), [
    (("transfer.pretrain=autoencoder", "transfer.source_classes=[1,3]"),
     r"transfer.pretrain=autoencoder and transfer.source_classes=\[1, 3\] name two sources .* set one to null"),
    (("task=rotation", "transfer.pretrain=rotation"), "task=rotation trains a source model itself"),
    (("task=autoencoder", "model.dropout=0.2", "mc_dropout_samples=10"), "task=autoencoder has none of"),
    (("task=rotation", "model.output=sigmoid", "data.classes=[0,2]"), "task=rotation has four classes"),
    (("transfer.pretrain=rotation", "transfer.freeze_epochs=10"), "transfer.freeze_epochs=10 must be below epochs=10"),
    (("task=jigsaw",), "task=jigsaw must be one of"),
    (("transfer.pretrain=classify",), "transfer.pretrain=classify must be"),
    (("model=mobilenet_v2", "data=cifar10", "data.resize=[96,96]", "task=rotation"),
     "transfer.\\* and task= are for the MLP's layers"),
])
def test_impossible_pretraining_settings_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(*overrides)


@pytest.mark.slow
def test_a_reused_source_is_its_own_run_and_a_worker_that_loads_it_first_keeps_its_threads(fashion_npz,
                                                                                            prepared_subset, tmp_path):
    """Two commands: the first trains the rotation source (its own run, role tag) and the classifier
    on it; the second (another seed) finds the source finished and loads it before anything else in
    its process, which must not leave TensorFlow's thread pools at their default."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = (f"data.path={prepared_subset(fashion_npz)}", f"tracking.uri={store}", f"state_dir={tmp_path / 'state'}",
              "transfer.pretrain=rotation", "transfer.source_epochs=1", "epochs=2", "transfer.freeze_epochs=1",
              "data.train_size=300", "threads=1", "tracking.log_figures=false", "name=test")
    first = cli(*common, "seed=42", f"hydra.run.dir={tmp_path / 'first'}", env=quiet_env())
    assert first.returncode == 0, first.stderr[-2000:]
    second = cli(*common, "seed=43", f"hydra.run.dir={tmp_path / 'second'}", env=quiet_env())
    assert second.returncode == 0, second.stderr[-2000:]
    logged = second.stdout + second.stderr
    assert "skipped: this exact config" in logged and "threads=1 ignored" not in logged, logged[-2000:]
    made = runs(store)
    roles = [run.data.tags.get("ch11.role") for run in made]
    assert roles == ["source model (rotation pretraining, no labels)", None, None]
    source = made[0]
    assert source.data.params["task"] == "rotation" and source.data.params["data.train_size"] == "None"
    assert 0.25 < source.data.metrics["test_accuracy"] <= 1  # four quarter turns: chance is 0.25
    assert all(run.data.tags["ch11.source_run"] == source.info.run_id for run in made[1:])
