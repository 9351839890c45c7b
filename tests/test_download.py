"""The download stage: source order, verification, and refusals of bad input."""

import functools
import gzip
import http.server
import io
import json
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import pytest
from conftest import jpeg, sha256

from src.data import cifar
from src.data.download import download
from src.errors import ConfigError, DataError


def listing(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/files"


# -- Fashion-MNIST -------------------------------------------------------------------------------

def test_fashion_from_mirror_is_decompressed_verified_and_recorded(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    out = tmp_path / "raw"
    record = download("fashion_mnist", spec, out, mirror)
    assert record["source"] == "mirror" and record["location"] == "<mirror>/fashion-mnist"  # same on every machine
    assert record["form"] == "idx" and record["sha256"] == spec["files"]
    for name, expected in spec["files"].items():
        assert sha256((out / name).read_bytes()) == expected
    assert json.loads((out / "source.json").read_text()) == record
    assert listing(tmp_path).count("raw") == 1 and not list(tmp_path.glob(".raw.*"))


def test_fashion_falls_through_to_the_system_copy(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    spec["system_dirs"] = [str(tmp_path / "absent"), str(mirror / "fashion-mnist")]
    record = download("fashion_mnist", spec, tmp_path / "raw", mirror=None)
    assert record["source"] == "system" and record["location"] == str(mirror / "fashion-mnist")


def test_fashion_from_url_served_over_http(fashion_mirror, http_server, tmp_path):
    mirror, spec = fashion_mirror
    www, base = http_server
    for path in (mirror / "fashion-mnist").iterdir():
        (www / path.name).write_bytes(path.read_bytes())
    spec["urls"] = [closed_port_url(), base]
    record = download("fashion_mnist", spec, tmp_path / "raw", mirror=tmp_path / "no-mirror", timeout_s=5)
    assert (record["source"], record["location"]) == ("url", base)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted([*spec["files"], "source.json"])


def test_no_source_reachable_lists_every_attempt_and_the_mirror_setting(fashion_mirror, tmp_path):
    _, spec = fashion_mirror
    spec["urls"] = [closed_port_url()]
    spec["system_dirs"] = [str(tmp_path / "system")]
    out = tmp_path / "raw"
    with pytest.raises(DataError) as caught:
        download("fashion_mnist", spec, out, tmp_path / "nowhere", timeout_s=5, mirror_setting="$CH11_DATA_MIRROR=/x")
    message = str(caught.value)
    assert "\n" not in message
    assert "tried 3" in message
    assert f"mirror {tmp_path / 'nowhere' / 'fashion-mnist'}: no such directory" in message
    assert "unreachable" in message and "system " + str(tmp_path / "system") in message
    assert "Mirror setting: $CH11_DATA_MIRROR=/x" in message and "Fix: set CH11_DATA_MIRROR" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror"]


def test_checksum_mismatch_names_file_expected_and_found(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    bad = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    (mirror / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(bad)
    expected = spec["files"]["t10k-labels-idx1-ubyte"]
    with pytest.raises(DataError) as caught:
        download("fashion_mnist", spec, tmp_path / "raw", mirror)
    message = str(caught.value)
    assert "t10k-labels-idx1-ubyte.gz: SHA-256 of the decompressed content is" in message
    assert f"is {sha256(gzip.decompress(bad))}, expected {expected}" in message
    assert not (tmp_path / "raw").exists()


def test_truncated_gzip_is_refused(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    path = mirror / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated gzip \(the file ends early\)"):
        download("fashion_mnist", spec, tmp_path / "raw", mirror)


def test_a_failed_refetch_keeps_the_previous_good_output(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    out = tmp_path / "raw"
    download("fashion_mnist", spec, out, mirror)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (mirror / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz not found"):
        download("fashion_mnist", spec, out, mirror)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "raw"]


# -- CIFAR-10 ------------------------------------------------------------------------------------

def test_cifar_image_archive_is_verified_and_kept_as_it_is(cifar_archive_mirror, tmp_path):
    """One file, not 60,000: DVC hashes, caches, pushes and pulls the archive, not its images."""
    mirror, spec = cifar_archive_mirror
    out = tmp_path / "raw"
    record = download("cifar10", spec, out, mirror)
    assert record["form"] == "image-folder" and record["file"] == record["archive"] == "cifar-10-images.tar.gz"
    assert record["manifest_sha256"] == spec["image_folder"]["manifest_sha256"]
    assert record["images"] == {"train": 30, "test": 10}
    assert sorted(p.name for p in out.iterdir()) == ["cifar-10-images.tar.gz", "source.json"]
    assert (out / "cifar-10-images.tar.gz").read_bytes() == (mirror / "cifar-10-images.tar.gz").read_bytes()


def test_cifar_image_directory_is_packed_into_the_same_images_and_manifest(cifar_folder_mirror, tmp_path):
    mirror, spec = cifar_folder_mirror
    record = download("cifar10", spec, tmp_path / "raw", mirror)
    assert record["file"] == "cifar-10-images/" and record["archive"] == "cifar-10-images.tar.gz"
    assert record["manifest_sha256"] == spec["image_folder"]["manifest_sha256"]
    packed = tmp_path / "raw" / record["archive"]
    assert cifar.images_from_archive(packed, spec["classes"]) == cifar.images_from_directory(
        mirror / "cifar-10-images", spec["classes"])
    download("cifar10", spec, tmp_path / "again", mirror)  # same images, same bytes: DVC sees no change
    assert (tmp_path / "again" / record["archive"]).read_bytes() == packed.read_bytes()


def test_cifar_canonical_tarball_is_checked_by_md5_and_extracted(cifar_tarball_mirror, tmp_path):
    mirror, spec, batches = cifar_tarball_mirror
    record = download("cifar10", spec, tmp_path / "raw", mirror)
    assert record["form"] == "python-tarball" and record["md5"] == spec["python_tarball"]["md5"]
    assert sorted(p.name for p in (tmp_path / "raw" / "cifar-10-batches-py").iterdir()) == sorted(batches)


def test_cifar_tarball_md5_mismatch_is_refused(cifar_tarball_mirror, tmp_path):
    mirror, spec, _ = cifar_tarball_mirror
    spec["python_tarball"]["md5"] = "0" * 32
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: MD5 is [0-9a-f]{32}, expected 0{32}"):
        download("cifar10", spec, tmp_path / "raw", mirror)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: shutil.rmtree(root / "train" / "frog"),
         r"class folder train/frog missing \(1 of 10 absent"),
        (lambda root: (root / "test" / "cat" / "0000.jpg").unlink(), r"test/cat holds 0 images, expected 1"),
        (lambda root: (root / "train" / "dog" / "0001.jpg").write_bytes(jpeg((1, 2, 3), size=(33, 32))),
         r"train/dog/0001.jpg is 33x32 RGB, expected 32x32 RGB"),
        (lambda root: (root / "train" / "dog" / "0001.jpg").write_bytes(jpeg((9, 9, 9), mode="L")),
         r"train/dog/0001.jpg is 32x32 L, expected 32x32 RGB"),
        (lambda root: (root / "train" / "ship" / "0002.jpg").write_bytes(b"not a jpeg"),
         r"train/ship/0002.jpg is not a readable image"),
        (lambda root: (root / "train" / "ship" / "0002.jpg").write_bytes(jpeg((7, 7, 7))),
         r"image manifest SHA-256 is [0-9a-f]{64}, expected"),
        (lambda root: (root / "train" / "unicorn").mkdir(), r"unexpected folder train/unicorn"),
    ],
    ids=["class-missing", "count", "size", "mode", "unreadable", "manifest", "extra-class"],
)
def test_bad_image_folder_is_refused(cifar_folder_mirror, tmp_path, damage, message):
    mirror, spec = cifar_folder_mirror
    damage(mirror / "cifar-10-images")
    with pytest.raises(DataError, match=message):
        download("cifar10", spec, tmp_path / "raw", mirror)
    assert not (tmp_path / "raw").exists()


def test_truncated_image_archive_is_refused(cifar_archive_mirror, tmp_path):
    mirror, spec = cifar_archive_mirror
    archive = mirror / "cifar-10-images.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-2000])
    with pytest.raises(DataError, match="cifar-10-images.tar.gz: truncated or corrupt archive"):
        download("cifar10", spec, tmp_path / "raw", mirror)


def test_an_image_archive_that_is_no_tar_is_refused(cifar_archive_mirror, tmp_path):
    mirror, spec = cifar_archive_mirror
    (mirror / "cifar-10-images.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="cifar-10-images.tar.gz: not a readable tar archive"):
        download("cifar10", spec, tmp_path / "raw", mirror)
    assert not (tmp_path / "raw").exists()


def test_hostile_archive_members_never_leave_the_output(cifar_archive_mirror, tmp_path):
    mirror, spec = cifar_archive_mirror
    archive = mirror / "cifar-10-images.tar.gz"
    members = io.BytesIO()
    with tarfile.open(archive) as source, tarfile.open(fileobj=members, mode="w:gz") as hostile:
        for member in source:
            hostile.addfile(member, source.extractfile(member) if member.isfile() else None)
        for name in ("../escaped.jpg", "train/../../escaped2.jpg", "/tmp/abs-escape.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            hostile.addfile(info, io.BytesIO(b"bad"))
        link = tarfile.TarInfo("train/cat/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        hostile.addfile(link)
    archive.write_bytes(members.getvalue())
    record = download("cifar10", spec, tmp_path / "out" / "raw", mirror)
    assert record["manifest_sha256"] == spec["image_folder"]["manifest_sha256"]  # the odd members ignored
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["raw"]
    assert sorted(p.name for p in (tmp_path / "out" / "raw").iterdir()) == ["cifar-10-images.tar.gz", "source.json"]
    assert not list(tmp_path.rglob("escaped*")) and not Path("/tmp/abs-escape.jpg").exists()



def test_incomplete_dataset_block_is_a_config_error(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    del spec["files"], spec["urls"]
    with pytest.raises(ConfigError, match=r"download.fashion_mnist lacks urls, files"):
        download("fashion_mnist", spec, tmp_path / "raw", mirror)
