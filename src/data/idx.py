"""The IDX format of (Fashion-)MNIST: a big-endian header, then raw uint8 values.

Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
then one 4-byte size per dimension. Labels are 1-D (magic 0x00000801), images 3-D
(magic 0x00000803, N x 28 x 28).
"""

from pathlib import Path

import numpy as np

from src.errors import DataError

UBYTE = 0x08


def read_idx(path: Path, shape: tuple[int, ...], fix: str = "run the download stage again") -> np.ndarray:
    """Read an uncompressed IDX file of uint8, checking magic and the per-item shape.

    `shape` is the expected shape of one item: () for labels, (28, 28) for images; `fix`
    ends the error of a missing file.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} not found; {fix}") from None
    ndim = 1 + len(shape)
    expected_magic = (UBYTE << 8) | ndim
    magic = int.from_bytes(data[:4], "big")
    if len(data) >= 4 and magic != expected_magic:
        raise DataError(
            f"{path}: IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(uint8, {ndim}-D); is it the right file?"
        )
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header; fetch it again")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != tuple(shape):
        raise DataError(f"{path}: items of shape {dims[1:]}, expected {tuple(shape)}; is it the right file?")
    body = memoryview(data)[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise DataError(
            f"{path}: header announces {dims[0]} items ({int(np.prod(dims))} bytes) but the body "
            f"holds {len(body)} bytes; the file is truncated or padded, fetch it again"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (used by the tests to make small files)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = ((UBYTE << 8) | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    Path(path).write_bytes(header + array.tobytes())
