"""The input pipeline of a run: for each split a loader, and what happens to its batches on the device.

``data.pipeline=pil`` is the reference: each image is decoded, cropped, resized, augmented and normalised by
PIL and torchvision in the loader. ``data.pipeline=tensor`` moves uint8 batches (decoded once into the cache
with ``data.cache=true``, else per image) and converts and normalises whole batches on the training device. Its
rotation and flips run there too, on a GPU; on a CPU, where PIL's integer transform is faster, they run per image
on the cached pixels in the loader's workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from leukemia.augmentation import BatchAugmentation, PixelAugmentation, build_augmentation
from leukemia.cache import decoded_loader, decoded_split
from leukemia.config import Balance, OnBadImage, Pipeline
from leukemia.data import decoding, make_loader, preprocessing
from leukemia.manifest import Manifest


@dataclass
class Feed:
    """A split's loader; ``prepare`` turns each batch, once on the device, into the model's input."""

    loader: DataLoader
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files already left out (decode cache)
    generators: list[torch.Generator] = field(default_factory=list)  # every random draw of the feed comes from these

    def random_state(self) -> list[torch.Tensor]:
        """The generators' states at an epoch's end: with them a resumed run draws what this one would have."""
        return [generator.get_state() for generator in self.generators]

    def restore_random_state(self, states: list[torch.Tensor]) -> None:
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state)


def build_feed(
    manifest: Manifest,
    data_cfg: Any,
    aug_cfg: Any,
    train: bool,
    device: torch.device,
    seed: int,
    cache_folder: Path,
    batch_size: int | None = None,
    skip_bad: bool | None = None,
) -> Feed:
    """The configured pipeline for one split: shuffled (or class-balanced) and augmented when ``train``, in
    order otherwise."""
    batch_size = batch_size or data_cfg.batch_size
    skip_bad = data_cfg.on_bad_image == OnBadImage.skip if skip_bad is None else skip_bad
    balanced = train and data_cfg.balance == Balance.sampler
    sizes = (data_cfg.crop_size, data_cfg.image_size)
    if Pipeline(data_cfg.pipeline) == Pipeline.pil:
        augmentation = build_augmentation(aug_cfg) if train else None
        transform = preprocessing(*sizes, data_cfg.mean, data_cfg.std, augmentation)
        loader = make_loader(manifest, transform, batch_size, data_cfg.num_workers, train, seed, balanced, skip_bad)
        return Feed(loader, generators=[loader.sampler.generator])
    in_loader = train and data_cfg.cache and device.type == "cpu"  # see PixelAugmentation
    batch_augmentation = BatchAugmentation(aug_cfg, list(data_cfg.mean), list(data_cfg.std), device, seed,
                                           geometric=not in_loader)  # fmt: skip
    prepare = partial(batch_augmentation, train=train)
    skipped: list[str] = []
    if data_cfg.cache:
        decoded = decoded_split(manifest, *sizes, cache_folder, data_cfg.num_workers, skip_bad)
        skipped = decoded.skipped
        augment = PixelAugmentation(aug_cfg) if in_loader else None
        loader = decoded_loader(decoded, manifest, batch_size, train, seed, balanced, augment, data_cfg.num_workers)
    else:
        loader = make_loader(manifest, decoding(*sizes), batch_size, data_cfg.num_workers, train, seed, balanced,
                             skip_bad)  # fmt: skip
    generators = [loader.sampler.generator, batch_augmentation.generator]
    return Feed(loader, prepare, skipped, generators)
