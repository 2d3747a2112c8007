"""From manifests to uint8 tensors: the dataset (decoding each file as ``decoding`` does, bad files stopping the run
or left out), the samplers and the loaders the feed wraps. It reads whatever ``Manifest`` it is given."""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import signal
from collections.abc import Sequence, Sized
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
    default_collate,
)

from leukemia.data.decoding import UNREADABLE, decoding, read_image
from leukemia.data.manifest import Manifest
from leukemia.errors import UserError
from leukemia.names import CLASS_NAMES

log = logging.getLogger(__name__)


class SkippedImage(NamedTuple):
    """Stands in for an item whose file could not be decoded, when ``data.on_bad_image=skip``: its row in the
    manifest, its path and why."""

    row: int
    path: str
    reason: str

    @property
    def description(self) -> str:
        return f"{self.path} ({self.reason})"


class Batch(NamedTuple):
    """Decoded images with their labels and ``rows``, each image's index in the manifest it came from: what
    ties a prediction to its file, never the file's name."""

    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    skipped: list[SkippedImage]  # the files left out of this batch


def collate(items: list) -> Batch:
    """Stack the decoded items; skipped ones are left out and reported with their rows (a batch may end up
    empty)."""
    skipped = [item for item in items if isinstance(item, SkippedImage)]
    decoded = [item for item in items if not isinstance(item, SkippedImage)]
    if not decoded:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0), empty, empty, skipped)
    images, labels, rows = default_collate(decoded)
    return Batch(images, labels, rows, skipped)


class CellImages(Dataset):
    """Decodes a manifest's images as RGB; a file that is not a decodable image (or is truncated) stops the
    run with its name, or with ``skip_bad`` is left out and reported in the batch."""

    def __init__(self, manifest: Manifest, transform, skip_bad: bool = False):
        self.manifest = manifest
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | SkippedImage:
        """The image, its label (-1 where the split has none) and its row ``index``."""
        path = self.manifest.paths[index]
        try:
            rgb = read_image(path)
        except UNREADABLE as error:
            if self.skip_bad:
                return SkippedImage(index, str(path), str(error))
            raise UserError(
                f"{path}: cannot be read as an image ({error}); replace or remove it, "
                f"or set data.on_bad_image=skip to leave such files out"
            ) from error
        label = self.manifest.labels[index] if self.manifest.labels is not None else -1
        return self.transform(rgb), label, index


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


def epoch_order(dataset: Sized, shuffle: bool, generator: torch.Generator, balanced: bool, labels) -> Sampler:
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


def kill_leftover_workers() -> None:
    """Loader workers still alive are killed (at exit: see ``_at_exit_kill_leftover_workers``). They outlive
    their run when it ended in an exception (whose traceback keeps the loaders referenced, and whose workers may
    hang on results never read), and they ignore SIGTERM, which multiprocessing's own exit handler (registered
    earlier, so run after this one) sends them before waiting for them to end."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each as a failed worker
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


@functools.cache
def _at_exit_kill_leftover_workers() -> None:
    """Registered once, when the first loader with workers is made (and after multiprocessing's own handler)."""
    atexit.register(kill_leftover_workers)


def worker_context(num_workers: int) -> multiprocessing.context.BaseContext | None:
    """The platform's standard way to start loader workers. Needed where a job itself runs in a joblib (loky)
    worker, whose default context cannot start them."""
    if num_workers == 0:
        return None
    _at_exit_kill_leftover_workers()
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])


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
    comes from a generator seeded with ``seed`` (the feed augments whole batches on the device, with its own)."""
    dataset = CellImages(manifest, transform, skip_bad)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=epoch_order(dataset, shuffle, generator, balanced, manifest.labels),
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
