"""Shared fixtures: tiny but real-format datasets made on the fly, and the real mirror.

The tiny datasets use the genuine file formats (gzipped IDX, CIFAR JPEG folders and
pickled batches) so the code under test runs exactly as on the real files.
"""

import copy
import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import yaml
from filelock import FileLock
from PIL import Image

from src.data.files import array_digest, file_digest
from src.data.idx import write_idx
from src.data.load import load_prepared
from src.paths import copy_repo

pytest_plugins = ["faults.reliability"]  # the fault suite's records and reports/reliability.md

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
CIFAR_CLASSES = PARAMS["download"]["cifar10"]["classes"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1


# The fixtures that read the real datasets (the mirror): a test that asks for one, directly or
# through another fixture, is marked slow, so `make test-fast` (-m "not slow") needs no mirror
# and stays quick. CI runs everything.
REAL_DATA = {"fashion_npz", "cifar_npz", "pipeline"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if REAL_DATA & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_mirror() -> Path | None:
    """The offline mirror: $CH11_DATA_MIRROR, else ../shared/mirror beside the checkout."""
    candidate = Path(os.environ.get("CH11_DATA_MIRROR") or REPO.parent / "shared" / "mirror")
    return candidate if candidate.is_dir() else None


def unavailable(message: str) -> NoReturn:
    """A test's system package or right is missing: skip, or fail under CI, which must run every test."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_mirror() -> Path:
    """The mirror, or skip (fail under CI, which must always run the real-data tests)."""
    mirror = find_mirror()
    if mirror is None:
        if os.environ.get("CI"):
            pytest.fail("CI must see the data mirror: set CH11_DATA_MIRROR (see .ci/run)")
        pytest.skip("no data mirror here: set CH11_DATA_MIRROR to run the real-data tests")
    return mirror


# -- Fashion-MNIST: 20 training and 10 test images ----------------------------------------------

def fashion_arrays(n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10,
    }


@pytest.fixture
def fashion_mirror(tmp_path) -> tuple[Path, dict]:
    """(mirror dir, download spec) with gzipped IDX files under mirror/fashion-mnist/."""
    mirror = tmp_path / "mirror"
    folder = mirror / "fashion-mnist"
    folder.mkdir(parents=True)
    hashes = {}
    for name, array in fashion_arrays().items():
        write_idx(folder / name, array)
        raw = (folder / name).read_bytes()
        hashes[name] = sha256(raw)
        (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        (folder / name).unlink()
    spec = copy.deepcopy(PARAMS["download"]["fashion_mnist"])
    spec.update(urls=[], system_dirs=[], files=hashes)
    return mirror, spec


# -- CIFAR-10: 3 training and 1 test image per class -----------------------------------------------

def class_color(index: int) -> tuple[int, int, int]:
    """A flat colour per class, so tests can tell a label from its pixels after JPEG."""
    return (index * 25, 255 - index * 25, 128)


def jpeg(color, size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_image_folder(root: Path) -> str:
    """Write {train,test}/<class>/NNNN.jpg under root; return the manifest SHA-256."""
    lines = []
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for index, name in enumerate(CIFAR_CLASSES):
            (root / split / name).mkdir(parents=True)
            for number in range(per_class):
                data = jpeg(class_color(index))
                (root / split / name / f"{number:04d}.jpg").write_bytes(data)
                lines.append(f"{split}/{name}/{number:04d}.jpg {sha256(data)}\n")
    return sha256("".join(sorted(lines)).encode())


def cifar_spec(**image_folder) -> dict:
    spec = copy.deepcopy(PARAMS["download"]["cifar10"])
    spec["python_tarball"]["urls"] = []
    spec["system_dirs"] = []
    spec["image_folder"].update(train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS, **image_folder)
    return spec


@pytest.fixture
def cifar_folder_mirror(tmp_path) -> tuple[Path, dict]:
    """(mirror dir, spec) with the image folder as a directory mirror/cifar-10-images/."""
    mirror = tmp_path / "mirror"
    manifest = make_image_folder(mirror / "cifar-10-images")
    return mirror, cifar_spec(manifest_sha256=manifest)


@pytest.fixture
def cifar_archive_mirror(tmp_path) -> tuple[Path, dict]:
    """(mirror dir, spec) with the image folder packed as mirror/cifar-10-images.tar.gz."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    folder = tmp_path / "folder"
    manifest = make_image_folder(folder)
    with tarfile.open(mirror / "cifar-10-images.tar.gz", "w:gz") as archive:
        for split in ("train", "test"):
            archive.add(folder / split, arcname=split)
    return mirror, cifar_spec(manifest_sha256=manifest)


def cifar_batch(n: int, first_label: int) -> dict:
    rng = np.random.default_rng(first_label)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [(first_label + i) % 10 for i in range(n)]}


@pytest.fixture
def cifar_tarball_mirror(tmp_path) -> tuple[Path, dict, dict]:
    """(mirror, spec, batches) with a canonical-layout cifar-10-python.tar.gz of 4-image batches."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    batches = {f"data_batch_{i}": cifar_batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(4, 7)
    batches["batches.meta"] = {b"label_names": [c.encode() for c in CIFAR_CLASSES]}
    path = mirror / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, content in batches.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    spec = cifar_spec()
    spec["python_tarball"]["md5"] = hashlib.md5(path.read_bytes()).hexdigest()
    return mirror, spec, batches


# -- real Fashion-MNIST, prepared once per session from the mirror --------------------------------

@pytest.fixture(scope="session")
def fashion_npz(tmp_path_factory) -> Path:
    """data/prepared/fashion_mnist.npz built by the real download and prepare code from the mirror."""
    from src.data.download import download
    from src.data.prepare import prepare

    mirror = require_mirror()
    root = tmp_path_factory.mktemp("fashion")
    download("fashion_mnist", PARAMS["download"]["fashion_mnist"], root / "raw", mirror)
    prepare("fashion_mnist", root / "raw", root / "fashion_mnist.npz", PARAMS["prepare"]["fashion_mnist"])
    return root / "fashion_mnist.npz"


# -- the first images of each split of a prepared dataset, for shrunk whole sweeps -----------------

SUBSET = {"train": 2000, "valid": 500, "test": 1000}


def write_subset(npz: Path, out: Path, sizes: dict[str, int] = SUBSET) -> Path:
    """The first sizes[split] images of each split of a prepared dataset, written as a prepared file
    of its own (npz + json with its hashes recomputed; the rest of the json is the full file's), so
    load_prepared verifies and serves it like any other."""
    full = load_prepared(npz)
    arrays = {f"{kind}_{split}": full.arrays[f"{kind}_{split}"][:size]
              for split, size in sizes.items() for kind in "xy"}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    meta = {**full.meta, "npz_sha256": file_digest(out),
            "array_sha256": {key: array_digest(value) for key, value in arrays.items()}}
    out.with_suffix(".json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="session")
def prepared_subset(tmp_path_factory):
    """npz -> write_subset(npz), made once per session (and xdist worker) for each dataset."""
    made = {}

    def subset(npz: Path) -> Path:
        if npz not in made:
            made[npz] = write_subset(npz, tmp_path_factory.mktemp("subset") / npz.name)
        return made[npz]
    return subset


# -- a working copy of the repository, for DVC end to end: src.paths.copy_repo, imported above -----

def dvc_env(**extra: str) -> dict[str, str]:
    """The environment `make run` gives DVC: the mirror, no analytics, this venv's `python` first."""
    return {**os.environ, "CH11_DATA_MIRROR": str(require_mirror()), "DVC_NO_ANALYTICS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def dvc(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    # One DVC command at a time per repository copy: the session's `pipeline` copy is shared by
    # both xdist workers, and DVC refuses a second command while another holds the repo's lock.
    with FileLock(cwd.parent / f".{cwd.name}.dvc-turn.lock"):
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=900)


DATA_STAGES = ("download@fashion_mnist", "download@cifar10", "prepare@fashion_mnist", "prepare@cifar10")
# Outputs hard-linked to the cache, not copied (the data stages' outputs are about 300 MB), and
# test_pipeline.py checks its Fashion-MNIST data out of this session cache instead of preparing it.
# Only in the tests' repositories, whose data nothing edits in place: writing into a linked output
# writes into the cache too (root ignores DVC's read-only protection), which the shipped copy mode
# survives (tests/faults/test_dvc_kill.py truncates an output and expects it restored).
LINKED_CACHE = ("config", "--local", "cache.type", "hardlink")


def session_folder(tmp_path_factory) -> Path:
    """The temporary folder every xdist worker of this test session shares (pytest-N/; a worker's
    own is pytest-N/popen-gwN/)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A copy of the repository where `dvc repro` of the data stages has run once, from the mirror.

    Once per session, not once per xdist worker: session fixtures are per worker, and this one is
    about 100 s of DVC on 2 cores (CI built it twice). The first worker to ask builds it under a file
    lock in the folder the workers share; the other waits for it and reuses it. The tests only read
    it, and their DVC commands in it take turns (dvc() above).
    """
    env = dvc_env()
    shared = session_folder(tmp_path_factory)
    record = shared / "pipeline.json"
    with FileLock(shared / "pipeline.lock"):
        if not record.exists():  # a failed build is recorded too: the other worker fails the same way
            work = copy_repo(shared / "pipeline" / "repo")
            dvc(*LINKED_CACHE, cwd=work, env=env)
            first = dvc("repro", *DATA_STAGES, cwd=work, env=env)
            record.write_text(json.dumps({"work": str(work), "returncode": first.returncode, "stdout": first.stdout,
                                          "stderr": first.stderr}))
        built = json.loads(record.read_text())
    assert built["returncode"] == 0, built["stdout"] + built["stderr"]
    return Path(built["work"]), env, built["stdout"]


@pytest.fixture(scope="session")
def cifar_npz(pipeline) -> Path:
    """data/prepared/cifar10.npz made by the real data stages from the mirror."""
    return pipeline[0] / "data" / "prepared" / "cifar10.npz"


# -- the training command on shrunk real data, into a temporary MLflow store -----------------------

@pytest.fixture
def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def shrunk(fashion_npz: Path, store: str, tmp_path: Path, train_size: int = 500) -> list[str]:
    return [f"data.path={fashion_npz}", f"data.train_size={train_size}", "epochs=2", "name=test",
            f"tracking.uri={store}", f"state_dir={tmp_path / 'state'}"]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def runs(store: str, name: str = "test") -> list:
    """The runs of experiment `name` in a store, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"]) if experiment else []


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def quiet_env() -> dict[str, str]:
    """The environment the training command runs in: quiet TensorFlow, no inherited store or Hydra setting."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_TRACKING_URI": "", "HYDRA_FULL_ERROR": ""}


@pytest.fixture
def cli_env():
    return quiet_env()


def parent_and_children(store: str, name: str = "test") -> tuple[list, list]:
    """A store's runs of experiment `name`: (sweep parents, child runs)."""
    found = runs(store, name)
    return ([run for run in found if "mlflow.parentRunId" not in run.data.tags],
            [run for run in found if "mlflow.parentRunId" in run.data.tags])
