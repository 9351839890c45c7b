"""The `report` stage: every experiment's summary beside the published numbers.

    python -m src.report.build [--runs runs] [--out reports]

Reads runs/<experiment>/summary.json of each experiment params.yaml lists (the experiment
stages' outputs) and reports/published.yaml; writes reports/results.md, reports/metrics.json (DVC metrics),
reports/curves/*.csv (DVC plots) and reports/figures/*.png. Everything is written to a
temporary folder first and moved into place at the end: a failed report leaves the last
good one whole.
"""

import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from src.cli import ArgumentParser
from src.params import block, load_params
from src.paths import REPO
from src.report import claims, fidelity, plots, uncertainty
from src.report.stats import arm_metric, paired_difference, seed_gaps, spread, verdict

OUTPUTS = ("results.md", "metrics.json", "curves", "figures")
# Extra columns per experiment, where the experiment is about them.
EXTRA_METRICS = {"regularization": ("test_mc_dropout_accuracy",),
                 "seed_notebook": ("val_accuracy", "test_loss", "val_loss"),
                 "cifar10_mlp": ("val_mc_dropout_accuracy", "test_mc_dropout_accuracy")}
# The gradient-norm-by-depth figure of the experiments that are about it.
GRADIENT_FIGURES = {"init_activation": plots.gradients_by_depth, "activations": plots.gradients_by_arm}
# Curves exported as CSV for `dvc plots show`: (experiment, curve key).
PLOTTED_CURVES = (("optimizers", "val_accuracy"), ("schedules", "val_accuracy"), ("schedules", "learning_rate"))


def load_summaries(runs_dir: Path, names: list[str]) -> dict[str, dict]:
    """The summaries of the experiments the pipeline lists (params.yaml), in its order."""
    summaries = {}
    for name in names:
        path = runs_dir / name / "summary.json"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found: run `dvc repro experiment@{name}` first")
        summaries[name] = json.loads(path.read_text())
    return summaries


def build(summaries: dict[str, dict], published: dict, out: Path, data_sources: dict[str, str]) -> None:
    tolerance = published.get("tolerance", 0.015)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (staging / "figures").mkdir()
        (staging / "curves").mkdir()
        sections, metrics = [], {}
        for name, summary in summaries.items():
            metric = (published.get(name) or {}).get("metric", "val_accuracy")
            book = {number["arm"]: number["value"] for number in reversed(fidelity.numbers(published, name))
                    if number["metric"] == metric}  # the section's column: the first number per arm
            figures = draw(summary, metric, book, staging / "figures")
            sections.append(section(summary, metric, published.get(name) or {}, book, tolerance, figures)
                            + uncertainty.block(summary, staging / "figures"))
            metrics[name] = experiment_metrics(summary, metric)
        rows = fidelity.comparisons(summaries, published)
        plots.fidelity(rows, tolerance, staging / "figures" / "fidelity.png")
        export_curves(summaries, staging / "curves")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        (staging / "results.md").write_text(document(summaries, rows, sections, tolerance, data_sources))
        for item in OUTPUTS:  # each output replaced as a whole
            target = out / item
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def draw(summary: dict, metric: str, book: dict, folder: Path) -> list[str]:
    name = summary["experiment"]
    drawn = [plots.learning_curves(summary, folder / f"{name}_curves.png"),
             plots.comparison(summary, metric, book, folder / f"{name}_{metric}.png") if len(summary["arms"]) > 1
             else None,
             GRADIENT_FIGURES[name](summary, folder / f"{name}_gradients.png") if name in GRADIENT_FIGURES else None]
    return [path.name for path in drawn if path is not None]


