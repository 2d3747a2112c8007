"""The coverage simulation of the test scores' intervals: synthetic test sets whose cells share a subject random
effect, scored by the evaluation's own bootstrap; coverage is how often an interval holds the population value.

Model (on the logit scale): a cell of class c in subject s has logit mu_c + u_s + e, u_s ~ N(0, subject_sd²),
e ~ N(0, cell_sd²); P(ALL) is its logistic, the threshold 0.5. The population value of every score is the
score of one very large test set of the same design (the same share of ALL subjects). Run as a script, it
prints the coverage tables of docs/evaluation.md (more sets than the test uses):

    python tests/interval_simulation.py 1000           # one model's intervals
    python tests/interval_simulation.py 500 paired     # the log odds ratio of two models
    python tests/interval_simulation.py 500 unequal    # subjects of unequal size, heavy-tailed effects
    python tests/interval_simulation.py 500 paired unequal
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from scipy import special

from leukemia.evaluation.bootstrap import Counts, bootstrap_intervals, design
from leukemia.names import INTERVAL_SCORES

CELLS_PER_SUBJECT = 60
SUBJECT_COUNTS = ((3, 3), (6, 4), (10, 5), (20, 10))  # (ALL, normal)
TOO_FEW = ((2, 1), (3, 2), (2, 2))  # below MIN_UNITS in a class: no interval
SIZE_RANGE = (15, 300)  # cells per subject in the unequal scenarios (C-NMC's, roughly)


@dataclass(frozen=True)
class Scenario:
    name: str
    mean_normal: float = -1.5
    mean_all: float = 1.5
    subject_sd: float = 1.0
    cell_sd: float = 1.0
    subjects_known: bool = True
    # Unequal subjects, as in C-NMC: cells per subject lognormal (median CELLS_PER_SUBJECT, this sd of its log,
    # within SIZE_RANGE), the first subject of each class ten times the median; 0: every subject the same size.
    size_sd: float = 0.0
    # The subject effect t-distributed with these degrees of freedom, scaled to subject_sd; None: normal.
    effect_df: float | None = None

    def sizes(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if not self.size_sd:
            return np.full(count, CELLS_PER_SUBJECT)
        drawn = np.clip(np.round(CELLS_PER_SUBJECT * np.exp(rng.normal(0, self.size_sd, count))), *SIZE_RANGE)
        drawn[0] = 10 * CELLS_PER_SUBJECT
        return drawn.astype(int)

    def effects(self, rng: np.random.Generator, count: int) -> np.ndarray:
        if self.effect_df is None:
            return rng.normal(0, self.subject_sd, count)
        return self.subject_sd * rng.standard_t(self.effect_df, count)

    def sample(self, rng: np.random.Generator, all_subjects: int, normal_subjects: int):
        """A test set: targets, P(ALL), and each cell's subject (None where the scenario hides them)."""
        targets, probability, subjects = [], [], []
        for label, count, mean in ((1, all_subjects, self.mean_all), (0, normal_subjects, self.mean_normal)):
            shift, sizes = self.effects(rng, count), self.sizes(rng, count)
            logits = mean + np.repeat(shift, sizes) + rng.normal(0, self.cell_sd, sizes.sum())
            targets.append(np.full(len(logits), label))
            probability.append(1 / (1 + np.exp(-logits)))
            subjects += [f"{label}-{k}" for k, size in enumerate(sizes) for _ in range(size)]
        return np.concatenate(targets), np.concatenate(probability), subjects if self.subjects_known else None

    def population(self, all_subjects: int, normal_subjects: int) -> dict[str, float]:
        """Every score of a test set 4000 / max(counts) times as large (at least 4000 subjects of a class)."""
        scale = 4000 // max(all_subjects, normal_subjects)
        targets, probability, subjects = self.sample(np.random.default_rng(2024), all_subjects * scale,
                                                     normal_subjects * scale)  # fmt: skip
        return Counts(design(targets, subjects), probability, 0.5).point()


SCENARIOS = (
    Scenario("subject effect"),
    Scenario("strong subject effect", subject_sd=2.0),
    Scenario("no subject effect", subject_sd=0.0),
    Scenario("near-perfect model", mean_normal=-3.0, mean_all=3.0, subject_sd=0.5),
    Scenario("subjects unknown (cells)", subject_sd=0.0, subjects_known=False),
)
# Subjects of unequal size (lognormal, sd 0.8 of the log: median 60, about 15 to 300, one of 600 per class) with
# normal or heavy-tailed subject effects, for models of middling (a cell's ROC AUC 0.93), weak (0.7), strong
# (0.99) and near-perfect separation: what C-NMC's test sets look like (its preliminary test set: 15 + 13
# subjects of 5 to 262 cells).
UNEQUAL = (
    Scenario("unequal subjects, effect sd 1", size_sd=0.8),
    Scenario("unequal subjects, t(3) effect, sd 2", subject_sd=2.0, size_sd=0.8, effect_df=3),
    Scenario("unequal subjects, weak model", mean_normal=-0.5, mean_all=0.5, size_sd=0.8),
    Scenario("unequal subjects, strong model", mean_normal=-2.5, mean_all=2.5, size_sd=0.8),
    Scenario("unequal subjects, near-perfect model", mean_normal=-3.0, mean_all=3.0, subject_sd=0.5, size_sd=0.8),
)
UNEQUAL_COUNTS = ((3, 3), (4, 12), (15, 13), (40, 40))


