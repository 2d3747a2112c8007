"""``data=csv``: a generic manifest, ``<root>/<manifest>`` with columns ``path,label`` and optional ``subject``
and ``split``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from leukemia.data.layouts.lab import data_root
from leukemia.data.manifest import (
    Manifest,
    Splits,
    blank,
    check_labels,
    first_few,
    listed_files,
    read_csv_columns,
    subject_column,
)
from leukemia.data.schema import DataConfig
from leukemia.errors import UserError
from leukemia.schema import POSITIVE, TEXT, WORKERS, checked


@dataclass
class CsvDataConfig(DataConfig):
    """A generic manifest: ``<root>/<manifest>`` with columns path,label[,subject][,split]."""

    name: str = "csv"
    root: str = checked("${paths.csv_root}", TEXT)  # the folder holding the manifest
    crop_size: int | None = checked(None, POSITIVE)  # the whole image, padded to a square if it is not one
    image_size: int = checked(96, POSITIVE)
    num_workers: int = checked(2, WORKERS)
    manifest: str = checked("labels.csv", TEXT)


MANIFEST_SPLITS = ("train", "valid", "test")


def _rows_error(csv_path: Path, column: str, bad: pd.Series, rule: str) -> UserError:
    rows = [f"row {index + 2} has '{value}'" for index, value in bad.items()]
    return UserError(f"{csv_path}: '{column}' {rule}; {len(rows)} rows are not ({first_few(rows)})")


def csv_splits(data_cfg: CsvDataConfig) -> Splits:
    """A generic manifest, ``<root>/<manifest>``: ``path,label`` and optional ``subject`` and ``split`` columns;
    paths relative to the CSV's folder. Rows without a split are in the training pool; no valid rows leave the
    validation split to ``load_splits`` (a cross-validation fold)."""
    csv_path = data_root(data_cfg, "csv_root", data_cfg.manifest) / data_cfg.manifest
    table = read_csv_columns(csv_path, ["path", "label"], "train")
    split = table.get("split", pd.Series("", index=table.index)).str.strip().str.lower()
    split = split.replace("", "train")
    bad = split[~split.isin(MANIFEST_SPLITS)]
    if not bad.empty:
        raise _rows_error(csv_path, "split", table["split"][bad.index], "must be train, valid, test or empty")
    subjects = subject_column(table, str(csv_path), unknown_allowed=False)
    paths = listed_files(table, "path", csv_path)
    whole = Manifest("all", paths, None, subjects, str(csv_path), table["path"].tolist())

    def rows(name: str, labelled: bool) -> Manifest | None:
        index = [i for i, value in enumerate(split) if value == name]
        if not index:
            return None
        labels = check_labels(table.iloc[index], "label", str(csv_path)) if labelled else None
        return replace(whole.select(index, name=name), labels=labels)

    test_labels = table["label"][split == "test"]
    unlabelled = blank(test_labels)
    test = rows("test", labelled=not unlabelled.any())
    if test is not None and test.labels is None and not unlabelled.all():
        raise _rows_error(csv_path, "label", test_labels[unlabelled], "must be given on all test rows or none")
    train = rows("train", labelled=True)
    if train is None:
        raise UserError(f"{csv_path}: no training rows (split empty or 'train'); the train split needs images")
    return Splits(train=train, valid=rows("valid", labelled=True), test=test)
