"""The speed levers behave: shared data, start-up without TensorFlow, steps_per_execution's
same results, and the benchmarks' report (run for real, one repeat)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO
from test_engine_parts import config

from benchmarks.headline import overrides, shrink
from benchmarks.report import markdown
from benchmarks.startup import heavy_imports
from src.data.shared import prepared_once
from src.errors import DataError
from src.sweep import experiment_jobs


def copy_prepared(npz: Path, folder: Path) -> Path:
    for suffix in (".npz", ".json"):
        shutil.copy(npz.with_suffix(suffix), folder / f"fashion_mnist{suffix}")
    return folder / "fashion_mnist.npz"


def test_prepared_data_is_read_once_per_process_until_the_file_changes(fashion_npz, tmp_path):
    path = copy_prepared(fashion_npz, tmp_path)
    first = prepared_once(path)
    assert prepared_once(path) is first  # the next job of the sweep: no second read or hash
    assert not first.arrays["x_train"].flags.writeable  # shared: no job may change another's data
    with pytest.raises(ValueError):
        first.arrays["x_train"][0, 0, 0] = 1
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the prepare stage re-ran
    assert prepared_once(path) is not first
    path.write_bytes(path.read_bytes()[:1000])  # a truncated file is refused, and not remembered as good
    with pytest.raises(DataError, match="corrupt or truncated"):
        prepared_once(path)


@pytest.mark.parametrize("argument", ["--help", "--cfg=job"])
def test_help_and_cfg_job_answer_without_tensorflow_keras_or_mlflow(argument):
    assert heavy_imports(argument) == ""


def test_steps_per_execution_trains_to_the_same_metrics_as_the_default_loop(fashion_npz, tmp_path):
    from src.data.load import load_prepared, reshape_splits
    from src.engine import fit_and_evaluate
    from src.resume import ResumeState

    results = {}
    for spe in (1, 32):  # Keras's loop against the config's default
        settings = config("experiment=optimizers", "optimizer=adam", "epochs=2", "data.train_size=2000",
                          "deterministic=true", f"steps_per_execution={spe}", f"data.path={fashion_npz}")
        data = reshape_splits(load_prepared(fashion_npz), 2000)
        history = []

        def sink(step, logs, history=history):
            if "loss" in logs:
                history.append(logs)

        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            result = fit_and_evaluate(settings, data, ResumeState(Path(folder)), sink, Path(folder))
        results[spe] = [value for logs in history for value in (logs["loss"], logs["val_accuracy"])]
        results[spe].append(result["test_accuracy"])
    assert results[32] == pytest.approx(results[1], rel=1e-5)  # every epoch: its boundaries stay where they were


@pytest.mark.parametrize(("requested", "steps", "expected"), [(1, 63, 1), (16, 63, 21), (32, 1719, 191), (8, 64, 8),
                                                             (64, 141, 141), (500, 63, 63), (5, 7, 7)])
def test_a_compiled_call_never_spans_two_epochs(requested, steps, expected):
    from src.fitting import steps_per_call

    assert steps_per_call(requested, steps) == expected and steps % expected == 0


def test_the_startup_benchmark_measures_both_sides_and_the_report_shows_them(fashion_npz, tmp_path):
    out = tmp_path / "startup.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--repeats", "1", "--npz", str(fashion_npz),
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(out.read_text())
    assert measured["imports"] == {"--help": "", "--cfg=job": ""}
    assert all(len(values) == 1 and values[0] > 0 for values in measured["times"].values())
    help_row, first_step = measured["figures"]
    assert help_row["met"] is True and help_row["median"] < 1  # --help beats importing TensorFlow alone
    assert first_step["median"] > 0 and "s vs" in first_step["detail"]
    about = {"date": "today", "cpu": "cpu", "cores": 2, "memory_gib": 24, "avx512": True, "amx_bf16": True,
             "python": "3.11", "platform": "linux"}
    page = markdown({"startup": {**measured, "wall_s": 10.0, "arguments": ["--repeats", "1"], "date": "today"}}, about,
                    quick=True)
    assert "| `startup` | command to first training step" in page
    assert "| `startup` | `--repeats 1` | 10 s | today, cpu (AVX-512 yes, AMX-BF16 yes) |" in page  # date and machine


def test_every_benchmark_imports_against_the_code_it_measures():
    """A benchmark runs only under `make bench`: a name it imports that the code no longer has
    must fail here, not on the day the benchmarks are re-run."""
    modules = sorted(f"benchmarks.{path.stem}" for path in (REPO / "benchmarks").glob("[!_]*.py"))
    importing = f"import importlib; [importlib.import_module(m) for m in {modules}]"
    result = subprocess.run([sys.executable, "-c", importing], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_headline_knows_each_experiments_jobs_before_either_side_runs():
    """The headline's notebook side can go first only if it expands the sweep as Hydra's sweeper
    does: the experiment's own sweep (variants x seeds), narrowed by --seeds, in the sweeper's order."""
    narrowed = experiment_jobs("seed_notebook", shrink("seed_notebook", 20000, "43,44"))
    assert narrowed == [{"+variant/seed_notebook": variant, "seed": seed}
                        for variant in ("model1", "model2", "model2_fast_bn") for seed in ("43", "44")]
    assert len(experiment_jobs("seed_notebook", shrink("seed_notebook", 0, "all"))) == 60
    init = experiment_jobs("init_activation", shrink("init_activation", 20000, "42"))
    assert len(init) == 24 and len({tuple(sorted(job.items())) for job in init}) == 24
    # the repro way's experiment files fix a single seed, so its jobs.json leaves "seed" out: the same jobs
    extras = {"seed_notebook": ["data.train_size=20000", "seed=42"]}
    assert (overrides({"seed_notebook": [{"+variant/seed_notebook": "model1"}]}, extras)
            == overrides({"seed_notebook": [{"+variant/seed_notebook": "model1", "seed": "42"}]}, extras))
