"""Manifests: which image files make up each split, with their labels and subjects when known.

The layouts (``data/layouts/``) produce manifests; everything downstream reads only manifests. The
checks here run before anything trains and touch no pixels (table and file-existence checks only), so they
take a moment even on the full 10,661-image C-NMC training set. Unreadable pixels are found when first read
(``loading.CellImages``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from leukemia.errors import UserError
from leukemia.names import CLASS_NAMES

log = logging.getLogger(__name__)

# The files a folder of cells is read for (the other files in it, a README or a CSV, are not images)
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
SHOWN = 3  # how many culprits a message names


def first_few(items: Sequence[object]) -> str:
    """``a, b, c`` or ``a, b, c, …``: the culprits a one-line message names."""
    shown = ", ".join(str(item) for item in items[:SHOWN])
    return shown + (", …" if len(items) > SHOWN else "")


def is_image_name(path: Path) -> bool:
    """A name with an image suffix (any case), not a hidden one such as .DS_Store or macOS's ._ copies."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files_in(folder: Path, recursive: bool) -> list[Path]:
    """The image files in ``folder`` (under it, with ``recursive``; hidden folders left out), sorted by their
    paths relative to it. An image name that is no file to read (a broken link, a symlink loop) is warned
    about, not read."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    named = [path for path in found if is_image_name(path) and not _hidden(path.relative_to(folder))]
    files = [path for path in named if path.is_file()]
    unreadable = sorted(set(named) - set(files))
    if unreadable:
        log.warning("%s: %d image names are no file to read (a broken link, a symlink loop or a folder), left out: "
                    "%s", folder, len(unreadable), first_few(unreadable))  # fmt: skip
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def resolved(path: Path) -> Path:
    """``path`` absolute, its links followed as far as they lead: a symlink loop or a broken link stays a
    path that names no file (which the missing-file checks report), never an exception."""
    return Path(os.path.realpath(path))


def check_labels(table: pd.DataFrame, column: str, where: str) -> list[int]:
    """The column as 0/1 ints, or an error naming the rows (as numbered in the file, header = row 1)."""
    values = pd.to_numeric(table[column], errors="coerce")  # "1" among "ALL"s still counts as 1
    bad = table[column][~values.isin([0, 1])]
    if not bad.empty:
        rows = [f"row {index + 2} has '{value}'" for index, value in bad.items()]
        raise UserError(
            f"{where}: '{column}' must be 0 (normal) or 1 (ALL); {len(rows)} of {len(table)} rows are not "
            f"({first_few(rows)})"
        )
    return values.astype(int).tolist()


def read_csv_columns(csv_path: Path, needed: list[str], split: str) -> pd.DataFrame:
    """The CSV as a table of strings exactly as written (``7`` stays ``7``, ``007`` ``007``, a blank cell is
    ``""``, never NaN), after checking it exists, has the needed columns and at least one row: the one reader of
    every manifest CSV, the layouts' and task=predict's."""
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such CSV; check data.root and the CSV name (or try data=demo)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as file:  # a spreadsheet's byte-order mark dropped
            header = next(csv.reader(file), [])  # as written: pandas would rename a second "subject" "subject.1"
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise UserError(f"{csv_path}: not a readable CSV ({str(error).strip()}); fix or regenerate it") from error
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise UserError(f"{csv_path}: the column(s) {repeated} appear more than once; give each column once")
    absent = [column for column in needed if column not in table.columns]
    if absent:
        raise UserError(f"{csv_path}: missing column(s) {absent}; found {list(table.columns)}, need {needed}")
    if table.empty:
        raise UserError(f"{csv_path}: has no rows; the {split} split needs at least one image")
    return table


SUBJECT_COLUMN = "subject"


def blank(values: pd.Series) -> pd.Series:
    """Which cells of a column read as strings are empty (or only spaces)."""
    return values.str.strip() == ""


def subject_column(table: pd.DataFrame, where: str, unknown_allowed: bool) -> list[str | None] | None:
    """A table's ``subject`` column as written; a blank cell is an unknown subject (None), never a subject named
    "nan"; None where there is no such column or it is blank throughout. Blanks among named subjects are an error
    unless ``unknown_allowed`` (a training split's subjects keep it honest only if every cell has one)."""
    if SUBJECT_COLUMN not in table.columns or blank(table[SUBJECT_COLUMN]).all():
        return None
    unknown = blank(table[SUBJECT_COLUMN])
    if unknown.any() and not unknown_allowed:
        rows = [f"row {index + 2}" for index in table.index[unknown]]
        raise UserError(f"{where}: '{SUBJECT_COLUMN}' is blank in {len(rows)} of {len(table)} rows "
                        f"({first_few(rows)}); name every row's subject, or leave the column out")  # fmt: skip
    return [None if missing else value for value, missing in zip(table[SUBJECT_COLUMN], unknown, strict=True)]


@dataclass(frozen=True)
class Manifest:
    """One split: absolute image paths, 0/1 labels for labelled splits, subject ids where the layout has them.

    ``source`` is the CSV or folder the split was read from, so messages can name it; ``ids`` are the images'
    names as that source writes them (a lab CSV's ``Path`` strings), what a submission's ``ID`` column repeats.
    """

    name: str
    paths: list[Path]
    labels: list[int] | None
    subjects: list[str | None] | None = None  # None for a cell whose subject is unknown (task=predict's input)
    source: str = ""
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        labels = self.labels or []
        return {name: labels.count(index) for index, name in enumerate(CLASS_NAMES)}

    def subject_set(self) -> set[str]:
        return {subject for subject in self.subjects or () if subject is not None}

    def identifiers(self) -> list[str]:
        return self.ids if self.ids is not None else [path.name for path in self.paths]

    def table(self) -> pd.DataFrame:
        """The split as a table: ``path``, and ``label`` and ``subject`` where known."""
        columns = {"path": [str(path) for path in self.paths], "label": self.labels, "subject": self.subjects}
        return pd.DataFrame({key: values for key, values in columns.items() if values is not None})

    def select(self, indices: Iterable[int], name: str | None = None) -> Manifest:
        """The rows at ``indices``, in that order (optionally as another split)."""
        indices = list(indices)
        return replace(
            self,
            name=name or self.name,
            paths=[self.paths[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],
            subjects=None if self.subjects is None else [self.subjects[i] for i in indices],
            ids=None if self.ids is None else [self.ids[i] for i in indices],
        )


@dataclass(frozen=True)
class Splits:
    train: Manifest
    valid: Manifest | None  # None only between a layout that has none and the fold that ``load_splits`` carves
    test: Manifest | None

    def present(self) -> list[Manifest]:
        return [manifest for manifest in (self.train, self.valid, self.test) if manifest is not None]


def check_filled(table: pd.DataFrame, column: str, where: str) -> None:
    """Every row names a file in ``column``."""
    empty = table[column][blank(table[column])]
    if not empty.empty:
        rows = [f"row {index + 2}" for index in empty.index]
        raise UserError(f"{where}: '{column}' is empty in {len(rows)} of {len(table)} rows ({first_few(rows)}); "
                        f"give every row an image path or remove the row")  # fmt: skip


def missing_files_error(paths: Sequence[Path], where: str, hint: str) -> UserError | None:
    """The error for image paths that are folders or do not exist (how many, the first few), or None."""
    folders = [path for path in paths if path.is_dir()]
    if folders:
        return UserError(
            f"{where}: {len(folders)} of {len(paths)} paths are folders, not image files (first: "
            f"{first_few(folders)}); list the image files themselves"
        )
    missing = [path for path in paths if not path.is_file()]
    if not missing:
        return None
    return UserError(
        f"{where}: {len(missing)} of {len(paths)} image files do not exist (first: {first_few(missing)}); {hint}"
    )


def listed_files(table: pd.DataFrame, column: str, csv_path: Path) -> list[Path]:
    """The files a CSV's ``column`` names, read relative to the CSV's folder: every row names one, and each
    exists (else the error naming the first few)."""
    check_filled(table, column, str(csv_path))
    paths = [resolved(csv_path.parent / value) for value in table[column]]
    error = missing_files_error(paths, str(csv_path), f"'{column}' values are read relative to {csv_path.parent}")
    if error:
        raise error
    return paths


def check_manifest(manifest: Manifest) -> None:
    """A split must have images, each listed once; a training split needs both classes."""
    where = manifest.source or f"the {manifest.name} split"
    if not len(manifest):
        raise UserError(f"{where}: the {manifest.name} split has no images; it needs at least one")
    repeated = [path for path, count in Counter(manifest.paths).items() if count > 1]
    if repeated:
        raise UserError(
            f"{where}: {len(repeated)} image paths are listed more than once (first: {first_few(repeated)}); "
            f"list each image once"
        )
    if manifest.labels is None:
        return
    absent = [name for name, count in manifest.class_counts().items() if count == 0]
    if absent and manifest.name == "train":
        raise UserError(f"{where}: the train split has no '{absent[0]}' images; training needs both classes")
    if absent:
        log.warning("%s: the %s split has no '%s' images; its per-class scores are undefined",
                    where, manifest.name, absent[0])  # fmt: skip


def check_splits(splits: Splits) -> None:
    """Each split on its own, then across splits: no image file in two splits (a leak), subject overlap warned."""
    present = splits.present()
    for manifest in present:
        check_manifest(manifest)
    for index, first in enumerate(present):
        for second in present[index + 1 :]:
            shared = sorted(set(first.paths) & set(second.paths))
            if shared:
                raise UserError(
                    f"the {first.name} and {second.name} splits share {len(shared)} image files "
                    f"(first: {first_few(shared)}); an image may be in one split only"
                )
            subjects = sorted(first.subject_set() & second.subject_set())
            if subjects:
                log.warning("the %s and %s splits share %d subjects (%s): scores on %s will be optimistic",
                            first.name, second.name, len(subjects), first_few(subjects), second.name)  # fmt: skip


def limit_manifest(manifest: Manifest, limit: int | None) -> Manifest:
    """At most ``limit`` rows: a fixed pick with each class in proportion (at least one each), original order.

    Unlabelled splits keep their first ``limit`` rows, so a limited test set is still a prefix of the CSV.
    """
    if limit is None or len(manifest) <= limit:
        return manifest
    if manifest.labels is None:
        return manifest.select(range(limit))
    rng = np.random.default_rng(0)
    labels = np.asarray(manifest.labels)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = np.maximum(1, np.floor(limit * counts / counts.sum())).astype(int)
    quotas[np.argmax(counts)] += limit - quotas.sum()  # the remainder goes to the largest class
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:quota] for label, quota in zip(classes, quotas, strict=True)
    ]
    return manifest.select(sorted(np.concatenate(chosen).tolist()))


def summarize(splits: Splits) -> dict[str, dict[str, int]]:
    """Images per split and class, and subjects per split where known: what every run prints and logs."""
    table: dict[str, dict[str, int]] = {}
    for manifest in splits.present():
        row = {"images": len(manifest)}
        if manifest.labels is not None:
            row |= manifest.class_counts()
        if manifest.subjects is not None:
            row["subjects"] = len(manifest.subject_set())
        table[manifest.name] = row
    return table


def summary_lines(table: dict[str, dict[str, int]]) -> list[str]:
    """The summary as an aligned text table (``-`` where a split has no labels or subjects)."""
    columns = ["images", *CLASS_NAMES, "subjects"]
    lines = [f"{'split':<6}" + "".join(f"{column:>10}" for column in columns)]
    for split, row in table.items():
        lines.append(f"{split:<6}" + "".join(f"{row.get(column, '-'):>10}" for column in columns))
    return lines
