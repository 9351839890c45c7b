"""Scenario 5: inputs that rotted or vanished, met through the commands a user types.

Each must end in one `error:` line that names the file and the fix, exit code 2, no
traceback, and nothing half-done: no MLflow run for data that cannot be read, the
previous prepared dataset untouched when its raw files are missing.
"""

import contextlib
import random
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, cli, runs, shrunk
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture
def npz_copy(fashion_npz, tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir()
    for suffix in (".npz", ".json"):
        shutil.copy(fashion_npz.with_suffix(suffix), folder / f"fashion_mnist{suffix}")
    return folder / "fashion_mnist.npz"


def corruptions(size: int) -> dict[str, callable]:
    """name -> how to damage the bytes of a prepared .npz (a zip of .npy arrays)."""
    rng = random.Random(8)

    def flip(offset: int):
        def damage(data: bytearray):
            data[offset] ^= 1 << rng.randrange(8)
        return damage

    return {
        "truncated to half": lambda data: data.__delitem__(slice(size // 2, None)),
        "truncated by one byte": lambda data: data.__delitem__(slice(size - 1, None)),
        "bit flip in the first array's header": flip(40),
        "bit flip in the image pixels": flip(rng.randrange(size // 10, size // 2)),
        "bit flip in the zip directory": flip(size - 30),
    }


def test_a_truncated_or_bit_flipped_prepared_dataset_is_refused_before_a_run_starts(npz_copy, store, tmp_path,
                                                                                   cli_env, faults):
    good = npz_copy.read_bytes()
    for name, damage in corruptions(len(good)).items():
        data = bytearray(good)
        damage(data)
        npz_copy.write_bytes(bytes(data))
        faults.inject("corrupt .npz", name)
        result = cli(*shrunk(npz_copy, store, tmp_path), f"hydra.run.dir={tmp_path / 'run'}", env=cli_env)
        line = one_error_line(result)
        assert str(npz_copy) in line and "dvc repro prepare@fashion_mnist" in line, (name, line)
    assert runs(store) == []  # nothing was recorded as if it had trained


def unusable_stores(folder) -> dict[str, object]:
    """name -> a file that tracking.uri may point at but that is no MLflow store."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # a real store, to damage
    store = (folder / "mlflow.db").read_bytes()
    stores = {"not SQLite (a CSV file)": b"epoch,loss\n1,0.52\n",
              "SQLite header damaged": store[:16] + bytes(84) + store[100:],
              "first page overwritten": store[:100] + bytes(range(256)) * 15 + store[3940:]}
    paths = {}
    for name, data in stores.items():
        paths[name] = folder / f"{len(paths)}.db"
        paths[name].write_bytes(data)
    paths["another program's SQLite database"] = folder / "other.db"
    with contextlib.closing(sqlite3.connect(paths["another program's SQLite database"])) as other:
        other.execute("CREATE TABLE measurements (sample INTEGER, value REAL)")
        other.execute("INSERT INTO measurements VALUES (1, 0.5)")
        other.commit()
    return paths


def test_a_store_that_is_no_mlflow_database_is_refused_in_one_line_and_left_as_it_was(fashion_npz, tmp_path,
                                                                                       cli_env, faults):
    """tracking.uri at a file that is not SQLite, a damaged SQLite file, or another program's
    SQLite database (which MLflow would fill with its own tables before failing): one line
    naming the store and the fix, exit 2, and the file byte for byte as it was."""
    folder = tmp_path / "stores"
    folder.mkdir()
    for name, path in unusable_stores(folder).items():
        before = path.read_bytes()
        faults.inject("unusable tracking store", name)
        result = cli(*shrunk(fashion_npz, f"sqlite:///{path}", tmp_path), f"hydra.run.dir={tmp_path / 'run'}",
                     env=cli_env)
        line = one_error_line(result)
        assert f"sqlite:///{path}" in line and "tracking.uri" in line, (name, line)
        assert path.read_bytes() == before, f"{name}: the file was changed"


def test_a_missing_raw_file_is_refused_and_the_previous_prepared_dataset_is_kept(fashion_npz, tmp_path, faults):
    raw = tmp_path / "raw"
    shutil.copytree(fashion_npz.parent / "raw", raw)
    out = tmp_path / "prepared" / "fashion_mnist.npz"
    out.parent.mkdir()
    for suffix in (".npz", ".json"):
        shutil.copy(fashion_npz.with_suffix(suffix), out.with_suffix(suffix))
    before = {path.name: path.read_bytes() for path in out.parent.iterdir()}
    for missing in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "source.json"):
        shutil.copytree(fashion_npz.parent / "raw", raw, dirs_exist_ok=True)
        (raw / missing).unlink()
        faults.inject("missing raw file", missing)
        result = subprocess.run([sys.executable, "-m", "src.data.prepare", "fashion_mnist", "--raw", str(raw),
                                 "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
        line = one_error_line(result)
        assert str(raw / missing) in line and "download@fashion_mnist" in line, line
        assert {path.name: path.read_bytes() for path in out.parent.iterdir()} == before


TASK_A = "[1,3,4,5,6,7,8,9]"
TRANSFER = ("data.classes=[0,2]", "model.output=sigmoid", "model.depth=2", f"transfer.source_classes={TASK_A}",
            "transfer.source_epochs=1", "transfer.freeze_epochs=1", "epochs=2", "tracking.log_model=false")


def test_a_deleted_source_model_artifact_names_it_and_its_fix_which_works(fashion_npz, prepared_subset, store,
                                                                         tmp_path, cli_env, faults):
    """Transfer learning loads model A from its MLflow run: with the artifact gone, the job says which run
    and what to do (delete the run); done, the same command trains model A again and succeeds."""
    npz = prepared_subset(fashion_npz)  # model A trains on all its classes' images: 1,600 here, not 44,000
    args = [*shrunk(npz, store, tmp_path, train_size=200), *TRANSFER, f"hydra.run.dir={tmp_path / 'run'}"]
    first = cli(*args, env=cli_env)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(store)
    (source,) = [run for run in runs(store) if "ch11.role" in run.data.tags]
    (model,) = client.search_logged_models([source.info.experiment_id],
                                           filter_string=f"source_run_id = '{source.info.run_id}'")
    artifacts = model.artifact_location.removeprefix("file://")
    shutil.rmtree(artifacts)
    faults.inject("deleted MLflow artifact", "the transfer source model's files")

    again = cli(*args, "force=true", env=cli_env)
    line = one_error_line(again)
    assert source.info.run_id in line and "mlflow runs delete --run-id" in line and "model" in line, line
    assert [run.info.status for run in runs(store)] == ["FINISHED", "FINISHED"]  # model A, B: no new run started

    fix = line.split("(MLFLOW_TRACKING_URI=", 1)[1].split(")", 1)[0]  # the command the line gives
    uri, command = fix.split(" ", 1)
    deleted = subprocess.run(command.split(), env={**cli_env, "MLFLOW_TRACKING_URI": uri}, capture_output=True,
                             text=True, timeout=120)
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    fixed = cli(*args, "force=true", env=cli_env)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    sources = [run for run in runs(store) if "ch11.role" in run.data.tags]
    assert len(sources) == 1 and sources[0].info.run_id != source.info.run_id  # model A trained again
