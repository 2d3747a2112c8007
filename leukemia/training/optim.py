"""Optimizers and learning-rate schedulers from the ``optim`` and ``scheduler`` config groups."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch

from leukemia.training.schema import OptimConfig, SchedulerConfig


def build_optimizer(optim_cfg: OptimConfig, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
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


def build_scheduler(scheduler_cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int, done: int = 0):
    """A per-epoch scheduler for a run of ``epochs`` epochs, or None for a constant learning rate. ``done``
    epochs already trained (a resumed run) are stepped past: a run given more epochs on resume follows, from
    there on, the schedule a fresh run of the new length would."""
    for group in optimizer.param_groups:  # from the start of the schedule, also after an optimizer's state loaded
        group["lr"] = group.setdefault("initial_lr", group["lr"])
    scheduler = _schedule(scheduler_cfg, optimizer, epochs)
    with warnings.catch_warnings():  # stepping without optimizer steps is the point here
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for _ in range(done if scheduler is not None else 0):
            scheduler.step()
    return scheduler


def _schedule(scheduler_cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int):
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
