"""Scenario 5: inputs that rotted or vanished, met through the commands a user types.

Each must end in one `error:` line that names the file and the fix, exit code 2, no
traceback, and nothing half-done: no MLflow run for data that cannot be read, the
previous prepared dataset untouched when its raw files are missing.
"""

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
