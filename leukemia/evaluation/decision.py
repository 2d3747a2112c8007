"""The decision: a network's log-probabilities (averaged over flips with test-time augmentation), calibrated by
a temperature, labelled at a threshold. The one implementation that the evaluation, task=predict and the served
model share. Plain numpy and torch: the logged model loads it without scikit-learn."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

FLIPS = ((), (-1,), (-2,), (-2, -1))  # identity, horizontal, vertical, both


def log_probabilities(network: nn.Module, inputs: torch.Tensor, flips: bool = False) -> torch.Tensor:
    """Class log-probabilities (N, classes) of normalised ``inputs``, in float32. With ``flips`` the softmax is
    averaged over the four flip combinations (test-time augmentation: cells have no orientation), in log space;
    a log-softmax stays exact where a softmax rounds to 0 or 1, so a temperature can rescale it."""
    views = [inputs.flip(dims) if dims else inputs for dims in (FLIPS if flips else FLIPS[:1])]
    logs = torch.stack([network(view).float().log_softmax(dim=1) for view in views])
    return logs.logsumexp(dim=0) - math.log(len(views))  # the log of the mean softmax


def labels_at(probability_all: np.ndarray, threshold: float) -> np.ndarray:
    """1 (ALL) where the probability of ALL is at least ``threshold``, else 0 (normal)."""
    return (np.asarray(probability_all) >= threshold).astype(np.int64)


@dataclass(frozen=True)
class Decision:
    """How a cell is decided: with ``flips``, on the mean of its four flips (eval.tta=flips, the test-time
    augmentation the temperature and threshold were fitted with); then what validation fixed: the temperature
    the logits are divided by (calibrated probabilities), the probability of ALL at or above which a cell is
    called ALL, and the mean probability at or above which a subject is."""

    temperature: float = 1.0
    threshold: float = 0.5
    flips: bool = False
    # A subject is called ALL when the mean P(ALL) of its cells reaches this (chosen on validation subjects);
    # None: the cell threshold.
    subject_threshold: float | None = None

    @property
    def subject_cutoff(self) -> float:
        """The threshold a subject's mean P(ALL) is called at."""
        return self.threshold if self.subject_threshold is None else self.subject_threshold

    def probabilities(self, log_probabilities: np.ndarray) -> np.ndarray:
        """Calibrated (N, classes) probabilities: the softmax as if the logits had been divided by the
        temperature (log-probabilities are the logits less a constant per row, which the softmax ignores)."""
        logits = np.asarray(log_probabilities, dtype=np.float64) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        scaled = np.exp(logits)
        return scaled / scaled.sum(axis=1, keepdims=True)

    def probability_all(self, log_probabilities: np.ndarray) -> np.ndarray:
        """The calibrated probability of ALL (class 1) per cell."""
        return self.probabilities(log_probabilities)[:, 1]

    def labels(self, probability_all: np.ndarray) -> np.ndarray:
        """Each cell's label at the threshold."""
        return labels_at(probability_all, self.threshold)
