"""Calibration: how far the predicted probabilities are from observed frequencies, and temperature scaling.

The expected calibration error (ECE) is Guo et al.'s (2017): cells binned by the confidence of their top class
into 15 equal-width bins, the gap between each bin's accuracy and mean confidence weighted by its share of the
cells. Temperature scaling divides the logits by one scalar fitted on validation; it changes no label at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


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


def calibrated(log_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax probabilities as if the logits had been divided by ``temperature``: (N, classes)
    log-probabilities are the logits less a constant per row, which the softmax ignores."""
    logits = np.asarray(log_probabilities, dtype=np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(log_probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The temperature that minimises the cross-entropy (scikit-learn's log loss) of the calibrated
    probabilities on these cells, searched on a log scale within TEMPERATURE_RANGE."""
    classes = list(range(log_probabilities.shape[1]))

    def loss(log_temperature: float) -> float:
        return log_loss(targets, calibrated(log_probabilities, float(np.exp(log_temperature))), labels=classes)

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(loss, bounds=(low, high), method="bounded").x))
