"""task=train: train, validate every epoch, keep the best epoch, then evaluate it on the test split."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from leukemia.augmentation import build_augmentation
from leukemia.config import Balance, Monitor
from leukemia.data import class_weights, displayable, preprocessing, preview
from leukemia.engine import run_epoch
from leukemia.errors import UserError
from leukemia.figures import confusion_matrix_figure, image_grid_figure, learning_curves_figure
from leukemia.layouts import load_splits
from leukemia.manifest import CLASS_NAMES, Splits, summarize, summary_lines
from leukemia.metrics import classification_metrics, confusion_counts, confusion_matrix
from leukemia.models import build_model
from leukemia.optim import build_optimizer, build_scheduler
from leukemia.pipeline import Feed, build_feed
from leukemia.tasks.common import (
    Acceleration,
    StopRequest,
    check_ranges,
    decode_cache_folder,
    launch_context,
    resolve_device,
    seed_everything,
)
from leukemia.tasks.evaluate import evaluate_test
from leukemia.tracking import Run, flatten, tracked_run

log = logging.getLogger(__name__)


def build_feeds(cfg: DictConfig, splits: Splits, device: torch.device) -> tuple[Feed, Feed]:
    """Training feed (shuffled or class-balanced, augmented) and validation feed (in order, no augmentation),
    through the configured pipeline (``data.pipeline``, ``data.cache``)."""
    common = {"data_cfg": cfg.data, "aug_cfg": cfg.augmentation, "device": device, "seed": cfg.seed,
              "cache_folder": decode_cache_folder(cfg)}  # fmt: skip
    return build_feed(splits.train, train=True, **common), build_feed(splits.valid, train=False, **common)


def training_criterion(cfg: DictConfig, splits: Splits) -> tuple[nn.Module, dict[str, float]]:
    """Cross-entropy, class-weighted when ``data.balance=loss``; also the weights as params to log."""
    if cfg.data.balance != Balance.loss:
        return nn.CrossEntropyLoss(), {}
    weights = class_weights(splits.train)
    params = {f"balance.weight_{name}": round(float(w), 6) for name, w in zip(CLASS_NAMES, weights, strict=True)}
    return nn.CrossEntropyLoss(weight=weights), params


def log_dataset(run: Run, splits: Splits) -> None:
    """The dataset summary: a table in the log, counts as params, the table and subject lists as JSON."""
    table = summarize(splits)
    for line in summary_lines(table):
        log.info(line)
    run.log_params({f"dataset.{split}.{key}": value for split, row in table.items() for key, value in row.items()})
    subjects = {m.name: sorted(m.subject_set()) for m in splits.present() if m.subjects is not None}
    run.log_dict({"counts": table, "subjects": subjects}, "data/summary.json")


def log_training_preview(run: Run, cfg: DictConfig, splits: Splits, run_name: str) -> None:
    """A grid of augmented training images (denormalised to view), drawn through the PIL reference pipeline,
    whose distribution the tensor pipeline shares."""
    augmentation = build_augmentation(cfg.augmentation)
    transform = preprocessing(cfg.data.crop_size, cfg.data.image_size, cfg.data.mean, cfg.data.std, augmentation)
    batch = preview(splits.train, transform, count=16)
    if not len(batch.labels):
        return
    images = displayable(batch.images, cfg.data.mean, cfg.data.std)
    title = f"{run_name}: training images after preprocessing and augmentation"
    run.log_figure(image_grid_figure(images, batch.labels.tolist(), CLASS_NAMES, title), "figures/train_samples.png")


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


def _epoch_line(epoch: int, epochs: int, metrics: dict[str, float], improved: bool) -> str:
    return (
        f"epoch {epoch}/{epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.4f} | "
        f"val loss {metrics['val_loss']:.4f} acc {metrics['val_accuracy']:.4f} "
        f"bal {metrics['val_balanced_accuracy']:.4f} f1w {metrics['val_f1_weighted']:.4f} "
        f"normal {metrics['val_accuracy_normal']:.4f}{'  *best' if improved else ''}"
    )


def _log_outcome(run: Run, run_name: str, best: BestEpoch, history: dict[str, list[float]]) -> None:
    """End-of-run artifacts: best-epoch metrics, confusion matrix (figure + counts), curves, weights."""
    run.log_metrics({"best_epoch": best.epoch} | {f"best_{key}": value for key, value in best.metrics.items()})
    title = f"{run_name}: validation, best epoch {best.epoch} by {best.monitor.value}"
    run.log_figure(confusion_matrix_figure(best.matrix, CLASS_NAMES, title), "figures/confusion_matrix.png")
    run.log_dict(confusion_counts(best.matrix, CLASS_NAMES, epoch=best.epoch), "figures/confusion_matrix.json")
    run.log_figure(learning_curves_figure(history, run_name), "figures/learning_curves.png")
    run.log_state_dict(best.state, "weights/best.pt")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, validate each epoch, keep the best epoch's weights; returns the best epoch's validation metrics."""
    check_ranges(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    splits = load_splits(cfg.data)
    model = build_model(cfg.model.depth, cfg.model.num_classes, cfg.model.weights)
    acceleration = Acceleration.for_device(cfg.trainer, device)
    runnable = acceleration.model(model, device, cfg.trainer.compile)
    train_feed, val_feed = build_feeds(cfg, splits, device)
    criterion, balance_params = training_criterion(cfg, splits)
    eval_criterion = nn.CrossEntropyLoss()  # unweighted, so val_loss compares across data.balance settings
    optimizer = build_optimizer(cfg.optim, model.parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.epochs)
    run_name, tags, overrides = launch_context(cfg)
    log.info("%s on %s: %d train / %d valid images, device %s",
             run_name, cfg.data.name, len(splits.train), len(splits.valid), device)  # fmt: skip

    with (
        StopRequest() as stop_request,
        tracked_run(cfg.tracking.uri, cfg.tracking.experiment, run_name, tags, cfg.tracking.ui_url) as run,
    ):
        container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        run.log_params(flatten(container) | balance_params)
        run.log_text(OmegaConf.to_yaml(container), "config/config.yaml")
        run.log_text(OmegaConf.to_yaml(overrides), "config/overrides.yaml")
        log.info("MLflow run %s: %s", run.id, run.link)
        log_dataset(run, splits)
        log_training_preview(run, cfg, splits, run_name)

        best = BestEpoch(Monitor(cfg.trainer.monitor))
        history: dict[str, list[float]] = {}
        skipped = SkippedFiles()
        skipped.add(train_feed.skipped + val_feed.skipped)
        bar = {"progress": cfg.trainer.progress, "stop": stop_request.check}
        for epoch in range(1, cfg.trainer.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            trained = run_epoch(runnable, train_feed.loader, criterion, device, optimizer, f"epoch {epoch} train",
                                prepare=train_feed.prepare, **bar, **acceleration.step)  # fmt: skip
            if not math.isfinite(trained.loss):
                raise UserError(f"training loss became {trained.loss} in epoch {epoch}; lower optim.lr (now {lr:g})")
            validated = run_epoch(runnable, val_feed.loader, eval_criterion, device, None, f"epoch {epoch} valid",
                                  prepare=val_feed.prepare, **bar, **acceleration.step)  # fmt: skip
            if scheduler is not None:
                scheduler.step()
            matrix = confusion_matrix(validated.targets, validated.predictions, cfg.model.num_classes)
            val_metrics = {f"val_{k}": v for k, v in classification_metrics(matrix, CLASS_NAMES).items()}
            val_metrics["val_loss"] = validated.loss
            metrics = {"train_loss": trained.loss, "train_accuracy": trained.accuracy, "lr": lr} | val_metrics
            metrics["skipped_images"] = skipped.add(trained.skipped + validated.skipped)
            run.log_metrics(metrics, step=epoch)
            for key, value in metrics.items():
                history.setdefault(key, []).append(value)
            improved = best.update(epoch, val_metrics, matrix, model)
            log.info(_epoch_line(epoch, cfg.trainer.epochs, metrics, improved))

        if best.state is None:
            raise UserError("no epoch gave a finite validation score; check trainer.epochs and the valid split")
        _log_outcome(run, run_name, best, history)
        if splits.test is not None:
            model.load_state_dict(best.state)
            evaluate_test(runnable, cfg, splits.test, device, run, acceleration)
        if skipped.seen:
            run.log_text("\n".join(skipped.seen) + "\n", "data/skipped_images.txt")
        log.info("best epoch %d: %s %.4f; open %s (start `mlflow ui` in %s first)",
                 best.epoch, best.monitor.value, best.value, run.link, Path.cwd())  # fmt: skip
    return best.metrics
