"""Benchmark: ``python -m leukemia.bench [--device cuda] [--depth 50] [--image-size 350] [--images 512]``.

On the same generated 450x450 BMP cells, in one process, it measures (a) the input pipeline: the seed's PIL
per-image pipeline (RandomOrder(rotate 20, flips), CenterCrop 350, Resize, ToTensor) against this project's
feed (decode cache + batched augmentation on the device), both delivering augmented batches of the
same size with the same worker count; (b) training steps of this project's ResNet against torchvision's of the
same depth, on the same batch with the same settings; (c) one training epoch end to end. It prints a table, and
last a JSON line with ``loader_speedup``, ``model_step_ratio``, ``device`` and the raw images/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from leukemia.config import AugmentationConfig, DataConfig, TrainerConfig
from leukemia.data.feed import Feed, build_feed
from leukemia.data.layouts.demo import BASE_STAIN, render_cell
from leukemia.data.loading import CellImages, make_loader
from leukemia.data.manifest import Manifest
from leukemia.models import build_model
from leukemia.training.engine import run_epoch
from leukemia.training.runtime import Acceleration

SOURCE_SIZE = 450  # C-NMC cells
CROP = 350


def write_cells(folder: Path, count: int) -> Manifest:
    """``count`` C-NMC-like 450x450 BMPs (alternating classes) under ``folder``."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"cell_{index}.bmp"
        Image.fromarray(render_cell(rng, SOURCE_SIZE, bool(index % 2), BASE_STAIN)).save(path)
        paths.append(path)
    return Manifest("train", paths, [index % 2 for index in range(count)])


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
        if device.type == "cuda":
            torch.cuda.synchronize()
        return count

    one_pass()
    start = time.perf_counter()
    count = one_pass()
    return count / (time.perf_counter() - start)


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


def interleaved_step_rates(steps: dict, batch_size: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Images per second of each named step, timed in turns (A, B, A, B, …) after one warm-up each, so that
    a noisy machine slows both alike; the median step time counts."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(values[1:]) for name, values in times.items()}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--depth", type=int, default=18, choices=[18, 50, 152])
    parser.add_argument("--image-size", type=int, default=350)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model in (b)")
    parser.add_argument("--no-amp", action="store_true", help="CUDA: train in float32 instead of bf16 autocast")
    return parser.parse_args(argv)


def model_steps(manifest: Manifest, args: argparse.Namespace, device: torch.device, acceleration: Acceleration):
    """(b): images/s of a training step of this project's ResNet and torchvision's, on one batch."""
    plain = transforms.Compose([transforms.CenterCrop(CROP), transforms.Resize(args.image_size), transforms.ToTensor()])
    images, labels = next(iter(DataLoader(CellImages(manifest, plain), batch_size=args.batch_size)))
    images, labels = images.to(device), labels.to(device)
    if acceleration.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    reference = getattr(torchvision.models, f"resnet{args.depth}")(num_classes=2)
    models = {"project": build_model(args.depth), "torchvision": reference}
    steps = {name: training_step(acceleration.model(model, device, False), images, labels, acceleration)
             for name, model in models.items()}  # fmt: skip
    return interleaved_step_rates(steps, len(images), args.steps, device)


def epoch_rate(feed: Feed, args: argparse.Namespace, device: torch.device, acceleration: Acceleration) -> float:
    """(c): images/s of one training epoch end to end."""
    model = acceleration.model(build_model(args.depth), device, False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    started = time.perf_counter()
    run_epoch(model, feed.loader, nn.CrossEntropyLoss(), device, optimizer, progress=False,
              prepare=feed.prepare, **acceleration.step)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.images / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    acceleration = Acceleration.for_device(TrainerConfig(amp=not args.no_amp), device)
    data_cfg = DataConfig(name="bench", root="", crop_size=CROP, image_size=args.image_size,
                          batch_size=args.batch_size, num_workers=args.workers)  # fmt: skip
    aug_cfg = AugmentationConfig(name="lab", rotation_degrees=20, hflip_p=0.5, vflip_p=0.5, random_order=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        manifest = write_cells(folder, args.images)
        seed_loader = seed_style_loader(manifest, args.image_size, args.batch_size, args.workers)
        seed_rate = images_per_second(seed_loader, device)
        started = time.perf_counter()
        feed = build_feed(manifest, data_cfg, aug_cfg, True, device, 0, folder / "cache")
        cache_seconds = time.perf_counter() - started
        project_rate = images_per_second(feed.loader, device, feed.prepare)
        rates = model_steps(manifest, args, device, acceleration)
        whole_epoch = epoch_rate(feed, args, device, acceleration)
    rows = [("(a) loader, seed-style PIL per image", seed_rate), ("(a) loader, project feed", project_rate)]
    rows += [(f"(b) train step, {name} resnet{args.depth}", rate) for name, rate in rates.items()]
    rows.append((f"(c) one epoch end to end, resnet{args.depth}", whole_epoch))
    print(f"device {device} ({torch.cuda.get_device_name() if use_cuda else 'CPU'}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {args.images} images of {SOURCE_SIZE}px -> crop {CROP} -> "
          f"{args.image_size}px, batch {args.batch_size}, workers {args.workers}, amp {acceleration.amp}")  # fmt: skip
    print(f"decode cache built once in {cache_seconds:.1f} s ({args.images / cache_seconds:.0f} images/s)")
    for label, rate in rows:
        print(f"{label:<45s} {rate:10.1f} images/s")
    result = {
        "loader_speedup": round(project_rate / seed_rate, 2),
        "model_step_ratio": round(rates["project"] / rates["torchvision"], 3),
        "device": str(device),
        "seed_loader_images_per_s": round(seed_rate, 1),
        "project_loader_images_per_s": round(project_rate, 1),
        "project_step_images_per_s": round(rates["project"], 1),
        "torchvision_step_images_per_s": round(rates["torchvision"], 1),
        "epoch_images_per_s": round(whole_epoch, 1),
        "image_size": args.image_size,
        "depth": args.depth,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
