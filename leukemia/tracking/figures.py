"""Figures logged with each run: the confusion matrix, the per-epoch learning curves, a grid of training images."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # runs on headless machines; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> plt.Figure:
    """Counts beside row-normalised rates (each row: how one true class was predicted)."""
    labels = list(class_names)[: len(matrix)]
    rows = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    sns.heatmap(matrix, annot=True, fmt="d", cmap="Blues", cbar=False, ax=left, xticklabels=labels, yticklabels=labels)
    sns.heatmap(
        rates,
        annot=True,
        fmt=".2f",
        cmap="Blues",
        vmin=0,
        vmax=1,
        ax=right,
        xticklabels=labels,
        yticklabels=labels,
    )
    for axis, subtitle in ((left, "counts"), (right, "normalised by true class")):
        axis.set(xlabel="predicted", ylabel="true", title=subtitle)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def learning_curves_figure(history: dict[str, list[float]], title: str) -> plt.Figure:
    """Accuracy and loss per epoch, train against validation."""
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    figure, (accuracy_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for split in ("train", "val"):
        accuracy_axis.plot(epochs, history[f"{split}_accuracy"], marker="o", label=split)
        loss_axis.plot(epochs, history[f"{split}_loss"], marker="o", label=split)
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    for axis in (accuracy_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def image_grid_figure(
    images: np.ndarray, labels: Sequence[int], class_names: Sequence[str], title: str, columns: int = 4
) -> plt.Figure:
    """Images (N, H, W, 3 in [0, 1]) in a grid, each titled with its class: what the network is shown."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index])
            axis.set_title(class_names[labels[index]], fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def comparison_figure(histories: dict[str, dict[str, list[float]]], metric: str, ylabel: str, title: str) -> plt.Figure:
    """Every run's ``train_<metric>`` (dashed) and ``val_<metric>`` (solid) per epoch on one axes, one colour
    per run: the seed's comparison figure."""
    figure, axis = plt.subplots(figsize=(9, 5.5))
    colours = sns.color_palette("tab10", max(len(histories), 3))
    for colour, (label, history) in zip(colours, histories.items(), strict=False):
        for split, style in (("train", "--"), ("val", "-")):
            values = history.get(f"{split}_{metric}", [])
            epochs = np.arange(1, len(values) + 1)
            axis.plot(epochs, values, style, color=colour, marker="o", markersize=3, label=f"{label} ({split})")
    axis.set(xlabel="epoch", ylabel=ylabel, title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric == "accuracy":
        axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def confusion_grid_figure(matrices: dict[str, np.ndarray], class_names: Sequence[str], title: str) -> plt.Figure:
    """The runs' confusion matrices side by side, row-normalised colours with counts written in."""
    figure, axes = plt.subplots(1, len(matrices), figsize=(3.8 * len(matrices), 3.9), squeeze=False)
    labels = list(class_names)
    for axis, (label, matrix) in zip(axes[0], matrices.items(), strict=True):
        rows = matrix.sum(axis=1, keepdims=True)
        rates = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
        annotations = [[f"{count}\n{rate:.0%}" for count, rate in zip(r, q, strict=True)] for r, q in
                       zip(matrix, rates, strict=True)]  # fmt: skip
        sns.heatmap(rates, annot=annotations, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=axis,
                    xticklabels=labels, yticklabels=labels)  # fmt: skip
        axis.set(xlabel="predicted", ylabel="true")
        axis.set_title(label, fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
