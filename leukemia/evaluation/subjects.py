"""Subject-level diagnosis: a patient is called ALL when the mean probability of ALL over their cells reaches
the threshold. In C-NMC every cell of a subject carries the subject's label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from leukemia.evaluation.decision import labels_at
from leukemia.evaluation.metrics import roc_auc


def subject_table(
    probability_all: np.ndarray, subjects: Sequence[str], threshold: float, targets: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per subject (sorted by name): its number of cells, the fraction called ALL, the mean probability
    of ALL, the subject's predicted label and, with ``targets``, its true label (its cells' majority label)."""
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
    table["predicted_label"] = labels_at(table["mean_probability_all"], threshold)
    if targets is not None:
        table["true_label"] = (grouped["label"].mean() >= 0.5).astype(np.int64)
    return table.reset_index()


def subject_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Accuracy, balanced accuracy and ROC AUC (of the mean probability) over the subjects of a labelled table."""
    truth, predicted = table["true_label"], table["predicted_label"]
    return {
        "subject_accuracy": float(accuracy_score(truth, predicted)),
        "subject_balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "subject_roc_auc": roc_auc(truth.to_numpy(), table["mean_probability_all"].to_numpy()),
        "subjects": float(len(table)),
    }
