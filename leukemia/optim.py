"""Optimizers and learning-rate schedulers from the ``optim`` and ``scheduler`` config groups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def build_optimizer(optim_cfg: Any, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=optim_cfg.lr,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
            nesterov=optim_cfg.nesterov,
        )
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim_cfg.name]
    return optimizer_class(
        parameters,
        lr=optim_cfg.lr,
        betas=(optim_cfg.beta1, optim_cfg.beta2),
        weight_decay=optim_cfg.weight_decay,
    )


def build_scheduler(scheduler_cfg: Any, optimizer: torch.optim.Optimizer, epochs: int):
    """A per-epoch scheduler, or None for a constant learning rate."""
    if scheduler_cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, scheduler_cfg.step_size, scheduler_cfg.gamma)
    if scheduler_cfg.name == "cosine":
        # at most half the run, so that the default 3-epoch warm-up leaves a short run (trainer.epochs=2) time to decay
        warmup = min(scheduler_cfg.warmup_epochs, epochs // 2)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs - warmup), eta_min=scheduler_cfg.eta_min
        )
        if warmup == 0:
            return decay
        # optim.lr / (warmup + 1), rising linearly to optim.lr at epoch warmup + 1, then the cosine decay
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])
    return None
