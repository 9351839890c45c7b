"""The report's figures, drawn from experiment summaries (runs/<name>/summary.json)."""

import re
import warnings
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from src.figures import plt, save  # Agg backend, one way of saving
from src.report.stats import arm_metric


def mean_curve(runs: list[dict], key: str) -> np.ndarray | None:
    """The per-epoch mean over seeds, as long as the shortest run (early stopping ends runs apart)."""
    curves = [run["curves"][key] for run in runs if key in run["curves"] and not run["diverged"]]
    if not curves:
        return None
    length = min(len(curve) for curve in curves)
    return np.array([[np.nan if v is None else v for v in curve[:length]] for curve in curves]).mean(axis=0)


def learning_curves(summary: dict, path: Path) -> Path | None:
    """Validation accuracy (and, where it moves, the learning rate) per epoch, one line per arm."""
    arms = {label: mean_curve(runs, "val_accuracy") for label, runs in summary["arms"].items()}
    arms = {label: curve for label, curve in arms.items() if curve is not None and len(curve) > 1}
    if not arms:
        return None
    rates = {label: mean_curve(runs, "learning_rate") for label, runs in summary["arms"].items()}
    varying = {label: curve for label, curve in rates.items() if curve is not None and np.ptp(curve) > 0}
    figure, axes = plt.subplots(1, 2 if varying else 1, figsize=(13 if varying else 7, 4.2), squeeze=False)
    for label, curve in arms.items():
        axes[0][0].plot(range(1, len(curve) + 1), curve, marker=".", label=label)
    axes[0][0].set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)", title=summary["experiment"])
    axes[0][0].legend(fontsize=8)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if varying:
        for label, curve in varying.items():
            axes[0][1].plot(range(1, len(curve) + 1), curve, marker=".", label=label)
        axes[0][1].set(xlabel="epoch", ylabel="learning rate (end of epoch)", yscale="log", title="learning rate")
        axes[0][1].legend(fontsize=8)
    return save(figure, path)


def depth_index(layer: str) -> int:
    match = re.search(r"(\d+)$", layer)
    return int(match.group(1)) if match else 10**6  # "output" last


