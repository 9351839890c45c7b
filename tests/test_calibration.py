"""Calibration scores (src/calibration.py) against hand computations, and the report's block."""

import math

import numpy as np
import pytest

from src.calibration import (
    brier_score,
    compare,
    expected_calibration_error,
    negative_log_likelihood,
    pooled,
    reliability,
    table_error,
)

# Four images, three classes: two right with confidence 0.9 and 0.6, two wrong with 0.5 and 0.8.
PROBABILITIES = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1]])
LABELS = np.array([0, 0, 2, 0])


def test_negative_log_likelihood_is_the_mean_minus_log_probability_of_the_true_class():
    by_hand = -(math.log(0.9) + math.log(0.6) + math.log(0.3) + math.log(0.1)) / 4
    assert negative_log_likelihood(PROBABILITIES, LABELS) == pytest.approx(by_hand)
    assert math.isfinite(negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])))  # floored, not inf


def test_brier_score_sums_squared_errors_over_classes_and_averages_over_images():
    by_hand = ((0.1**2 + 0.05**2 + 0.05**2) + (0.4**2 + 0.3**2 + 0.1**2) + (0.5**2 + 0.2**2 + 0.7**2)
               + (0.9**2 + 0.8**2 + 0.1**2)) / 4
    assert brier_score(PROBABILITIES, LABELS) == pytest.approx(by_hand)
    assert brier_score(np.eye(3), np.arange(3)) == 0


def test_expected_calibration_error_weighs_each_bins_gap_by_its_images():
    # Five bins of 0.2: 0.5 and 0.6 share (0.4, 0.6] (mean confidence 0.55, accuracy 1/2), 0.8 sits in
    # (0.6, 0.8] (wrong: gap 0.8), 0.9 in (0.8, 1] (right: gap 0.1).
    by_hand = (2 * abs(0.5 - 0.55) + 1 * 0.8 + 1 * 0.1) / 4
    assert expected_calibration_error(PROBABILITIES, LABELS, bins=5) == pytest.approx(by_hand)
    table = reliability(PROBABILITIES, LABELS, bins=5)
    assert table["count"] == [0, 0, 2, 1, 1] and table["confidence"][0] is None
    assert table["accuracy"][2:] == [0.5, 0.0, 1.0]
    assert table_error(table) == pytest.approx(by_hand)


def test_a_sigmoid_output_is_read_as_two_classes():
    one_unit = np.array([[0.8], [0.3]])
    assert negative_log_likelihood(one_unit, np.array([1, 1])) == pytest.approx(-(math.log(0.8) + math.log(0.3)) / 2)
    assert brier_score(one_unit, np.array([1, 0])) == pytest.approx((2 * 0.2**2 + 2 * 0.3**2) / 2)


def test_pooled_tables_count_every_image_of_every_run():
    first, second = PROBABILITIES[:2], PROBABILITIES[2:]
    pooled_table = pooled([reliability(first, LABELS[:2], 5), reliability(second, LABELS[2:], 5)])
    whole = reliability(PROBABILITIES, LABELS, 5)
    assert pooled_table["count"] == whole["count"]
    assert pooled_table["confidence"][2:] == pytest.approx(whole["confidence"][2:])
    assert pooled_table["accuracy"][2:] == pytest.approx(whole["accuracy"][2:])


def test_compare_scores_both_predictions_and_keeps_the_mc_spread_of_example_images():
    rng = np.random.default_rng(0)
    passes = rng.dirichlet(np.ones(3), size=(20, 4))  # 20 stochastic passes over the 4 images
    metrics, record = compare(PROBABILITIES, passes, LABELS)
    averaged = passes.mean(axis=0)
    assert metrics["test_nll"] == pytest.approx(negative_log_likelihood(PROBABILITIES, LABELS))
    assert metrics["test_mc_dropout_brier"] == pytest.approx(brier_score(averaged, LABELS))
    assert metrics["test_mc_dropout_ece"] == pytest.approx(expected_calibration_error(averaged, LABELS))
    assert record["samples"] == 20 and sum(record["reliability"]["mc_dropout"]["count"]) == 4
    example = record["examples"][0]
    assert example["label"] == 0 and example["deterministic"] == [0.9, 0.05, 0.05]
    assert example["mc_std"] == pytest.approx(passes[:, 0].std(axis=0), abs=1e-4)
    assert len(record["examples"]) == 3


def test_the_report_block_shows_both_predictions_a_diagram_and_an_example(tmp_path):
    from src.report.uncertainty import block

    def run(seed):
        passes = np.random.default_rng(seed).dirichlet(np.ones(3), size=(10, 4))
        metrics, record = compare(PROBABILITIES, passes, LABELS)
        return {"seed": seed, "diverged": False, "test_accuracy": 0.5, "test_mc_dropout_accuracy": 0.75, **metrics,
                "calibration": {"class_names": ["cat", "dog", "bird"], **record}}

    summary = {"experiment": "regularization", "arms": {"dropout": [run(42), run(43)], "l2": [{"seed": 42}]}}
    text = block(summary, tmp_path)
    assert "| dropout | deterministic | 0.5000 ± 0.0000 |" in text and "| dropout | MC dropout (10 passes) |" in text
    assert "| l2 |" not in text  # an arm without MC dropout has nothing to compare
    # 0.9, 0.6, 0.5, 0.8 for 2 right of 4: over-confident by 20 points.
    assert "| dropout | deterministic | 0.5000 ± 0.0000 | 1.0307 ± 0.0000 |" in text and "| +20.00 |" in text
    assert "dropout: MC dropout against the deterministic pass: NLL " in text and "of 2 seeds lower)" in text
    assert "seed 42, test image 0 (true class cat)" in text and "cat 0.90" in text
    assert (tmp_path / "regularization_dropout_reliability.png").stat().st_size > 10_000
    assert block({"experiment": "optimizers", "arms": {"adam": [{"seed": 42}]}}, tmp_path) == ""
