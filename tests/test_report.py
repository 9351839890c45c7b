"""The report stage on made-up summaries: statistics, verdicts, files, and a failed report
leaving the previous one whole."""

import json

import numpy as np
import pytest
import yaml
from conftest import REPO

from src.report import build
from src.report.fidelity import Comparison, summary_line
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
        "transfer_ab": {**summary("transfer_ab", {"scratch": [run(s, 0.9, test=0.90) for s in range(3)],
                                                  "reuse": [run(s, 0.9, test=0.91 + 0.001 * s) for s in range(3)]}),
                        "source_runs": {"a": {**run(42, 0.9027, test=0.9), "role": "source model (classes 1,3)"}}},
        "pretraining": {**summary("pretraining", {
            "scratch": [run(s, 0.78, test=0.78 + 0.001 * s) for s in range(3)],
            "autoencoder": [run(s, 0.80, test=0.80 + 0.001 * s + 0.002 * (s % 2)) for s in range(3)],
            "rotation": [run(s, 0.77, test=0.77 + 0.001 * s + 0.002 * (s % 2)) for s in range(3)]}),
            "source_runs": {"e": {**{k: v for k, v in run(42, 0.5).items() if k != "test_accuracy"},
                                  "test_loss": 0.0123, "epochs_run": 10,
                                  "role": "source model (autoencoder pretraining, no labels)"}}},
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
    assert ("| optimizers | adam | adam | val_accuracy | 0.8820 ± 0.0028 (n=2) | 0.8696 | +1.24 pts | within 1.5 pts | "
            "In [57] history_adam = build_and_train_model(optimizer) |") in results
    assert "| optimizers | nadam | nadam | val_accuracy | (not run) | 0.8740 |" in results
    # The book's "SGD" output was printed by a momentum run: it is set beside our momentum arm, not sgd.
    assert "| optimizers | SGD | momentum | val_accuracy | (not run) | 0.8672 |" in results
    assert "Note on SGD: The \"SGD\" cell printed the momentum run's numbers" in results
    assert "**1 of 2 published accuracies" not in results
    assert "published accuracies matched within 1.5 points" in results
    assert "(figures/fidelity.png)" in results and (runs_dir / "reports" / "figures" / "fidelity.png").is_file()
    assert "| sgd | 2 | 0.8350 ± 0.0071 |" in results and "ours only" in results  # no published plain SGD
    # Arms as the book names them where published.yaml says so (transfer_ab's model B and model B on A).
    assert "model B on A minus model B, test accuracy, paired by seed: +1.10 ± 0.10 pts over 3 seeds" in results
    assert "Source model (classes 1,3): its own run (seed 42), test accuracy 0.9000 on its own task" in results
    # Every pretrained arm against scratch, and the autoencoder's own score is its reconstruction error.
    assert "autoencoder minus scratch, test accuracy, paired by seed: +2.07 ± 0.12 pts over 3 seeds" in results
    assert "rotation minus scratch, test accuracy, paired by seed: -0.93 ± 0.12 pts over 3 seeds" in results
    assert "a real loss at the 5% level" in results and "scratch minus scratch" not in results
    assert ("Source model (autoencoder pretraining, no labels): its own run (seed 42), test reconstruction error "
            "(MSE on the scaled pixels) 0.0123 after 10 epochs.") in results
    metrics = json.loads((runs_dir / "reports" / "metrics.json").read_text())
    assert metrics["optimizers"]["adam"] == {"val_accuracy_mean": 0.882, "val_accuracy_std": 0.0028,
                                             "test_accuracy_mean": 0.872, "test_accuracy_std": 0.0028, "n": 2}
    figures = sorted(path.name for path in (runs_dir / "reports" / "figures").iterdir())
    assert "optimizers_curves.png" in figures and "optimizers_val_accuracy.png" in figures
    rows = (runs_dir / "reports" / "curves" / "optimizers_val_accuracy.csv").read_text().splitlines()
    assert rows[0] == "epoch,adam,sgd" and len(rows) == 4


