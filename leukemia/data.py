"""Image manifests, the dataset that reads them, and the loaders the engine iterates.

A manifest is a table of image paths (absolute) with labels when known. The layouts (``data=lab``, and
``data=demo`` which writes a lab-layout folder first) produce manifests; everything downstream reads only
manifests, so a new layout is one new reader. This module knows nothing of tracking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from leukemia.demo import DemoSpec, ensure_demo_dataset
from leukemia.errors import UserError

PATH_COLUMN = "Path"
LABEL_COLUMN = "label"
CLASS_NAMES = ("normal", "all")  # label 0 = normal (C-NMC "hem"), label 1 = ALL blast


@dataclass(frozen=True)
class Manifest:
    """One split: absolute image paths and, for labelled splits, their 0/1 labels."""

    name: str
    paths: list[Path]
    labels: list[int] | None

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        labels = self.labels or []
        return {name: labels.count(index) for index, name in enumerate(CLASS_NAMES)}


@dataclass(frozen=True)
class Splits:
    train: Manifest
    valid: Manifest
    test: Manifest | None


def _resolve_paths(values: pd.Series, csv_path: Path) -> list[Path]:
    """Paths are relative to the CSV's folder (``train/0.bmp``, ``./new_dataset/train/0.bmp`` beside the CSV)
    or to the folder above it (the CSV sits inside ``new_dataset/`` but names ``./new_dataset/...``)."""
    bases = [csv_path.parent, csv_path.parent.parent]
    first = Path(str(values.iloc[0]))
    base = next((b for b in bases if (b / first).is_file()), bases[0])
    paths = [(base / str(value)).resolve() for value in values]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"{csv_path}: {len(missing)} of {len(paths)} image files do not exist (first: {missing[0]}); "
            f"'{PATH_COLUMN}' values are read relative to {bases[0]} or {bases[1]}"
        )
    return paths


def read_lab_csv(csv_path: Path, split: str, labelled: bool) -> Manifest:
    """Read one CSV of the lab layout: ``Path,label`` (train/valid) or ``Path`` (test)."""
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such CSV; check data.root or the data.*_csv names (or try data=demo)")
    table = pd.read_csv(csv_path)
    needed = [PATH_COLUMN, LABEL_COLUMN] if labelled else [PATH_COLUMN]
    absent = [column for column in needed if column not in table.columns]
    if absent:
        raise UserError(f"{csv_path}: missing column(s) {absent}; found {list(table.columns)}, need {needed}")
    if table.empty:
        raise UserError(f"{csv_path}: has no rows; the {split} split needs at least one image")
    labels = None
    if labelled:
        bad = table[~table[LABEL_COLUMN].isin([0, 1])]
        if not bad.empty:
            raise UserError(
                f"{csv_path}: '{LABEL_COLUMN}' must be 0 (normal) or 1 (ALL); "
                f"row {bad.index[0] + 2} has '{bad[LABEL_COLUMN].iloc[0]}'"
            )
        labels = table[LABEL_COLUMN].astype(int).tolist()
    return Manifest(split, _resolve_paths(table[PATH_COLUMN], csv_path), labels)


def lab_splits(data_cfg: Any) -> Splits:
    """The course layout: ``train.csv``/``valid.csv`` with labels, the test CSV (optional) without."""
    root = Path(data_cfg.root)
    if not root.is_dir():
        raise UserError(
            f"data.root={root}: no such folder; point data.root (or paths.lab_root) at the folder holding "
            f"{data_cfg.train_csv}, or try data=demo"
        )
    test_csv = root / data_cfg.test_csv
    return Splits(
        train=read_lab_csv(root / data_cfg.train_csv, "train", labelled=True),
        valid=read_lab_csv(root / data_cfg.valid_csv, "valid", labelled=True),
        test=read_lab_csv(test_csv, "test", labelled=False) if test_csv.is_file() else None,
    )


def demo_splits(data_cfg: Any) -> Splits:
    spec = DemoSpec(**{key.name: data_cfg[key.name] for key in fields(DemoSpec)})
    ensure_demo_dataset(data_cfg.root, spec)
    return lab_splits(data_cfg)


LAYOUTS = {"lab": lab_splits, "demo": demo_splits}


def load_splits(data_cfg: Any) -> Splits:
    """Manifests for the configured layout; every path is checked before anything trains."""
    return LAYOUTS[data_cfg.name](data_cfg)


def preprocessing(
    crop_size: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augmentation: transforms.Compose | None = None,
) -> transforms.Compose:
    """Center crop in source pixels, resize, (augment,) to tensor, normalise per channel.

    The seed stopped at the tensor; normalising (ImageNet statistics by default) is what ImageNet weights
    expect, and without it BatchNorm's running statistics drift so far on these mostly-black images that
    evaluation-mode predictions collapse to one class after a few epochs.
    """
    steps: list = [transforms.CenterCrop(crop_size), transforms.Resize(image_size, antialias=True)]
    if augmentation is not None:
        steps.append(augmentation)
    steps += [transforms.ToTensor(), transforms.Normalize(list(mean), list(std))]
    return transforms.Compose(steps)


class CellImages(Dataset):
    """Reads a manifest's images as RGB (C-NMC BMPs are RGB; other files are converted)."""

    def __init__(self, manifest: Manifest, transform):
        self.manifest = manifest
        self.transform = transform

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.manifest.paths[index]
        try:
            with Image.open(path) as image:
                tensor = self.transform(image.convert("RGB"))
        except OSError as error:
            raise UserError(f"{path}: cannot be read as an image ({error}); replace or remove it") from error
        label = self.manifest.labels[index] if self.manifest.labels is not None else -1
        return tensor, label


def make_loader(
    manifest: Manifest, transform, batch_size: int, num_workers: int, shuffle: bool, seed: int
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        CellImages(manifest, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
