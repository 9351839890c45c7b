"""Figures of a run, drawn from its logged metric histories ({key: [(step, value), ...]})."""

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from src.calibration import table_error

History = dict[str, list[tuple[int, float]]]


def learning_curves(history: History, path: Path) -> Path:
    """Loss, accuracy (train and validation; an autoencoder has none) and learning rate against epoch."""
    metrics = [metric for metric in ("loss", "accuracy") if metric in history or f"val_{metric}" in history]
    figure, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.4 * (len(metrics) + 1), 3.8))
    for axis, metric in zip(axes[:-1], metrics, strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                steps, values = zip(*history[key], strict=True)
                axis.plot(steps, values, style, marker=".", label=key)
        axis.set(xlabel="epoch", title=metric)
        axis.legend()
        axis.grid(alpha=0.3)
    if "learning_rate" in history:
        steps, values = zip(*history["learning_rate"], strict=True)
        axes[-1].plot(steps, values, marker=".")
        axes[-1].set(xlabel="epoch", title="learning rate (end of epoch)", yscale="log")
        axes[-1].grid(alpha=0.3)
    return save(figure, path, fixed_margins=True)


def gradients_by_depth(history: History, path: Path) -> Path:
    """Gradient norm and activation std per layer, one line per epoch (0 = initialisation)."""
    norms = {key.removeprefix("grad_norm/"): values for key, values in history.items() if key.startswith("grad_norm/")}
    stds = {key.removeprefix("act_std/"): values for key, values in history.items() if key.startswith("act_std/")}
    layers = sorted(norms, key=depth_order)
    steps = sorted({step for values in norms.values() for step, _ in values})
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    colors = plt.cm.viridis([i / max(1, len(steps) - 1) for i in range(len(steps))])
    for color, step in zip(colors, steps, strict=True):
        left.plot(range(1, len(layers) + 1), [dict(norms[name]).get(step) for name in layers], color=color,
                  label=f"epoch {step}")
        hidden = [name for name in layers if name in stds]
        right.plot(range(1, len(hidden) + 1), [dict(stds[name]).get(step) for name in hidden], color=color)
    left.set(xlabel="layer (input side first; last = output)", ylabel="gradient L2 norm of the kernel",
             yscale="log", title="gradients by depth")
    right.set(xlabel="hidden layer", ylabel="activation std", title="activations by depth")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(steps) <= 12:
        left.legend(fontsize=7)
    return save(figure, path, fixed_margins=True)


def depth_order(layer: str) -> tuple[int, str]:
    """Input side first: hidden_NN, an autoencoder's decoder_NN and reconstruction, the output last."""
    kinds = ("hidden", "decoder", "reconstruction", "output")
    return next((rank for rank, kind in enumerate(kinds) if layer.startswith(kind)), 0), layer


def confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
    """Test-set counts, true class down, predicted across; each row shaded by its share."""
    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(7.5, 6.5))
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        axis.text(column, row, str(count), ha="center", va="center", fontsize=7,
                  color="white" if shares[row, column] > 0.5 else "black")
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axis.set(xlabel="predicted", ylabel="true", title=f"test set: accuracy {accuracy:.4f}")
    figure.colorbar(image, ax=axis, label="share of the true class")
    return save(figure, path)


def lr_vs_loss(rates: list[float], losses: list[float], smoothed: list[float], suggestion: float,
               divergence: float | None, path: Path) -> Path:
    """The learning-rate finder's curve, as the notebook's plot_lr_vs_loss draws it (log rate axis,
    the lowest loss as a line, losses cut at the first plus the lowest), with its two rates marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(rates, losses, color="tab:blue", alpha=0.35, label="batch loss")
    axis.plot(rates, smoothed, color="tab:blue", label="smoothed")
    axis.hlines(min(smoothed), min(rates), max(rates), color="k", linewidth=0.8)
    axis.axvline(suggestion, color="tab:green", linestyle="--", label=f"suggested {suggestion:.3g}")
    if divergence is not None:
        axis.axvline(divergence, color="tab:red", linestyle=":", label=f"loss back above its start {divergence:.3g}")
    axis.set(xscale="log", xlabel="learning rate", ylabel="loss", ylim=(0, losses[0] + min(losses)))
    axis.legend()
    axis.grid(alpha=0.3)
    return save(figure, path)


def reliability_diagram(record: dict, path: Path, title: str = "test set") -> Path:
    """Accuracy against confidence per bin (the diagonal is perfect calibration) and each bin's share
    of the images, for each kind of prediction in record["reliability"] (src/calibration.py's tables)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([0, 1], [0, 1], color="black", linewidth=0.8, label="perfectly calibrated")
    edges = np.asarray(next(iter(record["reliability"].values()))["edges"])
    width = (edges[1] - edges[0]) / (len(record["reliability"]) + 1)
    for offset, (kind, table) in enumerate(record["reliability"].items()):
        shown = [(c, a) for c, a in zip(table["confidence"], table["accuracy"], strict=True) if c is not None]
        name = kind.replace("_", " ")
        left.plot(*zip(*shown, strict=True), marker="o", label=f"{name}: ECE {table_error(table):.4f}")
        counts = np.asarray(table["count"])
        right.bar(edges[:-1] + width * (offset + 0.5), counts / counts.sum(), width=width, align="edge",
                  label=name)
    left.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top class probability)", ylabel="accuracy",
             title=f"reliability, {title}")
    right.set(xlim=(0, 1), xlabel="confidence (top class probability)", ylabel="share of images", yscale="log",
              title="images per confidence bin")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path, fixed_margins=True)


# Margins around and between panels, in inches: enough for tick labels, an axis label and a title.
MARGINS = {"left": 0.8, "right": 0.2, "bottom": 0.55, "top": 0.35, "between": 0.8}


def save(figure, path: Path, fixed_margins: bool = False) -> Path:
    """Write a PNG, its panels laid out by tight_layout, or (fixed_margins, for one row of panels with
    short labels) at MARGINS: tight_layout draws the whole figure once more to measure its labels,
    40% of the time of the figures every run draws."""
    if not fixed_margins:
        figure.tight_layout()
    else:
        width, height = figure.get_size_inches()
        columns = figure.axes[0].get_subplotspec().get_gridspec().ncols
        panel = (width - MARGINS["left"] - MARGINS["right"] - (columns - 1) * MARGINS["between"]) / columns
        figure.subplots_adjust(left=MARGINS["left"] / width, right=1 - MARGINS["right"] / width,
                               bottom=MARGINS["bottom"] / height, top=1 - MARGINS["top"] / height,
                               wspace=MARGINS["between"] / panel)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
