"""The operating point: the probability of ALL at or above which a cell, or a subject, is called ALL."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from leukemia.errors import UserError

BALANCED = "balanced"  # eval.threshold=balanced: chosen on validation


def labels_at(probability_all: np.ndarray, threshold: float) -> np.ndarray:
    """1 (ALL) where the probability of ALL is at least ``threshold``, else 0 (normal)."""
    return (np.asarray(probability_all) >= threshold).astype(np.int64)


def balanced_threshold(probability_all: np.ndarray, targets: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy on these (validation) cells: the ROC point with the
    largest true-positive minus false-positive rate, a validation probability itself; among equals, the one
    nearest 0.5."""
    if len(np.unique(targets)) < 2:
        raise UserError("eval.threshold=balanced: the validation split holds one class only; set a number "
                        "(eval.threshold=0.5)")  # fmt: skip
    false_positive, true_positive, thresholds = roc_curve(targets, probability_all, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    youden = np.where(finite, true_positive - false_positive, -np.inf)
    best = np.flatnonzero(youden == youden.max())
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])


def operating_threshold(setting: str, probability_all: np.ndarray, targets: np.ndarray) -> float:
    """``eval.threshold``: a number as it is, or ``balanced`` chosen on the given validation cells."""
    return balanced_threshold(probability_all, targets) if setting == BALANCED else float(setting)
