"""The C-NMC 2019 tree as published (Kaggle "C-NMC_Leukemia", TCIA), read into subject-aware manifests.

Training cells are named ``UID_<subject>_<image>_<cell>_<all|hem>.bmp``: ALL subjects are numbers, healthy
ones ``H<n>`` (sometimes a lowercase ``h``). The subject is what makes an honest split possible: cells of one
patient in both train and validation inflate the score. So both split methods keep every subject on one side.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from leukemia.data.manifest import (
    Manifest,
    Splits,
    check_labels,
    first_few,
    image_files_in,
    missing_files_error,
    read_csv_columns,
    resolved,
)
from leukemia.data.schema import DataConfig
from leukemia.data.splitting import split_by_subject
from leukemia.errors import UserError
from leukemia.schema import FRACTION, POSITIVE, SEED, TEXT, WORKERS, Rule, checked


class SplitMethod(str, Enum):
    folds = "folds"  # the published folds: data.val_fold validates, the others train
    subjects = "subjects"  # a seeded, class-stratified split of whole subjects


class CnmcTestSet(str, Enum):
    prelim = "prelim"  # validation_data/C-NMC_test_prelim_phase_data, labelled by its CSV
    final = "final"  # testing_data/C-NMC_test_final_phase_data, unlabelled
    none = "none"


@dataclass
class CnmcDataConfig(DataConfig):
    """The C-NMC 2019 tree as published (Kaggle "C-NMC_Leukemia" or TCIA)."""

    name: str = "cnmc"
    root: str = checked("${paths.cnmc_root}", TEXT)
    crop_size: int | None = checked(350, POSITIVE)  # center crop in source pixels (cells are 450x450)
    image_size: int = checked(350, POSITIVE)
    num_workers: int = checked(2, WORKERS)
    split: SplitMethod = SplitMethod.folds
    val_fold: int = checked(2, Rule(lambda v: v in (0, 1, 2), "must be 0, 1 or 2 (the published folds)"))
    # split=subjects: the share of each class's images (whole subjects) that validates, and the split's seed.
    val_fraction: float = checked(0.2, FRACTION)
    split_seed: int = checked(0, SEED)
    test_set: CnmcTestSet = CnmcTestSet.prelim


log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"UID_(?P<subject>h?\d+)_\d+_\d+_(?P<kind>all|hem)", re.IGNORECASE)
KIND_LABELS = {"all": 1, "hem": 0}
TRAINING_FOLDERS = ("training_data", "C-NMC_training_data")
FOLD_PATTERN = re.compile(r"fold_(\d+)", re.IGNORECASE)
PRELIM_FOLDERS = ("validation_data/C-NMC_test_prelim_phase_data", "C-NMC_test_prelim_phase_data")
PRELIM_LABELS_CSV = "C-NMC_test_prelim_phase_data_labels.csv"
PRELIM_COLUMNS = ["Patient_ID", "new_names", "labels"]
FINAL_FOLDERS = ("testing_data/C-NMC_test_final_phase_data", "C-NMC_test_final_phase_data")


def parse_cell_name(name: str) -> tuple[str, int] | None:
    """``UID_h3_6_1_hem.bmp`` -> ("H3", 0); None for a name that does not follow the pattern."""
    match = NAME_PATTERN.fullmatch(Path(name).stem)
    if match is None:
        return None
    return match["subject"].upper(), KIND_LABELS[match["kind"].lower()]


@dataclass(frozen=True)
class Cell:
    path: Path
    subject: str
    label: int
    fold: int


def _first_existing(root: Path, candidates: tuple[str, ...]) -> Path | None:
    return next((root / name for name in candidates if (root / name).is_dir()), None)


def training_folder(root: Path) -> Path:
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: no such folder; point data.root (or paths.cnmc_root) at the folder that holds "
            f"training_data/ (C-NMC_Leukemia/ in the Kaggle download), or try data=demo"
        )
    folder = _first_existing(root, TRAINING_FOLDERS)
    if folder is None:
        raise UserError(
            f"data.root={root}: no training_data/ or C-NMC_training_data/ folder in it (expected "
            f"training_data/fold_0/all/UID_1_1_1_all.bmp); point data.root at the folder that holds it"
        )
    return folder


def training_cells(training: Path) -> list[Cell]:
    """Every training image, with its subject, label (from its class folder) and fold; names are checked."""
    folds = sorted(
        (int(match[1]), path)
        for path in training.iterdir()
        if path.is_dir() and (match := FOLD_PATTERN.fullmatch(path.name))
    )
    if not folds:
        raise UserError(f"{training}: no fold_0/, fold_1/, … folders in it; expected fold_<k>/{{all,hem}}/*.bmp")
    cells, unnamed, contradicted = [], [], []
    for fold, fold_path in folds:
        for class_path in sorted(p for p in fold_path.iterdir() if p.is_dir() and p.name.lower() in KIND_LABELS):
            folder_label = KIND_LABELS[class_path.name.lower()]
            for path in image_files_in(class_path, recursive=False):
                parsed = parse_cell_name(path.name)
                if parsed is None:
                    unnamed.append(path)
                elif parsed[1] != folder_label:
                    contradicted.append(path)
                else:
                    cells.append(Cell(resolved(path), parsed[0], folder_label, fold))
    if unnamed:
        raise UserError(
            f"{training}: {len(unnamed)} image names do not follow UID_<subject>_<image>_<cell>_<all|hem> "
            f"(first: {first_few(unnamed)}); rename them, or list the files in a CSV and use data=lab"
        )
    if contradicted:
        raise UserError(
            f"{training}: {len(contradicted)} images sit in a class folder their name contradicts "
            f"(first: {first_few(contradicted)}); move each to the folder its _all/_hem suffix names"
        )
    return cells


def _manifest(name: str, cells: list[Cell], source: Path) -> Manifest:
    return Manifest(name, [c.path for c in cells], [c.label for c in cells], [c.subject for c in cells], str(source))


def fold_split(cells: list[Cell], val_fold: int, training: Path) -> tuple[Manifest, Manifest]:
    """Fold ``val_fold`` validates, the other folds train. A subject found in the validation fold is left out
    of training altogether, so no subject is on both sides even if a copy's folds share one."""
    folds = sorted({cell.fold for cell in cells})
    if val_fold not in folds:
        raise UserError(f"data.val_fold={val_fold}: {training} has image folds {folds}; pick one of them")
    valid = [cell for cell in cells if cell.fold == val_fold]
    held_out = {cell.subject for cell in valid}
    train = [cell for cell in cells if cell.fold != val_fold and cell.subject not in held_out]
    dropped = sum(cell.fold != val_fold for cell in cells) - len(train)
    if dropped:
        shared = sorted({c.subject for c in cells if c.fold != val_fold} & held_out)
        log.warning(
            "%d subjects of fold_%d also appear in other folds (%s): their %d images there are left out of "
            "training so no subject is in two splits",
            len(shared), val_fold, first_few(shared), dropped,
        )  # fmt: skip
    source = training / f"fold_{val_fold}"
    return _manifest("train", train, training), _manifest("valid", valid, source)


