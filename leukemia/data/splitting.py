"""Splitting a labelled pool: whole subjects to validation, and the folds of K-fold cross-validation, each
stratified by class and seeded."""

from __future__ import annotations

from collections import Counter

import numpy as np

from leukemia.data.manifest import Manifest
from leukemia.errors import UserError
from leukemia.names import CLASS_NAMES


def split_by_subject(pool: Manifest, val_fraction: float, seed: int) -> tuple[Manifest, Manifest]:
    """A seeded split of whole subjects, class by class: validation takes subjects while that brings its
    share of the class's images closer to ``val_fraction``; at least one subject of each class on each side."""
    if pool.subjects is None or pool.labels is None:
        raise UserError(f"{pool.source}: a subject-disjoint split needs labels and subjects for every image")
    if not 0 < val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction}: must be between 0 and 1 (e.g. 0.2)")
    images = Counter(pool.subjects)
    labels_of: dict[str, Counter] = {}
    for subject, label in zip(pool.subjects, pool.labels, strict=True):
        labels_of.setdefault(subject, Counter())[label] += 1
    majority = {subject: counts.most_common(1)[0][0] for subject, counts in labels_of.items()}
    rng = np.random.default_rng(seed)
    validation: set[str] = set()
    for label, class_name in enumerate(CLASS_NAMES):
        subjects = sorted(subject for subject, major in majority.items() if major == label)
        if len(subjects) < 2:
            raise UserError(
                f"{pool.source}: {len(subjects)} '{class_name}' subject(s); a subject-disjoint split needs at "
                f"least 2 per class (use data.split=folds)"
            )
        target = val_fraction * sum(images[subject] for subject in subjects)
        taken = 0
        for subject in rng.permutation(subjects).tolist()[: len(subjects) - 1]:
            if taken == 0 or abs(taken + images[subject] - target) < abs(taken - target):
                validation.add(subject)
                taken += images[subject]
    in_validation = [subject in validation for subject in pool.subjects]
    train = pool.select([i for i, held in enumerate(in_validation) if not held], name="train")
    valid = pool.select([i for i, held in enumerate(in_validation) if held], name="valid")
    return train, valid


def merged(first: Manifest, second: Manifest, name: str) -> Manifest:
    """Two labelled splits as one (the training pool that K-fold cross-validation divides)."""
    both_subjects = first.subjects is not None and second.subjects is not None
    both_ids = first.ids is not None and second.ids is not None
    return Manifest(
        name,
        first.paths + second.paths,
        (first.labels or []) + (second.labels or []),
        first.subjects + second.subjects if both_subjects else None,
        f"{first.source} + {second.source}",
        first.ids + second.ids if both_ids else None,
    )


def fold_assignment(pool: Manifest, folds: int, seed: int) -> list[int]:
    """Each row's fold, 0 … folds-1: stratified (each class spread evenly over the folds) and, when the pool has
    subjects, grouped (a subject's images share one fold). Groups are dealt in a seeded order, largest first,
    each to the fold that holds the fewest images of its class (then overall)."""
    labels = pool.labels or []
    groups: dict[tuple[int, str], list[int]] = {}
    for row, label in enumerate(labels):
        group = pool.subjects[row] if pool.subjects is not None else str(row)
        groups.setdefault((label, group), []).append(row)
    rng = np.random.default_rng(seed)
    fold_of = [0] * len(labels)
    totals = [0] * folds
    for label, class_name in enumerate(CLASS_NAMES):
        keys = [key for key in groups if key[0] == label]
        if len(keys) < folds:
            unit = "subjects" if pool.subjects is not None else "images"
            raise UserError(
                f"data.folds={folds}: {pool.source} has {len(keys)} '{class_name}' {unit} in its training pool; "
                f"each fold needs one, so use data.folds={max(2, len(keys))} or fewer"
            )
        order = [keys[i] for i in rng.permutation(len(keys))]
        order.sort(key=lambda key: -len(groups[key]))  # stable: ties keep the seeded order
        in_class = [0] * folds
        for key in order:
            fold = min(range(folds), key=lambda f: (in_class[f], totals[f], f))
            for row in groups[key]:
                fold_of[row] = fold
            in_class[fold] += len(groups[key])
            totals[fold] += len(groups[key])
    return fold_of


def split_fold(pool: Manifest, folds: int, fold: int, seed: int) -> tuple[Manifest, Manifest]:
    """(train, valid): fold ``fold`` of ``folds`` validates, the others train."""
    if folds < 2:
        raise UserError(f"data.folds={folds}: cross-validation needs at least 2 folds (or data.folds=null)")
    if not 0 <= fold < folds:
        raise UserError(f"data.fold={fold}: must be one of 0 … {folds - 1} (data.folds={folds})")
    fold_of = fold_assignment(pool, folds, seed)
    train = pool.select([row for row, f in enumerate(fold_of) if f != fold], name="train")
    valid = pool.select([row for row, f in enumerate(fold_of) if f == fold], name="valid")
    return train, valid