@dataclass(frozen=True)
class Coverage:
    """Per score: the fraction of the logged intervals that hold the population value, how many were logged
    (of the sets drawn), and their mean width (on the score's scale, or the log odds ratio's)."""

    held: dict[str, float]
    logged: dict[str, int]
    width: dict[str, float]


def tally(truth: dict[str, float], found: list[dict[str, tuple[float, float]]]) -> Coverage:
    """The Coverage of the intervals ``found`` (one dict of bounds per test set) of the values ``truth``."""
    held, logged, width = {}, {}, {}
    for key in INTERVAL_SCORES:
        given = np.array([bounds[key] for bounds in found if np.isfinite(bounds[key][0])]).reshape(-1, 2)
        logged[key] = len(given)
        if len(given):
            held[key] = float(np.mean((given[:, 0] <= truth[key]) & (truth[key] <= given[:, 1])))
            width[key] = float(np.mean(given[:, 1] - given[:, 0]))
    return Coverage(held, logged, width)


def coverage(scenario: Scenario, counts: tuple[int, int], sets: int, resamples: int = 200, seed: int = 0) -> Coverage:
    """How the logged intervals of ``sets`` seeded test sets of ``counts`` subjects hold the population's scores."""
    truth = scenario.population(*counts)
    rng = np.random.default_rng(seed)
    found = []
    for k in range(sets):
        targets, probability, subjects = scenario.sample(rng, *counts)
        found.append(bootstrap_intervals(targets, [probability], [0.5], subjects, resamples, seed=k).bounds)
    return tally(truth, found)


def paired_sample(scenario: Scenario, rng: np.random.Generator, counts: tuple[int, int]):
    """A test set scored by two models: the second's logits moved 0.5 toward each cell's class, plus noise of
    its own (so the two disagree on some cells, as two trained networks do)."""
    targets, first, subjects = scenario.sample(rng, *counts)
    with np.errstate(divide="ignore"):  # a P(ALL) of exactly 1 (past float's reach) stays 1
        logits = np.log(first / (1 - first))
    logits = logits + np.where(targets == 1, 0.5, -0.5) + rng.normal(0, 0.5, len(targets))
    return targets, first, 1 / (1 + np.exp(-logits)), subjects


def paired_coverage(scenario: Scenario, counts: tuple[int, int], sets: int, resamples: int = 200) -> Coverage:
    """How the paired intervals of the log odds ratio (logit second - logit first) hold the population's (of
    one test set 4000 / max(counts) times as large)."""
    large = tuple(count * (4000 // max(counts)) for count in counts)
    targets, first, second, subjects = paired_sample(scenario, np.random.default_rng(2024), large)
    plan = design(targets, subjects)
    scores = [Counts(plan, p, 0.5).point() for p in (first, second)]
    truth = {key: special.logit(scores[1][key]) - special.logit(scores[0][key]) for key in INTERVAL_SCORES}
    rng = np.random.default_rng(1)
    found = []
    for k in range(sets):
        targets, first, second, subjects = paired_sample(scenario, rng, counts)
        found.append(bootstrap_intervals(targets, [first, second], [0.5, 0.5], subjects, resamples, seed=k).bounds)
    return tally(truth, found)


def table(sets: int, paired: bool = False, unequal: bool = False) -> str:
    """The Markdown coverage table: per scenario and subject count, the lowest coverage over the scores and
    each score's, with the intervals' mean width in brackets; with ``paired``, of the log odds ratio of two
    models (the scenarios with a subject effect, and cells); with ``unequal``, of the scenarios with subjects
    of unequal size."""
    lines = ["| scenario | ALL + normal subjects | lowest | " + " | ".join(INTERVAL_SCORES) + " |",
             "|---|---|---|" + "---|" * len(INTERVAL_SCORES)]  # fmt: skip
    if unequal:
        scenarios = UNEQUAL[:2] if paired else UNEQUAL
    else:
        scenarios = (SCENARIOS[0], SCENARIOS[1], SCENARIOS[-1]) if paired else SCENARIOS
    for scenario in scenarios:
        for counts in UNEQUAL_COUNTS if unequal else SUBJECT_COUNTS:
            found = paired_coverage(scenario, counts, sets) if paired else coverage(scenario, counts, sets)
            cells = " | ".join(f"{found.held[key]:.3f} ({found.width[key]:.2f})" if key in found.held else "—"
                               for key in INTERVAL_SCORES)  # fmt: skip
            lowest = min(found.held.values())
            lines.append(f"| {scenario.name} | {counts[0]} + {counts[1]} | {lowest:.3f} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sets = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(table(sets, paired="paired" in sys.argv, unequal="unequal" in sys.argv))
