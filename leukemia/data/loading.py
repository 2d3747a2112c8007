"""From manifests to uint8 tensors: decoding (crop or pad, resize, any mode to RGB, bad files), the dataset, the
samplers and the loaders the feed wraps. It reads whatever ``Manifest`` it is given."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
    default_collate,
)

from leukemia.data.manifest import CLASS_NAMES, Manifest
from leukemia.errors import UserError

log = logging.getLogger(__name__)


def pad_to_square(image: Image.Image) -> Image.Image:
    """The image centred on a black square (the cells' background) as wide as its longer side."""
    if image.width == image.height:
        return image
    side = max(image.size)
    square = Image.new(image.mode, (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` pixels, taken as torchvision's CenterCrop takes them: a side shorter than
    ``size`` is first padded with black on both sides (the extra pixel, if any, after)."""
    width, height = image.size
    if width < size or height < size:
        canvas = Image.new(image.mode, (max(width, size), max(height, size)))
        canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        image, (width, height) = canvas, canvas.size
    left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
    return image.crop((left, top, left + size, top + size))


def decode_pixels(image: Image.Image, crop_size: int | None, image_size: int) -> torch.Tensor:
    """``image`` center-cropped to ``crop_size`` (or, without one, padded to a black square), resized
    (bilinear) to ``image_size``, as a uint8 (3, size, size) tensor."""
    framed = center_crop(image, crop_size) if crop_size is not None else pad_to_square(image)
    resized = framed.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def decoding(crop_size: int | None, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Center crop in source pixels (or, without a crop size, a black square pad) and resize to uint8
    (3, size, size) tensors: all that happens per image, and what the decode cache stores.

    Images of any size work: one smaller than ``crop_size`` (or not square) is padded with black, the C-NMC
    background, to the crop, and the crop is resized to ``image_size``."""
    return partial(decode_pixels, crop_size=crop_size, image_size=image_size)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any image mode as 8-bit RGB. Transparent pixels become black (the C-NMC background) rather than
    whatever colour they hide; 16-bit grey is scaled to 8 bits rather than clipped to white."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


# What PIL raises for broken, unknown or absurdly large files (a header claiming billions of pixels)
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class SkippedImage(NamedTuple):
    """Stands in for an item whose file could not be decoded, when ``data.on_bad_image=skip``."""

    description: str


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[str]  # "path (reason)" of files left out of this batch


def collate(items: list) -> Batch:
    """Stack the decoded items; skipped ones are left out and reported (a batch may end up empty)."""
    skipped = [item.description for item in items if isinstance(item, SkippedImage)]
    decoded = [item for item in items if not isinstance(item, SkippedImage)]
    if not decoded:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images, labels = default_collate(decoded)
    return Batch(images, labels, skipped)


class SeededSampler(Sampler):
    """Each item of ``order`` (an index, or a batch's list of indices) with a seed, drawn here in the main
    process from ``generator``, for a per-image random transform (the benchmark's seed-style baseline, the tests'
    torchvision references; the feed's own augmentation draws on the device). Such draws then depend neither on
    ``num_workers`` nor on the workers' random states, and the generator's state at an epoch's end is all a
    checkpoint needs to continue the same order."""

    def __init__(self, order: Sampler, generator: torch.Generator):
        self.order = order
        self.generator = generator

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        for item in self.order:
            yield item, int(torch.randint(2**31, (), generator=self.generator))


@contextmanager
def seeded_random_state(seed: int) -> Iterator[None]:
    """Torch's CPU and Python's random state set to ``seed`` inside, restored after: torchvision's transforms
    draw from those global states (``RandomOrder`` from Python's)."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class CellImages(Dataset):
    """Decodes a manifest's images as RGB; a file that is not a decodable image (or is truncated) stops the
    run with its name, or with ``skip_bad`` is left out and reported in the batch. Indexed by ``(index, seed)``
    (see ``SeededSampler``), a random transform draws from that seed."""

    def __init__(self, manifest: Manifest, transform, skip_bad: bool = False):
        self.manifest = manifest
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int] | SkippedImage:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path = self.manifest.paths[index]
        try:
            with Image.open(path) as image:
                image.load()  # decode now: a truncated file fails here, not half-black later
                rgb = to_rgb(image)
        except UNREADABLE as error:
            if self.skip_bad:
                return SkippedImage(f"{path} ({error})")
            raise UserError(
                f"{path}: cannot be read as an image ({error}); replace or remove it, "
                f"or set data.on_bad_image=skip to leave such files out"
            ) from error
        label = self.manifest.labels[index] if self.manifest.labels is not None else -1
        if seed is None:
            return self.transform(rgb), label
        with seeded_random_state(seed):
            return self.transform(rgb), label


def class_weights(manifest: Manifest) -> torch.Tensor:
    """Per-class weights total / (classes * class size): 1 for balanced data, larger for the rarer class."""
    return _weights_of(torch.tensor(manifest.labels))


def _weights_of(labels: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=len(CLASS_NAMES)).float()
    return counts.sum() / (len(counts) * counts.clamp(min=1))


def balanced_sampler(labels: torch.Tensor, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws ``len(labels)`` indices with replacement, each class equally often on average."""
    weights = _weights_of(labels)[labels]
    return WeightedRandomSampler(weights.double(), len(labels), replacement=True, generator=generator)


def epoch_order(dataset: Dataset, shuffle: bool, generator: torch.Generator, balanced: bool, labels) -> Sampler:
    """Each epoch's order of the dataset's items: class-balanced draws, a shuffle, or as listed."""
    if balanced:
        return balanced_sampler(torch.as_tensor(labels), generator)
    return RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)


def quiet_worker(worker_id: int) -> None:
    """A loader worker leaves stop signals to the main process: sent to the whole process group (a terminal's
    Ctrl-C, `timeout`, a cluster scheduler), they reach the workers too, which would otherwise die and turn a
    clean stop into a failed run. The main process shuts its workers down as it stops."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


@atexit.register
def _kill_leftover_workers() -> None:
    """At exit, loader workers still alive are killed. They outlive their run when it ended in an exception
    (whose traceback keeps the loaders referenced), and they ignore SIGTERM, which multiprocessing's own exit
    handler (registered earlier, so run after this one) sends them before waiting for them to end."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each as a failed worker
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def worker_context(num_workers: int) -> multiprocessing.context.BaseContext | None:
    """The platform's standard way to start loader workers. Needed where a job itself runs in a joblib (loky)
    worker, whose default context cannot start them."""
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0]) if num_workers > 0 else None


def make_loader(
    manifest: Manifest,
    transform,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    balanced: bool = False,
    skip_bad: bool = False,
) -> DataLoader:
    """Batches of (images, labels, skipped): shuffled, or in order. ``balanced`` draws each epoch's images with
    replacement, each class equally often on average (``data.balance=sampler``), instead of shuffling. The order
    and every augmentation draw come from one generator seeded with ``seed``."""
    dataset = CellImages(manifest, transform, skip_bad)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SeededSampler(epoch_order(dataset, shuffle, generator, balanced, manifest.labels), generator),
        num_workers=num_workers,
        multiprocessing_context=worker_context(num_workers),
        worker_init_fn=quiet_worker,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def spread(indices: Sequence[int], count: int) -> list[int]:
    """``count`` of ``indices`` (or all of them, if fewer), evenly spaced from the first."""
    step = max(1.0, len(indices) / count)
    return [indices[int(k * step)] for k in range(min(count, len(indices)))]


def preview(manifest: Manifest, crop_size: int | None, image_size: int, count: int) -> Batch:
    """About ``count`` images, evenly spread over each class, decoded as the feed decodes them (uint8)."""
    labels = manifest.labels or [0] * len(manifest)
    groups = [[i for i, label in enumerate(labels) if label == c] for c in sorted(set(labels))]
    chosen = sorted(index for group in groups for index in spread(group, count // len(groups)))
    dataset = CellImages(manifest, decoding(crop_size, image_size), skip_bad=True)
    return collate([dataset[index] for index in chosen])


def displayable(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (N, 3, H, W) tensors back to (N, H, W, 3) pixel values in [0, 1], for figures."""
    mean_, std_ = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (images * std_ + mean_).clamp(0, 1).permute(0, 2, 3, 1).numpy()
