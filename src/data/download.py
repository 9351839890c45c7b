"""DVC stage `download@<dataset>`: fetch a dataset, verify it, write data/raw/<dataset>/.

Sources are tried in order, and the first that yields verified data wins:
  1. the mirror directory: $CH11_DATA_MIRROR, else params.yaml `download.mirror`
  2. the canonical URLs
  3. system copies (Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist)
The one used is recorded in data/raw/<dataset>/source.json. A source that is missing,
unreachable or fails its checksum is reported and skipped; if none works, the error lists
every attempt and how to point the stage at a copy.

    python -m src.data.download fashion_mnist      # what dvc.yaml runs
"""

import json
import os
import shutil
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from src.cli import ArgumentParser, run_main
from src.data import DATASETS, cifar
from src.data.files import (
    atomic_dir,
    check_digest,
    digest,
    fetch_url,
    file_digest,
    gunzip_verified,
    progress,
)
from src.errors import ConfigError, DataError
from src.params import PARAMS_FILE, block, load_params

MIRROR_ENV = "CH11_DATA_MIRROR"
SOURCE_RECORD = "source.json"
MIRROR_MARK = "<mirror>"  # stands for the mirror's path in source.json (see recorded())


@dataclass(frozen=True)
class Candidate:
    """One place a dataset may come from; fetch() fills a staging dir and returns facts."""

    kind: str  # mirror | url | system
    location: str
    fetch: Callable[[Path], dict]


def resolve_mirror(download_params: dict) -> tuple[Path | None, str]:
    """The mirror directory and where that setting came from (for error messages)."""
    if os.environ.get(MIRROR_ENV):
        return Path(os.environ[MIRROR_ENV]), f"${MIRROR_ENV}={os.environ[MIRROR_ENV]}"
    configured = download_params.get("mirror")
    if configured:
        return Path(configured), f"params.yaml download.mirror={configured}"
    return None, f"no mirror set (${MIRROR_ENV} and params.yaml download.mirror are empty)"


