"""DVC stage `prepare@<dataset>`: data/raw/<dataset>/ -> data/prepared/<dataset>.npz + .json.

The .npz holds uint8 images and int64 labels for the train / valid / test splits; the
.json beside it records class names, shapes, per-class counts, the source the raw data
came from, and SHA-256 hashes of the raw inputs and of every array.

    python -m src.data.prepare fashion_mnist      # what dvc.yaml runs
"""

import json
from pathlib import Path

import numpy as np

from src.cli import ArgumentParser, run_main
from src.data import DATASETS, SPLITS, cifar
from src.data.download import SOURCE_RECORD
from src.data.files import array_digest, atomic_files, file_digest
from src.data.idx import read_idx
from src.errors import ConfigError, DataError
from src.params import PARAMS_FILE, block, load_params

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def prepare(dataset: str, raw_dir: Path, out: Path, spec: dict) -> dict:
    """Read raw files, split, and write out (.npz) with its metadata (.json); return the metadata."""
    record = read_source_record(raw_dir, dataset)
    classes = record["classes"]
    if record.get("form") not in READERS:
        raise DataError(
            f"{raw_dir / SOURCE_RECORD}: unknown form {record.get('form')!r}; run `dvc repro -f download@{dataset}`"
        )
    (x_full, y_full), (x_test, y_test), order = READERS[record["form"]](raw_dir, record, spec)
    for labels, split in ((y_full, "train"), (y_test, "test")):
        check_labels(labels, len(classes), raw_dir, split)
    valid_size = check_split(spec, len(x_full))
    if spec["valid_position"] == "first":
        valid, train = slice(0, valid_size), slice(valid_size, None)
    else:
        train, valid = slice(0, len(x_full) - valid_size), slice(len(x_full) - valid_size, None)
    arrays = {
        "x_train": x_full[train], "y_train": y_full[train],
        "x_valid": x_full[valid], "y_valid": y_full[valid],
        "x_test": x_test, "y_test": y_test,
    }
    meta = describe(dataset, arrays, classes, record, order, spec)
    meta_path = out.with_suffix(".json")
    with atomic_files(out, meta_path) as (npz_tmp, meta_tmp):
        with open(npz_tmp, "wb") as stream:
            np.savez(stream, **arrays)
        meta["npz_sha256"] = file_digest(npz_tmp)
        meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_source_record(raw_dir: Path, dataset: str) -> dict:
    path = raw_dir / SOURCE_RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: run `dvc repro download@{dataset}` first") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is corrupt ({error}); run `dvc repro -f download@{dataset}`") from None


def read_fashion_mnist(raw_dir: Path, record: dict, spec: dict):
    splits = []
    for split in ("train", "test"):
        images_file, labels_file = FASHION_FILES[split]
        fix = "run `dvc repro -f download@fashion_mnist`"
        images = read_idx(raw_dir / images_file, (28, 28), fix)
        labels = read_idx(raw_dir / labels_file, (), fix).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(
                f"{raw_dir}: {images_file} holds {len(images)} images but {labels_file} "
                f"{len(labels)} labels; run `dvc repro -f download@fashion_mnist`"
            )
        splits.append((images, labels))
    return splits[0], splits[1], "file order"


def read_cifar10_batches(raw_dir: Path, record: dict, spec: dict):
    batches = raw_dir / cifar.BATCHES_DIR
    train = cifar.read_batches(batches, cifar.TRAIN_BATCHES)
    test = cifar.read_batches(batches, (cifar.TEST_BATCH,))
    return train, test, "file order (data_batch_1..5)"


def read_cifar10_folder(raw_dir: Path, record: dict, spec: dict):
    seed = spec.get("order_seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"params.yaml prepare.cifar10.order_seed must be an integer, found {seed!r}")
    if "archive" not in record:
        raise DataError(f"{raw_dir / SOURCE_RECORD} names no image archive (an older layout); "
                        "run `dvc repro -f download@cifar10`")
    archive = raw_dir / record["archive"]
    if not archive.is_file():
        raise DataError(f"{archive} not found; run `dvc repro -f download@cifar10`")
    found = cifar.images_from_archive(archive, record["classes"])
    splits = []
    for split in cifar.SPLITS:
        images, labels = cifar.decode_images(found[split], record["classes"], archive, split)
        permutation = np.random.default_rng(seed).permutation(len(images))
        splits.append((images[permutation], labels[permutation]))
    return splits[0], splits[1], f"(class, file name) order shuffled with numpy default_rng({seed})"


READERS = {"idx": read_fashion_mnist, "python-tarball": read_cifar10_batches, "image-folder": read_cifar10_folder}


def check_labels(labels: np.ndarray, n_classes: int, raw_dir: Path, split: str) -> None:
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        index = int(np.argmax(bad))
        raise DataError(
            f"{raw_dir}: {split} label #{index} is {int(labels[index])}, expected 0..{n_classes - 1} "
            "(corrupt labels); fetch the data again"
        )


def check_split(spec: dict, n_full: int) -> int:
    size, position = spec.get("valid_size"), spec.get("valid_position")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size < n_full:
        raise ConfigError(f"params.yaml prepare valid_size must be an integer in 1..{n_full - 1}, found {size!r}")
    if position not in ("first", "last"):
        raise ConfigError(f"params.yaml prepare valid_position must be 'first' or 'last', found {position!r}")
    return size


def describe(dataset: str, arrays: dict, classes: list[str], record: dict, order: str, spec: dict) -> dict:
    splits = {}
    for split in SPLITS:
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        splits[split] = {
            "size": len(images),
            "image_shape": list(images.shape[1:]),
            "class_counts": np.bincount(labels, minlength=len(classes)).tolist(),
        }
    return {
        "dataset": dataset,
        "class_names": classes,
        "image_dtype": "uint8",
        "label_dtype": "int64",
        "splits": splits,
        "split": {"valid_size": spec["valid_size"], "valid_position": spec["valid_position"], "order": order},
        "source": {k: v for k, v in record.items() if k != "classes"},
        "array_sha256": {key: array_digest(value) for key, value in arrays.items()},
    }


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m src.data.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameters file (default: params.yaml)")
    parser.add_argument("--raw", type=Path, help="raw data directory (default: data/raw/<dataset>)")
    parser.add_argument("--out", type=Path, help="output .npz (default: data/prepared/<dataset>.npz)")
    args = parser.parse_args(argv)
    spec = block(load_params(args.params), "prepare", args.dataset, source=args.params)
    raw_dir = args.raw or Path("data/raw") / args.dataset
    out = args.out or Path("data/prepared") / f"{args.dataset}.npz"
    meta = prepare(args.dataset, raw_dir, out, spec)
    sizes = ", ".join(f"{split} {meta['splits'][split]['size']:,}" for split in SPLITS)
    print(f"prepare {args.dataset}: {sizes} -> {out}")


if __name__ == "__main__":
    run_main(main)
