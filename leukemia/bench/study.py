"""The course's study, timed: ``python -m leukemia.bench --study [--device cuda]``.

A C-NMC-sized generated set: of 10,661 cells at 450 px, a lab-sized split trains on 8,000 and validates on
1,600 (the test cells play no part in training time and are not generated). For ResNet18, 50 and 152 it
measures the training step's rate on one batch at the course's batch 32 and at doubling batches up to
``--max-batch``, keeping the fastest that fits; then it times full epochs (training and validation, after a
warm-up epoch) at batch 32 and at that fastest batch, through the feed a run uses (decode cache, device-resident
on CUDA with ``--cache auto``, augmentation on the device). From the epoch times it projects the course's study
(ResNet18 120 epochs, ResNet50 120, ResNet152 40). ``--images`` and ``--image-size`` make it small enough for a
CPU; the projection then names the sizes it measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from leukemia.bench.common import (
    CROP,
    LAB_AUGMENTATION,
    chosen_device,
    device_name,
    interleaved_step_rates,
    training_step,
    write_cells,
)
from leukemia.data.feed import Feed, build_feed
from leukemia.data.manifest import Manifest
from leukemia.data.schema import Cache, DataConfig
from leukemia.models import build_model
from leukemia.training.engine import EpochResult, run_epoch
from leukemia.training.runtime import Acceleration
from leukemia.training.schema import TrainerConfig

COURSE_EPOCHS = {18: 120, 50: 120, 152: 40}
COURSE_BATCH = 32
CNMC_CELLS = 10_661
LAB_SPLIT = (8_000, 1_600)  # the lab's training and validation images, of C-NMC's cells


@dataclass
class Timed:
    """One depth at one batch size: the pure step rate on one batch, and a full epoch's training and validation."""

    batch: int
    step_rate: float
    train: EpochResult
    valid: EpochResult

    @property
    def epoch_seconds(self) -> float:
        return self.train.seconds + self.valid.seconds

    @property
    def epoch_to_step(self) -> float:
        return self.train.timing["images_per_s"] / self.step_rate

    def row(self, depth: int, fastest: bool) -> str:
        return (f"resnet{depth:<4d} {self.batch:5d}{'*' if fastest else ' '} {self.step_rate:10.1f} "
                f"{self.train.seconds:9.2f} {self.train.timing['images_per_s']:10.1f} {self.epoch_to_step:8.3f} "
                f"{self.train.timing['data_wait_fraction']:9.2%} {self.valid.seconds:8.2f}")  # fmt: skip


@dataclass
class Study:
    """What the study runs on: its device and settings, and the generated split's manifests."""

    args: argparse.Namespace
    device: torch.device
    acceleration: Acceleration
    train: Manifest
    valid: Manifest
    cache_folder: Path

    def feeds(self, batch: int) -> tuple[Feed, Feed]:
        args = self.args
        data_cfg = DataConfig(name="study", root="", crop_size=CROP, image_size=args.image_size, batch_size=batch,
                              num_workers=args.workers, cache=Cache(args.cache))  # fmt: skip
        common = {"data_cfg": data_cfg, "aug_cfg": LAB_AUGMENTATION, "device": self.device, "seed": 0,
                  "cache_folder": self.cache_folder}  # fmt: skip
        return build_feed(self.train, train=True, **common), build_feed(self.valid, train=False, **common)

    def model(self, depth: int) -> nn.Module:
        mode = None if self.args.compile == "none" else self.args.compile
        return self.acceleration.model(build_model(depth), self.device, mode)


def split_sizes(images: int) -> tuple[int, int]:
    """The lab's share of ``images`` cells: training and validation images."""
    return max(2, round(images * LAB_SPLIT[0] / CNMC_CELLS)), max(1, round(images * LAB_SPLIT[1] / CNMC_CELLS))


def step_rates(study: Study, model: nn.Module, sample: Feed) -> dict[int, float]:
    """Images/s of one training step at batch 32 and doubling batches up to ``--max-batch``, until one does
    not fit in the device's memory."""
    first = next(iter(sample.loader))
    images, labels = sample.prepare(first.images.to(study.device)), first.labels.to(study.device)
    if study.acceleration.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    rates, batch = {}, COURSE_BATCH
    while batch <= max(study.args.max_batch, COURSE_BATCH):
        rows = torch.arange(batch, device=study.device) % len(images)  # the sample repeated to the batch size
        try:
            step = {"step": training_step(model, images[rows], labels[rows], study.acceleration)}
            rates[batch] = interleaved_step_rates(step, batch, study.args.steps, study.device)["step"]
        except torch.cuda.OutOfMemoryError:
            print(f"  batch {batch}: out of memory")
            break
        finally:
            step = {}  # the batch, its optimizer and activations freed before the next
            if study.device.type == "cuda":
                torch.cuda.empty_cache()
        batch *= 2
    return rates