def test_the_learning_rate_finders_suggestion_is_set_beside_the_rate_the_experiment_uses(runs_dir):
    found = {"overrides": ["experiment=optimizers", "seed=42"], "configured_learning_rate": 0.05,
             "suggested_learning_rate": 0.2, "divergence_learning_rate": 0.61, "min_rate": 0.0001, "max_rate": 1.0,
             "epochs": 1, "steps": 352, "run_id": "r"}
    (runs_dir / "runs" / "lr_finder").mkdir()
    (runs_dir / "runs" / "lr_finder" / "optimizers_one_cycle.json").write_text(json.dumps(found))
    make_report(runs_dir)
    optimizers = (runs_dir / "reports" / "results.md").read_text().split("## optimizers")[1].split("## ")[0]
    assert ("Learning-rate finder (`dvc repro lr_finder`: experiment=optimizers seed=42, one epoch from 0.0001 to 1 "
            "over 352 steps): it suggests a peak of 0.2 (the bottom of the curve; the loss is back above its start at "
            "0.61), the book's 1cycle peak is 0.05: they differ by a factor of 4.0; the experiment keeps the book's."
            ) in optimizers


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


def test_the_activations_gradient_figure_has_a_line_per_arm_before_and_after_training(tmp_path):
    from src.report.plots import gradients_by_arm, layer_norms

    def with_norms(seed, scale):
        layers = {f"hidden_{i:02d}": scale ** i for i in range(1, 11)} | {"output": 1.0}
        return {**run(seed, 0.5), "grad_norm": {"initial": layers, "final": {k: v / 2 for k, v in layers.items()}}}

    arms = {"relu": [with_norms(42, 0.5), with_norms(43, 2.0)], "selu": [with_norms(42, 1.0)]}
    layers, relu = layer_norms(arms["relu"], "initial")
    assert layers[0] == "hidden_01" and layers[-1] == "output"
    assert relu[:10] == pytest.approx(np.ones(10))  # geometric mean of 0.5**i and 2**i
    assert layer_norms(arms["relu"], "final")[1][0] == pytest.approx(0.5)
    assert gradients_by_arm(summary("activations", arms), tmp_path / "gradients.png").stat().st_size > 10_000
    assert gradients_by_arm(summary("optimizers", {"adam": [run(42, 0.8)]}), tmp_path / "none.png") is None


def comparison(value: float, ours: Spread | None, metric: str = "val_accuracy", note: str | None = None) -> Comparison:
    return Comparison("optimizers", "adam", "adam", metric, value, "In [57]", note, ours)


def test_the_summary_line_counts_matches_spread_and_differences_and_keeps_losses_apart():
    rows = [comparison(0.870, Spread(0.880, 0.002, 3)),                   # +1.0 pts: matched
            comparison(0.700, Spread(0.640, 0.100, 3)),                   # -6 pts, 2 std = 20: spread
            comparison(0.900, Spread(0.850, 0.002, 3), note="why"),       # -5 pts, 2 std = 0.4: differs
            comparison(0.500, None),                                      # not run
            comparison(0.470, Spread(0.500, 0.020, 3), metric="val_loss")]  # a loss: spread only
    assert [row.status(0.015) for row in rows] == ["matched", "spread", "differs", "missing", "spread"]
    assert rows[2].verdict(0.015) == "outside our seed spread: see the note"
    assert rows[4].verdict(0.015) == "inside our mean ± 2 std (0.0400)"
    assert summary_line(rows, 0.015) == (
        "**1 of 4 published accuracies matched within 1.5 points by our mean; 1 more lie inside our mean ± 2 std**"
        "; outside both: optimizers adam (val_accuracy); 1 not run yet. Losses: 1 of 1 inside our mean ± 2 std.")