def layer_norms(runs: list[dict], when: str) -> tuple[list[str], np.ndarray] | None:
    """Each layer's gradient norm (input side first) at `when` ("initial" or "final"), the
    geometric mean over seeds; None where the runs logged none."""
    norms = [run["grad_norm"][when] for run in runs if "grad_norm" in run]
    if not norms:
        return None
    layers = sorted(norms[0], key=depth_index)
    # A norm of 0 (underflow: sigmoid's vanishing gradients) has no place on a log axis: left out.
    values = np.array([[norm.get(layer) or np.nan for layer in layers] for norm in norms], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer that underflowed in every seed: NaN
        return layers, np.exp(np.nanmean(np.log(values), axis=0))


def gradients_by_depth(summary: dict, path: Path) -> Path | None:
    """Gradient norm of each layer at initialisation against depth: one panel per activation,
    one line per initialiser (arms labelled "activation, initializer"), geometric mean over seeds."""
    panels: dict[str, dict[str, np.ndarray]] = {}
    layers: list[str] = []
    for label, runs in summary["arms"].items():
        if found := layer_norms(runs, "initial"):
            layers, values = found
            activation, _, initializer = label.partition(", ")
            panels.setdefault(activation, {})[initializer or activation] = values
    if not panels:
        return None
    columns = 4
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False, sharex=True)
    depth = np.arange(1, len(layers) + 1)
    for axis, (activation, lines) in zip(axes.flat, panels.items(), strict=False):
        for initializer, values in lines.items():
            axis.plot(depth, values, label=initializer)
        axis.set(yscale="log", title=activation, xlabel="layer (input side first, output last)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    axes[0][0].set_ylabel("gradient norm at initialisation")
    figure.suptitle(f"{summary['experiment']}: per-layer gradient norm before training")
    return save(figure, path)


def gradients_by_arm(summary: dict, path: Path) -> Path | None:
    """Gradient norm of each layer against depth, one line per arm (geometric mean over seeds):
    before training and after the last epoch, side by side."""
    moments = {"initial": "at initialisation", "final": "after the last epoch"}
    lines = {when: {label: found for label, runs in summary["arms"].items() if (found := layer_norms(runs, when))}
             for when in moments}
    if not lines["initial"]:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    for axis, (when, title) in zip(axes, moments.items(), strict=True):
        for label, (layers, values) in lines[when].items():
            axis.plot(np.arange(1, len(layers) + 1), values, label=label)
        axis.set(yscale="log", title=title, xlabel="layer (input side first, output last)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("gradient norm (geometric mean over seeds)")
    axes[1].legend(fontsize=8, ncol=2)
    figure.suptitle(f"{summary['experiment']}: per-layer gradient norm")
    return save(figure, path)


def comparison(summary: dict, metric: str, published: dict[str, float], path: Path) -> Path | None:
    """Ours (mean ± std over seeds) per arm as bars, the published values as markers."""
    labels = [label for label, runs in summary["arms"].items() if arm_metric(runs, metric)]
    if not labels:
        return None
    stats = [arm_metric(summary["arms"][label], metric) for label in labels]
    figure, axis = plt.subplots(figsize=(max(6, len(labels) * 0.9), 4))
    axis.bar(labels, [s.mean for s in stats], yerr=[s.std for s in stats], capsize=4, color="tab:blue",
             alpha=0.7, label="ours (mean ± std over seeds)")
    book = [(index, published[label]) for index, label in enumerate(labels) if label in published]
    if book:
        axis.scatter(*zip(*book, strict=True), color="tab:red", marker="D", zorder=3, label="published")
    low = min([s.mean - s.std for s in stats] + [value for _, value in book])
    axis.set(ylabel=metric, ylim=(max(0, low - 0.03), None), title=f"{summary['experiment']}: {metric}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.autofmt_xdate(rotation=30)
    return save(figure, path)


def fidelity(rows: list, tolerance: float, path: Path) -> Path | None:
    """Every published accuracy (x) against our mean (y, error bars ± std over seeds): on the diagonal is a match."""
    shown = [row for row in rows if row.is_accuracy and row.ours is not None]
    if not shown:
        return None
    colours = {"matched": "tab:green", "spread": "tab:orange", "differs": "tab:red"}
    figure, axis = plt.subplots(figsize=(7, 7))
    low = min(min(row.value, row.ours.mean - row.ours.std) for row in shown) - 0.02
    high = max(max(row.value, row.ours.mean + row.ours.std) for row in shown) + 0.02
    axis.plot([low, high], [low, high], color="black", linewidth=1)
    axis.fill_between([low, high], [low - tolerance, high - tolerance], [low + tolerance, high + tolerance],
                      color="tab:green", alpha=0.12, label=f"within {tolerance * 100:.1f} points")
    for status, colour in colours.items():
        group = [row for row in shown if row.status(tolerance) == status]
        if group:
            axis.errorbar([row.value for row in group], [row.ours.mean for row in group],
                          yerr=[row.ours.std for row in group], fmt="o", color=colour, capsize=3, markersize=5,
                          label={"matched": "matched", "spread": "inside our mean ± 2 std",
                                 "differs": "outside our spread"}[status] + f" ({len(group)})")
    for row in shown:
        if row.status(tolerance) != "matched":
            axis.annotate(f"{row.experiment}: {row.book}", (row.value, row.ours.mean), fontsize=7,
                          xytext=(4, -10), textcoords="offset points")
    axis.set(xlim=(low, high), ylim=(low, high), xlabel="the book's number (one run)",
             ylabel="ours (mean ± std over seeds)",
             title="Chapter 11: every published accuracy, ours against the book's")
    axis.set_aspect("equal")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    return save(figure, path)
