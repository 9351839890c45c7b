"""The report stage on made-up summaries: statistics, verdicts, files, and a failed report
leaving the previous one whole."""

import json

import pytest
import yaml

from conftest import REPO
from src.report import build
from src.report.stats import Spread, arm_metric, paired_difference, verdict


def run(seed: int, val: float, test: float | None = None, diverged: bool = False, epochs: int = 3) -> dict:
    curve = [val - 0.02 * (epochs - 1 - epoch) for epoch in range(epochs)]
    return {"run_id": f"r{seed}{val}", "parent_run_id": "p", "seed": seed, "params": {}, "duration_s": 10.0,
            "epochs_run": epochs, "diverged": diverged, "val_accuracy": None if diverged else val,
            "test_accuracy": test if test is not None else val - 0.01, "best_val_accuracy": val,
            "curves": {"val_accuracy": curve, "learning_rate": [0.01 / (epoch + 1) for epoch in range(epochs)]}}


def summary(name: str, arms: dict) -> dict:
    return {"experiment": name, "parent_run_ids": ["p"], "arms": arms}


def test_verdicts_say_within_tolerance_within_the_seed_spread_or_differs():
    assert verdict(Spread(0.870, 0.002, 3), 0.8650, 0.015) == "within 1.5 pts"
    assert verdict(Spread(0.643, 0.107, 3), 0.7054, 0.015).startswith("outside 1.5 pts, but within the seed spread")
    assert verdict(Spread(0.800, 0.002, 3), 0.8650, 0.015).startswith("differs by -6.5 pts")


def test_diverged_runs_do_not_count_in_the_mean():
    stats = arm_metric([run(42, 0.8), run(43, 0.9), run(44, 0.1, diverged=True)], "val_accuracy")
    assert (stats.n, round(stats.mean, 4)) == (2, 0.85)


def test_the_paired_difference_pairs_runs_by_seed():
    scratch = [run(seed, 0.80, test=0.80 + 0.001 * seed) for seed in range(10)]
    reuse = [run(seed, 0.90, test=0.81 + 0.001 * seed + (0.002 if seed % 2 else -0.002)) for seed in range(10)]
    gap, t, p = paired_difference(scratch, reuse, "test_accuracy")
    assert gap.n == 10 and gap.mean == pytest.approx(0.01) and t > 10 and p < 1e-6


@pytest.fixture
def runs_dir(tmp_path):
    made = {
        "optimizers": summary("optimizers", {"adam": [run(42, 0.88), run(43, 0.884)],
                                             "sgd": [run(42, 0.83), run(43, 0.84)]}),
        "transfer_ab": summary("transfer_ab", {"scratch": [run(s, 0.9, test=0.90) for s in range(3)],
                                               "reuse": [run(s, 0.9, test=0.91 + 0.001 * s) for s in range(3)]}),
    }
    for name, content in made.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "summary.json").write_text(json.dumps(content))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"experiments": {"datasets": {name: "fashion_mnist"
                                                                                       for name in made}}}))
    (tmp_path / "reports").mkdir()
    return tmp_path


def make_report(root) -> None:
    build.main(["--runs", str(root / "runs"), "--out", str(root / "reports"), "--params", str(root / "params.yaml"),
                "--published", str(REPO / "reports" / "published.yaml")])


def test_the_report_sets_ours_beside_the_published_numbers(runs_dir):
    make_report(runs_dir)
    results = (runs_dir / "reports" / "results.md").read_text()
    assert "| optimizers | adam | val_accuracy | 0.8820 ± 0.0028 (n=2) | 0.8696 | +1.24 | within 1.5 pts |" in results
    assert "| optimizers | nadam | val_accuracy | (not run) | 0.8740 |" in results
    assert "| sgd | 2 | 0.8350 ± 0.0071 |" in results and "ours only" in results  # no published plain SGD
    assert "paired by seed: +1.10 ± 0.10 pts over 3 seeds" in results
    metrics = json.loads((runs_dir / "reports" / "metrics.json").read_text())
    assert metrics["optimizers"]["adam"] == {"val_accuracy_mean": 0.882, "val_accuracy_std": 0.0028,
                                             "test_accuracy_mean": 0.872, "test_accuracy_std": 0.0028, "n": 2}
    figures = sorted(path.name for path in (runs_dir / "reports" / "figures").iterdir())
    assert "optimizers_curves.png" in figures and "optimizers_val_accuracy.png" in figures
    rows = (runs_dir / "reports" / "curves" / "optimizers_val_accuracy.csv").read_text().splitlines()
    assert rows[0] == "epoch,adam,sgd" and len(rows) == 4


def test_a_missing_summary_names_the_stage_to_run_and_keeps_the_last_report(runs_dir):
    make_report(runs_dir)
    before = (runs_dir / "reports" / "results.md").read_text()
    (runs_dir / "runs" / "optimizers" / "summary.json").unlink()
    with pytest.raises(SystemExit, match=r"optimizers/summary.json not found: run `dvc repro experiment@optimizers`"):
        make_report(runs_dir)
    assert (runs_dir / "reports" / "results.md").read_text() == before
    assert not list((runs_dir / "reports").glob(".report-*"))


def test_a_summary_of_a_sweep_that_did_not_finish_says_how_to_run_it(tmp_path):
    from src.errors import TrackingError
    from src.report.summary import summarize

    with pytest.raises(TrackingError, match=r"jobs.json not found: the sweep of optimizers did not finish every job; "
                                            r"run `python -m src.train -m experiment=optimizers`"):
        summarize("optimizers", tmp_path)


def test_the_gradient_figure_has_one_panel_per_activation(tmp_path):
    from src.report.plots import gradients_by_depth

    def with_norms(seed, scale):
        layers = {f"hidden_{i:02d}": scale ** i for i in range(1, 6)} | {"output": 1.0}
        return {**run(seed, 0.5), "grad_norm": {"initial": layers, "final": layers}}

    arms = {f"{activation}, {init}": [with_norms(42, scale), with_norms(43, scale)]
            for activation, scale in (("sigmoid", 0.5), ("relu", 1.0)) for init in ("glorot_uniform", "he_normal")}
    path = gradients_by_depth(summary("init_activation", arms), tmp_path / "gradients.png")
    assert path.stat().st_size > 10_000
    assert gradients_by_depth(summary("optimizers", {"adam": [run(42, 0.8)]}), tmp_path / "none.png") is None
