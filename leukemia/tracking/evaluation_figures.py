"""Figures of an evaluation: reliability diagram, ROC and precision-recall curves with the operating point,
Grad-CAM heat maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

from leukemia.evaluation.calibration import Reliability
from leukemia.tracking.figures import plt


def reliability_figure(curves: dict[str, Reliability], title: str) -> plt.Figure:
    """Accuracy against confidence per bin for each labelled set of probabilities (e.g. before and after
    temperature scaling), with the cells per bin below; the diagonal is perfect calibration."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    width = np.diff(next(iter(curves.values())).edges)[0] / (len(curves) + 1)
    for k, (label, curve) in enumerate(curves.items()):
        filled = curve.counts > 0
        top.plot(curve.confidence[filled], curve.accuracy[filled], "o-", label=f"{label} (ECE {curve.ece:.3f})")
        bottom.bar(curve.edges[:-1] + (k + 0.5) * width, curve.counts, width=width, label=label)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title="reliability (top-class confidence, 15 bins)")
    bottom.set(xlabel="confidence", ylabel="cells")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
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
                 title: str) -> plt.Figure:  # fmt: skip
    """scikit-learn's ROC (``kind="roc"``) or precision-recall curve of P(ALL), ALL the positive class, with
    the point the threshold picks."""
    figure, axis = plt.subplots(figsize=(5.5, 5))
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
) -> plt.Figure:
    """One row per true class: its most confident correct and wrong cell, each as the image and its heat map
    overlaid; ``panels`` maps (class, outcome) to (image, overlay, confidence)."""
    figure, axes = plt.subplots(len(class_names), 4, figsize=(10, 2.8 * len(class_names)), squeeze=False)
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
