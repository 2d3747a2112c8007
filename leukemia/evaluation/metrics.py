"""Classification metrics from predictions, including the ones that matter for C-NMC.

Normal cells are the minority class and their accuracy is what limits the task, so per-class accuracy and
balanced accuracy are reported beside plain accuracy; weighted F1 is the C-NMC 2019 challenge metric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from leukemia.names import (
    ACCURACY,
    BALANCED_ACCURACY,
    CLASS_ACCURACIES,
    F1_WEIGHTED,
    NPV,
    PPV,
    SENSITIVITY,
    SPECIFICITY,
)


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def confusion_counts(matrix: np.ndarray, class_names: Sequence[str], **extra: object) -> dict:
    """The matrix as a JSON-ready record that says how to read it."""
    return {"classes": list(class_names), "rows": "true", "columns": "predicted", **extra, "counts": matrix.tolist()}


def binary_scores(tn: np.ndarray, fp: np.ndarray, fn: np.ndarray, tp: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of 2×2 counts (ALL positive; arrays of counts give arrays of scores): accuracy, balanced_accuracy
    (the mean recall of the classes present), f1_weighted, accuracy_<class>, sensitivity and specificity (the
    recalls, NaN when the class is absent: undefined, not 0), ppv and npv (NaN when nothing is called that
    class)."""
    tn, fp, fn, tp = (np.asarray(count, dtype=np.float64) for count in (tn, fp, fn, tp))
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
        ppv, npv = tp / (tp + fp), tn / (tn + fn)
        f1_all, f1_normal = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)
        total = tn + fp + fn + tp
        present = (tn + fp > 0).astype(np.float64) + (tp + fn > 0)
        scores = {
            ACCURACY: (tp + tn) / total,
            BALANCED_ACCURACY: np.where(
                present > 0, (np.nan_to_num(specificity) + np.nan_to_num(sensitivity)) / np.maximum(present, 1), 0.0
            ),
            F1_WEIGHTED: (np.nan_to_num(f1_all) * (tp + fn) + np.nan_to_num(f1_normal) * (tn + fp)) / total,
        }
    scores |= dict(zip(CLASS_ACCURACIES, (specificity, sensitivity), strict=True))
    return scores | {SENSITIVITY: sensitivity, SPECIFICITY: specificity, PPV: ppv, NPV: npv}


def classification_metrics(matrix: np.ndarray) -> dict[str, float]:
    """binary_scores of a 2×2 confusion matrix (true rows, predicted columns; 0 normal, 1 ALL), as floats;
    the scores a class's absence leaves undefined (sensitivity … npv) are left out."""
    (tn, fp), (fn, tp) = matrix
    return {key: float(value) for key, value in binary_scores(tn, fp, fn, tp).items() if np.isfinite(value)}


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
