"""Data layouts: how a folder on disk becomes the train/valid/test manifests.

``data=lab`` reads the course's CSVs, ``data=demo`` writes a lab-layout folder first and then reads it the same
way, ``data=cnmc`` reads the published C-NMC 2019 tree (``cnmc.py``). A new layout is one function
``data config -> Splits`` registered in ``LAYOUTS``; ``load_splits`` checks and limits whatever it returns.
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
    check_labels,
    check_splits,
    first_few,
    limit_manifest,
    missing_files_error,
    read_csv_columns,
)

log = logging.getLogger(__name__)

PATH_COLUMN = "Path"
LABEL_COLUMN = "label"
SUBJECT_COLUMN = "subject"  # optional; the demo writes it


def _resolve_paths(values: pd.Series, csv_path: Path) -> list[Path]:
    """Paths are relative to the CSV's folder (``train/0.bmp``, ``./new_dataset/train/0.bmp`` beside the CSV)
    or to the folder above it (the CSV sits inside ``new_dataset/`` but names ``./new_dataset/...``)."""
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


def lab_splits(data_cfg: Any) -> Splits:
    """The course layout: ``train.csv``/``valid.csv`` with labels, the test CSV (optional) without."""
    root = Path(data_cfg.root)
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: no such folder; point data.root (or paths.lab_root) at the folder holding "
            f"{data_cfg.train_csv}, or try data=demo"
        )
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


LAYOUTS = {"lab": lab_splits, "demo": demo_splits, "cnmc": cnmc_splits}


def load_splits(data_cfg: Any) -> Splits:
    """Manifests for the configured layout, checked (no pixels read), then cut to ``data.limit`` per split."""
    if data_cfg.limit is not None and data_cfg.limit < 1:
        raise UserError(f"data.limit={data_cfg.limit}: must be at least 1 image per split (or null for all)")
    splits = LAYOUTS[data_cfg.name](data_cfg)
    check_splits(splits)
    if data_cfg.limit is None:
        return splits
    limited = (None if manifest is None else limit_manifest(manifest, data_cfg.limit)
               for manifest in (splits.train, splits.valid, splits.test))  # fmt: skip
    return Splits(*limited)
