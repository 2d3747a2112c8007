"""What the benchmarks share: generated C-NMC-like cells, the device, and timed training steps."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from leukemia.data.layouts.demo import BASE_STAIN, render_cell
from leukemia.data.manifest import Manifest
from leukemia.data.schema import AugmentationConfig
from leukemia.training.runtime import Acceleration

SOURCE_SIZE = 450  # C-NMC cells
CROP = 350
# The lab recipe's augmentation (the seed-style baseline applies it per image, the feed on whole batches)
LAB_AUGMENTATION = AugmentationConfig(name="lab", rotation_degrees=20, hflip_p=0.5, vflip_p=0.5)


def _write_cell(numbered: tuple[int, Path]) -> None:
    index, path = numbered
    cell = render_cell(np.random.default_rng(index), SOURCE_SIZE, bool(index % 2), BASE_STAIN)
    Image.fromarray(cell).save(path)


def write_cells(folder: Path, count: int, name: str = "train", workers: int = 0, first: int = 0) -> Manifest:
    """``count`` C-NMC-like 450x450 BMPs under ``folder``, numbered from ``first`` (cell i: its own seed, class
    i mod 2), rendered in ``workers`` processes."""
    numbered = [(index, folder / f"cell_{index}.bmp") for index in range(first, first + count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_cell, numbered, chunksize=32))
    else:
        for item in numbered:
            _write_cell(item)
    return Manifest(name, [path for _, path in numbered], [index % 2 for index, _ in numbered])


def chosen_device(choice: str) -> torch.device:
    """``--device``: auto takes CUDA where there is one."""
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, acceleration: Acceleration):
    """A closure doing one plain SGD step of ``model`` on the batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=acceleration.amp):
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def interleaved_step_rates(steps: dict[str, Callable[[], None]], batch_size: int, repeats: int,
                           device: torch.device) -> dict[str, float]:  # fmt: skip
    """Images per second of each named step, timed in turns after one warm-up each, the order reversed every
    other round (A, B, B, A, A, B, …), so that a noisy machine, or whatever one step leaves the next, slows both
    alike; the median step time counts."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, step in list(steps.items())[:: -1 if round_ % 2 else 1]:
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(values[1:]) for name, values in times.items()}
