"""Classification metrics from predictions, including the ones that matter for C-NMC.

Normal cells are the minority class and their accuracy is what limits the task, so per-class accuracy and
balanced accuracy are reported beside plain accuracy; weighted F1 is the C-NMC 2019 challenge metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def confusion_counts(matrix: np.ndarray, class_names: Sequence[str], **extra: object) -> dict:
    """The matrix as a JSON-ready record that says how to read it."""
    return {"classes": list(class_names), "rows": "true", "columns": "predicted", **extra, "counts": matrix.tolist()}


def classification_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1_weighted and accuracy_<class> (recall) from a confusion matrix."""
    matrix = matrix.astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    hits = np.diag(matrix)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(hits), where=precision + recall > 0)
    total = matrix.sum()
    present = support > 0
    metrics = {
        "accuracy": float(hits.sum() / total) if total else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "f1_weighted": float((f1 * support).sum() / total) if total else 0.0,
    }
    for index, name in enumerate(class_names):
        metrics[f"accuracy_{name}"] = float(recall[index])
    return metrics


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's area under the ROC curve of ``scores`` (higher = class 1) against 0/1 ``targets``; NaN
    when a class is absent (a bootstrap draw, a one-class split)."""
    if len(np.unique(targets)) < 2:
        return float("nan")
    return float(roc_auc_score(targets, scores))


def average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's average precision (the area under the precision-recall curve) of ``scores`` for class 1;
    NaN when a class is absent."""
    if len(np.unique(targets)) < 2:
        return float("nan")
    return float(average_precision_score(targets, scores))
