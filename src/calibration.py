"""How well predicted probabilities match outcomes: the numbers behind MC dropout's point.

The book shows that averaging the class probabilities of many dropout passes gives better
calibrated predictions than one deterministic pass, and an uncertainty per class. Here, for
any class probabilities (n_images x n_classes) and the true labels:
  - negative log-likelihood: -mean log p(true class), the loss the network was trained on;
  - Brier score: mean over images of sum over classes (p - one_hot)^2 (Brier 1950), 0 is perfect, 2 worst;
  - expected calibration error: images binned by their top probability (BINS equal-width bins),
    the bins' |accuracy - mean confidence| weighted by their share of images (Guo et al. 2017);
  - the reliability diagram's data: per bin, its images, mean confidence and accuracy.
Plain NumPy on float64; a one-unit sigmoid output is read as two classes (1 - p, p).
"""

import numpy as np

BINS = 15                 # Guo et al. 2017's choice
NLL_FLOOR = 1e-12         # log(0) would make one confidently wrong image infinite
EXAMPLE_IMAGES = 3        # test images whose per-class probabilities (and MC spread) are kept
ARTIFACT = "calibration.json"  # the record of a run that compared them (MLflow artifact)


def as_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities, float64; a single sigmoid column becomes (1 - p, p)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return np.concatenate([1 - probabilities, probabilities], axis=1) if probabilities.shape[1] == 1 else probabilities


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = as_classes(probabilities)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(p, NLL_FLOOR))))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = as_classes(probabilities)
    return float(np.mean(np.sum((p - np.eye(p.shape[1])[labels]) ** 2, axis=1)))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Per equal-width confidence bin (upper edges included, the first bin's lower edge too):
    how many images, their mean top probability and the share of them classified right."""
    p = as_classes(probabilities)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):  # an empty bin: NaN, written as null
        mean_confidence = np.bincount(which, confidence, minlength=bins) / count
        accuracy = np.bincount(which, correct, minlength=bins) / count
    return {"edges": np.linspace(0, 1, bins + 1).tolist(), "count": count.tolist(),
            "confidence": [none_if_nan(v) for v in mean_confidence], "accuracy": [none_if_nan(v) for v in accuracy]}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    return table_error(reliability(probabilities, labels, bins))


def table_error(table: dict[str, list]) -> float:
    """The expected calibration error of a reliability table: |accuracy - confidence| per bin,
    weighted by the bin's share of the images."""
    total = sum(table["count"])
    return float(sum(n * abs(acc - conf) for n, acc, conf in zip(table["count"], table["accuracy"],
                                                                 table["confidence"], strict=True) if n) / total)


def pooled(tables: list[dict[str, list]]) -> dict[str, list]:
    """Reliability tables of several runs (same bins) as one: every image of every run in its bin."""
    count = np.sum([table["count"] for table in tables], axis=0)

    def weighted(key: str) -> list[float | None]:
        sums = np.sum([[(v or 0.0) * n for v, n in zip(t[key], t["count"], strict=True)] for t in tables], axis=0)
        return [float(total / n) if n else None for total, n in zip(sums, count, strict=True)]

    return {"edges": tables[0]["edges"], "count": count.tolist(), "confidence": weighted("confidence"),
            "accuracy": weighted("accuracy")}


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"nll": negative_log_likelihood(probabilities, labels), "brier": brier_score(probabilities, labels),
            "ece": expected_calibration_error(probabilities, labels)}


def compare(deterministic: np.ndarray, passes: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    """Deterministic against MC-dropout predictions (passes: samples x images x classes) on one split.

    Returns the metrics (test_nll, test_mc_dropout_nll, ...) and the record behind them: each
    kind's reliability table, and for the first EXAMPLE_IMAGES images the true class, the
    deterministic probabilities, and the MC mean and standard deviation per class (the book's
    y_proba and y_std)."""
    passes = np.stack([as_classes(one) for one in passes])
    averaged = passes.mean(axis=0)
    metrics = {**{f"test_{key}": value for key, value in scores(deterministic, labels).items()},
               **{f"test_mc_dropout_{key}": value for key, value in scores(averaged, labels).items()}}
    deterministic = as_classes(deterministic)
    examples = [{"index": i, "label": int(labels[i]), "deterministic": rounded(deterministic[i]),
                 "mc_mean": rounded(averaged[i]), "mc_std": rounded(passes[:, i].std(axis=0))}
                for i in range(min(EXAMPLE_IMAGES, len(labels)))]
    record = {"split": "test", "samples": len(passes), "bins": BINS,
              "reliability": {"deterministic": reliability(deterministic, labels),
                              "mc_dropout": reliability(averaged, labels)},
              "examples": examples}
    return metrics, record


def rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
