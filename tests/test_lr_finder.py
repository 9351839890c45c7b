"""The learning-rate finder (python -m src.lr_finder): the book's method on real images, its MLflow
run, and its one-line refusals."""

import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, history, quiet_env, runs
from mlflow.tracking import MlflowClient

from src.lr_finder import EXPERIMENT, Curve, smooth


def run_finder(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.lr_finder", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_smoothed_curve_keeps_its_bottom_where_it_is_and_the_divergence_comes_after_it():
    rates = list(np.geomspace(1e-4, 10, 201))
    losses = [2.3 - math.exp(-((math.log10(r) + 1) ** 2)) + (4.0 if r > 2 else 0.0) for r in rates]  # bottom at 0.1
    curve = Curve(rates, losses, smooth(losses))
    assert curve.suggestion() == pytest.approx(0.1, rel=0.02)  # a centred mean: no lag to higher rates
    # the jump at rate 2 shows in the centred mean half a window (5 steps, x1.33) before it
    assert 1.45 < curve.divergence() < 2.2 and curve.suggestion() < curve.divergence()
    flat = Curve(rates[:50], [2.0] * 50, smooth([2.0] * 50))
    assert flat.divergence() is None


@pytest.mark.parametrize(("args", "message"), [
    (("--min-rate", "1", "--max-rate", "0.1"), "--min-rate 1.0, --max-rate 0.1, --epochs 1: need 0 < min < max"),
    (("experiment=mobilenet_v2_cifar10",), "model=mobilenet_v2: the finder trains the MLP family; use model=mlp"),
    (("model.depht=3",), "Could not override 'model.depht'")])
def test_bad_settings_are_one_line_and_exit_2(args, message):
    result = run_finder(*args, env=quiet_env())
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_on_real_images_the_suggested_rate_lies_below_the_divergence_and_the_run_holds_the_curve(
        fashion_npz, prepared_subset, tmp_path):
    """SGD on 2,000 real Fashion-MNIST images, the rate grown from 1e-4 to 10 over one epoch."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_finder(f"data.path={prepared_subset(fashion_npz)}", "optimizer=sgd", f"tracking.uri={store}",
                        f"tracking.artifact_location={tmp_path / 'artifacts'}", "--min-rate", "1e-4",
                        "--max-rate", "10", env=quiet_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs(store, EXPERIMENT)
    found = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["lr_finder.max_rate"] == "10.0"
    assert 1e-3 < found["suggested_learning_rate"] < found["divergence_learning_rate"] <= 10
    assert f"suggested learning rate {found['suggested_learning_rate']:.3g}" in result.stdout
    client = MlflowClient(store)
    rates = [rate for _, rate in history(client, run.info.run_id, "lr_finder_rate")]
    assert rates[0] == pytest.approx(1e-4) and np.allclose(np.diff(np.log(rates)), math.log(rates[1] / rates[0]))
    assert len(rates) <= 63  # 2,000 images in batches of 32; it stops early once the loss has blown up
    logged = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "figures")]
    assert logged == ["figures/lr_vs_loss.png"]
