"""The report's calibration block: MC dropout's averaged predictions against one deterministic
pass, for each arm whose runs compared them (mc_dropout_samples > 0; src/calibration.py)."""

import re
from pathlib import Path

from src.calibration import pooled
from src.figures import reliability_diagram
from src.report.stats import arm_metric, spread

PREDICTIONS = {"deterministic": ("test_", "test_accuracy"),        # kind -> (metric prefix, its accuracy)
               "mc_dropout": ("test_mc_dropout_", "test_mc_dropout_accuracy")}
SCORES = {"nll": "NLL", "brier": "Brier", "ece": "ECE"}
SHOWN = 0.01  # an example image's classes below this probability in every prediction are left out


def block(summary: dict, folder: Path) -> str:
    """Markdown: per calibrated arm, the scores of both predictions (mean ± std over seeds), the
    reliability diagram of every seed's test images pooled, and the first test image's class
    probabilities with their spread over the MC passes (the book's y_proba and y_std)."""
    calibrated = {arm: [run for run in runs if "calibration" in run] for arm, runs in summary["arms"].items()}
    calibrated = {arm: runs for arm, runs in calibrated.items() if runs}
    if not calibrated:
        return ""
    header = ["arm", "prediction", "accuracy", *SCORES.values(), "confidence − accuracy (pts)"]
    lines = ["### Calibration: MC dropout against one deterministic pass", "",
             "Test set. NLL: negative log-likelihood of the true class; Brier: squared error of the class "
             "probabilities, summed over classes; ECE: expected calibration error over 15 confidence bins "
             "(lower is better for all three).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, runs in calibrated.items():
        for kind, (prefix, accuracy) in PREDICTIONS.items():
            cells = [arm_metric(runs, key) for key in (accuracy, *(prefix + score for score in SCORES))]
            gap = spread([overconfidence(run["calibration"]["reliability"][kind]) * 100 for run in runs])
            label = f"MC dropout ({runs[0]['calibration']['samples']} passes)" if kind == "mc_dropout" else kind
            lines.append("| " + " | ".join([arm, label, *(cell.shown() if cell else "—" for cell in cells),
                                            f"{gap.mean:+.2f}"]) + " |")
    lines += ["", "Confidence − accuracy: the mean top-class probability minus the accuracy, over the test set "
              "(above 0: over-confident, below: under-confident).", ""]
    for arm, runs in calibrated.items():
        lines += [verdict_line(arm, runs), ""]
    for arm, runs in calibrated.items():
        path = folder / f"{summary['experiment']}_{slug(arm)}_reliability.png"
        tables = {kind: pooled([run["calibration"]["reliability"][kind] for run in runs]) for kind in PREDICTIONS}
        reliability_diagram({"reliability": tables}, path,
                            title=f"{summary['experiment']} {arm}, test set, {len(runs)} seeds pooled")
        lines += [example_line(arm, runs[0]), "", f"![{path.name}](figures/{path.name})", ""]
    return "\n".join(lines)


def overconfidence(table: dict) -> float:
    """Mean top-class probability minus accuracy over a reliability table's images."""
    count = sum(table["count"])
    confidence = sum(n * c for n, c in zip(table["count"], table["confidence"], strict=True) if n) / count
    return confidence - sum(n * a for n, a in zip(table["count"], table["accuracy"], strict=True) if n) / count


def verdict_line(arm: str, runs: list[dict]) -> str:
    """Which prediction scores better on each measure, by how much (mean over seeds) and in how many seeds."""
    parts = []
    for score, name in SCORES.items():
        gaps = [run[f"test_mc_dropout_{score}"] - run[f"test_{score}"] for run in runs]
        mean, better = sum(gaps) / len(gaps), sum(gap < 0 for gap in gaps)
        parts.append(f"{name} {'lower' if mean < 0 else 'higher'} by {abs(mean):.4f} ({better} of {len(gaps)} "
                     "seeds lower)")
    return f"{arm}: MC dropout against the deterministic pass: " + "; ".join(parts) + "."


def example_line(arm: str, run: dict) -> str:
    record = run["calibration"]
    example, names = record["examples"][0], record["class_names"]
    shown = [i for i in range(len(names))
             if max(example["deterministic"][i], example["mc_mean"][i]) >= SHOWN]
    deterministic = ", ".join(f"{names[i]} {example['deterministic'][i]:.2f}" for i in shown)
    mc = ", ".join(f"{names[i]} {example['mc_mean'][i]:.2f} ± {example['mc_std'][i]:.2f}" for i in shown)
    return (f"{arm}, seed {run['seed']}, test image {example['index']} (true class {names[example['label']]}): one "
            f"deterministic pass gives {deterministic}; MC dropout's mean ± std over {record['samples']} passes gives "
            f"{mc} (classes under {SHOWN:g} in both left out).")


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
