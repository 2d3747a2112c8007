"""``data=lab``: the course layout, ``<root>/train.csv`` and ``valid.csv`` (``Path,label[,subject]``) and a test
CSV with ``Path`` only (labels optionally from ``data.test_labels_csv``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from leukemia.data.manifest import (
    Manifest,
    Splits,
    check_filled,
    check_labels,
    first_few,
    missing_files_error,
    read_csv_columns,
    resolved,
    subject_column,
)
from leukemia.data.schema import DataConfig
from leukemia.errors import UserError
from leukemia.schema import POSITIVE, TEXT, WORKERS, checked


@dataclass
class LabDataConfig(DataConfig):
    """The course layout: ``<root>/train.csv`` and ``valid.csv`` (``Path,label``), a test CSV with ``Path`` only."""

    name: str = "lab"
    root: str = checked("${paths.lab_root}", TEXT)
    crop_size: int | None = checked(350, POSITIVE)  # C-NMC cells are 450x450
    image_size: int = checked(350, POSITIVE)  # 350: no resize, as the lab recipe
    num_workers: int = checked(2, WORKERS)
    train_csv: str = checked("train.csv", TEXT)
    valid_csv: str = checked("valid.csv", TEXT)
    test_csv: str = checked("resnet_${model.depth}_test.csv", TEXT)  # the course keeps one test CSV per depth
    # Optional ``Path,label`` CSV with the test split's labels (the demo writes test_labels.csv): test metrics.
    test_labels_csv: str | None = checked(None, TEXT)


log = logging.getLogger(__name__)

PATH_COLUMN = "Path"
LABEL_COLUMN = "label"


def _resolve_paths(values: pd.Series, csv_path: Path) -> list[Path]:
    """Paths are relative to the CSV's folder (``train/0.bmp``, ``./new_dataset/train/0.bmp`` beside the CSV)
    or to the folder above it (the CSV sits inside ``new_dataset/`` but names ``./new_dataset/...``)."""
    check_filled(values.to_frame(), PATH_COLUMN, str(csv_path))
    bases = [csv_path.parent, csv_path.parent.parent]
    first = Path(values.iloc[0])
    base = next((b for b in bases if (b / first).is_file()), bases[0])
    paths = [resolved(base / value) for value in values]
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
    subjects = subject_column(table, str(csv_path), unknown_allowed=False)  # optional; the demo writes it
    paths = _resolve_paths(table[PATH_COLUMN], csv_path)
    return Manifest(split, paths, labels, subjects, str(csv_path), table[PATH_COLUMN].tolist())


def with_test_labels(test: Manifest, labels_csv: Path) -> Manifest:
    """The test split with labels (and subjects) from a ``Path,label`` CSV that covers every test image."""
    table = read_csv_columns(labels_csv, [PATH_COLUMN, LABEL_COLUMN], "test")
    repeated = table[PATH_COLUMN][table[PATH_COLUMN].duplicated()].tolist()
    if repeated:
        raise UserError(f"{labels_csv}: {len(repeated)} '{PATH_COLUMN}' values are listed more than once (first: "
                        f"{first_few(repeated)}); give each test image one label")  # fmt: skip
    labels = dict(zip(table[PATH_COLUMN], check_labels(table, LABEL_COLUMN, str(labels_csv)), strict=True))
    unlabelled = [identifier for identifier in test.identifiers() if identifier not in labels]
    if unlabelled:
        raise UserError(
            f"{labels_csv}: no label for {len(unlabelled)} of {len(test)} rows of {test.source} "
            f"(first: {first_few(unlabelled)}); its 'Path' values must match the test CSV's"
        )
    subjects = subject_column(table, str(labels_csv), unknown_allowed=False)
    if subjects is not None:
        subject_of = dict(zip(table[PATH_COLUMN], subjects, strict=True))
        subjects = [subject_of[identifier] for identifier in test.identifiers()]
    return replace(test, labels=[labels[identifier] for identifier in test.identifiers()], subjects=subjects)


def data_root(data_cfg: DataConfig, paths_key: str, holding: str) -> Path:
    """``data.root``, or the one-line error naming it and the ``paths`` key that sets it by default."""
    root = Path(data_cfg.root)
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: no such folder; point data.root (or paths.{paths_key}) at the folder holding {holding}"
        )
    return root


def lab_splits(data_cfg: LabDataConfig) -> Splits:
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
