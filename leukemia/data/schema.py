"""The data package's settings: what every layout shares (``data``; each layout's own keys live in its module
under ``layouts/``, registered in ``LAYOUTS``), the ``augmentation`` group, and ``paths``."""

from dataclasses import dataclass
from enum import Enum

from omegaconf import II, MISSING

from leukemia.schema import (
    BELOW_1,
    DEGREES,
    NOT_NEGATIVE,
    PER_CHANNEL,
    PER_CHANNEL_SPREAD,
    POSITIVE,
    PROBABILITY,
    SEED,
    TEXT,
    WORKERS,
    Rule,
    checked,
)


class Balance(str, Enum):
    """How training counters the class imbalance (C-NMC: about 2 ALL cells per normal cell)."""

    none = "none"
    sampler = "sampler"  # draw training images with probability inversely proportional to their class size
    loss = "loss"  # weight the cross-entropy of each class by total / (classes * class size)


class OnBadImage(str, Enum):
    """What reading a file that is not a decodable image does: stop the run, or warn and leave it out."""

    error = "error"
    skip = "skip"


class Cache(str, Enum):
    """Where a split's decoded uint8 pixels are kept between epochs."""

    auto = "auto"  # device on CUDA when the split fits beside the model, else disk
    device = "device"  # in the training device's memory: each batch is an index gather there (on a CPU: in RAM)
    disk = "disk"  # a memory-mapped file under paths.cache_dir/decoded, read per batch
    none = "none"  # no cache: every image decoded in every epoch, in data.num_workers processes


@dataclass
class AugmentationConfig:
    name: str = checked(rule=TEXT)
    rotation_degrees: float = checked(0.0, DEGREES)
    hflip_p: float = checked(0.0, PROBABILITY)
    vflip_p: float = checked(0.0, PROBABILITY)
    # Zoom about the centre by a factor drawn from [1 - scale_jitter, 1 + scale_jitter], with the rotation.
    scale_jitter: float = checked(0.0, BELOW_1)
    # Colour (stain) jitter after the geometric steps: brightness, contrast and saturation factors drawn from
    # [1 - x, 1 + x], applied in that order.
    brightness: float = checked(0.0, PROBABILITY)
    contrast: float = checked(0.0, PROBABILITY)
    saturation: float = checked(0.0, PROBABILITY)


@dataclass
class DataConfig:
    """Keys every layout has; a layout's own keys live in its subclass."""

    name: str = MISSING
    root: str = checked(rule=TEXT)
    # Center crop in source pixels before resizing; null: no crop (a non-square image is padded to a square).
    crop_size: int | None = checked(rule=POSITIVE)
    image_size: int = checked(rule=POSITIVE)
    batch_size: int = checked(32, POSITIVE)
    num_workers: int = checked(0, WORKERS)
    # Per-channel normalisation of the 0..1 pixel values (ImageNet statistics, what pretrained weights expect;
    # without it BatchNorm's running statistics drift so far on these mostly-black images that evaluation-mode
    # predictions collapse to one class after a few epochs).
    mean: list[float] = checked(rule=PER_CHANNEL, factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = checked(rule=PER_CHANNEL_SPREAD, factory=lambda: [0.229, 0.224, 0.225])
    balance: Balance = Balance.none
    on_bad_image: OnBadImage = OnBadImage.error
    # Each split is decoded once into a uint8 array under paths.cache_dir/decoded, reused by later runs, and then
    # read from there (disk) or copied once into the training device's memory (device); none: decode every image
    # in every epoch (in data.num_workers processes).
    cache: Cache = Cache.auto
    # At most this many images per split (a fixed class-stratified pick), for smoke runs; null = all.
    limit: int | None = checked(None, Rule(lambda v: v >= 1, "must be at least 1 image per split (or null for all)"))
    # K-fold cross-validation: data.folds=K makes fold data.fold (0 … K-1) of the training pool (train and valid
    # together) the validation split, stratified by class, whole subjects in one fold, drawn with fold_seed.
    folds: int | None = checked(None, Rule(lambda v: v >= 2, "cross-validation needs at least 2 folds (or null)"))
    fold: int = checked(0, NOT_NEGATIVE)  # and below data.folds
    fold_seed: int = checked(II("seed"), SEED)


@dataclass
class PathsConfig:
    # Where data=lab / cnmc / csv look unless data.root is given; set them once in conf/local/default.yaml.
    lab_root: str = checked("data/lab", TEXT)
    cnmc_root: str = checked("data/C-NMC_Leukemia", TEXT)
    csv_root: str = checked("data/cells", TEXT)
    # Where the generated demo data set and the decoded splits are cached.
    cache_dir: str = checked("${oc.env:HOME,.}/.cache/leukemia", TEXT)


AUGMENTATIONS: dict[str, type] = {"augmentation": AugmentationConfig}  # the augmentation group's one schema
