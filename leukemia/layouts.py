"""Data layouts: how a folder on disk becomes the train/valid/test manifests.

``data=lab`` reads the course's CSVs, ``data=demo`` writes a lab-layout folder first and then reads it the same
way, ``data=cnmc`` reads the published C-NMC 2019 tree (``cnmc.py``), ``data=csv`` a generic manifest. A new
layout is one function ``data config -> Splits`` registered in ``LAYOUTS``; ``load_splits`` carves the
cross-validation fold, then checks and limits whatever it returns.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from leukemia.cnmc import cnmc_splits
from leukemia.demo import DemoSpec, ensure_demo_dataset
from leukemia.errors import UserError
from leukemia.manifest import (
    Manifest,
    Splits,
    check_filled,
    check_labels,
    check_splits,
    first_few,
    limit_manifest,
    merged,
    missing_files_error,
    read_csv_columns,
    split_fold,
)

log = logging.getLogger(__name__)

PATH_COLUMN = "Path"
LABEL_COLUMN = "label"
SUBJECT_COLUMN = "subject"  # optional; the demo writes it


def _resolve_paths(values: pd.Series, csv_path: Path) -> list[Path]:
    """Paths are relative to the CSV's folder (``train/0.bmp``, ``./new_dataset/train/0.bmp`` beside the CSV)
    or to the folder above it (the CSV sits inside ``new_dataset/`` but names ``./new_dataset/...``)."""
    check_filled(values.to_frame(), PATH_COLUMN, str(csv_path))
    bases = [csv_path.parent, csv_path.parent.parent]
    first = Path(str(values.iloc[0]))
    base = next((b for b in bases if (b / first).is_file()), bases[0])
    paths = [(base / str(value)).resolve() for value in values]
    error = missing_files_error(
        paths, str(csv_path), f"'{PATH_COLUMN}' values are read relative to {bases[0]} or {bases[1]}"
    )
    if error:
        raise error
    return paths


def read_lab_csv(csv_path: Path, split: str, labelled: bool) -> Manifest:
    """Read one CSV of the lab layout: ``Path,label[,subject]`` (train/valid) or ``Path`` (test)."""
    table = read_csv_columns(csv_path, [PATH_COLUMN, LABEL_COLUMN] if labelled else [PATH_COLUMN], split)
    labels = check_labels(table, LABEL_COLUMN, str(csv_path)) if labelled else None
    subjects = table[SUBJECT_COLUMN].astype(str).tolist() if SUBJECT_COLUMN in table.columns else None
    paths = _resolve_paths(table[PATH_COLUMN], csv_path)
    return Manifest(split, paths, labels, subjects, str(csv_path), table[PATH_COLUMN].astype(str).tolist())


def with_test_labels(test: Manifest, labels_csv: Path) -> Manifest:
    """The test split with labels (and subjects) from a ``Path,label`` CSV that covers every test image."""
    table = read_csv_columns(labels_csv, [PATH_COLUMN, LABEL_COLUMN], "test")
    labels = dict(zip(table[PATH_COLUMN].astype(str), check_labels(table, LABEL_COLUMN, str(labels_csv)), strict=True))
    unlabelled = [identifier for identifier in test.identifiers() if identifier not in labels]
    if unlabelled:
        raise UserError(
            f"{labels_csv}: no label for {len(unlabelled)} of {len(test)} rows of {test.source} "
            f"(first: {first_few(unlabelled)}); its 'Path' values must match the test CSV's"
        )
    subjects = None
    if SUBJECT_COLUMN in table.columns:
        subject_of = dict(zip(table[PATH_COLUMN].astype(str), table[SUBJECT_COLUMN].astype(str), strict=True))
        subjects = [subject_of[identifier] for identifier in test.identifiers()]
    return replace(test, labels=[labels[identifier] for identifier in test.identifiers()], subjects=subjects)


def data_root(data_cfg: Any, paths_key: str, holding: str) -> Path:
    """``data.root``, or the one-line error naming it and the ``paths`` key that sets it by default."""
    root = Path(data_cfg.root)
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: no such folder; point data.root (or paths.{paths_key}) at the folder holding {holding}"
        )
    return root


def lab_splits(data_cfg: Any) -> Splits:
    """The course layout: ``train.csv``/``valid.csv`` with labels, the test CSV (optional) without."""
    root = data_root(data_cfg, "lab_root", f"{data_cfg.train_csv}, or try data=demo")
    test_csv = root / data_cfg.test_csv
    test = None
    if test_csv.is_file():
        test = read_lab_csv(test_csv, "test", labelled=False)
        if data_cfg.test_labels_csv:
            test = with_test_labels(test, root / data_cfg.test_labels_csv)
    else:
        log.info("no test CSV %s: test evaluation is skipped", test_csv)
    return Splits(
        train=read_lab_csv(root / data_cfg.train_csv, "train", labelled=True),
        valid=read_lab_csv(root / data_cfg.valid_csv, "valid", labelled=True),
        test=test,
    )


def demo_splits(data_cfg: Any) -> Splits:
    spec = DemoSpec(**{key.name: data_cfg[key.name] for key in fields(DemoSpec)})
    ensure_demo_dataset(data_cfg.root, spec)
    return lab_splits(data_cfg)


MANIFEST_SPLITS = ("train", "valid", "test")
DEFAULT_FOLDS = 5  # data=csv without a split column or data.folds: fold 0 of 5 validates


def _rows_error(csv_path: Path, column: str, bad: pd.Series, rule: str) -> UserError:
    rows = [f"row {index + 2} has '{value}'" for index, value in bad.items()]
    return UserError(f"{csv_path}: '{column}' {rule}; {len(rows)} rows are not ({first_few(rows)})")


def csv_splits(data_cfg: Any) -> Splits:
    """A generic manifest, ``<root>/<manifest>``: ``path,label`` and optional ``subject`` and ``split`` columns;
    paths relative to the CSV's folder. Rows without a split are in the training pool; no valid rows leave the
    validation split to ``load_splits`` (a cross-validation fold)."""
    csv_path = data_root(data_cfg, "csv_root", data_cfg.manifest) / data_cfg.manifest
    table = read_csv_columns(csv_path, ["path", "label"], "train")
    split = table.get("split", pd.Series("", index=table.index)).fillna("").astype(str).str.strip().str.lower()
    split = split.replace("", "train")
    bad = split[~split.isin(MANIFEST_SPLITS)]
    if not bad.empty:
        raise _rows_error(csv_path, "split", table["split"][bad.index], "must be train, valid, test or empty")
    subjects = None
    if "subject" in table.columns and table["subject"].notna().any():
        unnamed = table["subject"][table["subject"].isna()]
        if not unnamed.empty:
            raise _rows_error(csv_path, "subject", unnamed, "must name every row's subject, or none")
        subjects = table["subject"].astype(str).tolist()
    check_filled(table, "path", str(csv_path))
    paths = [(csv_path.parent / str(value)).resolve() for value in table["path"]]
    error = missing_files_error(paths, str(csv_path), f"'path' values are read relative to {csv_path.parent}")
    if error:
        raise error
    whole = Manifest("all", paths, None, subjects, str(csv_path), table["path"].astype(str).tolist())

    def rows(name: str, labelled: bool) -> Manifest | None:
        index = [i for i, value in enumerate(split) if value == name]
        if not index:
            return None
        labels = check_labels(table.iloc[index], "label", str(csv_path)) if labelled else None
        return replace(whole.select(index, name=name), labels=labels)

    test_labels = table["label"][split == "test"]
    test = rows("test", labelled=test_labels.notna().all())
    if test is not None and test.labels is None and test_labels.notna().any():
        raise _rows_error(csv_path, "label", test_labels[test_labels.isna()], "must be given on all test rows or none")
    train = rows("train", labelled=True)
    if train is None:
        raise UserError(f"{csv_path}: no training rows (split empty or 'train'); the train split needs images")
    return Splits(train=train, valid=rows("valid", labelled=True), test=test)


LAYOUTS = {"lab": lab_splits, "demo": demo_splits, "cnmc": cnmc_splits, "csv": csv_splits}


def with_fold(splits: Splits, data_cfg: Any) -> Splits:
    """With ``data.folds``: fold ``data.fold`` of the training pool (train and valid together) validates. A
    layout that gave no validation split gets fold 0 of 5."""
    folds, fold = data_cfg.folds, data_cfg.fold
    if folds is None and splits.valid is not None:
        return splits
    if folds is None:
        folds, fold = DEFAULT_FOLDS, 0
        log.info("no validation rows and no data.folds: fold 0 of %d validates (set data.folds and data.fold to "
                 "choose)", folds)  # fmt: skip
    pool = splits.train if splits.valid is None else merged(splits.train, splits.valid, "train")
    train, valid = split_fold(pool, folds, fold, data_cfg.fold_seed)
    log.info("cross-validation: fold %d of %d validates (%d images), %d train (fold seed %d)",
             fold, folds, len(valid), len(train), data_cfg.fold_seed)  # fmt: skip
    return Splits(train=train, valid=valid, test=splits.test)


def load_splits(data_cfg: Any) -> Splits:
    """Manifests for the configured layout with its cross-validation fold, checked (no pixels read), then cut
    to ``data.limit`` per split."""
    if data_cfg.limit is not None and data_cfg.limit < 1:
        raise UserError(f"data.limit={data_cfg.limit}: must be at least 1 image per split (or null for all)")
    splits = with_fold(LAYOUTS[data_cfg.name](data_cfg), data_cfg)
    check_splits(splits)
    if data_cfg.limit is None:
        return splits
    limited = (None if manifest is None else limit_manifest(manifest, data_cfg.limit)
               for manifest in (splits.train, splits.valid, splits.test))  # fmt: skip
    return Splits(*limited)
