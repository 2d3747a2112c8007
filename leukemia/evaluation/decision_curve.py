"""Decision curve analysis (Vickers & Elkin, 2006): what acting on the model is worth at each threshold
probability p_t, the P(ALL) above which one would treat as ALL. Net benefit = TP/n - FP/n × p_t / (1 - p_t):
true positives gained, less false positives weighted by the odds at which one is indifferent. "Treat all"
calls every cell ALL (prevalence - (1 - prevalence) × p_t / (1 - p_t)); "treat none" is 0. A model is worth
using where its curve is above both."""

from __future__ import annotations

import numpy as np
import pandas as pd

THRESHOLD_PROBABILITY, MODEL, TREAT_ALL, TREAT_NONE = "threshold_probability", "model", "treat_all", "treat_none"
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def decision_curve(targets: np.ndarray, probability_all: np.ndarray, thresholds: np.ndarray = THRESHOLDS
                   ) -> pd.DataFrame:  # fmt: skip
    """Net benefit of the model (ALL where P(ALL) >= p_t), of treating all and of treating none, per p_t."""
    targets = np.asarray(targets) == 1
    called = np.asarray(probability_all)[None, :] >= np.asarray(thresholds)[:, None]  # (thresholds, cells)
    count = len(targets)
    odds = thresholds / (1 - thresholds)
    true_positives, false_positives = (called & targets).sum(axis=1), (called & ~targets).sum(axis=1)
    prevalence = targets.mean()
    return pd.DataFrame({
        THRESHOLD_PROBABILITY: thresholds,
        MODEL: true_positives / count - false_positives / count * odds,
        TREAT_ALL: prevalence - (1 - prevalence) * odds,
        TREAT_NONE: np.zeros(len(thresholds)),
    })  # fmt: skip