def section(summary: dict, metric: str, book: dict, published: dict[str, float], tolerance: float,
            figures: list[str]) -> str:
    name = summary["experiment"]
    extra = [key for key in EXTRA_METRICS.get(name, ()) if key != metric]
    columns = [metric, *(["test_accuracy"] if metric != "test_accuracy" else []), *extra]
    lines = [f"## {name}", ""]
    if book.get("source"):
        lines += [f"Published: {book['source']}", ""]
    header = ["arm", "n", *columns, "best val_accuracy", "epochs", "train time (s, mean)"]
    if published:
        header += ["published", "difference (pts)", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, runs in summary["arms"].items():
        values = [arm_metric(runs, column) for column in columns]
        best, epochs = arm_metric(runs, "best_val_accuracy"), spread([run["epochs_run"] for run in runs])
        diverged = sum(run["diverged"] for run in runs)
        cells = [arm, f"{len(runs)}" + (f" ({diverged} diverged)" if diverged else ""),
                 *[value.shown() if value else "—" for value in values], best.shown() if best else "—",
                 f"{epochs.mean:.1f}" if epochs else "—", f"{spread([r['duration_s'] for r in runs]).mean:.0f}"]
        if published:
            ours = values[0]
            if arm in published and ours is not None:
                cells += [f"{published[arm]:.4f}", f"{(ours.mean - published[arm]) * 100:+.2f}",
                          verdict(ours, published[arm], tolerance)]
            else:
                cells += ["—", "", "ours only"]
        lines.append("| " + " | ".join(cells) + " |")
    notes_of_book = [f"Note on {number.get('book', number['arm'])}: {number['note'].strip()}\n"
                     for number in book.get("numbers", []) if number.get("note")]
    book_names = {number["arm"]: number["book"] for number in book.get("numbers", []) if "book" in number}
    lines += ["", *notes_of_book, *notes(summary, book_names),
              *[f"![{figure}](figures/{figure})" for figure in figures], ""]
    return "\n".join(lines)


def notes(summary: dict, book_names: dict[str, str]) -> list[str]:
    """What a table alone does not say: each reused source's gain over scratch and its significance
    (arms named as the book names them, where it does), the source models."""
    lines = []
    arms = summary["arms"]
    if "scratch" in arms and summary.get("source_runs"):  # transfer_ab, pretraining: every arm against scratch
        lines += [gain_note(arms, arm, book_names) for arm in arms if arm != "scratch"]
    for found in summary.get("lr_finder", []):
        lines.append(lr_finder_note(found))
    lines += [source_note(run) for run in summary.get("source_runs", {}).values()]
    return [paragraph for line in lines if line for paragraph in (line, "")]


def gain_note(arms: dict, arm: str, book_names: dict[str, str]) -> str | None:
    """The arm minus scratch in test accuracy, paired by seed, with its t-test."""
    paired = paired_difference(arms["scratch"], arms[arm], "test_accuracy")
    if not paired:
        return None
    gap, t, p = paired
    real = "a real gain at the 5% level" if p < 0.05 and gap.mean > 0 else (
        "a real loss at the 5% level" if p < 0.05 else "not a significant difference")
    against = f"{book_names.get(arm, arm)} minus {book_names.get('scratch', 'scratch')}"
    return (f"{against}, test accuracy, paired by seed: {gap.mean * 100:+.2f} ± {gap.std * 100:.2f} pts over {gap.n} "
            f"seeds (paired t = {t:.2f}, p = {p:.3g}: {real}). Per seed the difference ranges from "
            f"{min_max(arms, arm, 'test_accuracy')}.")


def source_note(run: dict) -> str:
    """A source model's own score: accuracy on its task, or an autoencoder's reconstruction error."""
    role = run.get("role") or "source model"
    score = (f"test accuracy {run['test_accuracy']:.4f} on its own task" if "test_accuracy" in run else
             f"test reconstruction error (MSE on the scaled pixels) {run['test_loss']:.4f}")
    return f"{role[0].upper()}{role[1:]}: its own run (seed {run['seed']}), {score} after {run['epochs_run']} epochs."


def lr_finder_note(found: dict) -> str:
    """The learning-rate finder's suggestion beside the rate the experiment uses (the book's)."""
    ours, book = found["suggested_learning_rate"], found["configured_learning_rate"]
    ratio = max(ours, book) / min(ours, book)
    agree = (f"the two agree within a factor of {ratio:.1f}" if ratio <= 2 else
             f"they differ by a factor of {ratio:.1f}; the experiment keeps the book's")
    divergence = found["divergence_learning_rate"]
    shoots = f"the loss is back above its start at {divergence:.3g}" if divergence else "the loss never climbs back"
    return (f"Learning-rate finder (`dvc repro lr_finder`: {' '.join(found['overrides'])}, one epoch from "
            f"{found['min_rate']:g} to {found['max_rate']:g} over {found['steps']} steps): it suggests a peak of "
            f"{ours:.3g} (the bottom of the curve; {shoots}), the book's 1cycle peak is {book:g}: {agree}.")


def lr_finder_results(folder: Path) -> dict[str, list[dict]]:
    """runs/lr_finder/*.json (the lr_finder stage's), by the experiment their overrides name."""
    found = {}
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        experiment = next((o.split("=", 1)[1] for o in result["overrides"] if o.startswith("experiment=")), None)
        found.setdefault(experiment, []).append(result)
    return found


def min_max(arms: dict, arm: str, metric: str) -> str:
    gaps = seed_gaps(arms["scratch"], arms[arm], metric)
    return f"{min(gaps) * 100:+.2f} to {max(gaps) * 100:+.2f} pts"


def experiment_metrics(summary: dict, metric: str) -> dict:
    """reports/metrics.json: per experiment and arm, numbers only (what `dvc metrics show` lists)."""
    result = {}
    for arm, runs in summary["arms"].items():
        values = {}
        for key in dict.fromkeys((metric, "test_accuracy", *EXTRA_METRICS.get(summary["experiment"], ()))):
            if stats := arm_metric(runs, key):
                values.update({f"{key}_mean": round(stats.mean, 4), f"{key}_std": round(stats.std, 4)})
        result[arm] = {**values, "n": len(runs)}
    return result


def export_curves(summaries: dict, folder: Path) -> None:
    """Per-epoch means per arm, one column per arm: the data of `dvc plots show`."""
    for name, key in PLOTTED_CURVES:
        if name not in summaries:
            continue
        curves = {arm: plots.mean_curve(runs, key) for arm, runs in summaries[name]["arms"].items()}
        curves = {arm: curve for arm, curve in curves.items() if curve is not None}
        length = max((len(curve) for curve in curves.values()), default=0)
        with open(folder / f"{name}_{key}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", *curves])
            for epoch in range(length):
                writer.writerow([epoch + 1, *(f"{c[epoch]:.6g}" if epoch < len(c) else "" for c in curves.values())])


