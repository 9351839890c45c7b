"""MobileNetV2 on CIFAR-10 (model=mobilenet_v2): the seed's setup, both phases, the feature
cache, weights from a file, ImageNet weights offline. Real CIFAR-10 images from the mirror,
random-init or self-saved weights, 32 x 32 inputs to keep it quick."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient
from test_engine_parts import config

from src.data.files import array_digest, file_digest
from src.data.load import Prepared, load_prepared, make_datasets
from src.errors import ConfigError, DataError
from src.pretrained.engine import fit_and_evaluate
from src.pretrained.model import build_transfer_model, weights_digest, weights_file
from src.resume import ResumeState

SMALL = ("experiment=mobilenet_v2_cifar10", "model.weights=none", "data.resize=[32,32]", "epochs=1",
         "batch_size=32", "deterministic=true")


@pytest.fixture(scope="module")
def cifar(cifar_npz) -> Prepared:
    """The first 160 training, 64 validation and 100 test images of the real prepared CIFAR-10."""
    full = load_prepared(cifar_npz)
    sizes = {"train": 160, "valid": 64, "test": 100}
    arrays = {f"{kind}_{split}": full.arrays[f"{kind}_{split}"][:size]
              for split, size in sizes.items() for kind in "xy"}
    return Prepared(arrays, full.meta, full.path)


@pytest.fixture(scope="module")
def small_npz(cifar, tmp_path_factory):
    """That subset as a prepared file (npz + meta with its hashes), for whole runs through train()."""
    folder = tmp_path_factory.mktemp("cifar_small")
    path = folder / "cifar10.npz"
    np.savez(path, **cifar.arrays)
    meta = {**cifar.meta, "npz_sha256": file_digest(path),
            "array_sha256": {key: array_digest(value) for key, value in cifar.arrays.items()}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def run(settings: dict, data: Prepared, root, name: str = "run") -> dict:
    return fit_and_evaluate(settings, data, ResumeState(root / name), lambda step, values: None, root)


# -- the seed's setup ---------------------------------------------------------------------------

def test_the_experiment_default_is_the_seeds_setup_but_with_mobilenets_own_input_scale():
    settings = config("experiment=mobilenet_v2_cifar10")
    seed_setup = {"name": "mobilenet_v2", "alpha": 0.35, "weights": "imagenet", "dropout": 0.2, "fine_tune_epochs": 0,
                  "augment": "none"}
    assert {key: settings["model"][key] for key in seed_setup} == seed_setup
    assert settings["data"]["resize"] == [96, 96] and settings["data"]["train_size"] == 2500
    assert settings["data"]["scale"] == "symmetric"  # the seed's x/255 is the `unit` arm of the sweep
    training = (settings["optimizer"]["name"], settings["epochs"], settings["batch_size"], settings["validation_split"])
    assert training == ("adam", 3, 16, 0.1)


def test_the_model_is_a_frozen_base_in_inference_mode_pooling_dropout_and_a_softmax_head():
    settings = config(*SMALL, "model.dropout=0.0")
    model = build_transfer_model(settings["model"], (32, 32, 3), 10, None)
    assert not model.base.trainable and model.full.count_params() - model.base.count_params() == 1280 * 10 + 10
    assert [type(layer).__name__ for layer in model.full.layers[-3:]] == ["GlobalAveragePooling2D", "Dropout", "Dense"]
    assert model.full.layers[-1].units == 10 and model.full.layers[-1].activation.__name__ == "softmax"
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    # training=True reaches the head but not the base: its BN layers keep their moving statistics.
    np.testing.assert_allclose(model.full(images, training=True), model.full(images, training=False), rtol=1e-5)


def test_symmetric_scaling_is_mobilenet_v2s_own_preprocessing(cifar):
    images = next(iter(make_datasets(cifar, 8, scale="symmetric", resize=(32, 32), epochs=0)["test"]))[0].numpy()
    expected = keras.applications.mobilenet_v2.preprocess_input(cifar.split("test")[0][:8].astype("float32"))
    np.testing.assert_allclose(images, expected, atol=1e-5)


@pytest.mark.parametrize(("overrides", "message"), [
    (("data=fashion_mnist",), "needs 3-channel images"),
    (("data.resize=null",), "set data.resize"),
    (("model.weights=imagenet", "model.alpha=0.6"), "ImageNet weights exist for model.alpha"),
    (("model.weights=imagenet", "data.resize=[64,64]"), "square inputs of"),
    (("mc_dropout_samples=5",), "mc_dropout_samples is for the MLP models"),
    (("model.fine_tune_lr_factor=2",), "model.fine_tune_lr_factor=2 must be in"),
    (("model.train_base=true", "model.fine_tune_epochs=1"), "phase 2 .* has nothing to unfreeze"),
])
def test_settings_a_pretrained_base_cannot_take_are_refused_with_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(*SMALL, *overrides)


# -- both phases ----------------------------------------------------------------------------------

def changed_layers(trained: keras.Model, initial: keras.Model) -> set[str]:
    return {layer.name for layer in trained.layers if layer.weights
            and any(not np.array_equal(a, b) for a, b in
                    zip(layer.get_weights(), initial.get_layer(layer.name).get_weights(), strict=True))}


def test_both_phases_train_on_real_images_the_top_unfrozen_with_bn_frozen_at_a_tenth_of_the_rate(cifar, tmp_path):
    settings = config(*SMALL, "model.fine_tune_epochs=1", "model.fine_tune_from=block_15_expand",
                      f"model.feature_cache={tmp_path / 'features'}")
    keras.utils.set_random_seed(settings["seed"])
    initial = build_transfer_model(settings["model"], (32, 32, 3), 10, None).base
    logged = []
    result = fit_and_evaluate(settings, cifar, ResumeState(tmp_path / "state"),
                              lambda step, values: logged.append((step, values)), tmp_path)
    assert [step for step, _ in logged] == [1, 2]  # one curve across the phases
    assert logged[1][1]["learning_rate"] == pytest.approx(logged[0][1]["learning_rate"] / 10)
    changed = changed_layers(result["model"].get_layer(initial.name), initial)
    assert changed and all(name.startswith(("block_15", "block_16", "Conv_1")) for name in changed)
    assert not any("_BN" in name or name.endswith("bn") for name in changed)  # BN: frozen, inference mode
    assert result["epochs_run"] == 2 and 0 <= result["test_accuracy"] <= 1
    assert np.sum(result["confusion_matrix"]) == 100 and np.shape(result["confusion_matrix"]) == (10, 10)


def test_a_base_trained_whole_trains_every_layer_bn_on_batch_statistics_without_the_cache(cifar, tmp_path):
    """model.train_base (the fair from-scratch baseline): every base layer trains from the first epoch,
    BN normalises with batch statistics while fitting and learns its moving statistics."""
    settings = config(*SMALL, "model.pretrained=false", "model.train_base=true", "model.dropout=0.0",
                      "model.bn_momentum=0.9", f"model.feature_cache={tmp_path / 'features'}")
    keras.utils.set_random_seed(settings["seed"])
    initial = build_transfer_model(settings["model"], (32, 32, 3), 10, None)
    assert initial.base.trainable and all(layer.trainable for layer in initial.base.layers)
    momenta = {layer.momentum for layer in initial.base.layers if isinstance(layer, keras.layers.BatchNormalization)}
    own = {layer.momentum for layer in build_transfer_model(config(*SMALL)["model"], (32, 32, 3), 10, None).base.layers
           if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9} and own == {0.999}  # MobileNetV2's own unless model.bn_momentum says otherwise
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype("float32")
    assert not np.allclose(initial.full(images, training=True), initial.full(images, training=False), rtol=1e-3)

    result = run(settings, cifar, tmp_path)
    base = result["model"].get_layer(initial.base.name)
    changed = changed_layers(base, initial.base)
    batch_norms = {layer.name for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)}
    convolutions = {layer.name for layer in base.layers if layer.weights} - batch_norms
    assert changed == batch_norms | convolutions  # every layer with weights, from the first one on
    moving_mean = [model.get_layer("bn_Conv1").get_weights()[2] for model in (base, initial.base)]
    assert not np.array_equal(*moving_mean)  # learnt from the batches, not only gamma and beta
    assert "feature_cache_hit" not in result and not (tmp_path / "features").exists()
    assert result["epochs_run"] == 1 and 0 <= result["test_accuracy"] <= 1


class StopAfterFirstEpoch(ResumeState):
    """A kill right after epoch 1 was saved: the end of the head-only phase."""

    def save(self, model, callbacks, epochs_done, history, phase=0):
        super().save(model, callbacks, epochs_done, history, phase)
        if epochs_done == 1:
            raise KeyboardInterrupt


def test_a_run_killed_after_the_head_phase_resumes_to_the_same_result(cifar, tmp_path):
    settings = config(*SMALL, "model.fine_tune_epochs=1", f"model.feature_cache={tmp_path / 'features'}")
    whole = run(settings, cifar, tmp_path, "whole")
    with pytest.raises(KeyboardInterrupt):
        fit_and_evaluate(settings, cifar, StopAfterFirstEpoch(tmp_path / "split"), lambda *_: None, tmp_path)
    resumed = run(settings, cifar, tmp_path, "split")
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (whole["test_accuracy"], whole["test_loss"])


def test_augmentation_flips_and_shifts_whole_pixels_the_same_way_on_every_run(cifar):
    from src.pretrained.engine import augmented

    settings = config(*SMALL, "model.augment=flip_translate", "model.translate=0.25")
    batches = make_datasets(cifar, 16, scale="symmetric", resize=(32, 32), epochs=1)["train"]
    first, again = (next(iter(augmented(batches, settings["model"], 42, first_step=0)))[0].numpy() for _ in range(2))
    plain = next(iter(batches))[0].numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, plain)
    # every augmented image is the plain one, maybe mirrored, moved by whole pixels (zeros where it moved in)
    for image, original in zip(first, plain, strict=True):
        kept = image[np.abs(image).sum(axis=-1) > 0]
        assert len(kept) and np.isin(kept, original).all()


# -- the feature cache ----------------------------------------------------------------------------

def test_the_feature_cache_is_used_and_invalidated_when_data_weights_preprocessing_or_precision_change(cifar, tmp_path):
    cache = tmp_path / "features"
    settings = config(*SMALL, f"model.feature_cache={cache}")
    first, second = run(settings, cifar, tmp_path, "a"), run(settings, cifar, tmp_path, "b")
    assert (first["feature_cache_hit"], second["feature_cache_hit"]) == (0.0, 1.0)
    assert len(list(cache.glob("*.npz"))) == 2  # train + valid, and test
    assert second["test_accuracy"] == first["test_accuracy"]

    other_images = Prepared({**cifar.arrays, "x_train": cifar.arrays["x_train"][::-1].copy()}, cifar.meta, cifar.path)
    changes = {"data": (settings, other_images),
               "weights": (config(*SMALL, f"model.feature_cache={cache}", "seed=7"), cifar),  # another random init
               "preprocessing": (config(*SMALL, f"model.feature_cache={cache}", "data.scale=unit"), cifar),
               "precision": (config(*SMALL, f"model.feature_cache={cache}", "precision=mixed_bfloat16"), cifar)}
    for what, (changed, data) in changes.items():
        assert run(changed, data, tmp_path, what)["feature_cache_hit"] == 0.0, f"{what} changed, cache still used"


def test_the_head_learns_the_same_on_cached_features_as_with_the_base_run_every_epoch(cifar, tmp_path):
    cached = run(config(*SMALL, "epochs=3", f"model.feature_cache={tmp_path / 'f'}"), cifar, tmp_path, "cached")
    direct = run(config(*SMALL, "epochs=3", "model.feature_cache=null"), cifar, tmp_path, "direct")
    assert "feature_cache_hit" not in direct
    assert abs(cached["test_accuracy"] - direct["test_accuracy"]) <= 0.02


def test_augmentation_or_an_unfrozen_base_turns_the_cache_off_by_itself(cifar, tmp_path):
    augmented = run(config(*SMALL, "model.augment=flip", f"model.feature_cache={tmp_path / 'f'}"), cifar, tmp_path)
    assert "feature_cache_hit" not in augmented and not (tmp_path / "f").exists()


# -- weights --------------------------------------------------------------------------------------

def test_a_saved_weights_file_is_the_base_a_run_trains_from(cifar, tmp_path):
    keras.utils.set_random_seed(123)
    saved = build_transfer_model(config(*SMALL)["model"], (32, 32, 3), 10, None).base
    path = tmp_path / "base.weights.h5"
    saved.save_weights(path)
    settings = config(*SMALL, f"model.weights={path}", "model.feature_cache=null")
    assert weights_file(settings["model"], 32) == path
    result = run(settings, cifar, tmp_path)
    assert weights_digest(result["model"].get_layer(saved.name)) == weights_digest(saved)  # frozen: unchanged


def test_a_missing_or_wrong_weights_file_is_one_clear_line(cifar, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        weights_file(config(*SMALL, f"model.weights={tmp_path / 'absent.h5'}")["model"], 32)
    (tmp_path / "bad.weights.h5").write_bytes(b"not weights")
    with pytest.raises(DataError, match="cannot load the base's weights"):
        build_transfer_model(config(*SMALL)["model"], (32, 32, 3), 10, tmp_path / "bad.weights.h5")


def test_imagenet_weights_offline_fail_before_any_training_with_where_to_put_them(small_npz, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "MLFLOW_TRACKING_URI": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "src.train", "experiment=mobilenet_v2_cifar10",
                             f"data.path={small_npz}", "data.train_size=100", f"tracking.uri={store}",
                             f"state_dir={tmp_path / 'state'}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    expected = tmp_path / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    assert line.startswith("error: ImageNet weights") and str(expected) in line and "model.weights=" in line
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("mobilenet_v2_cifar10")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # nothing started


# -- a whole run, tracked -------------------------------------------------------------------------

def test_a_tracked_run_logs_both_phases_as_one_curve_the_model_and_the_confusion_matrix(small_npz, tmp_path):
    from src.job import train

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(config(*SMALL, f"data.path={small_npz}", "data.train_size=100", "model.fine_tune_epochs=1",
                          f"tracking.uri={store}", f"state_dir={tmp_path / 'state'}",
                          f"model.feature_cache={tmp_path / 'features'}"), tmp_path / "job")
    client = MlflowClient(store)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "mobilenet_v2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    artifacts = {item.path for path in ("", "figures", "model")
                 for item in client.list_artifacts(run.info.run_id, path)}
    assert {"figures/confusion_matrix.png", "confusion_matrix.json", "figures/learning_curves.png",
            "model/MLmodel"} <= artifacts
    matrix = json.loads(Path(client.download_artifacts(run.info.run_id, "confusion_matrix.json", tmp_path)).read_text())
    assert np.sum(matrix["rows_true_columns_predicted"]) == 100 and len(matrix["class_names"]) == 10
