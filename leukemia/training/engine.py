"""One pass over a loader: training (with an optimizer) or evaluation (without); predicting class
log-probabilities."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from leukemia.data.loading import Batch, SkippedImage
from leukemia.evaluation.decision import log_probabilities as network_log_probabilities


@dataclass
class EpochResult:
    loss: float
    targets: np.ndarray
    predictions: np.ndarray
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (data.on_bad_image=skip)
    seconds: float = 0.0  # the pass, wall clock, until its last result reached the host
    waiting: float = 0.0  # of which the loop waited for its next batch

    @property
    def accuracy(self) -> float:
        return float((self.targets == self.predictions).mean()) if len(self.targets) else 0.0

    @property
    def timing(self) -> dict[str, float]:
        """Images per second over the whole pass, and the share of it spent waiting for data."""
        seconds = max(self.seconds, 1e-9)
        return {"images_per_s": len(self.targets) / seconds, "data_wait_fraction": self.waiting / seconds}


class Waited:
    """Iterates ``batches``, adding the time spent in each ``next`` to ``seconds``: what the loop waits for its
    data (decoding, reading, a host-to-device copy in a loader's process; an index gather queued on the device)."""

    def __init__(self, batches: Iterable[Batch]):
        self.batches, self.seconds = batches, 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        started = time.perf_counter()
        iterator = iter(self.batches)  # a loader's workers start here
        while True:
            batch = next(iterator, None)
            self.seconds += time.perf_counter() - started
            if batch is None:
                return
            yield batch
            started = time.perf_counter()


Prepare = Callable[[torch.Tensor], torch.Tensor]
# BatchNorm cannot train on one image: a training batch left with one (the last batch of an epoch whose image
# count is one above a multiple of data.batch_size, or one whose other files were skipped) is left out.
MIN_TRAINING_BATCH = 2


class NonFiniteLoss(ArithmeticError):
    """A training batch's loss was NaN or infinite; raised before the step, so the weights stay as they were."""

    def __init__(self, loss: float, batch: int):
        super().__init__(f"training loss {loss} in batch {batch}")
        self.loss, self.batch = loss, batch


def model_input(images: torch.Tensor, device: torch.device, prepare: Prepare | None, channels_last: bool):
    """A loader batch on the device as the model takes it: prepared (the feed's augmentation and
    normalisation), in NHWC if asked."""
    images = images.to(device, non_blocking=True)
    if prepare is not None:
        images = prepare(images)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def run_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    criterion: nn.Module,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    description: str = "",
    progress: bool = True,
    prepare: Prepare | None = None,
    amp: bool = False,
    channels_last: bool = False,
    stop: Callable[[], bool] | None = None,
) -> EpochResult:
    """Train on the loader's batches when given an optimizer, else evaluate; returns mean loss, all predictions
    and the pass's timing (a training batch of one image is left out, see MIN_TRAINING_BATCH).
    ``prepare`` turns each batch, once on the device, into the model's input (the feed's ``prepare``); ``amp``
    runs the forward pass under bf16 autocast and ``channels_last`` feeds NHWC batches (CUDA); ``stop`` is
    called after every batch and raises to end the pass. Targets and predictions stay on the device until the
    end, so the loop waits for the device once per batch (the loss, checked before the step)."""
    training = optimizer is not None
    model.train(training)
    started, total_loss, seen = time.perf_counter(), 0.0, 0
    targets, predictions, skipped = [], [], []
    batches = Waited(loader)
    bar = tqdm(batches, desc=description, leave=False, disable=not progress, unit="batch")
    with torch.set_grad_enabled(training):
        for number, batch in enumerate(bar, start=1):
            skipped += [item.description for item in batch.skipped]
            if len(batch.labels) < (MIN_TRAINING_BATCH if training else 1):
                continue
            images = model_input(batch.images, device, prepare, channels_last)
            labels = batch.labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images)
                loss = criterion(logits.float(), labels)
            batch_loss = loss.item()
            if training:
                if not math.isfinite(batch_loss):
                    raise NonFiniteLoss(batch_loss, number)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if stop is not None:
                stop()  # raises KeyboardInterrupt when a stop was asked for
            total_loss += batch_loss * len(labels)
            seen += len(labels)
            targets.append(labels)
            predictions.append(logits.argmax(dim=1))
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    if not seen:
        empty = np.empty(0, dtype=np.int64)
        return EpochResult(float("nan"), empty, empty, skipped, time.perf_counter() - started, batches.seconds)
    targets_, predictions_ = torch.cat(targets).cpu().numpy(), torch.cat(predictions).cpu().numpy()
    return EpochResult(total_loss / seen, targets_, predictions_, skipped, time.perf_counter() - started,
                       batches.seconds)  # fmt: skip


@dataclass
class Predictions:
    # (images, classes) log-softmax: exact where a softmax rounds to 0 or 1, so a temperature can rescale it
    log_probabilities: np.ndarray
    targets: np.ndarray  # -1 where the split is unlabelled
    rows: np.ndarray  # each prediction's row in the split's manifest, as its batch carried it
    skipped: list[SkippedImage] = field(default_factory=list)

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_probabilities)

    def in_manifest_order(self, size: int, complete: bool = True) -> Predictions:
        """The predictions in the order of their rows of a ``size``-row manifest, each row at most once (and,
        ``complete``, every row once): what makes row ``i`` of every table written from them the prediction of
        the manifest's file ``i`` (of its ``i``-th readable file, where some were skipped)."""
        rows = self.rows.tolist()
        once = len(set(rows)) == len(rows) and set(rows) <= set(range(size))
        if not once or (complete and len(rows) != size):
            raise RuntimeError(f"{len(self.rows)} predictions for {size} rows do not cover each row once")
        order = np.argsort(self.rows, kind="stable")
        return Predictions(self.log_probabilities[order], self.targets[order], self.rows[order], self.skipped)


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    flips: bool = False,
    description: str = "",
    progress: bool = True,
    prepare: Prepare | None = None,
    amp: bool = False,
    channels_last: bool = False,
) -> Predictions:
    """Class log-probabilities for every image of the loader, with each one's manifest row, in the loader's
    order (the decision's, with its flip test-time augmentation when ``flips``); the files it skipped."""
    model.eval()
    log_probabilities, targets, rows, skipped = [], [], [], []
    for batch in tqdm(loader, desc=description, leave=False, disable=not progress, unit="batch"):
        skipped += batch.skipped
        if not len(batch.labels):
            continue
        images = model_input(batch.images, device, prepare, channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            log_probabilities.append(network_log_probabilities(model, images, flips).cpu())
        targets.append(batch.labels.cpu())
        rows.append(batch.rows.cpu())
    if not log_probabilities:
        empty = np.empty(0, dtype=np.int64)
        return Predictions(np.empty((0, 0)), empty, empty, skipped)
    return Predictions(*(torch.cat(parts).numpy() for parts in (log_probabilities, targets, rows)), skipped)
