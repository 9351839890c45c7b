"""The stage commands as DVC runs them: one clear line and exit code 2 on bad input."""

import os
import subprocess
import sys

import yaml
from conftest import PARAMS, REPO


def run_stage(module, *args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=120,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in last


def write_params(path, fashion_spec):
    params = {**PARAMS, "download": {**PARAMS["download"], "fashion_mnist": fashion_spec}}
    path.write_text(yaml.safe_dump(params))
    return path


def test_download_then_prepare_from_the_environment_mirror(fashion_mirror, tmp_path):
    mirror, spec = fashion_mirror
    params = write_params(tmp_path / "params.yaml", spec)
    env = {"CH11_DATA_MIRROR": str(mirror)}
    fetched = run_stage("src.data.download", "fashion_mnist", cwd=tmp_path, env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert f"idx from mirror {mirror / 'fashion-mnist'} -> data/raw/fashion_mnist" in fetched.stdout
    params.write_text(params.read_text().replace("valid_size: 5000", "valid_size: 4"))
    prepared = run_stage("src.data.prepare", "fashion_mnist", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    assert "train 16, valid 4, test 10 -> data/prepared/fashion_mnist.npz" in prepared.stdout


def test_no_source_is_one_line_naming_the_mirror_variable(fashion_mirror, tmp_path):
    _, spec = fashion_mirror
    write_params(tmp_path / "params.yaml", spec)
    result = run_stage("src.data.download", "fashion_mnist", cwd=tmp_path, env={"CH11_DATA_MIRROR": "/no/such/dir"})
    assert_one_line_error(result, "no source gave verified fashion_mnist data",
                          "Mirror setting: $CH11_DATA_MIRROR=/no/such/dir")
    assert not (tmp_path / "data" / "raw" / "fashion_mnist").exists()


def test_missing_params_file_and_unknown_dataset_block(tmp_path):
    assert_one_line_error(run_stage("src.data.prepare", "cifar10", cwd=tmp_path), "params.yaml not found")
    (tmp_path / "params.yaml").write_text("prepare: {fashion_mnist: {}}\n")
    assert_one_line_error(run_stage("src.data.prepare", "cifar10", cwd=tmp_path),
                          "params.yaml has no 'prepare.cifar10' (known here: fashion_mnist)")
    (tmp_path / "params.yaml").write_text("prepare: [unclosed\n")
    assert_one_line_error(run_stage("src.data.prepare", "cifar10", cwd=tmp_path), "params.yaml is not valid YAML")


def test_prepare_before_download_says_what_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    assert_one_line_error(run_stage("src.data.prepare", "cifar10", cwd=tmp_path),
                          "source.json not found: run `dvc repro download@cifar10` first")
