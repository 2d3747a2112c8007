"""A procedural, C-NMC-like demo data set, so the framework runs end to end with no download.

Each image is one stained cell on black, as in C-NMC 2019. The classes differ the way the real ones tend
to: ALL blasts are larger on average, with fine chromatin and one to three pale nucleoli; normal cells are
smaller, with coarser, clumped chromatin. The distributions overlap and every subject has its own stain shift, so a
short CPU run lands well short of 100%. The set is written once, in the lab layout (train.csv, valid.csv,
resnet_{18,50,152}_test.csv, images under new_dataset/), split by subject, and then read by the same reader
as real data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from leukemia.data.layouts.lab import LabDataConfig, lab_splits
from leukemia.data.manifest import Splits
from leukemia.errors import UserError
from leukemia.schema import POSITIVE, SEED, TEXT, WORKERS, Rule, checked


@dataclass
class DemoDataConfig(LabDataConfig):
    """The generated demo set: written once under ``root`` in the lab layout, then read like real data."""

    name: str = "demo"
    root: str = checked(
        "${paths.cache_dir}/demo-v1/s${.seed}-a${.subjects_all}-h${.subjects_normal}-n${.images_per_subject}"
        "-px${.source_size}",
        TEXT,
    )
    crop_size: int | None = checked(100, POSITIVE)  # the lab recipe's 350/450 proportion
    image_size: int = checked(64, POSITIVE)
    num_workers: int = checked(0, WORKERS)
    test_labels_csv: str | None = checked("test_labels.csv", TEXT)  # the hidden test labels: test metrics
    seed: int = checked(0, SEED)
    subjects_all: int = checked(10, Rule(lambda v: v >= 3, "must be at least 3 (one each for train, valid, test)"))
    subjects_normal: int = checked(5, Rule(lambda v: v >= 3, "must be at least 3 (one each for train, valid, test)"))
    images_per_subject: int = checked(60, POSITIVE)
    source_size: int = checked(128, Rule(lambda v: v >= 16, "must be at least 16 (pixels)"))


TEST_CSV_NAMES = ("resnet_18_test.csv", "resnet_50_test.csv", "resnet_152_test.csv")
# Hidden labels of the test split, for scoring a submission; not read by training.
TEST_LABELS_CSV = "test_labels.csv"
SPEC_FILE = "demo_spec.json"
BASE_STAIN = np.array([72.0, 32.0, 84.0])  # mean RGB of the real cells' cytoplasm/nucleus


@dataclass(frozen=True)
class DemoSpec:
    """What the generated set depends on (the data=demo keys of the same names)."""

    seed: int
    subjects_all: int
    subjects_normal: int
    images_per_subject: int
    source_size: int


def _smooth_noise(rng: np.random.Generator, size: int, grain: int) -> np.ndarray:
    """Zero-mean noise of unit spread whose blobs are about size/grain pixels wide."""
    coarse = rng.standard_normal((grain, grain)).astype(np.float32)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    noise = np.asarray(image)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def render_cell(rng: np.random.Generator, size: int, is_blast: bool, stain: np.ndarray) -> np.ndarray:
    """One HxWx3 uint8 cell image on a black background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = size * (rng.normal(0.25, 0.03) if is_blast else rng.normal(0.21, 0.03))
    center = size / 2 + rng.normal(0, size * 0.03, 2)
    angle = np.arctan2(yy - center[1], xx - center[0])
    distance = np.hypot(xx - center[0], yy - center[1])
    # Irregular outline: a few low harmonics with random phases, plus elongation.
    outline = 1.0 + rng.uniform(0.0, 0.12) * np.cos(2 * (angle - rng.uniform(0, np.pi)))
    for harmonic in (3, 4, 5):
        outline += rng.uniform(0.0, 0.04) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    inside = np.clip((radius * outline - distance) / 2.0, 0.0, 1.0)  # ~2-px soft edge

    if is_blast:  # fine, even chromatin
        chromatin = 0.3 * _smooth_noise(rng, size, size // 4) + 0.7 * _smooth_noise(rng, size, size // 12)
        contrast = 0.08
    else:  # coarse, clumped chromatin
        chromatin = 0.8 * _smooth_noise(rng, size, size // 8) + 0.2 * _smooth_noise(rng, size, size // 12)
        contrast = 0.16
    shade = rng.normal(1.0, 0.07) + contrast * chromatin
    if is_blast:  # one to three pale nucleoli
        for _ in range(rng.integers(1, 4)):
            spot = center + rng.normal(0, radius * 0.3, 2)
            spot_radius = radius * rng.uniform(0.10, 0.18)
            shade -= 0.22 * np.exp(-(((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / (2 * spot_radius**2)))
    # Thin pinkish rim of cytoplasm, as in the real images.
    rim = np.clip(1.0 - np.abs(radius * outline - distance - 3.0) / 3.0, 0.0, 1.0)
    color = stain[None, None, :] / shade[..., None] + rim[..., None] * np.array([18.0, 10.0, 4.0])
    color *= inside[..., None]
    color += rng.normal(0, 2.5, color.shape) * inside[..., None]
    return np.clip(color, 0, 255).astype(np.uint8)


def _subject_stain(rng: np.random.Generator) -> np.ndarray:
    """A subject's staining: overall intensity and hue shift a little from one patient to the next."""
    return BASE_STAIN * rng.normal(1.0, 0.05) * rng.normal(1.0, 0.03, 3)


def _subject_splits(subjects: list[str]) -> dict[str, str]:
    """Subject-disjoint split of one class: a fifth of its subjects (at least one) each to test and valid."""
    held_out = max(1, round(len(subjects) / 5))
    roles = ["test"] * held_out + ["valid"] * held_out
    return {subject: roles[k] if k < len(roles) else "train" for k, subject in enumerate(subjects)}


def write_demo_dataset(root: Path, spec: DemoSpec) -> None:
    """Write the demo set into ``root`` atomically (a half-written folder never looks complete)."""
    rng = np.random.default_rng(spec.seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _write_layout(staging, spec, rng)
        os.replace(staging, root)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (root / SPEC_FILE).is_file():  # unless another process finished the same set first
            raise


def _write_layout(folder: Path, spec: DemoSpec, rng: np.random.Generator) -> None:
    subjects = [(str(k + 1), 1) for k in range(spec.subjects_all)]
    subjects += [(f"H{k + 1}", 0) for k in range(spec.subjects_normal)]
    split_of = _subject_splits([s for s, label in subjects if label == 1])
    split_of |= _subject_splits([s for s, label in subjects if label == 0])
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for subject, label in subjects:
        stain = _subject_stain(rng)
        split = split_of[subject]
        (folder / "new_dataset" / split).mkdir(parents=True, exist_ok=True)
        for _ in range(spec.images_per_subject):
            path = f"new_dataset/{split}/{len(rows[split])}.bmp"
            Image.fromarray(render_cell(rng, spec.source_size, bool(label), stain)).save(folder / path)
            rows[split].append({"Path": f"./{path}", "label": label, "subject": subject})
    for split in ("train", "valid"):
        pd.DataFrame(rows[split]).to_csv(folder / f"{split}.csv", index=False)
    test = pd.DataFrame(rows["test"])
    for name in TEST_CSV_NAMES:
        test[["Path"]].to_csv(folder / name, index=False)
    test.to_csv(folder / TEST_LABELS_CSV, index=False)
    (folder / SPEC_FILE).write_text(json.dumps(asdict(spec)))  # written last: marks the set complete


def ensure_demo_dataset(root: str | Path, spec: DemoSpec) -> Path:
    """Generate the demo set under ``root`` unless that exact set is already there; returns ``root``."""
    root = Path(root)
    for key, count in (("subjects_all", spec.subjects_all), ("subjects_normal", spec.subjects_normal)):
        if count < 3:
            raise UserError(f"data.{key}={count}: the demo needs at least 3 (one each for train, valid and test)")
    if not (root / SPEC_FILE).is_file():
        write_demo_dataset(root, spec)
    elif json.loads((root / SPEC_FILE).read_text()) != asdict(spec):
        raise UserError(
            f"data.root={root} holds a demo set made with other settings ({SPEC_FILE}); "
            "delete that folder or give another data.root"
        )
    return root


def demo_splits(data_cfg: DemoDataConfig) -> Splits:
    spec = DemoSpec(**{key.name: getattr(data_cfg, key.name) for key in fields(DemoSpec)})
    ensure_demo_dataset(data_cfg.root, spec)
    return lab_splits(data_cfg)
