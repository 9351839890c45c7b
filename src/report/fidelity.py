"""Ours beside every number the book prints (reports/published.yaml): rows, verdicts, one summary line.

An accuracy is matched when our mean over seeds is within the tolerance (1.5 points) of the
book's single run; otherwise the verdict says whether the book's run lies inside our mean
± 2 std (the spread of single runs we see), or names the difference. Losses have no fixed
tolerance: only the spread verdict applies to them.
"""

from dataclasses import dataclass

from src.report.stats import Spread, arm_metric

SOURCE_MODEL = "source_model"  # the arm name of an experiment's source model (transfer_ab's model A)


@dataclass(frozen=True)
class Comparison:
    experiment: str
    arm: str          # our arm that runs the book's setting
    book: str         # the book's name for the run
    metric: str
    value: float      # the number the book prints
    cell: str
    note: str | None
    ours: Spread | None

    @property
    def is_accuracy(self) -> bool:
        return "accuracy" in self.metric

    def status(self, tolerance: float) -> str:
        """matched | spread (inside our mean ± 2 std) | differs | missing (not run)."""
        if self.ours is None:
            return "missing"
        gap = abs(self.ours.mean - self.value)
        if self.is_accuracy and gap <= tolerance:
            return "matched"
        return "spread" if self.ours.n > 1 and gap <= 2 * self.ours.std else "differs"

    def verdict(self, tolerance: float) -> str:
        status, points = self.status(tolerance), f"{tolerance * 100:.1f} pts"
        if status == "matched":
            return f"within {points}"
        if status == "spread":
            width = f"{2 * self.ours.std * 100:.1f} pts" if self.is_accuracy else f"{2 * self.ours.std:.4f}"
            return ("outside " + points + ", but " if self.is_accuracy else "") + f"inside our mean ± 2 std ({width})"
        if status == "differs":
            return "outside our seed spread" + (": see the note" if self.note else "")
        return "not run"


def numbers(published: dict, name: str) -> list[dict]:
    """The published numbers of one experiment, each with its metric filled in."""
    book = published.get(name) or {}
    return [{"metric": book.get("metric", "val_accuracy"), **number} for number in book.get("numbers", [])]


def runs_of(summary: dict, arm: str) -> list[dict]:
    if arm == SOURCE_MODEL:
        return list(summary.get("source_runs", {}).values())
    return summary["arms"].get(arm, [])


def comparisons(summaries: dict[str, dict], published: dict) -> list[Comparison]:
    rows = []
    for name, summary in summaries.items():
        for number in numbers(published, name):
            arm = number["arm"]
            rows.append(Comparison(name, arm, number.get("book", arm), number["metric"], number["value"],
                                   number["cell"], number.get("note"), arm_metric(runs_of(summary, arm),
                                                                                   number["metric"])))
    return rows


def table(rows: list[Comparison], tolerance: float) -> list[str]:
    lines = ["| experiment | the book's run | our arm | metric | ours (mean ± std) | published | difference | "
             "verdict | cell |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        scale, unit = (100, " pts") if row.is_accuracy else (1, "")
        ours = f"{row.ours.shown()} (n={row.ours.n})" if row.ours else "(not run)"
        gap = f"{(row.ours.mean - row.value) * scale:+.{2 if row.is_accuracy else 4}f}{unit}" if row.ours else ""
        lines.append(f"| {row.experiment} | {row.book} | {row.arm} | {row.metric} | {ours} | {row.value:.4f} | "
                     f"{gap} | {row.verdict(tolerance)} | {row.cell} |")
    return lines


def summary_line(rows: list[Comparison], tolerance: float) -> str:
    """N of M accuracies matched, K more inside our spread, and which differ; the losses apart."""
    accuracies = [row for row in rows if row.is_accuracy]
    count = {status: [row for row in accuracies if row.status(tolerance) == status]
             for status in ("matched", "spread", "differs", "missing")}
    line = (f"**{len(count['matched'])} of {len(accuracies)} published accuracies matched within "
            f"{tolerance * 100:.1f} points by our mean; {len(count['spread'])} more lie inside our mean ± 2 std**")
    if count["differs"]:
        line += "; outside both: " + ", ".join(f"{row.experiment} {row.book} ({row.metric})"
                                               for row in count["differs"])
    if count["missing"]:
        line += f"; {len(count['missing'])} not run yet"
    losses = [row for row in rows if not row.is_accuracy]
    if losses:
        inside = sum(row.status(tolerance) == "spread" for row in losses)
        line += f". Losses: {inside} of {len(losses)} inside our mean ± 2 std"
    return line + "."
