"""File plumbing for the data stages: hashing, fetching, decompressing, atomic outputs.

Every output is built under a temporary name next to its final place and renamed into
place only when complete, so an interrupted or failed stage never leaves a half-written
file that a later run could mistake for a good one.
"""

import contextlib
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from src.errors import DataError

CHUNK = 1 << 20


def progress(total: int | None, desc: str, unit: str = "B") -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal (disable=None)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=None, leave=False)


def digest(stream: BinaryIO, algorithm: str = "sha256", bar: tqdm | None = None) -> str:
    """Hex digest of everything left in a binary stream."""
    hasher = hashlib.new(algorithm)
    while chunk := stream.read(CHUNK):
        hasher.update(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return hasher.hexdigest()


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as stream:
        return digest(stream, algorithm)


def array_digest(array) -> str:
    """SHA-256 of a numpy array's bytes: the content hash the prepared metadata records."""
    return hashlib.sha256(array.tobytes()).hexdigest()


def check_digest(name: str, found: str, expected: str, algorithm: str = "SHA-256") -> None:
    """Raise a DataError naming the file and both digests when they differ."""
    if found != expected:
        raise DataError(
            f"{name}: {algorithm} is {found}, expected {expected} "
            "(corrupt or different file; replace it with a good copy)"
        )


def gunzip_verified(source: Path, target: Path, expected_sha256: str) -> str:
    """Decompress source into target, checking the SHA-256 of the decompressed bytes."""
    hasher = hashlib.sha256()
    try:
        with gzip.open(source, "rb") as packed, open(target, "wb") as out, progress(
            source.stat().st_size, f"extract {source.name}"
        ) as bar:
            while chunk := packed.read(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                bar.n = packed.fileobj.tell()  # compressed bytes read: matches the total
                bar.refresh()
    except EOFError:
        raise DataError(f"{source}: truncated gzip (the file ends early); fetch it again") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{source}: not a valid gzip file ({error}); fetch it again") from None
    check_digest(source.name, hasher.hexdigest(), expected_sha256, "SHA-256 of the decompressed content")
    return hasher.hexdigest()


def fetch_url(url: str, target: Path, timeout_s: float) -> None:
    """Download url to target with a progress bar; any network failure is a DataError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(target, "wb") as out:
            size = response.headers.get("Content-Length")
            with progress(int(size) if size else None, f"download {Path(url).name}") as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DataError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"{url}: unreachable ({reason})") from None


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory that replaces `final` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, retired / final.name)
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_files(*finals: Path) -> Iterator[list[Path]]:
    """Yield temporary paths for `finals`; all are renamed into place only on success."""
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
    temps = [final.with_name(f".partial-{os.getpid()}-{final.name}") for final in finals]
    try:
        yield temps
        for temp, final in zip(temps, finals):
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