def document(summaries: dict, rows: list, sections: list[str], tolerance: float, data_sources: dict[str, str]) -> str:
    total = sum(run["duration_s"] for summary in summaries.values() for runs in summary["arms"].values()
                for run in runs)
    times = [f"| {name} | {sum(len(r) for r in s['arms'].values())} | "
             f"{sum(run['duration_s'] for runs in s['arms'].values() for run in runs) / 60:.1f} |"
             for name, s in summaries.items()]
    return "\n".join([
        "# Chapter 11, reproduced: results",
        "",
        "Generated by `dvc repro report` from `runs/<experiment>/summary.json` (each made from the experiment's "
        "MLflow runs) and `reports/published.yaml` (every number the book's chapter notebook prints for an "
        "experiment we run, with its cell); do not edit by hand. Means and standard deviations are over the "
        f"seeds each experiment file fixes; a published accuracy is matched when our mean is within "
        f"{tolerance * 100:.1f} points of it, and otherwise the verdict says whether the book's single run lies "
        "inside our mean ± 2 std.",
        "",
        "Data: " + "; ".join(f"{name}: {source}" for name, source in data_sources.items()) + ".",
        "",
        "## Against the published numbers",
        "",
        fidelity.summary_line(rows, tolerance),
        "",
        *fidelity.table(rows, tolerance),
        "",
        "![fidelity.png](figures/fidelity.png)",
        "",
        *claims.section(summaries),
        "## Training time",
        "",
        "Sum of the runs' durations in MLflow (start to end, including evaluation and logging). With the "
        "default `experiments.launch` two jobs run at a time, so a stage's wall time is lower: each experiment "
        "file's header gives its measured wall time.",
        "",
        "| experiment | runs | run time (min) |",
        "|---|---|---|",
        *times,
        f"| all | {sum(len(r) for s in summaries.values() for r in s['arms'].values())} | {total / 60:.1f} |",
        "",
        *sections,
    ])


def data_sources(prepared: Path) -> dict[str, str]:
    """Which copy of each dataset the prepared arrays came from (the prepare stage's record).

    Not a DVC dependency of the report: a different copy changes the prepared arrays, which
    re-runs the experiments, whose new summaries re-run the report."""
    sources = {}
    for meta_path in sorted(prepared.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        source = meta.get("source", {})
        form = {"image-folder": "the JPEG image-folder copy (its pixels differ slightly from the canonical "
                                "batches the book loads)",
                "python-tarball": "the canonical pickled batches",
                "idx": "the IDX files (contents checked against the canonical SHA-256)",
                }.get(source.get("form"), "unknown")
        sources[meta.get("dataset", meta_path.stem)] = f"{form} (npz sha256 {meta.get('npz_sha256', '?')[:12]})"
    return sources


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m src.report.build", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="folder of <experiment>/summary.json")
    parser.add_argument("--out", type=Path, default=REPO / "reports", help="where results.md and the rest go")
    parser.add_argument("--published", type=Path, default=REPO / "reports" / "published.yaml")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml",
                        help="experiments.datasets and .pretrained list them")
    parser.add_argument("--prepared", type=Path, default=REPO / "data" / "prepared",
                        help="the prepared datasets' .json")
    args = parser.parse_args(argv)
    experiments = block(load_params(args.params), "experiments", source=args.params)
    names = [*experiments["datasets"], *experiments.get("pretrained", {})]
    summaries = load_summaries(args.runs, names)
    for name, found in lr_finder_results(args.runs / "lr_finder").items():
        if name in summaries:
            summaries[name]["lr_finder"] = found
    published = yaml.safe_load(args.published.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    build(summaries, published, args.out, data_sources(args.prepared))
    print(f"report of {len(summaries)} experiments -> {args.out / 'results.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
