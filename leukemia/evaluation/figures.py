"""Every figure a run logs, as matplotlib Figure objects (no pyplot, so no backend to choose and no global
state): confusion matrices, learning curves, image grids and the runs compared (task=plot); the reliability
diagrams, the decision curve, ROC and precision-recall curves with the operating point, Grad-CAM panels.
Knows no MLflow: tracking logs what these return."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

from leukemia.evaluation.calibration import Reliability
from leukemia.evaluation.decision_curve import MODEL, THRESHOLD_PROBABILITY, TREAT_ALL, TREAT_NONE
from leukemia.names import ACCURACY, LOSS, TRAIN, VAL, of


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str) -> Figure:
    """Counts beside row-normalised rates (each row: how one true class was predicted)."""
    labels = list(class_names)[: len(matrix)]
    rows = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    figure = Figure(figsize=(10, 4.2))
    (left, right) = figure.subplots(1, 2)
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


def learning_curves_figure(history: dict[str, list[float]], title: str) -> Figure:
    """Accuracy and loss per epoch, train against validation."""
    epochs = np.arange(1, len(history[of(TRAIN, LOSS)]) + 1)
    figure = Figure(figsize=(11, 4))
    (accuracy_axis, loss_axis) = figure.subplots(1, 2)
    for split in (TRAIN, VAL):
        accuracy_axis.plot(epochs, history[of(split, ACCURACY)], marker="o", label=split)
        loss_axis.plot(epochs, history[of(split, LOSS)], marker="o", label=split)
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
) -> Figure:
    """Images (N, H, W, 3 in [0, 1]) in a grid, each titled with its class: what the network is shown."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.2 * columns, 2.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index])
            axis.set_title(class_names[labels[index]], fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def comparison_figure(histories: dict[str, dict[str, list[float]]], metric: str, ylabel: str, title: str) -> Figure:
    """Every run's ``train_<metric>`` (dashed) and ``val_<metric>`` (solid) per epoch on one axes, one colour
    per run: the seed's comparison figure."""
    figure = Figure(figsize=(9, 5.5))
    axis = figure.subplots()
    colours = sns.color_palette("tab10", max(len(histories), 3))
    for colour, (label, history) in zip(colours, histories.items(), strict=False):
        for split, style in ((TRAIN, "--"), (VAL, "-")):
            values = history.get(of(split, metric), [])
            epochs = np.arange(1, len(values) + 1)
            axis.plot(epochs, values, style, color=colour, marker="o", markersize=3, label=f"{label} ({split})")
    axis.set(xlabel="epoch", ylabel=ylabel, title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric == ACCURACY:
        axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def confusion_grid_figure(matrices: dict[str, np.ndarray], class_names: Sequence[str], title: str) -> Figure:
    """The runs' confusion matrices side by side, row-normalised colours with counts written in."""
    figure = Figure(figsize=(3.8 * len(matrices), 3.9))
    axes = figure.subplots(1, len(matrices), squeeze=False)
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


def reliability_figure(curves: dict[str, Reliability], title: str, all_class: bool = False) -> Figure:
    """Each bin's outcome against its mean score for each labelled set of probabilities (e.g. before and after
    temperature scaling), with the cells per bin below; the diagonal is perfect calibration. The outcome is
    accuracy against top-class confidence, or with ``all_class`` the fraction of ALL cells against P(ALL); a
    label's legend entry carries its ECE for the first, what the label says for the second."""
    figure = Figure(figsize=(6, 6.5))
    (top, bottom) = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    width = np.diff(next(iter(curves.values())).edges)[0] / (len(curves) + 1)
    for k, (label, curve) in enumerate(curves.items()):
        filled = curve.counts > 0
        legend = label if all_class else f"{label} (ECE {curve.ece:.3f})"
        top.plot(curve.confidence[filled], curve.accuracy[filled], "o-", label=legend)
        bottom.bar(curve.edges[:-1] + (k + 0.5) * width, curve.counts, width=width, label=label)
    outcome, score = ("fraction ALL", "P(ALL)") if all_class else ("accuracy", "confidence")
    kind = "P(ALL)" if all_class else "top-class confidence"
    top.set(ylabel=outcome, xlim=(0, 1), ylim=(0, 1.02), title=f"reliability ({kind}, {len(curve.counts)} bins)")
    bottom.set(xlabel=score, ylabel="cells")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def decision_curve_figure(curve: pd.DataFrame, title: str) -> Figure:
    """Net benefit against the threshold probability: the model, treat all, treat none (see decision_curve)."""
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    for column, style in ((MODEL, "-"), (TREAT_ALL, "--"), (TREAT_NONE, ":")):
        axis.plot(curve[THRESHOLD_PROBABILITY], curve[column], style, label=column.replace("_", " "))
    top = float(np.nanmax(curve[[MODEL, TREAT_ALL]].to_numpy()))
    axis.set(xlabel="threshold probability", ylabel="net benefit", xlim=(0, 1),
             ylim=(-0.05 * max(top, 0.1), max(top, 0.1) * 1.1), title="decision curve")  # fmt: skip
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _operating_point(targets: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """False-positive rate, recall and precision of the labels at the threshold."""
    positives, negatives = targets == 1, targets == 0
    hits = (predicted == 1) & positives
    recall = hits.sum() / max(positives.sum(), 1)
    precision = hits.sum() / max((predicted == 1).sum(), 1)
    return ((predicted == 1) & negatives).sum() / max(negatives.sum(), 1), recall, precision


def curve_figure(kind: str, targets: np.ndarray, probability_all: np.ndarray, predicted: np.ndarray, threshold: float,
                 title: str) -> Figure:  # fmt: skip
    """scikit-learn's ROC (``kind="roc"``) or precision-recall curve of P(ALL), ALL the positive class, with
    the point the threshold picks."""
    figure = Figure(figsize=(5.5, 5))
    axis = figure.subplots()
    false_positive, recall, precision = _operating_point(targets, predicted)
    if kind == "roc":
        RocCurveDisplay.from_predictions(targets, probability_all, ax=axis, name="P(ALL)", plot_chance_level=True)
        axis.plot(false_positive, recall, "o", color="crimson", label=f"threshold {threshold:.3g}")
        axis.set(xlabel="false-positive rate (normal cells called ALL)", ylabel="true-positive rate (ALL called ALL)")
    else:
        PrecisionRecallDisplay.from_predictions(targets, probability_all, ax=axis, name="P(ALL)",
                                                plot_chance_level=True)  # fmt: skip
        axis.plot(recall, precision, "o", color="crimson", label=f"threshold {threshold:.3g}")
        axis.set(xlabel="recall (ALL cells called ALL)", ylabel="precision (cells called ALL that are ALL)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right" if kind == "roc" else "lower left")
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def gradcam_figure(
    panels: dict[tuple[int, str], tuple[np.ndarray, np.ndarray, float]], class_names: Sequence[str], title: str
) -> Figure:
    """One row per true class: its most confident correct and wrong cell, each as the image and its heat map
    overlaid; ``panels`` maps (class, outcome) to (image, overlay, confidence)."""
    figure = Figure(figsize=(10, 2.8 * len(class_names)))
    axes = figure.subplots(len(class_names), 4, squeeze=False)
    for row, name in enumerate(class_names):
        for k, outcome in enumerate(("correct", "wrong")):
            image_axis, heat_axis = axes[row, 2 * k], axes[row, 2 * k + 1]
            for axis in (image_axis, heat_axis):
                axis.axis("off")
            if (row, outcome) not in panels:
                image_axis.set_title(f"{name}: no {outcome} cell", fontsize=9)
                continue
            image, heat, confidence = panels[(row, outcome)]
            image_axis.imshow(image)
            heat_axis.imshow(heat)
            image_axis.set_title(f"true {name}, {outcome}", fontsize=9)
            heat_axis.set_title(f"Grad-CAM, confidence {confidence:.2f}", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
