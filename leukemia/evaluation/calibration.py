"""Calibration: how far the predicted probabilities are from observed frequencies, and the decision fitted on
validation (the temperature, then the threshold on the calibrated probabilities).

The expected calibration error (ECE) is Guo et al.'s (2017): cells binned by the confidence of their top class
into 15 equal-width bins, the gap between each bin's accuracy and mean confidence weighted by its share of the
cells. Temperature scaling divides the logits by one scalar fitted on validation; it changes no label at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss, roc_curve

from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
BALANCED = "balanced"  # eval.threshold=balanced: chosen on validation


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: its edges, its cells, their mean confidence and accuracy (NaN where empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        filled = self.counts > 0
        weights = self.counts[filled] / self.counts.sum()
        return float((weights * np.abs(self.accuracy[filled] - self.confidence[filled])).sum())


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin (N, classes) probabilities by top-class confidence; a bin holds [lower, upper), the last also 1."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, mean_confidence, accuracy)


def brier(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """scikit-learn's Brier score of the probability of class 1 (ALL): mean squared error against 0/1."""
    return float(brier_score_loss(targets, probabilities[:, 1], labels=[0, 1]))


def fit_temperature(log_probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The temperature that minimises the cross-entropy (scikit-learn's log loss) of the calibrated
    probabilities on these cells, searched on a log scale within TEMPERATURE_RANGE."""
    classes = list(range(log_probabilities.shape[1]))

    def loss(log_temperature: float) -> float:
        calibrated = Decision(float(np.exp(log_temperature))).probabilities(log_probabilities)
        return log_loss(targets, calibrated, labels=classes)

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(loss, bounds=(low, high), method="bounded").x))


def temperature_at_bound(temperature: float) -> bool:
    """Whether the fitted temperature ended at an end of its search range (the validation split did not pin it)."""
    return not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] / 1.01


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


def fit_decision(log_probabilities: np.ndarray, targets: np.ndarray, threshold: str) -> Decision:
    """The decision fitted on validation cells: the temperature, then ``eval.threshold`` (a number as it is, or
    ``balanced`` chosen on the calibrated probabilities)."""
    temperature = fit_temperature(log_probabilities, targets)
    if threshold != BALANCED:
        return Decision(temperature, float(threshold))
    probability_all = Decision(temperature).probability_all(log_probabilities)
    return Decision(temperature, balanced_threshold(probability_all, targets))
