"""Seeded bootstrap intervals for test scores, and for the paired difference of two models' scores on the same
cells.

Cells of one subject are not independent (same patient, same stain), so where subjects are known whole subjects
are resampled (a cluster bootstrap); where a layout names none, cells are, which assumes them independent. The
draws are stratified by class (each draw holds as many units of each class as the data), so every draw holds
both classes, as the test split does.

A plain percentile interval of a few clusters is far too narrow (it covered the true balanced accuracy 31% of
the time with 2 + 1 subjects, 90% with 10 + 5, in a simulation with a subject random effect). The interval
here is a t interval on the logit scale with small-sample corrections: logit(estimate) ± t × s, s the
standard deviation of the draws' logits with its variance inflated by (n + 1) / (n - 1) for the n units of the
smaller class (a bootstrap of n units underestimates the variance by n / (n - 1); the simulation showed that
factor alone falls just short with 10 units), t Student's quantile with n - 1 degrees of freedom. A paired
difference's interval is the same for the log odds ratio (the difference of the two models' logits): a plain
difference of two skewed, discrete scores undercovers (0.82 for the ROC AUC with 3 + 3 subjects). With fewer
than MIN_UNITS units in a class no interval is given, nor for a score whose draws do not spread (a perfect or
constant classifier's).

Subjects of unequal size count for less than their number: a score is a ratio of sums over subjects, so one
subject with a third of a class's cells moves it as a third. With shares a_u of a class's cells, the variance
of such a score is that of n_v = 1 / Σ a_u² subjects of one size (Kish's effective number), and its skewness
that of n_t = (Σ a_u²)³ / (Σ a_u³)² (never more than n_v): a few large subjects whose values are skewed (a
strong model's sensitivity, near 1, with a rare weak subject) rarely show the tail that the estimate's error
has. So the inflation counts n_v and t's degrees of freedom n_t - 1, each in the class where it is smallest,
and neither below EFFECTIVE_FLOOR (nor above the units; single cells and subjects of one size: both are n). In
the simulation with C-NMC-like sizes (one subject of ten times the median), counting subjects let the intervals
fall to 0.87 at 40 + 40 subjects, and n_v for t as well still let a strong model's; below the floor, where t
has at most 3 degrees of freedom, counting subjects held the level (docs/evaluation.md has the tables).

``tests/test_intervals.py`` measures the coverage by simulation (docs/evaluation.md holds the table).

Each draw's scores come from per-unit counts (cells, cells called ALL, and the histogram of each unit's cells
over the distinct probabilities for the ROC AUC) weighted by how often the draw picked each unit, so thousands
of draws cost milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse, special, stats

from leukemia.evaluation.decision import labels_at
from leukemia.evaluation.metrics import binary_scores
from leukemia.names import INTERVAL_SCORES, ROC_AUC

SUBJECTS, CELLS = "subjects", "cells"
LEVEL = 0.95
MIN_UNITS = 3  # per class: the coverage simulation shows 2 + 2 falls short of the level (docs/evaluation.md)
EFFECTIVE_FLOOR = 4  # the fewest effective units an interval counts (where a class has as many units)
CHUNK = 250  # draws scored at once (bounds the memory of the ROC AUC's per-draw histograms)


@dataclass(frozen=True)
class Design:
    """How a labelled split is resampled: per class (normal, ALL), each cell's unit (0 … units - 1) in
    ``members`` over the cells ``cells``; ``reason`` says why there are no intervals ("" when there are)."""

    method: str
    cells: tuple[np.ndarray, np.ndarray]
    members: tuple[np.ndarray, np.ndarray]
    reason: str

    @property
    def units(self) -> tuple[int, int]:
        return tuple(int(m.max()) + 1 if len(m) else 0 for m in self.members)

    @property
    def effective(self) -> tuple[float, float]:
        """(n_v, n_t): the effective units the interval's inflation and t count, of the class where each is
        smallest, within [min(units, EFFECTIVE_FLOOR), min(units)]: n_v = 1 / Σ a² = (Σ n)² / Σ n², n_t =
        (Σ a²)³ / (Σ a³)² = (Σ n²)³ / (Σ n³)², n a unit's cells and a its share of its class's."""
        sums = [[sum(int(n) ** k for n in np.bincount(members)) for k in (1, 2, 3)] for members in self.members]
        spread = min(cells**2 / squares for cells, squares, _ in sums)  # exact integers: n for units of one size
        tails = min(squares**3 / cubes**2 for _, squares, cubes in sums)
        fewest = min(self.units)
        return tuple(float(min(fewest, max(n, min(fewest, EFFECTIVE_FLOOR)))) for n in (spread, tails))

    def describe(self) -> str:
        """``3 + 2 subjects``: the units of each class, ALL first."""
        normal, blast = self.units
        return f"{blast} + {normal} {self.method} (ALL + normal)"


def design(targets: np.ndarray, subjects: Sequence[str] | None) -> Design:
    """Subjects as the units where they are known (a subject with cells of both classes is one unit per
    class), else single cells; no intervals with fewer than MIN_UNITS units in a class."""
    targets = np.asarray(targets)
    names = np.arange(len(targets)) if subjects is None else np.asarray([str(s) for s in subjects])
    cells = tuple(np.flatnonzero(targets == c) for c in (0, 1))
    members = tuple(np.unique(names[c], return_inverse=True)[1].reshape(-1) for c in cells)
    method = CELLS if subjects is None else SUBJECTS
    found = Design(method, cells, members, "")
    if min(found.units) < MIN_UNITS:
        reason = (f"no intervals: {found.describe()}; at least {MIN_UNITS} per class are needed for an interval "
                  f"that holds its level")  # fmt: skip
        return Design(method, cells, members, reason)
    return found


class Counts:
    """One model's test predictions summed per unit: what any draw's scores are computed from."""

    def __init__(self, plan: Design, probability_all: np.ndarray, threshold: float):
        probability_all = np.asarray(probability_all, dtype=np.float64)
        distinct, index = np.unique(probability_all, return_inverse=True)
        called = labels_at(probability_all, threshold)
        self.sizes, self.called, self.histograms = [], [], []
        for cells, members, units in zip(plan.cells, plan.members, plan.units, strict=True):
            self.sizes.append(np.bincount(members, minlength=units).astype(np.float64))
            self.called.append(np.bincount(members, called[cells], minlength=units))
            ones = np.ones(len(cells))
            self.histograms.append(sparse.csr_matrix((ones, (members, index[cells])), shape=(units, len(distinct))))

    def scores(self, normal: np.ndarray, blast: np.ndarray) -> dict[str, np.ndarray]:
        """INTERVAL_SCORES of draws that pick each unit ``normal[r, u]`` / ``blast[r, u]`` times (R, units)."""
        negatives, false_positives = normal @ self.sizes[0], normal @ self.called[0]
        positives, true_positives = blast @ self.sizes[1], blast @ self.called[1]
        found = binary_scores(negatives - false_positives, false_positives, positives - true_positives, true_positives)
        below = np.asarray((self.histograms[0].T @ normal.T).T)  # (R, distinct) normal cells per probability
        above = np.asarray((self.histograms[1].T @ blast.T).T)
        beaten = np.cumsum(below, axis=1) - below / 2  # normal cells below each probability, ties half
        with np.errstate(invalid="ignore", divide="ignore"):
            found[ROC_AUC] = (above * beaten).sum(axis=1) / (positives * negatives)
        return {key: found[key] for key in INTERVAL_SCORES}

    def point(self) -> dict[str, float]:
        """The scores of the data itself (every unit once)."""
        once = [np.ones((1, len(sizes))) for sizes in self.sizes]
        return {key: float(value[0]) for key, value in self.scores(*once).items()}


def draws(plan: Design, resamples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``resamples`` seeded draws, in chunks: per class, how often each unit is picked when as many units as
    there are are drawn with replacement."""
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        chunks.append(tuple(rng.multinomial(n, np.full(n, 1 / n), size=size).astype(np.float64) for n in plan.units))
    return chunks