def timed_epochs(study: Study, model: nn.Module, feeds: tuple[Feed, Feed]) -> tuple[EpochResult, EpochResult]:
    """A warm-up epoch (training and validation), then ``--epochs`` timed ones: the one of median training time."""
    train_feed, valid_feed = feeds
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    common = {"device": study.device, "progress": False, **study.acceleration.step}
    timed = []
    for _ in range(study.args.epochs + 1):
        train = run_epoch(model, train_feed.loader, nn.CrossEntropyLoss(), optimizer=optimizer,
                          prepare=train_feed.prepare, **common)  # fmt: skip
        valid = run_epoch(model, valid_feed.loader, nn.CrossEntropyLoss(), prepare=valid_feed.prepare, **common)
        timed.append((train, valid))
    return sorted(timed[1:], key=lambda pair: pair[0].seconds)[len(timed[1:]) // 2]


def time_depth(study: Study, depth: int, feeds: dict[int, tuple[Feed, Feed]]) -> dict[str, Timed]:
    """One depth at batch 32 and at its fastest batch (the same when 32 is the fastest)."""
    model = study.model(depth)
    if COURSE_BATCH not in feeds:
        feeds[COURSE_BATCH] = study.feeds(COURSE_BATCH)
    rates = step_rates(study, model, feeds[COURSE_BATCH][0])
    fastest = max(rates, key=rates.get)
    timed = {}
    for name, batch in (("batch32", COURSE_BATCH), ("fastest", fastest)):
        if batch == COURSE_BATCH and timed:  # batch 32 was the fastest: timed once
            timed[name] = timed["batch32"]
            continue
        if batch not in feeds:
            feeds[batch] = study.feeds(batch)
        timed[name] = Timed(batch, rates[batch], *timed_epochs(study, model, feeds[batch]))
        print(timed[name].row(depth, batch == fastest), flush=True)
    return timed


def projected_minutes(timed: dict[int, dict[str, Timed]], which: str) -> float:
    return sum(COURSE_EPOCHS[depth] * by_batch[which].epoch_seconds for depth, by_batch in timed.items()) / 60


def study(args: argparse.Namespace) -> dict:
    """Generate the cells, time every depth, print the table and the projection; returns the JSON line's values."""
    device = chosen_device(args.device)
    acceleration = Acceleration.for_device(TrainerConfig(amp=not args.no_amp), device)
    train_count, valid_count = split_sizes(args.images)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        train = write_cells(folder, train_count, "train", args.workers)
        valid = write_cells(folder, valid_count, "valid", args.workers, first=train_count)
        runner = Study(args, device, acceleration, train, valid, folder / "cache")
        print(f"study: {train_count} train + {valid_count} valid images (the lab's split of {args.images} cells), "
              f"{args.image_size} px, {device} ({device_name(device)}), torch {torch.__version__}, amp "
              f"{acceleration.amp}, data.cache={args.cache}, compile {args.compile}")  # fmt: skip
        print("model      batch  step img/s  train s  epoch img/s  epoch/step  data wait  valid s")
        feeds: dict[int, tuple[Feed, Feed]] = {}
        timed = {depth: time_depth(runner, depth, feeds) for depth in args.depths}
    return report(args, device, (train_count, valid_count), timed)


def report(args: argparse.Namespace, device: torch.device, sizes: tuple[int, int],
           timed: dict[int, dict[str, Timed]]) -> dict:  # fmt: skip
    """The projection and the JSON line (printed last)."""
    measured = f"{sizes[0]} train + {sizes[1]} valid images at {args.image_size} px"
    course = ", ".join(f"resnet{depth} {COURSE_EPOCHS[depth]} epochs" for depth in timed)
    minutes = {which: projected_minutes(timed, which) for which in ("batch32", "fastest")}
    print(
        f"the course's study ({course}) on {measured}, training and validation: "
        f"{minutes['batch32']:.1f} min at batch 32, {minutes['fastest']:.1f} min at the fastest batches"
    )
    resnet18 = timed[min(timed)]  # the shallowest depth measured: ResNet18 unless --depths leaves it out
    result = {
        "study": True,
        "device": str(device),
        "device_name": device_name(device),
        "projected_for": f"{course}; {measured}",
        "study_minutes_projected": round(minutes["fastest"], 2),
        "study_minutes_projected_batch32": round(minutes["batch32"], 2),
        "epoch_to_step_ratio": round(resnet18["fastest"].epoch_to_step, 3),
        "epoch_to_step_ratio_batch32": round(resnet18["batch32"].epoch_to_step, 3),
        "data_wait_fraction": round(resnet18["fastest"].train.timing["data_wait_fraction"], 4),
        "data_wait_fraction_batch32": round(resnet18["batch32"].train.timing["data_wait_fraction"], 4),
        "fastest_batch": {f"resnet{depth}": by_batch["fastest"].batch for depth, by_batch in timed.items()},
        "epoch_seconds": {
            f"resnet{depth}": {which: round(t.epoch_seconds, 3) for which, t in by_batch.items()}
            for depth, by_batch in timed.items()
        },  # fmt: skip
    }
    print(json.dumps(result))
    return result
