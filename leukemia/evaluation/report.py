"""An evaluation as a report: what a split's predictions show once the decision is fixed, as plain values ready
to log (metrics, CSV tables, figures, JSON records, tags). Validation fits the decision (temperature, then
threshold) and reports its calibration; the test split is then scored per cell and per subject, with intervals.

The tasks predict the splits and hand the report to tracking; nothing here knows MLflow, the config or a data
layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from leukemia.evaluation.bootstrap import bootstrap_intervals
from leukemia.evaluation.calibration import (
    TEMPERATURE_RANGE,
    brier,
    fit_decision,
    recalibration,
    reliability,
    reliability_all,
    temperature_at_bound,
)
from leukemia.evaluation.decision import Decision
from leukemia.evaluation.decision_curve import decision_curve
from leukemia.evaluation.explain import explained
from leukemia.evaluation.figures import (
    confusion_matrix_figure,
    curve_figure,
    decision_curve_figure,
    gradcam_figure,
    reliability_figure,
)
from leukemia.evaluation.metrics import (
    average_precision,
    classification_metrics,
    confusion_counts,
    confusion_matrix,
    roc_auc,
)
from leukemia.evaluation.subjects import COUNTS, fit_subject_threshold, subject_metrics, subject_table
from leukemia.names import (
    CALIBRATION_INTERCEPT,
    CALIBRATION_SLOPE,
    CLASS_NAMES,
    ECE,
    ECE_CALIBRATED,
    ROC_AUC,
    SUBJECT_THRESHOLD,
    TEMPERATURE,
    TEMPERATURE_AT_BOUND,
    TEST,
    THRESHOLD,
    VAL,
    interval,
    of,
)

log = logging.getLogger(__name__)

SUBMISSION, PREDICTIONS = "submission.csv", "predictions.csv"
SUBJECT_TABLES = {TEST: "subjects.csv", VAL: "val_subjects.csv"}


@dataclass(frozen=True)
class Scored:
    """A split's predictions, what a report is made from: ``prefix`` names its metrics (``val``, ``test``), the
    run's and the split's names title its figures; ``targets`` and ``subjects`` are None where it lacks them."""

    prefix: str
    run_name: str
    split_name: str
    log_probabilities: np.ndarray
    targets: np.ndarray | None = None
    subjects: Sequence[str] | None = None

    def title(self, *details: str) -> str:
        """``<run>: <split> (<n> images[, details])``."""
        return f"{self.run_name}: {self.split_name} ({', '.join([f'{len(self.log_probabilities)} images', *details])})"


@dataclass
class Report:
    """What an evaluation found, each item under the name it is logged as."""

    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # CSV files
    figures: dict[str, Figure] = field(default_factory=dict)  # PNG files
    records: dict[str, dict] = field(default_factory=dict)  # JSON files
    tags: dict[str, str] = field(default_factory=dict)

    def __ior__(self, other: Report) -> Report:
        for name in ("metrics", "tables", "figures", "records", "tags"):
            getattr(self, name).update(getattr(other, name))
        return self

    def __or__(self, other: Report) -> Report:
        merged = Report()
        merged |= self
        merged |= other
        return merged


def calibration_report(scored: Scored, decision: Decision) -> Report:
    """A labelled split's calibration (ECE and Brier before and after the temperature, the logistic
    recalibration's intercept and slope, reliability of the top class and of P(ALL)), its ROC and PR figures,
    and its subject table and scores where subjects are known."""
    prefix, targets = scored.prefix, scored.targets
    trained_probabilities, probabilities = (
        np.exp(scored.log_probabilities),
        decision.probabilities(scored.log_probabilities),
    )
    probability_all = probabilities[:, 1]
    trained, scaled = reliability(trained_probabilities, targets), reliability(probabilities, targets)
    report = Report(metrics={of(prefix, ECE): trained.ece, of(prefix, "brier"): brier(trained_probabilities, targets),
                             of(prefix, ECE_CALIBRATED): scaled.ece,
                             of(prefix, "brier_calibrated"): brier(probabilities, targets),
                             of(prefix, "average_precision"): average_precision(targets, probability_all)})  # fmt: skip
    curves = {"as trained": trained, f"temperature {decision.temperature:.2f}": scaled}
    report.figures[f"figures/{prefix}_reliability.png"] = reliability_figure(curves, scored.title())
    report |= positive_class_report(scored, probability_all)
    predicted = decision.labels(probability_all)
    for kind in ("roc", "pr") if len(np.unique(targets)) > 1 else ():  # a one-class split has no curve
        figure = curve_figure(kind, targets, probability_all, predicted, decision.threshold, scored.title())
        report.figures[f"figures/{prefix}_{kind}.png"] = figure
    if scored.subjects is not None:
        report |= subject_report(scored, probability_all, decision)
    return report


def positive_class_report(scored: Scored, probability_all: np.ndarray) -> Report:
    """The calibrated P(ALL)'s reliability (figure and CSV) and its logistic recalibration: intercept and slope
    (0 and 1 when calibrated), or a tag saying why there are none."""
    prefix, targets = scored.prefix, scored.targets
    fit = recalibration(probability_all, targets)
    curve = reliability_all(probability_all, targets)
    label = "calibrated" + (f" (intercept {fit.intercept:.2f}, slope {fit.slope:.2f})" if not fit.reason else "")
    report = Report(
        figures={f"figures/{prefix}_reliability_all.png": reliability_figure({label: curve}, scored.title(), True)}
    )
    report.tables[f"{prefix}_reliability_all.csv"] = pd.DataFrame({
        "bin_low": curve.edges[:-1], "bin_high": curve.edges[1:], "cells": curve.counts,
        "mean_probability_all": curve.confidence, "fraction_all": curve.accuracy})  # fmt: skip
    if fit.reason:
        report.tags[of(prefix, CALIBRATION_SLOPE)] = f"absent: {fit.reason}"
    else:
        report.metrics |= {of(prefix, CALIBRATION_INTERCEPT): fit.intercept, of(prefix, CALIBRATION_SLOPE): fit.slope}
    return report


def subject_report(scored: Scored, probability_all: np.ndarray, decision: Decision) -> Report:
    """The split's subject table and its subject-level scores, exact intervals and counts."""
    table = subject_table(probability_all, scored.subjects, decision.threshold, scored.targets,
                          decision.subject_cutoff)  # fmt: skip
    metrics, absent = subject_metrics(table)
    return Report(metrics={of(scored.prefix, key): value for key, value in metrics.items()},
                  tables={SUBJECT_TABLES[scored.prefix]: table},
                  tags={of(scored.prefix, key): reason for key, reason in absent.items()})  # fmt: skip


