"""Decode once: a split's images, center-cropped and resized, as one uint8 array on disk (memory-mapped).

Without it (``data.cache=false``) every image is decoded, cropped and resized in every epoch; after the first
use, the cache reads ready-made uint8 pixels instead. The key covers the manifest (every path with its size and
modification time) and the preprocessing parameters, so a changed file or setting makes a new cache and an
unchanged one is reused by later runs and sweep jobs. A cache is written under a lock into a temporary file and
renamed into place, so a parallel job either waits for it or finds it complete, never half-written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from leukemia.data.decoding import decoding
from leukemia.data.loading import Batch, CellImages, SkippedImage, epoch_order, quiet_worker, worker_context
from leukemia.data.manifest import Manifest
from leukemia.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DecodedSplit:
    """A split's pixels (N, 3, size, size) uint8, and which rows decoded (False: unreadable, skipped)."""

    pixels: np.ndarray
    readable: np.ndarray
    path: Path
    skipped: list[str]  # "path (reason)" of the unreadable files, as decoding per image reports them


def cache_folder(cache_dir: str) -> Path:
    """Where decoded splits are kept under ``paths.cache_dir``: shared by every run and sweep job on a machine."""
    return Path(cache_dir) / "decoded"


def cache_key(manifest: Manifest, crop_size: int, image_size: int) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION} crop={crop_size} size={image_size}".encode())
    for path in manifest.paths:
        status = path.stat()
        digest.update(f"\n{path}\t{status.st_size}\t{status.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def _decode_into(target: np.ndarray, manifest: Manifest, crop_size: int, workers: int, skip_bad: bool) -> list[str]:
    """Fill ``target`` with the split's pixels, decoding in ``workers`` processes; returns what was skipped."""
    steps = decoding(crop_size, target.shape[-1])
    loader = DataLoader(
        CellImages(manifest, steps, skip_bad),
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
        worker_init_fn=quiet_worker,
    )
    skipped = {}
    for index, item in enumerate(loader):
        if isinstance(item, SkippedImage):
            skipped[index] = item.description
        else:
            target[index] = item[0].numpy()
    return skipped


def decoded_split(
    manifest: Manifest, crop_size: int, image_size: int, folder: Path, workers: int = 0, skip_bad: bool = False
) -> DecodedSplit:
    """The split's decoded pixels from ``folder``, decoding them first if no cache for this key exists."""
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, crop_size, image_size)
    pixels_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel job building the same cache finishes first
        if not pixels_path.is_file():
            started = time.perf_counter()
            partial = folder / f"{key}.npy.{os.getpid()}.partial"
            try:
                target = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                                   shape=(len(manifest), 3, image_size, image_size))  # fmt: skip
                skipped = _decode_into(target, manifest, crop_size, workers, skip_bad)
                target.flush()
                del target
            except BaseException:  # an unreadable file or Ctrl-C: leave no half-written array behind
                partial.unlink(missing_ok=True)
                raise
            meta = {"split": manifest.name, "source": manifest.source, "images": len(manifest),
                    "crop_size": crop_size, "image_size": image_size, "skipped": skipped}  # fmt: skip
            meta_path.write_text(json.dumps(meta))
            os.replace(partial, pixels_path)  # the cache appears complete or not at all
            size_mb = pixels_path.stat().st_size / 1e6
            log.info("decoded the %s split once: %d images in %.1f s -> %s (%.0f MB)",
                     manifest.name, len(manifest), time.perf_counter() - started, pixels_path, size_mb)  # fmt: skip
    skipped = {int(row): description for row, description in json.loads(meta_path.read_text())["skipped"].items()}
    if skipped and not skip_bad:
        raise UserError(
            f"{next(iter(skipped.values()))}: cannot be read as an image (found when this split was decoded); "
            f"replace or remove it, or set data.on_bad_image=skip to leave such files out"
        )
    readable = np.ones(len(manifest), dtype=bool)
    readable[list(skipped)] = False
    return DecodedSplit(np.load(pixels_path, mmap_mode="r"), readable, pixels_path, list(skipped.values()))


def readable_labels(decoded: DecodedSplit, manifest: Manifest) -> torch.Tensor:
    """The labels of the split's readable rows (-1 where the split is unlabelled)."""
    labels = np.asarray(manifest.labels if manifest.labels is not None else [-1] * len(manifest))
    return torch.from_numpy(labels[decoded.readable])


def epoch_batches(labels: torch.Tensor, batch_size: int, shuffle: bool, generator: torch.Generator,
                  balanced: bool = False) -> BatchSampler:  # fmt: skip
    """Each epoch's batches of positions among a split's readable rows, each batch in ascending order: shuffled,
    class-balanced or in order, drawn from ``generator`` (the same draws wherever the pixels are kept)."""
    order = epoch_order(range(len(labels)), shuffle, generator, balanced, labels)
    return SortedBatches(order, batch_size, drop_last=False)


class SortedBatches(BatchSampler):
    """A BatchSampler whose batches list their positions in ascending order (rows read front to back)."""

    def __iter__(self):
        return (sorted(batch) for batch in super().__iter__())


class DecodedImages(torch.utils.data.Dataset):
    """Whole batches of cached uint8 pixels, indexed by a list of positions among the readable rows (one
    memory-mapped read per batch, not one file per image)."""

    def __init__(self, decoded: DecodedSplit, labels: torch.Tensor):
        self.pixels = decoded.pixels
        self.rows = np.flatnonzero(decoded.readable)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> Batch:
        pixels = np.ascontiguousarray(self.pixels[self.rows[positions]])
        return Batch(torch.from_numpy(pixels), self.labels[positions], [])


def decoded_loader(decoded: DecodedSplit, labels: torch.Tensor, batches: BatchSampler) -> DataLoader:
    """The split's ``batches`` of (uint8 images, labels) read from the cache on disk in the main process (a batch
    is one memory copy), pinned for the copy to a GPU."""
    return DataLoader(DecodedImages(decoded, labels), batch_size=None, sampler=batches,
                      pin_memory=torch.cuda.is_available())  # fmt: skip
