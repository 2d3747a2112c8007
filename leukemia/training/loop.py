"""The epoch loop: train, validate, keep the best epoch, checkpoint after every epoch."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leukemia.config import Config
from leukemia.data.cache import cache_folder
from leukemia.data.feed import Feed, build_feed
from leukemia.data.loading import class_weights
from leukemia.data.manifest import Splits
from leukemia.data.schema import Balance
from leukemia.errors import UserError
from leukemia.evaluation.metrics import classification_metrics, confusion_matrix
from leukemia.models import build_model
from leukemia.names import ACCURACY, CLASS_NAMES, LOSS, TRAIN, VAL, of
from leukemia.training.checkpoint import random_states, restore_random_states, save_checkpoint
from leukemia.training.engine import NonFiniteLoss, run_epoch
from leukemia.training.optim import build_optimizer, build_scheduler
from leukemia.training.runtime import Acceleration, compile_mode
from leukemia.training.schema import Monitor
from leukemia.training.stopping import StopRequest

log = logging.getLogger(__name__)


def build_feeds(cfg: Config, splits: Splits, device: torch.device) -> tuple[Feed, Feed]:
    """Training feed (shuffled or class-balanced, augmented) and validation feed (in order, no augmentation),
    decoded once (``data.cache``) or per image."""
    common = {"data_cfg": cfg.data, "aug_cfg": cfg.augmentation, "device": device, "seed": cfg.seed,
              "cache_folder": cache_folder(cfg.paths.cache_dir)}  # fmt: skip
    return build_feed(splits.train, train=True, **common), build_feed(splits.valid, train=False, **common)


def training_criterion(cfg: Config, splits: Splits) -> tuple[nn.Module, dict[str, float]]:
    """Cross-entropy (with ``trainer.label_smoothing``), class-weighted when ``data.balance=loss``; also the
    weights as params to log."""
    smoothing = cfg.trainer.label_smoothing
    if cfg.data.balance != Balance.loss:
        return nn.CrossEntropyLoss(label_smoothing=smoothing), {}
    weights = class_weights(splits.train)
    params = {f"balance.weight_{name}": round(float(w), 6) for name, w in zip(CLASS_NAMES, weights, strict=True)}
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=smoothing), params


class SkippedFiles:
    """Unreadable files left out under ``data.on_bad_image=skip``: each warned once, counted per epoch."""

    def __init__(self) -> None:
        self.seen: dict[str, None] = {}

    def add(self, descriptions: Iterable[str]) -> int:
        for description in descriptions:
            if description not in self.seen:
                self.seen[description] = None
                log.warning("skipped an unreadable image: %s", description)
        return len(self.seen)


@dataclass
class BestEpoch:
    """The best epoch so far by the monitored validation metric, with what is logged for it at the end."""

    monitor: Monitor
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    matrix: np.ndarray | None = None
    state: dict[str, torch.Tensor] | None = None

    @property
    def value(self) -> float:
        return self.metrics[self.monitor.value]

    def update(self, epoch: int, metrics: dict[str, float], matrix: np.ndarray, model: nn.Module) -> bool:
        """Keep this epoch (weights copied to CPU) if it beats the best so far; NaN never does."""
        value = metrics[self.monitor.value]
        if math.isnan(value):
            return False
        if self.state is not None:
            lower_is_better = self.monitor == Monitor.val_loss
            if (value >= self.value) if lower_is_better else (value <= self.value):
                return False
        self.epoch, self.metrics, self.matrix = epoch, metrics, matrix
        self.state = {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()}
        return True

    def to_checkpoint(self) -> dict:
        matrix = None if self.matrix is None else self.matrix.tolist()
        return {"epoch": self.epoch, "metrics": self.metrics, "matrix": matrix, "state": self.state}

    @classmethod
    def from_checkpoint(cls, monitor: Monitor, saved: dict) -> BestEpoch:
        matrix = None if saved["matrix"] is None else np.asarray(saved["matrix"], dtype=np.int64)
        return cls(monitor, saved["epoch"], saved["metrics"], matrix, saved["state"])


@dataclass
class Progress:
    """Where training stands after an epoch: all a checkpoint holds besides the model, optimizer and random states."""

    best: BestEpoch
    epoch: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    skipped: SkippedFiles = field(default_factory=SkippedFiles)

    def record(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epoch = epoch
        for key, value in metrics.items():
            self.history.setdefault(key, []).append(value)


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float], improved: bool) -> str:
    metrics = {"val_accuracy_normal": math.nan} | metrics  # absent where the validation split has no normal cell
    return (
        f"epoch {epoch}/{epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.4f} | "
        f"val loss {metrics['val_loss']:.4f} acc {metrics['val_accuracy']:.4f} "
        f"bal {metrics['val_balanced_accuracy']:.4f} f1w {metrics['val_f1_weighted']:.4f} "
        f"normal {metrics['val_accuracy_normal']:.4f} | {metrics['train_images_per_s']:.0f} img/s, data wait "
        f"{metrics['data_wait_fraction']:.1%}{'  *best' if improved else ''}"
    )


class Trainer:
    """One training run's moving parts: model, optimizer, scheduler and feeds, and what a checkpoint of them
    holds, so that a resumed run continues with exactly the numbers the uninterrupted one would have had."""

    def __init__(self, cfg: Config, splits: Splits, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg.model.depth, cfg.model.num_classes, cfg.model.weights)
        self.acceleration = Acceleration.for_device(cfg.trainer, device)
        self.runnable = self.acceleration.model(self.model, device, compile_mode(cfg.trainer, device))
        self.train_feed, self.val_feed = build_feeds(cfg, splits, device)
        self.criterion, self.balance_params = training_criterion(cfg, splits)
        self.eval_criterion = nn.CrossEntropyLoss()  # unweighted, so val_loss compares across data.balance settings
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, cfg.trainer.epochs)

    def checkpoint(self, progress: Progress, run_id: str) -> dict:
        return {
            "run_id": run_id,
            "epoch": progress.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "best": progress.best.to_checkpoint(),
            "history": progress.history,
            "skipped": list(progress.skipped.seen),
            "random": random_states(),
            "feeds": {"train": self.train_feed.random_state(), "valid": self.val_feed.random_state()},
        }

    def restore(self, state: dict) -> Progress:
        """Load a checkpoint's weights and optimizer, and set the schedule (for ``trainer.epochs``, which a
        resume may raise) to the epoch after it; returns its progress. The random states are restored last, just
        before training goes on."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler = build_scheduler(self.cfg.scheduler, self.optimizer, self.cfg.trainer.epochs, state["epoch"])
        progress = Progress(BestEpoch.from_checkpoint(Monitor(self.cfg.trainer.monitor), state["best"]),
                            state["epoch"], state["history"])  # fmt: skip
        progress.skipped.seen = dict.fromkeys(state["skipped"])
        self.train_feed.restore_random_state(state["feeds"]["train"])
        self.val_feed.restore_random_state(state["feeds"]["valid"])
        restore_random_states(state["random"])
        return progress

    def epoch(self, epoch: int, stop: StopRequest) -> tuple[dict[str, float], np.ndarray, list[str]]:
        """Train one epoch and validate: the epoch's metrics, the validation confusion matrix, and the files
        skipped as unreadable."""
        cfg, lr = self.cfg, self.optimizer.param_groups[0]["lr"]
        common = {"progress": cfg.trainer.progress, "stop": stop.check, **self.acceleration.step}
        try:
            trained = run_epoch(self.runnable, self.train_feed.loader, self.criterion, self.device, self.optimizer,
                                f"epoch {epoch} train", prepare=self.train_feed.prepare, **common)  # fmt: skip
        except NonFiniteLoss as error:
            raise UserError(
                f"training loss became {error.loss} in epoch {epoch}, batch {error.batch} (learning rate {lr:g} "
                f"that epoch, optim.lr={cfg.optim.lr:g}, data.batch_size={cfg.data.batch_size}); lower optim.lr"
            ) from error
        validated = run_epoch(self.runnable, self.val_feed.loader, self.eval_criterion, self.device, None,
                              f"epoch {epoch} valid", prepare=self.val_feed.prepare, **common)  # fmt: skip
        if self.scheduler is not None:
            self.scheduler.step()
        matrix = confusion_matrix(validated.targets, validated.predictions, cfg.model.num_classes)
        val_metrics = {of(VAL, k): v for k, v in classification_metrics(matrix).items()}
        val_metrics[of(VAL, LOSS)] = validated.loss
        metrics = {of(TRAIN, LOSS): trained.loss, of(TRAIN, ACCURACY): trained.accuracy, "lr": lr} | val_metrics
        timing = trained.timing
        metrics |= dict(zip(TIMING_METRICS, (timing["images_per_s"], timing["data_wait_fraction"]), strict=True))
        return metrics, matrix, trained.skipped + validated.skipped

    def fit(self, progress: Progress, checkpoint: Path, run_id: str, stop: StopRequest, log_epoch: EpochLogger) -> None:
        """The epochs after the last checkpointed one, each checkpointed, then handed to ``log_epoch``; a stop
        signal ends training and validation at once, but lets an epoch's checkpoint and logging finish."""
        try:
            for epoch in range(progress.epoch + 1, self.cfg.trainer.epochs + 1):
                with stop.interruptible():  # a stop ends this at once; the checkpoint and logging below finish first
                    metrics, matrix, skipped = self.epoch(epoch, stop)
                metrics["skipped_images"] = progress.skipped.add(skipped)
                val_metrics = {key: value for key, value in metrics.items() if key.startswith(of(VAL, ""))}
                improved = progress.best.update(epoch, val_metrics, matrix, self.model)
                progress.record(epoch, metrics)
                save_checkpoint(self.checkpoint(progress, run_id), checkpoint)
                log_epoch(metrics, step=epoch)
                log.info(_epoch_line(epoch, self.cfg.trainer.epochs, metrics, improved))
        except torch.cuda.OutOfMemoryError as error:
            raise _out_of_memory(self.cfg, self.train_feed.where == "device") from error


# What each training epoch logs of its speed: these differ from run to run, where every other metric repeats.
TIMING_METRICS = ("train_images_per_s", "data_wait_fraction")
EpochLogger = Callable[..., None]  # called with an epoch's metrics and step=<epoch>, as MLflow's log_metrics


def _out_of_memory(cfg: Config, resident: bool) -> UserError:
    size = cfg.data.batch_size
    also = ", or data.cache=disk to keep the data out of the GPU's memory" if resident else ""
    return UserError(
        f"CUDA ran out of memory with data.batch_size={size} ({cfg.model.name}, {cfg.data.image_size} px); "
        f"try data.batch_size={max(1, size // 2)}{also}"
    )