def validation_report(scored: Scored, threshold: str) -> tuple[Decision, Report]:
    """The decision fitted on the validation split (``eval.threshold``: a number or ``balanced``; the subject
    threshold on its subjects, where known), and its report: the temperature (and whether it ended at its
    search bound), the thresholds and the split's calibration."""
    decision = fit_decision(scored.log_probabilities, scored.targets, threshold)
    report = Report(metrics={TEMPERATURE: decision.temperature, THRESHOLD: decision.threshold},
                    tags={TEMPERATURE_AT_BOUND: "false"})  # fmt: skip
    if scored.subjects is not None:
        probability_all = decision.probability_all(scored.log_probabilities)
        chosen, how = fit_subject_threshold(subject_table(probability_all, scored.subjects, decision.threshold,
                                                          scored.targets))  # fmt: skip
        decision = replace(decision, subject_threshold=chosen)
        report.metrics[SUBJECT_THRESHOLD] = decision.subject_cutoff
        report.tags[SUBJECT_THRESHOLD] = how
    if temperature_at_bound(decision.temperature):
        report.tags[TEMPERATURE_AT_BOUND] = (
            f"true: the temperature ended at its search bound ({decision.temperature:.3g}, range "
            f"{TEMPERATURE_RANGE[0]:g}-{TEMPERATURE_RANGE[1]:g}); {len(scored.log_probabilities)} validation images "
            f"do not pin it down, so calibrated probabilities are not to be trusted")  # fmt: skip
        log.warning("%s", report.tags[TEMPERATURE_AT_BOUND])
    report |= calibration_report(scored, decision)
    return decision, report


def interval_report(scored: Scored, probability_all: np.ndarray, threshold: float, resamples: int, seed: int) -> Report:
    """Bootstrap intervals of the test scores (draws of subjects, or of cells where none are known): the
    bounds of each score whose draws spread, and the ``<prefix>_ci`` tag saying how they were made or why
    there are none."""
    found = bootstrap_intervals(scored.targets, [probability_all], [threshold], scored.subjects, resamples, seed)
    metrics = {name: value for key, limits in found.bounds.items() if np.isfinite(limits[0])
               for name, value in zip(interval(of(scored.prefix, key)), limits, strict=True)}  # fmt: skip
    tag = found.tag()
    flat = [key for key, limits in found.bounds.items() if not np.isfinite(limits[0])]
    if flat and not found.design.reason:
        tag += f"; none for {', '.join(flat)} (every draw gives the same value, or it is undefined)"
    log.info("%s intervals: %s", scored.prefix, tag)
    return Report(metrics=metrics, tags={of(scored.prefix, "ci"): tag})


