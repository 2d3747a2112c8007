"""The feed: for each split a loader of uint8 batches, and what turns each batch, on the training device, into
the model's input.

Images are decoded, center-cropped and resized to uint8 once into the decode cache, then read from it on disk
or kept in the training device's memory (``data.cache``); or, with ``data.cache=none``, decoded per image in the
loader's workers in every epoch. ``BatchAugmentation`` then augments (training only), converts and normalises
whole batches where the model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import torch

from leukemia.data.augmentation import BatchAugmentation
from leukemia.data.cache import (
    DecodedSplit,
    decoded_loader,
    decoded_split,
    epoch_batches,
    readable_labels,
    readable_rows,
)
from leukemia.data.decoding import decoding
from leukemia.data.loading import Batch, make_loader
from leukemia.data.manifest import Manifest
from leukemia.data.resident import ResidentBatches, resident_pixels
from leukemia.data.schema import AugmentationConfig, Balance, Cache, DataConfig, OnBadImage
from leukemia.errors import UserError

AUGMENTATION_STREAM = 0x9E3779B97F4A7C15  # a fixed 64-bit constant mixed into the seed (the golden ratio's bits)


class Batches(Protocol):
    """What a feed's ``loader`` is: a DataLoader, or the batches of a split resident on the device."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


@dataclass
class Feed:
    """A split's batches (``loader``); ``prepare`` turns each batch, once on the device, into the model's input."""

    loader: Batches
    prepare: Callable[[torch.Tensor], torch.Tensor]
    where: str  # where the pixels come from: "device" (resident), "disk" (the decode cache's file) or "files"
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
    data_cfg: DataConfig,
    aug_cfg: AugmentationConfig,
    train: bool,
    device: torch.device,
    seed: int,
    cache_folder: Path,
    batch_size: int | None = None,
    skip_bad: bool | None = None,
) -> Feed:
    """One split's feed: shuffled (or class-balanced) and augmented when ``train``, in order otherwise."""
    batch_size = batch_size or data_cfg.batch_size
    skip_bad = data_cfg.on_bad_image == OnBadImage.skip if skip_bad is None else skip_bad
    balanced = train and data_cfg.balance == Balance.sampler
    sizes = (data_cfg.crop_size, data_cfg.image_size)
    # the augmentation's draws come from a stream of their own, not a copy of the loader's (same seed, same numbers)
    mean, std = list(data_cfg.mean), list(data_cfg.std)
    augmentation = BatchAugmentation(aug_cfg, mean, std, device, seed ^ AUGMENTATION_STREAM)
    prepare = partial(augmentation, train=train)
    if data_cfg.cache == Cache.none:
        loader = make_loader(manifest, decoding(*sizes), batch_size, data_cfg.num_workers, train, seed, balanced,
                             skip_bad)  # fmt: skip
        order = getattr(loader.sampler, "generator", None)  # none when the split is read in order
        return Feed(loader, prepare, "files", [], [g for g in (order, augmentation.generator) if g is not None])
    decoded = decoded_split(manifest, *sizes, cache_folder, data_cfg.num_workers, skip_bad)
    if not decoded.readable.any():
        where = manifest.source or manifest.name
        raise UserError(f"{where}: none of the {len(manifest)} images of the {manifest.name} split can be read as "
                        f"an image (first: {decoded.skipped[0]}); fix or replace the files")  # fmt: skip
    labels, generator = readable_labels(decoded, manifest), torch.Generator().manual_seed(seed)
    batches = epoch_batches(labels, batch_size, train, generator, balanced)
    pixels = _resident(decoded, manifest.name, data_cfg.cache, device)
    loader, where = ((decoded_loader(decoded, labels, batches), "disk") if pixels is None
                     else (ResidentBatches(pixels, labels, readable_rows(decoded), batches), "device"))  # fmt: skip
    return Feed(loader, prepare, where, decoded.skipped, [generator, augmentation.generator])


def check_decodable(manifest: Manifest, data_cfg: DataConfig, cache_folder: Path) -> None:
    """Every image of a split that may not skip one (the test split: each row needs a prediction) decodes, checked
    before training rather than after it: decoded into the cache, which the evaluation then reads, or, with
    ``data.cache=none``, decoded once and dropped. The first unreadable file stops the run, named."""
    sizes = (data_cfg.crop_size, data_cfg.image_size)
    if data_cfg.cache != Cache.none:
        decoded_split(manifest, *sizes, cache_folder, data_cfg.num_workers, skip_bad=False)
        return
    for _ in make_loader(manifest, decoding(*sizes), data_cfg.batch_size, data_cfg.num_workers, False, 0):
        pass


def _resident(decoded: DecodedSplit, name: str, cache: Cache, device: torch.device) -> torch.Tensor | None:
    """The split's pixels in the device's memory, where ``data.cache`` asks for it (auto: on CUDA) and they fit."""
    wanted = cache == Cache.device or (cache == Cache.auto and device.type == "cuda")
    return resident_pixels(decoded, name, device) if wanted else None