def download(dataset: str, spec: dict, out: Path, mirror: Path | None, timeout_s: float = 30,
             mirror_setting: str = "") -> dict:
    """Fetch `dataset` from the first working candidate into `out`; return the source record."""
    missing = [key for key in REQUIRED_KEYS[dataset] if key not in spec]
    if missing:
        raise ConfigError(
            f"params.yaml download.{dataset} lacks {', '.join(missing)}; restore them from the repository's params.yaml"
        )
    failures = []
    for candidate in CANDIDATES[dataset](spec, mirror, timeout_s):
        try:
            with atomic_dir(out) as staging:
                record = {"dataset": dataset, "source": candidate.kind, "location": recorded(candidate, mirror),
                          "classes": spec["classes"], **candidate.fetch(staging)}
                (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            return record
        except DataError as error:
            reason = str(error) if str(error).startswith(candidate.location) else f"{candidate.location}: {error}"
            failures.append(f"{candidate.kind} {reason}")
            print(f"download {dataset}: skipped {failures[-1]}", file=sys.stderr)
    raise DataError(
        f"no source gave verified {dataset} data; tried {len(failures)}: " + " | ".join(failures)
        + f". Mirror setting: {mirror_setting or mirror}. Fix: set {MIRROR_ENV} to a directory holding "
        + MIRROR_LAYOUT[dataset](spec)
    )


def recorded(candidate: Candidate, mirror: Path | None) -> str:
    """Where the data came from, as source.json keeps it: a mirror's path as <mirror>/<subdir>. The
    mirror sits at a different path on each machine, and DVC hashes source.json with the data: the
    path itself would change dvc.lock on every machine that runs the stage (URLs and system
    directories are the same everywhere and stay as they are)."""
    if candidate.kind != "mirror":
        return candidate.location
    inside = Path(candidate.location).relative_to(mirror).as_posix()
    return MIRROR_MARK if inside == "." else f"{MIRROR_MARK}/{inside}"


def candidates(mirror_dir: Path | None, urls: list[str], system_dirs: list[str],
               from_dir: Callable[..., dict], from_url: Callable[..., dict]) -> list[Candidate]:
    """The sources of one dataset, in the order they are tried: mirror, URLs, system copies."""
    found = [Candidate("mirror", str(mirror_dir), partial(from_dir, mirror_dir))] if mirror_dir else []
    found += [Candidate("url", url, partial(from_url, url)) for url in urls]
    found += [Candidate("system", folder, partial(from_dir, Path(folder))) for folder in system_dirs]
    return found


# -- Fashion-MNIST: four gzipped IDX files, verified by the SHA-256 of their content --------------

def fashion_mnist_candidates(spec: dict, mirror: Path | None, timeout_s: float) -> list[Candidate]:
    return candidates(mirror and mirror / spec["mirror_subdir"], spec["urls"], spec["system_dirs"],
                      partial(_idx_from_dir, spec=spec), partial(_idx_from_url, spec=spec, timeout_s=timeout_s))


def _idx_from_dir(folder: Path, staging: Path, *, spec: dict) -> dict:
    if not folder.is_dir():
        raise DataError("no such directory")
    for name, sha256 in spec["files"].items():
        packed, plain = folder / f"{name}.gz", folder / name
        if packed.is_file():
            gunzip_verified(packed, staging / name, sha256)
        elif plain.is_file():
            shutil.copyfile(plain, staging / name)
            check_digest(str(plain), file_digest(staging / name), sha256)
        else:
            raise DataError(f"{packed.name} not found")
    return {"form": "idx", "sha256": dict(spec["files"])}


def _idx_from_url(base: str, staging: Path, *, spec: dict, timeout_s: float) -> dict:
    for name, sha256 in spec["files"].items():
        packed = staging / f"{name}.gz"
        fetch_url(f"{base.rstrip('/')}/{name}.gz", packed, timeout_s)
        gunzip_verified(packed, staging / name, sha256)
        packed.unlink()
    return {"form": "idx", "sha256": dict(spec["files"])}


# -- CIFAR-10: the canonical python tarball (MD5) or an image folder (manifest hash) -------------

def cifar10_candidates(spec: dict, mirror: Path | None, timeout_s: float) -> list[Candidate]:
    return candidates(mirror, spec["python_tarball"]["urls"], spec["system_dirs"],
                      partial(_cifar_from_dir, spec=spec), partial(_cifar_from_url, spec=spec, timeout_s=timeout_s))


def _cifar_from_dir(folder: Path, staging: Path, *, spec: dict) -> dict:
    """The first of: canonical tarball, image-folder tarball, image-folder directory."""
    if not folder.is_dir():
        raise DataError("no such directory")
    tarball = folder / spec["python_tarball"]["file"]
    archive = folder / spec["image_folder"]["archive"]
    directory = folder / spec["image_folder"]["directory"]
    if tarball.is_file():
        return _extract_python_tarball(tarball, spec, staging)
    if archive.is_file():
        images = cifar.images_from_archive(archive, spec["classes"])
        facts = _verified_image_folder(images, spec, archive, archive.name)
        shutil.copyfile(archive, staging / facts["archive"])  # verified: kept as it is
        return facts
    if directory.is_dir():
        images = cifar.images_from_directory(directory, spec["classes"])
        facts = _verified_image_folder(images, spec, directory, directory.name + "/")
        cifar.write_archive(images, staging / facts["archive"])
        return facts
    raise DataError(f"none of {tarball.name}, {archive.name}, {directory.name}/ found")


def _cifar_from_url(url: str, staging: Path, *, spec: dict, timeout_s: float) -> dict:
    tarball = staging / spec["python_tarball"]["file"]
    fetch_url(url, tarball, timeout_s)
    facts = _extract_python_tarball(tarball, spec, staging)
    tarball.unlink()
    return facts


def _verified_image_folder(images: cifar.Images, spec: dict, origin: Path, file: str) -> dict:
    """The facts of verified images, and the archive (named as the mirror's) that keeps them."""
    facts = cifar.verify_images(images, {"classes": spec["classes"], **spec["image_folder"]}, origin)
    return {"form": "image-folder", "file": file, "archive": spec["image_folder"]["archive"], **facts}


def _extract_python_tarball(tarball: Path, spec: dict, staging: Path) -> dict:
    with open(tarball, "rb") as stream, progress(tarball.stat().st_size, f"verify {tarball.name}") as bar:
        md5 = digest(stream, "md5", bar)
    check_digest(str(tarball), md5, spec["python_tarball"]["md5"], "MD5")
    target = staging / cifar.BATCHES_DIR
    target.mkdir()
    with cifar.open_tar(tarball) as archive, progress(len(cifar.BATCH_FILES), f"extract {tarball.name}", "file") as bar:
        for name in cifar.BATCH_FILES:
            member = _tar_member(archive, f"{cifar.BATCHES_DIR}/{name}")
            if member is None:
                raise DataError(f"{tarball}: member {cifar.BATCHES_DIR}/{name} missing; is it the right file?")
            with open(target / name, "wb") as out:
                shutil.copyfileobj(member, out)
            bar.update()
    return {"form": "python-tarball", "file": tarball.name, "md5": md5}


def _tar_member(archive: tarfile.TarFile, name: str):
    try:
        return archive.extractfile(name)
    except KeyError:
        return None
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise DataError(f"{archive.name}: truncated or corrupt archive ({error}); fetch it again") from None


REQUIRED_KEYS = {
    "fashion_mnist": ("mirror_subdir", "urls", "system_dirs", "files", "classes"),
    "cifar10": ("python_tarball", "image_folder", "system_dirs", "classes"),
}
CANDIDATES = {"fashion_mnist": fashion_mnist_candidates, "cifar10": cifar10_candidates}
MIRROR_LAYOUT = {  # what a mirror directory must hold, for the error message
    "fashion_mnist": lambda spec: f"{spec['mirror_subdir']}/<name>.gz for {', '.join(spec['files'])}",
    "cifar10": lambda spec: (
        f"{spec['python_tarball']['file']}, {spec['image_folder']['archive']} "
        f"or {spec['image_folder']['directory']}/{{train,test}}/<class>/*.jpg"
    ),
}


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m src.data.download", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameters file (default: params.yaml)")
    parser.add_argument("--out", type=Path, help="output directory (default: data/raw/<dataset>)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    settings = block(params, "download", source=args.params)
    spec = block(params, "download", args.dataset, source=args.params)
    mirror, mirror_setting = resolve_mirror(settings)
    out = args.out or Path("data/raw") / args.dataset
    record = download(args.dataset, spec, out, mirror, settings.get("timeout_s", 30), mirror_setting)
    where = record["location"].replace(MIRROR_MARK, str(mirror), 1)  # the path on this machine
    print(f"download {args.dataset}: {record['form']} from {record['source']} {where} -> {out}")


if __name__ == "__main__":
    run_main(main)
