"""Seeded bootstrap confidence intervals for test scores.

Cells of one subject are not independent (same patient, same stain), so where subjects are known whole
subjects are resampled (a cluster bootstrap); otherwise cells are. Either way the draws are stratified by
class, so every draw holds both classes, as the test split does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from leukemia.evaluation.decision import labels_at
from leukemia.evaluation.metrics import classification_metrics, confusion_matrix, roc_auc
from leukemia.names import CLASS_NAMES, INTERVAL_SCORES, ROC_AUC

log = logging.getLogger(__name__)

SUBJECTS, CELLS = "subjects", "cells"


def scores(targets: np.ndarray, probability_all: np.ndarray, threshold: float) -> dict[str, float]:
    """The interval metrics of binary predictions at ``threshold``."""
    matrix = confusion_matrix(targets, labels_at(probability_all, threshold), 2)
    metrics = classification_metrics(matrix, CLASS_NAMES) | {ROC_AUC: roc_auc(targets, probability_all)}
    return {key: metrics[key] for key in INTERVAL_SCORES}


@dataclass(frozen=True)
class Intervals:
    method: str  # what was resampled: "subjects" or "cells"
    resamples: int
    level: float
    bounds: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Clusters:
    """The units of one class a draw resamples: unit k is cells ``order[starts[k] : starts[k] + sizes[k]]``."""

    order: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, units: np.ndarray, cells: np.ndarray) -> Clusters:
        """``cells`` grouped by their unit name in ``units``."""
        order = cells[np.argsort(units[cells], kind="stable")]
        _, starts, sizes = np.unique(units[order], return_index=True, return_counts=True)
        return cls(order, starts, sizes)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """The cells of as many units as there are, drawn with replacement."""
        picked = rng.integers(0, len(self.sizes), len(self.sizes))
        lengths = self.sizes[picked]
        first = np.repeat(self.starts[picked] - np.cumsum(lengths) + lengths, lengths)
        return self.order[first + np.arange(lengths.sum())]


def clusters(targets: np.ndarray, subjects: Sequence[str] | None) -> tuple[str, list[Clusters]]:
    """What to resample, per class: subjects where every class has at least 2 of them (one subject cannot show
    a spread), else single cells."""
    per_class = [np.flatnonzero(targets == c) for c in np.unique(targets)]
    if subjects is not None:
        names = np.asarray([str(s) for s in subjects])
        grouped = [Clusters.of(names, cells) for cells in per_class]
        if all(len(group.sizes) >= 2 for group in grouped):
            return SUBJECTS, grouped
        log.warning("bootstrap: fewer than 2 subjects in a class (%s); resampling cells, which ignores that "
                    "cells of a subject are alike: the intervals are too narrow",
                    ", ".join(str(len(g.sizes)) for g in grouped))  # fmt: skip
    return CELLS, [Clusters.of(np.arange(len(targets)), cells) for cells in per_class]


def bootstrap_intervals(
    targets: np.ndarray,
    probability_all: np.ndarray,
    threshold: float,
    subjects: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Intervals:
    """Percentile intervals of INTERVAL_SCORES over ``resamples`` draws, each the same number of subjects (or
    cells) per class as the data, drawn with replacement; draws where a metric is undefined are ignored."""
    method, groups = clusters(np.asarray(targets), subjects)
    rng = np.random.default_rng(seed)
    draws = {key: np.empty(resamples) for key in INTERVAL_SCORES}
    for r in range(resamples):
        index = np.concatenate([group.draw(rng) for group in groups])
        for key, value in scores(targets[index], probability_all[index], threshold).items():
            draws[key][r] = value
    tail = (1 - level) / 2 * 100
    bounds = {key: (float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail)))
              for key, values in draws.items()}  # fmt: skip
    return Intervals(method, resamples, level, bounds)
