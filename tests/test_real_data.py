"""The real data pipeline on the real datasets: `dvc repro` of the data stages in a copy of
the repository, fed from the offline mirror, then checks of what it produced (slow: about a minute)."""

import hashlib

import numpy as np
import pytest
from conftest import DATA_STAGES, PARAMS, dvc

from src.data.load import load_prepared

pytestmark = pytest.mark.slow


def test_second_repro_finds_nothing_to_do(pipeline):
    work, env, first = pipeline
    for stage in DATA_STAGES:
        assert f"Running stage '{stage}'" in first
    again = dvc("repro", *DATA_STAGES, cwd=work, env=env)
    assert again.returncode == 0 and "Data and pipelines are up to date." in again.stdout
    assert "Running stage" not in again.stdout


def test_dag_links_download_to_prepare_for_each_dataset(pipeline):
    work, env, _ = pipeline
    dot = dvc("dag", "--dot", cwd=work, env=env).stdout
    for dataset in ("fashion_mnist", "cifar10"):
        assert f'"download@{dataset}" -> "prepare@{dataset}"' in dot


@pytest.mark.parametrize(("dataset", "sizes", "shape", "per_class"), [
    ("fashion_mnist", (55_000, 5_000, 10_000), (28, 28), (6_000, 1_000)),
    ("cifar10", (45_000, 5_000, 10_000), (32, 32, 3), (5_000, 1_000)),
])
def test_prepared_splits_balance_ranges_and_hashes(pipeline, dataset, sizes, shape, per_class):
    work, _, _ = pipeline
    data = load_prepared(work / "data" / "prepared" / f"{dataset}.npz")  # verifies every array hash
    meta = data.meta
    for split, size in zip(("train", "valid", "test"), sizes, strict=True):
        x, y = data.split(split)
        assert x.shape == (size, *shape) and x.dtype == np.uint8 and y.dtype == np.int64
        assert (x.min(), x.max()) == (0, 255)
        assert meta["splits"][split]["class_counts"] == np.bincount(y, minlength=10).tolist()
    full = np.bincount(np.concatenate([data.split("train")[1], data.split("valid")[1]]), minlength=10)
    assert full.tolist() == [per_class[0]] * 10
    assert np.bincount(data.split("test")[1], minlength=10).tolist() == [per_class[1]] * 10
    assert meta["class_names"] == PARAMS["download"][dataset]["classes"]
    path = work / "data" / "prepared" / f"{dataset}.npz"
    assert meta["npz_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    source = meta["source"]
    assert source["source"] == "mirror"
    if dataset == "fashion_mnist":
        assert source["sha256"] == PARAMS["download"]["fashion_mnist"]["files"]
        raw = work / "data" / "raw" / dataset
        for name, expected in source["sha256"].items():
            assert hashlib.sha256((raw / name).read_bytes()).hexdigest() == expected
    else:
        assert source["form"] == "image-folder"
        assert source["manifest_sha256"] == PARAMS["download"]["cifar10"]["image_folder"]["manifest_sha256"]
        assert "default_rng(42)" in meta["split"]["order"]


def test_fashion_valid_split_is_the_last_5000_of_the_training_file(pipeline):
    work, _, _ = pipeline
    from src.data.idx import read_idx

    labels = read_idx(work / "data" / "raw" / "fashion_mnist" / "train-labels-idx1-ubyte", ())
    data = load_prepared(work / "data" / "prepared" / "fashion_mnist.npz", verify=False)
    np.testing.assert_array_equal(data.split("valid")[1], labels[-5000:])
    np.testing.assert_array_equal(data.split("train")[1], labels[:-5000])