def decision_report(scored: Scored, probability_all: np.ndarray) -> Report:
    """The decision curve: net benefit per threshold probability of the model, treat all and treat none."""
    curve = decision_curve(scored.targets, probability_all)
    figure = decision_curve_figure(curve, scored.title())
    return Report(tables={f"{scored.prefix}_decision_curve.csv": curve},
                  figures={f"figures/{scored.prefix}_decision_curve.png": figure})  # fmt: skip


def prediction_tables(scored: Scored, identifiers: Sequence[str], probability_all: np.ndarray,
                      predicted: np.ndarray) -> dict[str, pd.DataFrame]:  # fmt: skip
    """``submission.csv`` (``ID,label``: the split's own IDs, same rows, same order) and ``predictions.csv``
    (with both calibrated class probabilities, and the true label and the subject where known: what task=plot
    pairs runs' predictions by)."""
    submission = pd.DataFrame({"ID": list(identifiers), "label": predicted})
    detail = submission.assign(probability_normal=1.0 - probability_all, probability_all=probability_all)
    if scored.targets is not None:
        detail["true_label"] = scored.targets
    if scored.subjects is not None:
        detail["subject"] = [str(subject) for subject in scored.subjects]
    return {SUBMISSION: submission, PREDICTIONS: detail}


def test_report(scored: Scored, decision: Decision, identifiers: Sequence[str], tta: str, bootstrap: int,
                seed: int) -> Report:  # fmt: skip
    """The test split at the decision: the submission and predictions, the subject table where subjects are
    known and, with labels, the ``test_*`` metrics, intervals (``bootstrap`` draws), calibration, curves and
    the confusion matrix (titled with the test-time augmentation ``tta``)."""
    probability_all = decision.probability_all(scored.log_probabilities)
    predicted = decision.labels(probability_all)
    report = Report(tables=prediction_tables(scored, identifiers, probability_all, predicted))
    if scored.targets is None:
        if scored.subjects is not None:
            table = subject_table(
                probability_all, scored.subjects, decision.threshold, subject_threshold=decision.subject_cutoff
            )
            report.tables[SUBJECT_TABLES[scored.prefix]] = table
        return report
    matrix = confusion_matrix(scored.targets, predicted, len(CLASS_NAMES))
    prefix = scored.prefix
    report.metrics = {of(prefix, key): value for key, value in classification_metrics(matrix).items()}
    report.metrics |= {of(prefix, name): float(matrix[cell]) for name, cell in COUNTS.items()}
    report.metrics[of(prefix, ROC_AUC)] = roc_auc(scored.targets, probability_all)
    report |= calibration_report(scored, decision)
    report |= interval_report(scored, probability_all, decision.threshold, bootstrap, seed)
    report |= decision_report(scored, probability_all)
    title = scored.title(f"tta={tta}", f"threshold {decision.threshold:.3g}")
    report.figures[f"figures/{prefix}_confusion_matrix.png"] = confusion_matrix_figure(matrix, CLASS_NAMES, title)
    report.records[f"figures/{prefix}_confusion_matrix.json"] = confusion_counts(matrix, CLASS_NAMES)
    return report


def explanation_report(network: nn.Module, normalise: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor,
                       chosen: dict[tuple[int, str], int], probability_all: np.ndarray, predicted: np.ndarray,
                       title: str) -> Report:  # fmt: skip
    """``figures/gradcam.png``: the ``chosen`` cells (per true class and outcome, see ``explain.showcase``), whose
    uint8 images are ``pixels`` in that order, each beside its Grad-CAM overlay for its predicted class."""
    indices = list(chosen.values())
    overlays = explained(network, pixels, normalise, predicted[indices])
    images = pixels.permute(0, 2, 3, 1).numpy()
    panels = {key: (images[k], overlays[k], max(probability_all[i], 1 - probability_all[i]))
              for k, (key, i) in enumerate(chosen.items())}  # fmt: skip
    return Report(figures={"figures/gradcam.png": gradcam_figure(panels, CLASS_NAMES, title)})
