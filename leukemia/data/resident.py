"""A decoded split resident on the training device (``data.cache=device``, and ``auto`` on CUDA): its uint8 pixels
are copied once into the device's memory, and each batch is an index gather there. No loader, no worker, no
per-batch copy from the host: the epoch's order travels to the device once, as one index tensor.

C-NMC's 10,661 cells at 350 px are about 3.9 GB of uint8, a fraction of a training GPU's memory. Before the copy
the split's size is checked against the device's free memory, keeping ``RESERVE`` of its total for the model;
a split that does not fit is read from the decode cache on disk instead, with one logged line. On a CPU the
same code keeps the split in RAM.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import psutil
import torch
from torch.utils.data import BatchSampler

from leukemia.data.cache import DecodedSplit
from leukemia.data.loading import Batch

log = logging.getLogger(__name__)

RESERVE = 0.5  # share of the device's total memory kept for the model, its activations and the optimizer
COPY_ROWS = 512  # images per host-to-device copy while a split moves in (a bounded host buffer)


def memory(device: torch.device) -> tuple[int, int]:
    """Free and total bytes of the device's memory (on a CPU: the RAM available to this process, and all)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)
    ram = psutil.virtual_memory()
    return ram.available, ram.total


def room_for(size: int, free: int, total: int) -> bool:
    """Whether ``size`` bytes fit in ``free`` with ``RESERVE`` of ``total`` left over."""
    return size <= free - RESERVE * total


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def _copied(decoded: DecodedSplit, rows: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """The rows' pixels copied into one tensor on ``device``, a bounded chunk at a time; None if CUDA cannot
    allocate it after all."""
    try:
        pixels = torch.empty((len(rows), *decoded.pixels.shape[1:]), dtype=torch.uint8, device=device)
    except torch.cuda.OutOfMemoryError:
        return None
    for start in range(0, len(rows), COPY_ROWS):
        chunk = rows[start : start + COPY_ROWS]
        pixels[start : start + len(chunk)].copy_(torch.from_numpy(np.ascontiguousarray(decoded.pixels[chunk])))
    return pixels


def resident_pixels(decoded: DecodedSplit, name: str, device: torch.device) -> torch.Tensor | None:
    """The split's readable rows as one (N, 3, size, size) uint8 tensor on ``device``; None, after one logged
    line, where it does not fit."""
    rows = np.flatnonzero(decoded.readable)
    size = len(rows) * decoded.pixels[0].nbytes
    free, total = memory(device)
    pixels = _copied(decoded, rows, device) if room_for(size, free, total) else None
    if pixels is None:
        log.info("the %s split (%s) does not fit in %s memory (%s free of %s, %d%% kept for the model): it is "
                 "read from the decode cache on disk instead", name, _gb(size), device, _gb(free), _gb(total),
                 RESERVE * 100)  # fmt: skip
    else:
        log.info("the %s split (%s, %d images) is resident in %s memory", name, _gb(size), len(rows), device)
    return pixels


class ResidentBatches:
    """A split's ``batches`` (positions among its readable rows) gathered from ``pixels`` and ``labels`` where
    they reside, each with its manifest ``rows``; the same batches, in the same order, as the decode cache on
    disk yields for the same draws."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, batches: BatchSampler):
        self.pixels, self.labels, self.batches = pixels, labels.to(pixels.device), batches
        self.rows = rows

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        batches = list(self.batches)  # this epoch's draws
        if not batches:
            return
        positions = torch.tensor(np.concatenate(batches), device=self.pixels.device)  # one copy per epoch
        for batch, drawn in zip(positions.split([len(batch) for batch in batches]), batches, strict=True):
            yield Batch(self.pixels.index_select(0, batch), self.labels.index_select(0, batch), self.rows[drawn], [])
