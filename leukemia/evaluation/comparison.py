"""Paired comparison of two models on the same test cells: the difference of their scores (other minus
reference), and a paired bootstrap interval of their log odds ratio (logit other - logit reference, same sign
as the difference), the same draws of subjects (or cells) for both, so that what the two share (which cells
are hard) cancels. Two runs' unpaired intervals overlapping says little: they were scored on the same cells.
The interval is of the log odds ratio because that one holds its level (tests/test_intervals.py); one of the
plain difference does not (0.82 for the ROC AUC with 3 + 3 subjects).

The verdict reads the interval of the challenge metric's log odds ratio: "better" or "worse" when it lies
wholly above or below 0, else "not distinguishable"; without an interval (too few subjects), no verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from leukemia.evaluation.bootstrap import bootstrap_intervals
from leukemia.names import BALANCED_ACCURACY, CHALLENGE, ROC_AUC, interval

COMPARED = (CHALLENGE, BALANCED_ACCURACY, ROC_AUC)
BETTER, WORSE, SAME = "better", "worse", "not distinguishable"
VERDICT, WHY = "verdict", "why"


def difference(score: str) -> str:
    """``f1_weighted_difference``: a score's difference from the reference's."""
    return f"{score}_difference"


def odds_ratio(score: str) -> str:
    """``f1_weighted_log_odds_ratio``: logit of a score less logit of the reference's (bounds: ``_ci_low``…)."""
    return f"{score}_log_odds_ratio"


def verdict(low: float, high: float) -> str:
    """What an interval of a log odds ratio (or of a difference) says; "" without one."""
    if not np.isfinite(low):
        return ""
    return BETTER if low > 0 else WORSE if high < 0 else SAME


def unpaired_reason(reference: pd.DataFrame, other: pd.DataFrame) -> str:
    """Why two runs' predictions (``ID``, ``probability_all``, ``true_label``) cannot be paired; "" when they can."""
    if "true_label" not in reference or "true_label" not in other:
        return "a run has no labelled test predictions"
    if set(reference["ID"]) != set(other["ID"]) or reference["ID"].duplicated().any():
        return "the runs were tested on different cells"
    return ""


def paired_comparison(reference: pd.DataFrame, other: pd.DataFrame, thresholds: tuple[float, float],
                      resamples: int, seed: int) -> dict[str, float | str]:  # fmt: skip
    """The differences in COMPARED (other minus reference), their log odds ratios with paired intervals, the
    verdict, and why there is none (``why``). Rows are matched by ``ID``; subjects, where the reference's
    predictions carry them, are resampled whole."""
    why = unpaired_reason(reference, other)
    if why:
        return {VERDICT: "", WHY: why}
    other = other.set_index("ID").loc[reference["ID"]].reset_index()
    if not (other["true_label"].to_numpy() == reference["true_label"].to_numpy()).all():
        return {VERDICT: "", WHY: "the runs' test labels differ"}
    subjects = reference["subject"].astype(str).tolist() if "subject" in reference else None
    probabilities = [table["probability_all"].to_numpy() for table in (reference, other)]
    found = bootstrap_intervals(reference["true_label"].to_numpy(), probabilities, thresholds, subjects, resamples,
                                seed)  # fmt: skip
    row: dict[str, float | str] = {}
    for score in COMPARED:
        row[difference(score)] = found.point[score]
        row[odds_ratio(score)] = found.ratio[score]
        row |= dict(zip(interval(odds_ratio(score)), found.bounds[score], strict=True))
    row[VERDICT] = verdict(*found.bounds[CHALLENGE])
    row[WHY] = found.design.reason or ("" if row[VERDICT] else f"no interval of the {CHALLENGE} log odds ratio")
    return row
