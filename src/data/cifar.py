"""CIFAR-10 in its two forms: the canonical python tarball and an image folder.

Image folder: `train/<class>/*.jpg` and `test/<class>/*.jpg`, 32x32 RGB, as a directory or a
tar archive. Its identity is the manifest hash: SHA-256 over the sorted lines
"<split>/<class>/<file> <sha256 of file>", so the same images give the same hash whether they
came as a directory or an archive. The download stage keeps it as one archive: 60,000 small
files would cost every DVC hash, cache copy, push and pull far more than the images' bytes.

Python tarball: `cifar-10-batches-py/` with five training batches and one test batch,
pickled dicts of N x 3072 uint8 rows (channel-major) and labels.
"""

import gzip
import hashlib
import io
import pickle
import tarfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.data.files import progress
from src.errors import DataError

SPLITS = ("train", "test")
IMAGE_SIZE = (32, 32)
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_FILES = (*TRAIN_BATCHES, TEST_BATCH, "batches.meta")


Images = dict[str, list[tuple[str, str, bytes]]]  # split -> (class, file name, file bytes), in order


def image_files(root: Path, split: str, classes: list[str], origin: Path | None = None) -> list[tuple[str, Path]]:
    """(class, path) for every image of a split, in (class order, file name) order."""
    split_dir = root / split
    origin = origin or root
    if not split_dir.is_dir():
        raise DataError(f"{origin}: folder {split}/ missing; expected {split}/<class>/*.jpg")
    found = {p.name for p in split_dir.iterdir() if p.is_dir()}
    check_classes(found, classes, origin, split)
    return [
        (name, path)
        for name in classes
        for path in sorted((split_dir / name).iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]


def check_classes(found: set[str], classes: list[str], origin: Path, split: str) -> None:
    """The class folders of a split are exactly the classes."""
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(
            f"{origin}: class folder {split}/{missing[0]} missing "
            f"({len(missing)} of {len(classes)} absent; expected: {', '.join(classes)})"
        )
    extra = sorted(found - set(classes))
    if extra:
        raise DataError(f"{origin}: unexpected folder {split}/{extra[0]}; only the {len(classes)} classes belong here")


def images_from_directory(root: Path, classes: list[str]) -> Images:
    """Every image file of both splits of an image folder, read."""
    return {split: [(name, path.name, path.read_bytes()) for name, path in image_files(root, split, classes)]
            for split in SPLITS}


def images_from_archive(path: Path, classes: list[str], origin: Path | None = None) -> Images:
    """Every `<split>/<class>/<image>` member of a tar archive (gzip-compressed or not; an optional
    top folder is dropped), read in one pass. Members of any other shape are ignored: nothing is
    extracted, so no member name can reach outside a folder."""
    origin = origin or path
    found: dict[str, dict[str, list[tuple[str, bytes]]]] = {split: {} for split in SPLITS}
    try:
        with open_tar(path) as archive, progress(None, f"read {path.name}", "file") as bar:
            for member in archive:
                parts = PurePosixPath(member.name).parts
                if len(parts) == 4 and parts[1] in SPLITS:
                    parts = parts[1:]
                if not member.isfile() or len(parts) != 3 or parts[0] not in SPLITS:
                    continue
                if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
                    continue
                split, name, file = parts
                with archive.extractfile(member) as stream:
                    found[split].setdefault(name, []).append((file, stream.read()))
                bar.update()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{origin}: truncated or corrupt archive ({error}); fetch it again") from None
    for split in SPLITS:
        check_classes(set(found[split]), classes, origin, split)
    return {split: [(name, file, data) for name in classes for file, data in sorted(found[split][name])]
            for split in SPLITS}


def open_tar(path: Path) -> tarfile.TarFile:
    """A tar archive, gzip-compressed or not, opened for reading; a file that is none is one DataError."""
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{path}: not a readable tar archive ({error}); fetch it again") from None


def write_archive(images: Images, path: Path) -> None:
    """Pack images as `<split>/<class>/<image>` members of a .tar.gz whose bytes depend on the images
    alone (fixed order, times and owners): the same folder always gives the same file."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for split in SPLITS:
            for name, file, data in images[split]:
                member = tarfile.TarInfo(f"{split}/{name}/{file}")
                member.size, member.mode = len(data), 0o644
                archive.addfile(member, io.BytesIO(data))


def verify_images(images: Images, spec: dict, origin: Path) -> dict:
    """Check counts per class, image sizes and the manifest hash; return the facts.

    `origin`, where the images came from, names the culprit in error messages.
    """
    classes = spec["classes"]
    lines, counts = [], {}
    for split in SPLITS:
        expected, per_class = spec[f"{split}_per_class"], Counter(name for name, _, _ in images[split])
        for name in classes:
            if per_class[name] != expected:
                raise DataError(f"{origin}: {split}/{name} holds {per_class[name]} images, expected {expected}")
        with progress(len(images[split]), f"verify {split}", unit="img") as bar:
            for name, file, data in images[split]:
                relative = f"{split}/{name}/{file}"
                check_image_header(data, f"{origin}: {relative}")
                lines.append(f"{relative} {hashlib.sha256(data).hexdigest()}\n")
                bar.update()
        counts[split] = len(images[split])
    found = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    if spec.get("manifest_sha256") and found != spec["manifest_sha256"]:
        raise DataError(
            f"{origin}: image manifest SHA-256 is {found}, expected {spec['manifest_sha256']} "
            "(images differ from the reference copy; replace the folder or tarball)"
        )
    return {"manifest_sha256": found, "images": counts}


def check_image_header(data: bytes, name: str) -> None:
    """Open the image header (cheap, no decoding): readable, 32x32, RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size, mode = image.size, image.mode
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{name} is not a readable image ({error}); replace it") from None
    if size != IMAGE_SIZE or mode != "RGB":
        raise DataError(f"{name} is {size[0]}x{size[1]} {mode}, expected 32x32 RGB; replace it")


def decode_images(files: list[tuple[str, str, bytes]], classes: list[str], origin: Path,
                  split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode a split's images into (N, 32, 32, 3) uint8 images and int64 labels, in their order."""
    images = np.empty((len(files), *IMAGE_SIZE, 3), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    with progress(len(files), f"decode {split}", unit="img") as bar:
        for i, (name, file, data) in enumerate(files):
            where = f"{origin}: {split}/{name}/{file}"
            try:
                with Image.open(io.BytesIO(data)) as image:
                    pixels = np.asarray(image)
            except (UnidentifiedImageError, OSError) as error:
                raise DataError(f"{where}: unreadable image ({error}); run the download stage again") from None
            if pixels.shape != (*IMAGE_SIZE, 3):
                raise DataError(f"{where}: image of shape {pixels.shape}, expected (32, 32, 3); replace it")
            images[i], labels[i] = pixels, classes.index(name)
            bar.update()
    return images, labels


def read_batches(batches_dir: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate pickled batches into (N, 32, 32, 3) uint8 images and int64 labels."""
    images, labels = [], []
    for name in names:
        path = batches_dir / name
        try:
            with open(path, "rb") as stream:
                # The tarball's MD5 was checked by the download stage before extraction.
                batch = pickle.load(stream, encoding="bytes")
            data, batch_labels = batch[b"data"], batch[b"labels"]
        except FileNotFoundError:
            raise DataError(f"{path}: missing; run the download stage again") from None
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
            raise DataError(f"{path}: not a CIFAR-10 batch ({error!r}); run the download stage again") from None
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != len(data):
            raise DataError(f"{path}: data of shape {data.shape} with {len(batch_labels)} labels, expected N x 3072")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)