def test_every_number_in_published_yaml_names_its_cell_and_an_arm_the_experiment_sweeps():
    from test_experiments import EXPERIMENTS

    from src.report.summary import arm_label
    from src.sweep import experiment_jobs

    published = yaml.safe_load((REPO / "reports" / "published.yaml").read_text())
    experiments = [name for name in published if name != "tolerance"]
    assert set(experiments) <= set(EXPERIMENTS) and len(experiments) >= 9  # the book prints none for the rest
    for name in experiments:
        arms = {arm_label(name, job) for job in experiment_jobs(name, [])} | {"source_model"}
        for number in published[name]["numbers"]:
            assert number["arm"] in arms, f"{name}: {number['arm']} is not an arm of its sweep"
            assert number["cell"] and 0 < number["value"] < 1, number


def test_the_seeds_claims_are_judged_from_the_runs_and_skipped_without_them():
    from src.report import claims

    def arm(test: float, seconds: float = 10.0) -> list[dict]:
        return [{**run(seed, test, test=test + 0.001 * seed), "duration_s": seconds} for seed in range(3)]

    seed_notebook = summary("seed_notebook", {"model1": arm(0.82), "model2": arm(0.80), "model2_fast_bn": arm(0.83)})
    text = claims.bn_deficit(seed_notebook)
    assert "model1 0.8210, model2 0.8010, model2 with BN momentum 0.9 0.8310" in text
    assert "Verdict: BN's moving statistics explain the deficit" in text
    assert claims.bn_deficit(summary("seed_notebook", {"model1": arm(0.8), "model2": arm(0.8)})) is None

    initializers = ("glorot_uniform", "he_normal", "lecun_normal")
    init = summary("init_activation", {f"{activation}, {init}": arm(score) for activation, scores in
                                       (("sigmoid", (0.10, 0.10, 0.10)), ("tanh", (0.41, 0.55, 0.40)))
                                       for init, score in zip(initializers, scores, strict=True)})
    text = claims.glorot_for_saturating(init)
    assert "sigmoid does not train with any of them" in text and "tanh trains better with he_normal" in text
    assert text.endswith("Verdict: not supported at this depth.")

    activations = summary("activations", {"selu": arm(0.80), "relu": arm(0.70), "elu": arm(0.75)})
    for run_ in activations["arms"]["relu"]:
        run_["grad_norm"] = {"initial": {"hidden_01": 0.5, "hidden_02": 1.0, "output": 2.0}}
    text = claims.relu_against_vanishing(activations)
    assert "validation accuracy, mean over seeds): selu 0.8000, elu 0.7500, relu 0.7000" in text
    assert "first hidden layer's gradient norm is 0.5 times the last hidden layer's" in text
    assert text.endswith("Verdict: supported: ReLU with He initialisation trains the 50-layer network, though 2 of "
                         "the family train it better (selu, elu).")
    assert claims.relu_against_vanishing(summary("activations", {"selu": arm(0.8)})) is None

    mobilenet = summary("mobilenet_v2_cifar10", {"symmetric": arm(0.5), "scratch": arm(0.2),
                                                 "seed": arm(0.4, 30.0), "seed_mixed_float16": arm(0.4, 90.0)})
    assert "symmetric 0.5010 against scratch 0.2010" in claims.transfer_helps(mobilenet)
    assert claims.transfer_helps(mobilenet).endswith("Verdict: supported at this budget.")
    frozen = summary("mobilenet_v2_cifar10", {"symmetric_fine_tuned": arm(0.6), "scratch_fine_tuned": arm(0.1)})
    assert claims.transfer_helps(frozen).endswith("is the fair baseline and is not run yet).")
    whole = summary("mobilenet_v2_cifar10", {"symmetric_fine_tuned": arm(0.6), "scratch_fine_tuned": arm(0.1),
                                             "scratch_whole": arm(0.65)})
    text = claims.transfer_helps(whole)
    assert "symmetric_fine_tuned 0.6010 against scratch_whole 0.6510" in text
    assert "Verdict: not supported here (scratch_fine_tuned: a frozen base from random weights" in text
    assert "90 s under mixed_float16 against 30 s in float32" in claims.mixed_float16_cost(mobilenet)
    assert "costs x3.00 the time" in claims.mixed_float16_cost(mobilenet)
    assert claims.section({}) == ["## The seeds' claims, tested", ""]
