"""Decode once: a split's images, center-cropped and resized, as one uint8 array on disk (memory-mapped).

Without it (``data.cache=false``) every image is decoded, cropped and resized in every epoch; after the first
use, the cache reads ready-made uint8 pixels instead. The key covers the manifest (every path with its size,
modification time, change time and inode: a file replaced by another of the same size and modification time, as
``cp -p``, ``rsync -a`` or ``tar`` leave it, still has a new change time) and the preprocessing parameters, so a
changed file or setting makes a new cache and an unchanged one is reused by later runs and sweep jobs. A cache
is written under a lock into a temporary file, its whole size reserved on disk first (a full disk is one line,
not a crash while the array is written), and renamed into place, so a parallel job either waits for it or finds
it complete, never half-written. The cache is derived data: a file that is damaged, truncated, not this key's
array, or written to since its metadata was (which records its inode, change time, size and a digest of
sampled blocks) is named in one warning and decoded again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from leukemia.data.decoding import decoding
from leukemia.data.loading import Batch, CellImages, SkippedImage, epoch_order, quiet_worker, worker_context
from leukemia.data.manifest import Manifest
from leukemia.errors import NO_SPACE, UserError

log = logging.getLogger(__name__)

SAMPLES, SAMPLE_BYTES = 64, 4096  # the blocks a cache file's fingerprint reads: 256 KB, whatever its size
FORMAT_VERSION = 2  # 2: the key covers each file's change time and inode; the metadata its key and array file


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


def cache_key(manifest: Manifest, crop_size: int | None, image_size: int) -> str:
    digest = hashlib.sha256(f"v{FORMAT_VERSION} crop={crop_size} size={image_size}".encode())
    for path in manifest.paths:
        status = path.stat()
        digest.update(
            f"\n{path}\t{status.st_size}\t{status.st_mtime_ns}\t{status.st_ctime_ns}\t{status.st_ino}".encode()
        )
    return digest.hexdigest()[:24]


def _decode_into(target: np.ndarray, manifest: Manifest, crop_size: int | None, workers: int,
                 skip_bad: bool) -> dict[int, str]:  # fmt: skip
    """Fill ``target`` with the split's pixels, decoding in ``workers`` processes; returns what was skipped, by
    row."""
    steps = decoding(crop_size, target.shape[-1])
    loader = DataLoader(
        CellImages(manifest, steps, skip_bad),
        batch_size=None,
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
        worker_init_fn=quiet_worker,
    )
    skipped = {}
    for item in loader:
        if isinstance(item, SkippedImage):
            skipped[item.row] = item.description
        else:
            pixels, _, row = item
            target[row] = pixels.numpy()
    return skipped


def fingerprint(path: Path) -> list[int | str]:
    """The file's inode, change time and size, and a digest of ``SAMPLES`` blocks spread over it: a write to it
    changes its change time (to the kernel clock's tick), and another picture written over it the sampled bytes."""
    status = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        for sample in range(SAMPLES):
            file.seek(status.st_size * sample // SAMPLES)
            digest.update(file.read(SAMPLE_BYTES))
    return [status.st_ino, status.st_ctime_ns, status.st_size, digest.hexdigest()]


def _damage(pixels_path: Path, meta_path: Path, key: str) -> str:
    """What is wrong with the cache files of ``key``, or "" when they are whole: the metadata must be this key's,
    and the array file the one it was written for (its fingerprint), checked before anything is mapped."""
    try:
        meta = json.loads(meta_path.read_text())
        found = fingerprint(pixels_path)
    except (OSError, ValueError) as error:  # a missing or garbled metadata file, an unreadable array file
        return f"unreadable ({type(error).__name__}: {str(error).strip()[:80]})"
    if not isinstance(meta, dict) or meta.get("key") != key or not isinstance(meta.get("skipped"), dict):
        return "its metadata is not this split's"
    if meta.get("file") != found:
        return "the array file is not the one its metadata was written for (truncated, written to or replaced)"
    return ""


def _allocated(partial: Path, shape: tuple[int, ...], split: str) -> np.memmap:
    """An empty uint8 array of ``shape`` in a new .npy file, its every block taken on disk before it is mapped:
    a full disk is this one line, not a SIGBUS while the mapped array is written."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with open(partial, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        size = file.tell() + int(np.prod(shape))
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as error:
            if error.errno not in NO_SPACE:
                raise
            folder, free = partial.parent, shutil.disk_usage(partial.parent).free
            raise UserError(
                f"{folder}: no room for the decode cache of the {split} split ({size / 1e6:.0f} MB needed, "
                f"{free / 1e6:.0f} MB free); free space there, point paths.cache_dir at another disk, or set "
                f"data.cache=none to decode every image in every epoch instead"
            ) from error
    return np.lib.format.open_memmap(partial, mode="r+")


def _build(manifest: Manifest, crop_size: int | None, image_size: int, workers: int, skip_bad: bool,
           paths: tuple[Path, Path], key: str) -> None:  # fmt: skip
    """Decode the split into ``paths`` (pixels, metadata), through a temporary file renamed into place."""
    pixels_path, meta_path = paths
    started = time.perf_counter()
    partial = pixels_path.with_name(f"{pixels_path.name}.{os.getpid()}.partial")
    shape = (len(manifest), 3, image_size, image_size)
    try:
        target = _allocated(partial, shape, manifest.name)
        skipped = _decode_into(target, manifest, crop_size, workers, skip_bad)
        target.flush()
        del target
        meta_path.unlink(missing_ok=True)  # until the array is in place, no metadata vouches for it
        os.replace(partial, pixels_path)  # the cache appears complete or not at all
        meta = {"key": key, "split": manifest.name, "source": manifest.source, "images": len(manifest),
                "crop_size": crop_size, "image_size": image_size, "skipped": skipped,
                "file": fingerprint(pixels_path)}  # fmt: skip
        meta_path.write_text(json.dumps(meta))
    except BaseException:  # an unreadable file, a full disk or Ctrl-C: leave no half-written array behind
        partial.unlink(missing_ok=True)
        raise
    log.info("decoded the %s split once: %d images in %.1f s -> %s (%.0f MB)", manifest.name, len(manifest),
             time.perf_counter() - started, pixels_path, pixels_path.stat().st_size / 1e6)  # fmt: skip


def decoded_split(
    manifest: Manifest, crop_size: int | None, image_size: int, folder: Path, workers: int = 0,
    skip_bad: bool = False,
) -> DecodedSplit:  # fmt: skip
    """The split's decoded pixels from ``folder``, decoding them first if no whole cache for this key exists."""
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, crop_size, image_size)
    pixels_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel job building the same cache finishes first
        damage = _damage(pixels_path, meta_path, key) if pixels_path.exists() else "absent"
        if damage and damage != "absent":
            log.warning("%s: a damaged decode cache (%s); decoding the %s split again", pixels_path, damage,
                        manifest.name)  # fmt: skip
        if damage:
            _build(manifest, crop_size, image_size, workers, skip_bad, (pixels_path, meta_path), key)
        meta = json.loads(meta_path.read_text())
    skipped = {int(row): description for row, description in meta["skipped"].items()}
    if skipped and not skip_bad:
        raise UserError(
            f"{next(iter(skipped.values()))}: cannot be read as an image (found when this split was decoded); "
            f"replace or remove it, or set data.on_bad_image=skip to leave such files out"
        )
    readable = np.ones(len(manifest), dtype=bool)
    readable[list(skipped)] = False
    return DecodedSplit(np.load(pixels_path, mmap_mode="r"), readable, pixels_path, list(skipped.values()))


def readable_rows(decoded: DecodedSplit) -> torch.Tensor:
    """The manifest rows of the split's readable images, in order: the ``rows`` every batch of it carries."""
    return torch.from_numpy(np.flatnonzero(decoded.readable))


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
        self.rows = readable_rows(decoded)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> Batch:
        rows = self.rows[positions]
        pixels = np.ascontiguousarray(self.pixels[rows.numpy()])
        return Batch(torch.from_numpy(pixels), self.labels[positions], rows, [])


def decoded_loader(decoded: DecodedSplit, labels: torch.Tensor, batches: BatchSampler) -> DataLoader:
    """The split's ``batches`` of (uint8 images, labels) read from the cache on disk in the main process (a batch
    is one memory copy), pinned for the copy to a GPU."""
    return DataLoader(DecodedImages(decoded, labels), batch_size=None, sampler=batches,
                      pin_memory=torch.cuda.is_available())  # fmt: skip
