"""task=train: train, validate every epoch, keep the best epoch, then evaluate it on the test split."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from leukemia.augmentation import build_augmentation
from leukemia.checkpoint import CHECKPOINT_NAME, claimed, random_states, restore_random_states, save_checkpoint
from leukemia.config import Balance, Monitor, check_config
from leukemia.data import class_weights, displayable, preprocessing, preview
from leukemia.engine import NonFiniteLoss, run_epoch
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
    Stopped,
    StopRequest,
    command_line_overrides,
    decode_cache_folder,
    launch_context,
    output_dir,
    resolve_device,
    seed_everything,
)
from leukemia.tasks.evaluate import evaluate_test
from leukemia.tasks.resume import CHECKPOINT_TAG, ResumePoint, log_unlogged_epochs, requeued_run, resume_point
from leukemia.tracking import Run, flatten, tracked_run

log = logging.getLogger(__name__)


def build_feeds(cfg: DictConfig, splits: Splits, device: torch.device) -> tuple[Feed, Feed]:
    """Training feed (shuffled or class-balanced, augmented) and validation feed (in order, no augmentation),
    through the configured pipeline (``data.pipeline``, ``data.cache``)."""
    common = {"data_cfg": cfg.data, "aug_cfg": cfg.augmentation, "device": device, "seed": cfg.seed,
              "cache_folder": decode_cache_folder(cfg)}  # fmt: skip
    return build_feed(splits.train, train=True, **common), build_feed(splits.valid, train=False, **common)


def training_criterion(cfg: DictConfig, splits: Splits) -> tuple[nn.Module, dict[str, float]]:
    """Cross-entropy (with ``trainer.label_smoothing``), class-weighted when ``data.balance=loss``; also the
    weights as params to log."""
    smoothing = cfg.trainer.label_smoothing
    if cfg.data.balance != Balance.loss:
        return nn.CrossEntropyLoss(label_smoothing=smoothing), {}
    weights = class_weights(splits.train)
    params = {f"balance.weight_{name}": round(float(w), 6) for name, w in zip(CLASS_NAMES, weights, strict=True)}
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=smoothing), params


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
    return (
        f"epoch {epoch}/{epochs}  train loss {metrics['train_loss']:.4f} acc {metrics['train_accuracy']:.4f} | "
        f"val loss {metrics['val_loss']:.4f} acc {metrics['val_accuracy']:.4f} "
        f"bal {metrics['val_balanced_accuracy']:.4f} f1w {metrics['val_f1_weighted']:.4f} "
        f"normal {metrics['val_accuracy_normal']:.4f}{'  *best' if improved else ''}"
    )


def _log_outcome(run: Run, run_name: str, best: BestEpoch, history: dict[str, list[float]]) -> None:
    """End-of-run artifacts: best- and final-epoch metrics, confusion matrix (figure + counts), curves, weights."""
    run.log_metrics({"best_epoch": best.epoch} | {f"best_{key}": value for key, value in best.metrics.items()})
    # The last epoch's validation scores: what cross-validation reports, as picking an epoch by the validation
    # fold would flatter it.
    run.log_metrics({f"final_{key}": values[-1] for key, values in history.items() if key.startswith("val_")})
    title = f"{run_name}: validation, best epoch {best.epoch} by {best.monitor.value}"
    run.log_figure(confusion_matrix_figure(best.matrix, CLASS_NAMES, title), "figures/confusion_matrix.png")
    run.log_dict(confusion_counts(best.matrix, CLASS_NAMES, epoch=best.epoch), "figures/confusion_matrix.json")
    run.log_figure(learning_curves_figure(history, run_name), "figures/learning_curves.png")
    run.log_state_dict(best.state, "weights/best.pt")


class Trainer:
    """One training run's moving parts: model, optimizer, scheduler and feeds, and what a checkpoint of them
    holds, so that a resumed run continues with exactly the numbers the uninterrupted one would have had."""

    def __init__(self, cfg: DictConfig, splits: Splits, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg.model.depth, cfg.model.num_classes, cfg.model.weights)
        self.acceleration = Acceleration.for_device(cfg.trainer, device)
        self.runnable = self.acceleration.model(self.model, device, cfg.trainer.compile)
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
        val_metrics = {f"val_{k}": v for k, v in classification_metrics(matrix, CLASS_NAMES).items()}
        val_metrics["val_loss"] = validated.loss
        metrics = {"train_loss": trained.loss, "train_accuracy": trained.accuracy, "lr": lr} | val_metrics
        return metrics, matrix, trained.skipped + validated.skipped


def _out_of_memory(cfg: DictConfig) -> UserError:
    size = cfg.data.batch_size
    return UserError(
        f"CUDA ran out of memory with data.batch_size={size} ({cfg.model.name}, {cfg.data.image_size} px); "
        f"try data.batch_size={max(1, size // 2)}"
    )


def _begin(run: Run, cfg: DictConfig, trainer: Trainer, splits: Splits, resumed: ResumePoint | None) -> Progress:
    """What a run logs once (again, the same, when it starts over), or, resumed, its checkpoint's state and any
    epochs MLflow has not seen."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    run.log_text(OmegaConf.to_yaml(container), "config/config.yaml")  # a resume may raise trainer.epochs
    if resumed and resumed.state:
        progress = trainer.restore(resumed.state)
        log_unlogged_epochs(run, cfg.tracking.uri, progress.history)
        return progress
    logged = resumed.run.params if resumed else {}  # a run starting over keeps the params it logged
    run.log_params({k: v for k, v in (flatten(container) | trainer.balance_params).items() if k not in logged})
    run.log_text(OmegaConf.to_yaml(command_line_overrides()), "config/overrides.yaml")
    log_dataset(run, splits)
    log_training_preview(run, cfg, splits, run.name)
    return Progress(BestEpoch(Monitor(cfg.trainer.monitor)))


