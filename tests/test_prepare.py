"""The prepare stage: splits, order, metadata, and refusals of bad raw data."""

import hashlib
import json

import numpy as np
import pytest
from conftest import CIFAR_CLASSES, PARAMS, class_color, fashion_arrays

from src.data.download import download
from src.data.idx import write_idx
from src.data.prepare import prepare
from src.errors import ConfigError, DataError


def spec(dataset, **changes):
    return {**PARAMS["prepare"][dataset], **changes}


@pytest.fixture
def fashion_raw(fashion_mirror, tmp_path):
    mirror, download_spec = fashion_mirror
    raw = tmp_path / "raw" / "fashion_mnist"
    download("fashion_mnist", download_spec, raw, mirror)
    return raw


def test_fashion_split_takes_valid_from_the_end(fashion_raw, tmp_path):
    out = tmp_path / "prepared" / "fashion_mnist.npz"
    meta = prepare("fashion_mnist", fashion_raw, out, spec("fashion_mnist", valid_size=5))
    source = fashion_arrays()
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["x_train"], source["train-images-idx3-ubyte"][:15])
        np.testing.assert_array_equal(npz["x_valid"], source["train-images-idx3-ubyte"][15:])
        np.testing.assert_array_equal(npz["y_valid"], source["train-labels-idx1-ubyte"][15:])
        np.testing.assert_array_equal(npz["x_test"], source["t10k-images-idx3-ubyte"])
        assert npz["x_train"].dtype == np.uint8 and npz["y_train"].dtype == np.int64
        hashes = {key: hashlib.sha256(npz[key].tobytes()).hexdigest() for key in npz.files}
    assert meta == json.loads(out.with_suffix(".json").read_text())
    assert meta["array_sha256"] == hashes
    assert meta["npz_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert {s: meta["splits"][s]["size"] for s in ("train", "valid", "test")} == {"train": 15, "valid": 5, "test": 10}
    assert meta["splits"]["train"]["image_shape"] == [28, 28]
    assert meta["class_names"][0] == "T-shirt/top" and meta["source"]["source"] == "mirror"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fashion_mnist.json", "fashion_mnist.npz"]


def test_cifar_folder_order_is_a_seeded_shuffle_and_labels_follow_pixels(cifar_folder_mirror, tmp_path):
    mirror, download_spec = cifar_folder_mirror
    raw = tmp_path / "raw"
    download("cifar10", download_spec, raw, mirror)
    metas = [prepare("cifar10", raw, tmp_path / f"p{seed}" / "c.npz", spec("cifar10", valid_size=6, order_seed=seed))
             for seed in (1, 1, 2)]
    assert metas[0]["array_sha256"] == metas[1]["array_sha256"] != metas[2]["array_sha256"]
    assert "shuffled with numpy default_rng(1)" in metas[0]["split"]["order"]
    with np.load(tmp_path / "p1" / "c.npz") as npz:
        assert npz["x_valid"].shape == (6, 32, 32, 3) and npz["x_train"].shape == (24, 32, 32, 3)
        for images, labels in ((npz["x_train"], npz["y_train"]), (npz["x_test"], npz["y_test"])):
            for image, label in zip(images, labels, strict=True):
                assert np.abs(image.mean(axis=(0, 1)) - class_color(label)).max() < 4  # JPEG is lossy
        assert sorted(npz["y_test"]) == list(range(10))


def test_a_cifar_image_folder_without_its_archive_names_it_and_the_fix(cifar_archive_mirror, tmp_path):
    mirror, download_spec = cifar_archive_mirror
    raw = tmp_path / "raw"
    download("cifar10", download_spec, raw, mirror)
    (raw / "cifar-10-images.tar.gz").unlink()
    with pytest.raises(DataError, match=r"cifar-10-images.tar.gz not found; run `dvc repro -f download@cifar10`"):
        prepare("cifar10", raw, tmp_path / "c.npz", spec("cifar10"))
    record = json.loads((raw / "source.json").read_text())
    (raw / "source.json").write_text(json.dumps({k: v for k, v in record.items() if k != "archive"}))
    with pytest.raises(DataError, match=r"names no image archive .*; run `dvc repro -f download@cifar10`"):
        prepare("cifar10", raw, tmp_path / "c.npz", spec("cifar10"))
    assert not (tmp_path / "c.npz").exists()


def test_cifar_batches_keep_file_order_and_become_nhwc(cifar_tarball_mirror, tmp_path):
    mirror, download_spec, batches = cifar_tarball_mirror
    raw = tmp_path / "raw"
    download("cifar10", download_spec, raw, mirror)
    out = tmp_path / "c.npz"
    meta = prepare("cifar10", raw, out, spec("cifar10", valid_size=3))
    first = batches["data_batch_1"]
    with np.load(out) as npz:
        assert npz["x_valid"].shape == (3, 32, 32, 3) and len(npz["x_train"]) == 17
        np.testing.assert_array_equal(npz["y_valid"], first[b"labels"][:3])
        # channel-major rows: red plane first, so pixel (0, 1) red is row[1], green is row[1024 + 1]
        assert npz["x_valid"][0, 0, 1, 0] == first[b"data"][0, 1]
        assert npz["x_valid"][0, 0, 1, 1] == first[b"data"][0, 1024 + 1]
        np.testing.assert_array_equal(npz["y_test"], batches["test_batch"][b"labels"])
    assert meta["class_names"] == CIFAR_CLASSES and meta["split"]["order"].startswith("file order")


def test_label_out_of_range_is_refused(fashion_raw, tmp_path):
    write_idx(fashion_raw / "t10k-labels-idx1-ubyte", np.array([1, 2, 12] + [0] * 7, dtype=np.uint8))
    with pytest.raises(DataError, match=r"test label #2 is 12, expected 0..9"):
        prepare("fashion_mnist", fashion_raw, tmp_path / "out.npz", spec("fashion_mnist", valid_size=5))


def test_images_and_labels_of_different_lengths_are_refused(fashion_raw, tmp_path):
    write_idx(fashion_raw / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="holds 20 images but train-labels-idx1-ubyte 19 labels"):
        prepare("fashion_mnist", fashion_raw, tmp_path / "out.npz", spec("fashion_mnist", valid_size=5))


def test_missing_raw_file_names_it_and_the_fix(fashion_raw, tmp_path):
    (fashion_raw / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte not found; run `dvc repro -f download@fashion_mnist`"):
        prepare("fashion_mnist", fashion_raw, tmp_path / "out.npz", spec("fashion_mnist", valid_size=5))


def test_missing_source_record_says_to_run_download(tmp_path):
    with pytest.raises(DataError, match=r"source.json not found: run `dvc repro download@cifar10` first"):
        prepare("cifar10", tmp_path, tmp_path / "out.npz", spec("cifar10"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"valid_size": 20}, r"valid_size must be an integer in 1..19, found 20"),
    ({"valid_size": "5"}, r"found '5'"),
    ({"valid_size": 5, "valid_position": "middle"}, r"valid_position must be 'first' or 'last', found 'middle'"),
])
def test_impossible_split_parameters_are_refused(fashion_raw, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        prepare("fashion_mnist", fashion_raw, tmp_path / "out.npz", spec("fashion_mnist", **changes))


def test_a_failed_prepare_keeps_the_previous_outputs(fashion_raw, tmp_path):
    out = tmp_path / "prepared" / "fashion_mnist.npz"
    prepare("fashion_mnist", fashion_raw, out, spec("fashion_mnist", valid_size=5))
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    write_idx(fashion_raw / "train-labels-idx1-ubyte", np.full(20, 99, dtype=np.uint8))
    with pytest.raises(DataError):
        prepare("fashion_mnist", fashion_raw, out, spec("fashion_mnist", valid_size=5))
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
