"""Data layouts: how a folder on disk becomes the train/valid/test manifests.

One module per layout, each its schema (its own keys beside ``DataConfig``'s) and a reader ``data config ->
Splits``, registered once in ``LAYOUTS`` (the data group's registry: the config check and Hydra's schema store
read the schemas from here): ``data=lab`` reads
the course's CSVs, ``data=demo`` writes a lab-layout folder first and then reads it the same way, ``data=cnmc``
the published C-NMC 2019 tree, ``data=csv`` a generic manifest. ``load_splits`` carves the cross-validation
fold, then checks and limits whatever a layout returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from leukemia.data.layouts.cnmc import CnmcDataConfig, cnmc_splits
from leukemia.data.layouts.csv_manifest import CsvDataConfig, csv_splits
from leukemia.data.layouts.demo import DemoDataConfig, demo_splits
from leukemia.data.layouts.lab import LabDataConfig, lab_splits
from leukemia.data.manifest import Splits, check_splits, limit_manifest
from leukemia.data.schema import DataConfig
from leukemia.data.splitting import merged, split_fold
from leukemia.errors import UserError

log = logging.getLogger(__name__)


class Layout(NamedTuple):
    schema: type[DataConfig]  # its keys, defaults and rules
    read: Callable[..., Splits]  # its config -> the splits it finds


LAYOUTS: dict[str, Layout] = {
    "lab": Layout(LabDataConfig, lab_splits),
    "demo": Layout(DemoDataConfig, demo_splits),
    "cnmc": Layout(CnmcDataConfig, cnmc_splits),
    "csv": Layout(CsvDataConfig, csv_splits),
}
DEFAULT_FOLDS = 5  # a layout without a validation split and no data.folds: fold 0 of 5 validates


def with_fold(splits: Splits, data_cfg: DataConfig) -> Splits:
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


def load_splits(data_cfg: DataConfig) -> Splits:
    """Manifests for the configured layout with its cross-validation fold, checked (no pixels read), then cut
    to ``data.limit`` per split."""
    if data_cfg.limit is not None and data_cfg.limit < 1:
        raise UserError(f"data.limit={data_cfg.limit}: must be at least 1 image per split (or null for all)")
    splits = with_fold(LAYOUTS[data_cfg.name].read(data_cfg), data_cfg)
    check_splits(splits)
    if data_cfg.limit is None:
        return splits
    limited = (None if manifest is None else limit_manifest(manifest, data_cfg.limit)
               for manifest in (splits.train, splits.valid, splits.test))  # fmt: skip
    return Splits(*limited)
