"""One pass over a loader: training (with an optimizer) or evaluation (without)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


@dataclass
class EpochResult:
    loss: float
    targets: np.ndarray
    predictions: np.ndarray
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (data.on_bad_image=skip)

    @property
    def accuracy(self) -> float:
        return float((self.targets == self.predictions).mean()) if len(self.targets) else 0.0


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    description: str = "",
    progress: bool = True,
) -> EpochResult:
    """Train on the loader when given an optimizer, else evaluate; returns mean loss and all predictions."""
    training = optimizer is not None
    model.train(training)
    total_loss, seen = 0.0, 0
    targets, predictions, skipped = [], [], []
    bar = tqdm(loader, desc=description, leave=False, disable=not progress, unit="batch")
    with torch.set_grad_enabled(training):
        for batch in bar:
            skipped += batch.skipped
            if not len(batch.labels):
                continue
            images = batch.images.to(device, non_blocking=True)
            labels = batch.labels.to(device, non_blocking=True)
            logits = model(images)
            loss = criterion(logits, labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
            targets.append(labels.cpu())
            predictions.append(logits.argmax(dim=1).cpu())
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    if not seen:
        return EpochResult(float("nan"), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), skipped)
    return EpochResult(total_loss / seen, torch.cat(targets).numpy(), torch.cat(predictions).numpy(), skipped)