def log_odds(score: np.ndarray | float, steps: int) -> np.ndarray:
    """logit(score), a score within half a step of 0 or 1 taken as that half step away (it moves in steps of
    1 / ``steps``: its cells, or cell pairs for the ROC AUC), so that a perfect draw is not an infinite logit."""
    edge = 0.5 / max(steps, 1)  # no steps: a one-class split, whose ROC AUC is undefined anyway
    return special.logit(np.clip(score, edge, 1 - edge))


def bounds(centre: float, values: np.ndarray, units: tuple[float, float], level: float = LEVEL) -> tuple[float, float]:
    """``centre`` ± t × s on the log-odds scale: s the standard deviation of the draws' ``values`` (undefined
    ones ignored) with its variance inflated by (n_v + 1) / (n_v - 1), t Student's quantile with n_t - 1 degrees
    of freedom, (n_v, n_t) = ``units`` (the design's effective units); NaN bounds where the draws do not spread."""
    values = values[np.isfinite(values)]
    if not np.isfinite(centre) or len(values) < 2 or np.ptp(values) == 0:
        return np.nan, np.nan
    spread, tails = units
    half = stats.t.ppf((1 + level) / 2, tails - 1) * np.sqrt((spread + 1) / (spread - 1)) * np.std(values, ddof=1)
    return centre - half, centre + half