def prelim_test(folder: Path) -> Manifest:
    """The preliminary test set: images renamed ``<n>.bmp``, mapped back to subject and label by its CSV
    (``Patient_ID,new_names,labels``), which sits beside the image folder or inside it."""
    csv_path = next((p / PRELIM_LABELS_CSV for p in (folder.parent, folder) if (p / PRELIM_LABELS_CSV).is_file()), None)
    if csv_path is None:
        raise UserError(
            f"{folder}: no {PRELIM_LABELS_CSV} beside it or in it; add the CSV from the download or set "
            f"data.test_set=none"
        )
    table = read_csv_columns(csv_path, PRELIM_COLUMNS, "test")
    labels = check_labels(table, "labels", str(csv_path))
    paths = [resolved(folder / name) for name in table["new_names"]]
    error = missing_files_error(paths, str(csv_path), f"'new_names' are read relative to {folder}")
    if error:
        raise error
    parsed = [parse_cell_name(name) for name in table["Patient_ID"]]
    unnamed = [name for name, found in zip(table["Patient_ID"], parsed, strict=True) if found is None]
    if unnamed:
        raise UserError(
            f"{csv_path}: {len(unnamed)} 'Patient_ID' values are not C-NMC names (first: {first_few(unnamed)}); "
            f"expected UID_<subject>_<image>_<cell>_<all|hem>.bmp"
        )
    ids = table["new_names"].tolist()
    return Manifest("test", paths, labels, [subject for subject, _ in parsed], str(csv_path), ids)


def final_test(folder: Path) -> Manifest:
    """The final test set: unlabelled ``<n>.bmp`` files, in natural order (2.bmp before 10.bmp)."""
    paths = sorted(image_files_in(folder, recursive=False), key=lambda path: (len(path.stem), path.stem))
    return Manifest("test", [resolved(path) for path in paths], None, None, str(folder))


def test_manifest(root: Path, test_set: CnmcTestSet) -> Manifest | None:
    if test_set == CnmcTestSet.none:
        return None
    candidates = PRELIM_FOLDERS if test_set == CnmcTestSet.prelim else FINAL_FOLDERS
    folder = _first_existing(root, candidates)
    if folder is None:
        log.info("no %s test set found under %s (looked for %s): test evaluation is skipped",
                 test_set.value, root, " and ".join(candidates))  # fmt: skip
        return None
    return prelim_test(folder) if test_set == CnmcTestSet.prelim else final_test(folder)


def cnmc_splits(data_cfg: CnmcDataConfig) -> Splits:
    """Train/valid from the training folds (``data.split``), test from the published test folder if present."""
    root = Path(data_cfg.root)
    training = training_folder(root)
    cells = training_cells(training)
    if data_cfg.split == SplitMethod.folds:
        train, valid = fold_split(cells, data_cfg.val_fold, training)
    else:
        train, valid = split_by_subject(_manifest("pool", cells, training), data_cfg.val_fraction, data_cfg.split_seed)
    return Splits(train, valid, test_manifest(root, CnmcTestSet(data_cfg.test_set)))
