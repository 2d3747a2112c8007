"""Calibration: how far the predicted probabilities are from observed frequencies, and the decision fitted on
validation (the temperature, then the threshold on the calibrated probabilities).

The expected calibration error (ECE) is Guo et al.'s (2017): cells binned by the confidence of their top class
into 15 equal-width bins, the gap between each bin's accuracy and mean confidence weighted by its share of the
cells. Temperature scaling divides the logits by one scalar fitted on validation; it changes no label at 0.5.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from scipy import special
from scipy.optimize import minimize_scalar
from sklearn.metrics import brier_score_loss, log_loss
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from leukemia.errors import UserError
from leukemia.evaluation.decision import Decision

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
BALANCED = "balanced"  # eval.threshold=balanced: chosen on validation


@dataclass(frozen=True)
class Reliability:
    """Per bin of a score: its edges, its cells, their mean score and outcome (NaN where empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray  # the bin's mean score (top-class confidence, or P(ALL))
    accuracy: np.ndarray  # the bin's mean outcome (correct, or ALL)

    @property
    def ece(self) -> float:
        filled = self.counts > 0
        weights = self.counts[filled] / self.counts.sum()
        return float((weights * np.abs(self.accuracy[filled] - self.confidence[filled])).sum())


def binned(scores: np.ndarray, outcomes: np.ndarray, bins: int = BINS) -> Reliability:
    """``outcomes`` (0/1) averaged per equal-width bin of ``scores`` in [0, 1]; a bin holds [lower, upper),
    the last also 1."""
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(index, scores, minlength=bins) / counts
        observed = np.bincount(index, outcomes.astype(np.float64), minlength=bins) / counts
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, mean_score, observed)


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin (N, classes) probabilities by top-class confidence: each bin's accuracy against its confidence."""
    return binned(probabilities.max(axis=1), probabilities.argmax(axis=1) == targets, bins)


def reliability_all(probability_all: np.ndarray, targets: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin the probability of ALL: each bin's fraction of ALL cells against its mean P(ALL) (the positive
    class's reliability curve)."""
    return binned(np.asarray(probability_all, dtype=np.float64), np.asarray(targets) == 1, bins)


@dataclass(frozen=True)
class Recalibration:
    """The logistic recalibration of P(ALL): logit P(y = ALL) = intercept + slope × logit P(ALL); a calibrated
    model has intercept 0 and slope 1 (slope < 1: too confident). ``reason`` says why there is none."""

    intercept: float = float("nan")
    slope: float = float("nan")
    reason: str = ""


def recalibration(probability_all: np.ndarray, targets: np.ndarray) -> Recalibration:
    """statsmodels' maximum-likelihood logistic regression of the labels on logit P(ALL); none where the
    labels are one class or the probabilities separate them perfectly (the slope is then infinite)."""
    logits = special.logit(np.clip(np.asarray(probability_all, dtype=np.float64), 1e-12, 1 - 1e-12))
    targets = np.asarray(targets)
    if len(np.unique(targets)) < 2:
        return Recalibration(reason="one class only")
    if logits[targets == 1].min() > logits[targets == 0].max():
        return Recalibration(reason="the probabilities separate the classes perfectly: the slope is unbounded")
    if np.ptp(logits) == 0:
        return Recalibration(reason="every cell has the same P(ALL): there is no slope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, PerfectSeparationWarning, RuntimeWarning))
        try:
            fit = sm.Logit(targets, sm.add_constant(logits, has_constant="add")).fit(disp=0, maxiter=200)
        except np.linalg.LinAlgError:
            fit = None
    if fit is None or not fit.mle_retvals["converged"] or not np.isfinite(fit.params).all():
        return Recalibration(reason="the logistic fit did not converge (nearly separated classes)")
    return Recalibration(float(fit.params[0]), float(fit.params[1]))


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


def check_threshold_fits(threshold: str, targets: np.ndarray) -> None:
    """``eval.threshold=balanced`` needs validation cells of both classes (checked before training, and here)."""
    if threshold == BALANCED and len(np.unique(targets)) < 2:
        raise UserError("eval.threshold=balanced: the validation split holds one class only; set a number "
                        "(eval.threshold=0.5)")  # fmt: skip


def balanced_threshold(probability_all: np.ndarray, targets: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy on these (validation) cells, a validation probability
    itself; among equals, the one nearest 0.5 (then the lower). Compared exactly: at threshold t, with P
    positives and N negatives, balanced accuracy - 1/2 is (TP(t)·N - FP(t)·P) / 2PN, so the integer
    TP(t)·N - FP(t)·P ranks the thresholds without rounding."""
    targets = np.asarray(targets)
    check_threshold_fits(BALANCED, targets)
    probability_all = np.asarray(probability_all, dtype=np.float64)
    candidates = np.unique(probability_all)  # ascending
    positives, negatives = (np.sort(probability_all[targets == c]) for c in (1, 0))
    true_positives = len(positives) - np.searchsorted(positives, candidates, side="left")  # P(ALL) >= t
    false_positives = len(negatives) - np.searchsorted(negatives, candidates, side="left")
    gain = true_positives.astype(np.int64) * len(negatives) - false_positives.astype(np.int64) * len(positives)
    best = np.flatnonzero(gain == gain.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])  # argmin: the first, the lower


def fit_decision(log_probabilities: np.ndarray, targets: np.ndarray, threshold: str) -> Decision:
    """The decision fitted on validation cells: the temperature, then ``eval.threshold`` (a number as it is, or
    ``balanced`` chosen on the calibrated probabilities)."""
    temperature = fit_temperature(log_probabilities, targets)
    if threshold != BALANCED:
        return Decision(temperature, float(threshold))
    probability_all = Decision(temperature).probability_all(log_probabilities)
    return Decision(temperature, balanced_threshold(probability_all, targets))