def _train_epochs(run: Run, trainer: Trainer, progress: Progress, checkpoint: Path, stop: StopRequest) -> None:
    """The epochs after the last checkpointed one, each checkpointed, then logged; a stop signal ends training
    and validation at once, but lets an epoch's checkpoint and logging finish."""
    epochs = trainer.cfg.trainer.epochs
    try:
        for epoch in range(progress.epoch + 1, epochs + 1):
            with stop.interruptible():  # a stop ends this at once; the checkpoint and logging below finish first
                metrics, matrix, skipped = trainer.epoch(epoch, stop)
            metrics["skipped_images"] = progress.skipped.add(skipped)
            val_metrics = {key: value for key, value in metrics.items() if key.startswith("val_")}
            improved = progress.best.update(epoch, val_metrics, matrix, trainer.model)
            progress.record(epoch, metrics)
            save_checkpoint(trainer.checkpoint(progress, run.id), checkpoint)
            run.log_metrics(metrics, step=epoch)
            log.info(_epoch_line(epoch, epochs, metrics, improved))
    except torch.cuda.OutOfMemoryError as error:
        raise _out_of_memory(trainer.cfg) from error


def _say_how_to_continue(stop: KeyboardInterrupt, run: Run, progress: Progress, checkpoint: Path) -> None:
    continue_with = f"python run.py resume={run.id}"
    log.warning("stopped in epoch %d; the checkpoint after epoch %d is %s; continue with: %s",
                progress.epoch + 1, progress.epoch, checkpoint, continue_with)  # fmt: skip
    if isinstance(stop, Stopped):
        stop.continue_with = continue_with


def _finish(run: Run, trainer: Trainer, progress: Progress, splits: Splits, stop: StopRequest) -> float:
    """The best epoch's record, its test evaluation (which a stop may end: a resume then does it again), the
    skipped files; returns the monitored value."""
    best = progress.best
    if best.state is None:
        raise UserError("no epoch gave a finite validation score; check trainer.epochs and the valid split")
    _log_outcome(run, run.name, best, progress.history)
    if splits.test is not None:
        trainer.model.load_state_dict(best.state)
        with stop.interruptible():
            evaluate_test(trainer.runnable, trainer.cfg, splits.test, trainer.device, run, trainer.acceleration)
    if progress.skipped.seen:
        run.log_text("\n".join(progress.skipped.seen) + "\n", "data/skipped_images.txt")
    log.info("best epoch %d: %s %.4f; %s", best.epoch, best.monitor.value, best.value, run.where_to_look)
    return best.value


def _prepare(cfg: DictConfig, hold: ExitStack) -> tuple[ResumePoint | None, Trainer, Splits]:
    """The run to resume (``resume=``, or the one a requeued cluster job began) with its checkpoint folder
    claimed in ``hold``; the data and the trainer built for the effective config."""
    run_id = cfg.resume or requeued_run(output_dir())
    resumed = resume_point(cfg, run_id, hold) if run_id else None
    cfg = resumed.cfg if resumed else cfg
    check_config(cfg)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = resolve_device(cfg.trainer.device)
    splits = load_splits(cfg.data)
    return resumed, Trainer(cfg, splits, device), splits


def train(cfg: DictConfig, stop: StopRequest) -> float:
    """Train, validate each epoch, keep the best epoch's weights; returns the best epoch's ``trainer.monitor``
    value, what a hyper-parameter search optimises. With ``resume=<run id>`` (or in a requeued cluster job),
    continue that run from its last checkpoint."""
    with ExitStack() as hold:  # the run's checkpoint folder, claimed while it trains
        with stop.interruptible():  # reading and decoding the data can take minutes
            resumed, trainer, splits = _prepare(cfg, hold)
        cfg = trainer.cfg
        run_name, tags = launch_context(cfg)
        if resumed:
            run_name, tags["resumed_after_epoch"] = resumed.run.name, str(resumed.epoch)
        log.info("%s on %s: %d train / %d valid images, device %s",
                 run_name, cfg.data.name, len(splits.train), len(splits.valid), trainer.device)  # fmt: skip
        track, reopen = cfg.tracking, resumed.run.id if resumed else None
        with tracked_run(track.uri, track.experiment, run_name, tags, track.ui_url, reopen_run_id=reopen) as run:
            checkpoint = resumed.checkpoint if resumed else output_dir() / "checkpoints" / run.id / CHECKPOINT_NAME
            if not resumed:
                hold.enter_context(claimed(checkpoint.parent, run.id))
            run.set_tags({CHECKPOINT_TAG: str(checkpoint)})
            progress = _begin(run, cfg, trainer, splits, resumed)
            log.info("MLflow run %s: %s", run.id, run.link)
            progress.skipped.add(trainer.train_feed.skipped + trainer.val_feed.skipped)
            try:
                _train_epochs(run, trainer, progress, checkpoint, stop)
                return _finish(run, trainer, progress, splits, stop)
            except KeyboardInterrupt as stopped:
                _say_how_to_continue(stopped, run, progress, checkpoint)
                raise
