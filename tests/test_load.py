"""Prepared file -> tf.data: integrity checks and the transforms a data config asks for."""

import numpy as np
import pytest
from conftest import PARAMS

from src.data.download import download
from src.data.load import load_prepared, make_datasets
from src.data.prepare import prepare
from src.errors import ConfigError, DataError


@pytest.fixture
def prepared(fashion_mirror, tmp_path):
    mirror, download_spec = fashion_mirror
    download("fashion_mnist", download_spec, tmp_path / "raw", mirror)
    out = tmp_path / "prepared" / "fashion_mnist.npz"
    prepare("fashion_mnist", tmp_path / "raw", out, {**PARAMS["prepare"]["fashion_mnist"], "valid_size": 5})
    return out


def batches(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


def test_unit_scaling_keeps_every_example_once(prepared):
    data = load_prepared(prepared)
    pipelines = make_datasets(data, batch_size=4, scale="unit")
    for split in ("valid", "test"):
        images, labels = batches(pipelines[split])
        x, y = data.split(split)
        np.testing.assert_allclose(images, x / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(labels, y)
    images, labels = batches(pipelines["train"])
    assert images.shape == (15, 28, 28) and images.dtype == np.float32
    assert sorted(labels) == sorted(data.split("train")[1])


def test_training_order_is_shuffled_reproducibly_by_seed(prepared):
    data = load_prepared(prepared)
    first = batches(make_datasets(data, 4, seed=1)["train"])[1]
    again = batches(make_datasets(data, 4, seed=1)["train"])[1]
    other = batches(make_datasets(data, 4, seed=2)["train"])[1]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_every_pipeline_runs_without_autotuning_whose_thread_stalled_the_end_of_fit(prepared):
    pipelines = make_datasets(load_prepared(prepared), 4, epochs=2)
    assert all(pipeline.options().autotune.enabled is False for pipeline in pipelines.values())


def test_standard_scaling_uses_training_statistics(prepared):
    data = load_prepared(prepared)
    images, _ = batches(make_datasets(data, 8, scale="standard")["train"])
    np.testing.assert_allclose(images.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(images.std(axis=0), 1, atol=1e-3)


def test_symmetric_scaling_resize_and_flatten(prepared):
    data = load_prepared(prepared)
    images, _ = batches(make_datasets(data, 8, scale="symmetric", resize=(14, 14), flatten=True)["test"])
    assert images.shape == (10, 14 * 14)
    assert -1.0 <= images.min() < images.max() <= 1.0


def test_unknown_scale_and_bad_batch_size_are_refused(prepared):
    data = load_prepared(prepared)
    with pytest.raises(ConfigError, match="data.scale must be one of none, unit, symmetric, standard, found 'z'"):
        make_datasets(data, 8, scale="z")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, found 0"):
        make_datasets(data, 0)


def test_missing_prepared_file_says_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match=r"cifar10.npz not found: run `dvc repro prepare@cifar10`"):
        load_prepared(tmp_path / "cifar10.npz")


def test_truncated_prepared_file_is_refused(prepared):
    data = prepared.read_bytes()
    prepared.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"fashion_mnist.npz is corrupt or truncated .*dvc repro prepare@fashion_mnist"):
        load_prepared(prepared)


def test_bit_flip_in_prepared_file_is_refused(prepared):
    data = bytearray(prepared.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside the x_train array's bytes
    prepared.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"fashion_mnist.npz"):
        load_prepared(prepared)


def test_arrays_that_do_not_match_their_metadata_are_refused(prepared):
    with np.load(prepared) as npz:
        arrays = dict(npz)
    arrays["y_test"] = (arrays["y_test"] + 1) % 10
    np.savez(prepared, **arrays)
    with pytest.raises(DataError, match=r"y_test does not match the hash in fashion_mnist.json"):
        load_prepared(prepared)
