"""The input pipeline and the model step: ``python -m leukemia.bench [--device cuda] [--depth 50] [--image-size 350]
[--images 512]``.

On the same generated 450x450 BMP cells, in one process, it measures (a) the input pipeline: the seed's PIL
per-image pipeline (RandomOrder(rotate 20, flips), CenterCrop 350, Resize, ToTensor) against this project's
feed (decode cache + batched augmentation on the device), both delivering augmented batches of the
same size with the same worker count; (b) training steps of this project's ResNet against torchvision's of the
same depth, on the same batch with the same settings; (c) one training epoch end to end. It prints a table, and
last a JSON line with ``loader_speedup``, ``model_step_ratio``, ``device``, the raw images/s and the epoch's
``data_wait_fraction``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from leukemia.bench.common import (
    CROP,
    LAB_AUGMENTATION,
    SOURCE_SIZE,
    chosen_device,
    device_name,
    interleaved_step_rates,
    synchronize,
    training_step,
    write_cells,
)
from leukemia.data.feed import Feed, build_feed
from leukemia.data.loading import CellImages, make_loader
from leukemia.data.manifest import Manifest
from leukemia.data.schema import DataConfig
from leukemia.models import build_model
from leukemia.training.engine import EpochResult, run_epoch
from leukemia.training.runtime import Acceleration
from leukemia.training.schema import TrainerConfig


def seed_style_loader(manifest: Manifest, image_size: int, batch_size: int, workers: int) -> DataLoader:
    """The course seed's per-image pipeline."""
    augmentation = transforms.RandomOrder([transforms.RandomRotation(20), transforms.RandomHorizontalFlip(),
                                           transforms.RandomVerticalFlip()])  # fmt: skip
    steps = transforms.Compose([augmentation, transforms.CenterCrop(CROP), transforms.Resize(image_size),
                                transforms.ToTensor()])  # fmt: skip
    return make_loader(manifest, steps, batch_size, workers, shuffle=True, seed=0)


def images_per_second(loader: DataLoader, device: torch.device, prepare=None) -> float:
    """Images per second over a full pass, timed after an untimed pass that starts the (persistent) workers
    and warms the file cache."""

    def one_pass() -> int:
        count = 0
        for batch in loader:
            images = batch.images.to(device, non_blocking=True)
            count += len(prepare(images) if prepare is not None else images)
        synchronize(device)
        return count

    one_pass()
    start = time.perf_counter()
    count = one_pass()
    return count / (time.perf_counter() - start)


def model_steps(manifest: Manifest, args: argparse.Namespace, device: torch.device, acceleration: Acceleration):
    """(b): images/s of a training step of this project's ResNet and torchvision's, on one batch."""
    plain = transforms.Compose([transforms.CenterCrop(CROP), transforms.Resize(args.image_size), transforms.ToTensor()])
    images, labels, _ = next(iter(DataLoader(CellImages(manifest, plain), batch_size=args.batch_size)))
    images, labels = images.to(device), labels.to(device)
    if acceleration.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    reference = getattr(torchvision.models, f"resnet{args.depth}")(num_classes=2)
    models = {"project": build_model(args.depth), "torchvision": reference}
    steps = {name: training_step(acceleration.model(model, device, None), images, labels, acceleration)
             for name, model in models.items()}  # fmt: skip
    return interleaved_step_rates(steps, len(images), args.steps, device)


def training_epoch(model: nn.Module, feed: Feed, device: torch.device, acceleration: Acceleration) -> EpochResult:
    """One training epoch of ``model`` on the feed, as a run trains (plain SGD), with its timing."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return run_epoch(model, feed.loader, nn.CrossEntropyLoss(), device, optimizer, progress=False,
                     prepare=feed.prepare, **acceleration.step)  # fmt: skip


def pipeline(args: argparse.Namespace) -> dict:
    """(a), (b) and (c) on ``args.images`` generated cells; prints the table and returns the JSON line's values."""
    device = chosen_device(args.device)
    acceleration = Acceleration.for_device(TrainerConfig(amp=not args.no_amp), device)
    data_cfg = DataConfig(name="bench", root="", crop_size=CROP, image_size=args.image_size,
                          batch_size=args.batch_size, num_workers=args.workers)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        manifest = write_cells(folder, args.images, workers=args.workers)
        seed_loader = seed_style_loader(manifest, args.image_size, args.batch_size, args.workers)
        seed_rate = images_per_second(seed_loader, device)
        started = time.perf_counter()
        feed = build_feed(manifest, data_cfg, LAB_AUGMENTATION, True, device, 0, folder / "cache")
        cache_seconds = time.perf_counter() - started
        project_rate = images_per_second(feed.loader, device, feed.prepare)
        rates = model_steps(manifest, args, device, acceleration)
        epoch = training_epoch(acceleration.model(build_model(args.depth), device, None), feed, device, acceleration)
    rows = [("(a) loader, seed-style PIL per image", seed_rate), ("(a) loader, project feed", project_rate)]
    rows += [(f"(b) train step, {name} resnet{args.depth}", rate) for name, rate in rates.items()]
    rows.append((f"(c) one epoch end to end, resnet{args.depth}", epoch.timing["images_per_s"]))
    print(f"device {device} ({device_name(device)}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.images} images of {SOURCE_SIZE}px -> crop {CROP} -> "
          f"{args.image_size}px, batch {args.batch_size}, workers {args.workers}, amp {acceleration.amp}")  # fmt: skip
    print(f"decode cache built once in {cache_seconds:.1f} s ({args.images / cache_seconds:.0f} images/s)")
    for label, rate in rows:
        print(f"{label:<45s} {rate:10.1f} images/s")
    print(f"(c) of which waiting for data: {epoch.timing['data_wait_fraction']:.1%} of the epoch")
    result = {
        "loader_speedup": round(project_rate / seed_rate, 2),
        "model_step_ratio": round(rates["project"] / rates["torchvision"], 3),
        "device": str(device),
        "seed_loader_images_per_s": round(seed_rate, 1),
        "project_loader_images_per_s": round(project_rate, 1),
        "project_step_images_per_s": round(rates["project"], 1),
        "torchvision_step_images_per_s": round(rates["torchvision"], 1),
        "epoch_images_per_s": round(epoch.timing["images_per_s"], 1),
        "data_wait_fraction": round(epoch.timing["data_wait_fraction"], 4),
        "image_size": args.image_size,
        "depth": args.depth,
    }
    print(json.dumps(result))
    return result