@dataclass(frozen=True)
class Intervals:
    """Each score's estimate and interval (NaN bounds: none, e.g. a score every draw gives alike); for two
    models, each score's difference, and ``bounds`` are those of its log odds ratio ``ratio``."""

    design: Design
    resamples: int
    level: float
    point: dict[str, float]
    bounds: dict[str, tuple[float, float]]
    ratio: dict[str, float] = field(default_factory=dict)

    def tag(self) -> str:
        """What the ``test_ci`` tag says: the method, or why there are none."""
        if self.design.reason:
            return self.design.reason
        assumed = "; cells assumed independent (no subjects known)" * (self.design.method == CELLS)
        spread, tails = self.design.effective
        unequal = f"; of unequal size: {spread:.1f} effective for the spread, {tails:.1f} for t" * (
            tails < min(self.design.units)
        )
        return f"{self.level:.0%} bootstrap-t, {self.resamples} draws of {self.design.describe()}{assumed}{unequal}"


def bootstrap_intervals(
    targets: np.ndarray,
    probabilities: Sequence[np.ndarray],
    threshold: Sequence[float],
    subjects: Sequence[str] | None,
    resamples: int,
    seed: int = 0,
) -> Intervals:
    """Intervals of INTERVAL_SCORES of one model (one array of P(ALL) and its threshold), made on the logit
    scale; or, for two models scored on the same cells (the same draws for both), their difference (second
    minus first) and the interval of their log odds ratio (logit second - logit first, whose sign is the
    difference's)."""
    plan = design(targets, subjects)
    counts = [Counts(plan, p, t) for p, t in zip(probabilities, threshold, strict=True)]
    points = [c.point() for c in counts]
    paired = len(points) == 2
    point = {key: points[-1][key] - (points[0][key] if paired else 0) for key in INTERVAL_SCORES}
    cells = [len(c) for c in plan.cells]
    steps = {key: cells[0] * cells[1] if key == ROC_AUC else sum(cells) for key in INTERVAL_SCORES}

    def contrast(scores: list[dict]) -> dict[str, np.ndarray]:  # a score's logit, or the log odds ratio
        logits = [{key: log_odds(found[key], steps[key]) for key in INTERVAL_SCORES} for found in scores]
        return {key: logits[-1][key] - (logits[0][key] if paired else 0) for key in INTERVAL_SCORES}

    centre = contrast(points)
    ratio = {key: float(centre[key]) for key in INTERVAL_SCORES} if paired else {}
    if plan.reason:
        return Intervals(plan, resamples, LEVEL, point, {key: (np.nan, np.nan) for key in INTERVAL_SCORES}, ratio)
    values: dict[str, list[np.ndarray]] = {key: [] for key in INTERVAL_SCORES}
    for picks in draws(plan, resamples, seed):
        for key, value in contrast([c.scores(*picks) for c in counts]).items():
            values[key].append(value)
    limits, effective = {}, plan.effective
    for key in INTERVAL_SCORES:
        low, high = bounds(float(centre[key]), np.concatenate(values[key]), effective)
        edge = log_odds(0.0, steps[key])  # a score's bound within half a step of 0 or 1 is 0 or 1
        limits[key] = (low, high) if paired else (0.0 if low <= edge else float(special.expit(low)),
                                                  1.0 if high >= -edge else float(special.expit(high)))  # fmt: skip
    return Intervals(plan, resamples, LEVEL, point, limits, ratio)
