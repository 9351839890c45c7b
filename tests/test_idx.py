import numpy as np
import pytest

from src.data.idx import read_idx, write_idx
from src.errors import DataError


def test_round_trip_images_and_labels(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", np.array([3, 9], dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(tmp_path / "images", (28, 28)), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", ()), [3, 9])


def test_labels_file_read_as_images_is_refused_by_magic(tmp_path):
    write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match=r"magic 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "labels", (28, 28))


def test_wrong_item_shape_is_refused(tmp_path):
    write_idx(tmp_path / "images", np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \(32, 32\), expected \(28, 28\)"):
        read_idx(tmp_path / "images", (28, 28))


def test_truncated_body_is_refused(tmp_path):
    write_idx(tmp_path / "images", np.zeros((3, 28, 28), dtype=np.uint8))
    data = (tmp_path / "images").read_bytes()
    (tmp_path / "images").write_bytes(data[:-100])
    with pytest.raises(DataError, match="announces 3 items .* truncated"):
        read_idx(tmp_path / "images", (28, 28))


def test_file_shorter_than_header_is_refused(tmp_path):
    (tmp_path / "labels").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short for an IDX header"):
        read_idx(tmp_path / "labels", ())


def test_missing_file_names_it_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"labels not found; run the download stage again"):
        read_idx(tmp_path / "labels", ())
