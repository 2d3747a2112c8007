"""Subject-level diagnosis: a patient is called ALL when the mean calibrated probability of ALL over their cells
reaches the subject threshold. That threshold is chosen on the validation subjects (fit_subject_threshold), not
taken from the cells: a cell threshold near 1 (a saturated model's) would call a subject normal whose cells are
95% ALL, ranked right (subject ROC AUC 1) and diagnosed wrong. A subject's true label is the majority label of
their cells; in C-NMC every cell of a subject carries the subject's label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from statsmodels.stats.proportion import proportion_confint

from leukemia.evaluation.calibration import balanced_threshold
from leukemia.evaluation.decision import labels_at
from leukemia.evaluation.metrics import roc_auc
from leukemia.names import (
    RATES,
    SUBJECT,
    SUBJECT_ACCURACY,
    SUBJECT_BALANCED_ACCURACY,
    SUBJECT_ROC_AUC,
    SUBJECTS,
    interval,
)

LEVEL = 0.95
MIN_AUC_SUBJECTS = 2  # per class: with one, the AUC says only whether two subjects are in order
COUNTS = {"tn": (0, 0), "fp": (0, 1), "fn": (1, 0), "tp": (1, 1)}  # (true, predicted) of each 2×2 cell


def subject_table(
    probability_all: np.ndarray,
    subjects: Sequence[str],
    threshold: float,
    targets: np.ndarray | None = None,
    subject_threshold: float | None = None,
) -> pd.DataFrame:
    """One row per subject (sorted by name): its number of cells, the fraction called ALL (at the cell
    ``threshold``), the mean probability of ALL, the subject's predicted label (its mean at
    ``subject_threshold``, by default the cell threshold) and, with ``targets``, its true label (its cells'
    majority label)."""
    cells = pd.DataFrame({"subject": [str(s) for s in subjects], "probability": np.asarray(probability_all, float)})
    cells["called_all"] = labels_at(cells["probability"], threshold)
    if targets is not None:
        cells["label"] = np.asarray(targets)
    grouped = cells.groupby("subject", sort=True)
    table = pd.DataFrame({
        "cells": grouped.size(),
        "fraction_all": grouped["called_all"].mean(),
        "mean_probability_all": grouped["probability"].mean(),
    })  # fmt: skip
    table["predicted_label"] = labels_at(table["mean_probability_all"], threshold if subject_threshold is None
                                         else subject_threshold)  # fmt: skip
    if targets is not None:
        table["true_label"] = (grouped["label"].mean() >= 0.5).astype(np.int64)
    return table.reset_index()


def fit_subject_threshold(table: pd.DataFrame) -> tuple[float | None, str]:
    """The subject threshold fitted on a labelled (validation) subject table, and how it was chosen: the mean
    probability that maximises the subjects' balanced accuracy (the rule of the cell threshold), moved halfway
    down to the next lower subject mean so that a new subject just below the lowest validation ALL subject is
    not called normal for a rounding; None (the cell threshold) where a class has no validation subject."""
    truth, means = table["true_label"].to_numpy(), table["mean_probability_all"].to_numpy()
    if len(np.unique(truth)) < 2:
        return None, "the cell threshold: the validation split lacks subjects of a class"
    best = balanced_threshold(means, truth)
    below = means[means < best]
    chosen = float((best + below.max()) / 2) if len(below) else best
    return chosen, (f"chosen on {int((truth == 1).sum())} ALL + {int((truth == 0).sum())} normal validation "
                    f"subjects (balanced accuracy of their mean P(ALL), halfway to the next lower mean)")  # fmt: skip


def exact_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """statsmodels' Clopper–Pearson (exact binomial) interval of a proportion; NaN bounds for 0 trials."""
    if trials == 0:
        return np.nan, np.nan
    low, high = proportion_confint(successes, trials, alpha=1 - level, method="beta")
    return float(low), float(high)


def subject_metrics(table: pd.DataFrame) -> tuple[dict[str, float], dict[str, str]]:
    """Over the subjects of a labelled table: the 2×2 counts, accuracy and balanced accuracy, sensitivity,
    specificity, PPV and NPV each with its exact interval (subjects are independent, each one trial), and the
    ROC AUC of the mean probability where each class has MIN_AUC_SUBJECTS; and why a score is absent, by name."""
    truth, predicted = table["true_label"].to_numpy(), table["predicted_label"].to_numpy()
    counts = {name: int(((truth == t) & (predicted == p)).sum()) for name, (t, p) in COUNTS.items()}
    tn, fp, fn, tp = (counts[name] for name in COUNTS)
    metrics = {f"{SUBJECT}_{name}": float(count) for name, count in counts.items()}
    metrics |= {SUBJECT_ACCURACY: float(accuracy_score(truth, predicted)), SUBJECTS: float(len(table))}
    metrics[SUBJECT_BALANCED_ACCURACY] = float(balanced_accuracy_score(truth, predicted))
    for rate, (hits, trials) in zip(RATES, ((tp, tp + fn), (tn, tn + fp), (tp, tp + fp), (tn, tn + fn)), strict=True):
        name = f"{SUBJECT}_{rate}"
        if trials:
            metrics[name] = hits / trials
            metrics |= dict(zip(interval(name), exact_interval(hits, trials), strict=True))
    per_class = (int((truth == 0).sum()), int((truth == 1).sum()))
    if min(per_class) >= MIN_AUC_SUBJECTS:
        metrics[SUBJECT_ROC_AUC] = roc_auc(truth, table["mean_probability_all"].to_numpy())
        return metrics, {}
    reason = (f"absent: {per_class[1]} ALL + {per_class[0]} normal subjects; a subject ROC AUC needs at least "
              f"{MIN_AUC_SUBJECTS} of each")  # fmt: skip
    return metrics, {SUBJECT_ROC_AUC: reason}
