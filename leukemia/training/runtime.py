"""Where and how a run computes: seeding and deterministic mode, the device, and bf16 autocast/channels-last."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from leukemia.errors import UserError
from leukemia.training.schema import Device, TrainerConfig


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA); ``deterministic`` also restricts torch to deterministic
    algorithms. Call it before CUDA starts: cuBLAS reads its workspace setting then."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA >= 10.2
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic


def resolve_device(choice: Device, job_number: int = 0) -> torch.device:
    """The CPU, or a GPU: in a sweep, job i takes GPU i mod the visible count, so parallel jobs spread over the
    GPUs that CUDA_VISIBLE_DEVICES shows (one GPU: they share it)."""
    if choice == Device.cuda and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if choice == Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", job_number % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class Acceleration:
    """How the model runs on its device: bf16 autocast and channels-last on CUDA, cuDNN autotuning there."""

    amp: bool
    channels_last: bool

    @classmethod
    def for_device(cls, trainer_cfg: TrainerConfig, device: torch.device) -> Acceleration:
        on_cuda = device.type == "cuda"
        torch.backends.cudnn.benchmark = on_cuda and not trainer_cfg.deterministic
        return cls(amp=on_cuda and trainer_cfg.amp, channels_last=on_cuda and trainer_cfg.channels_last)

    @property
    def step(self) -> dict[str, bool]:
        """The engine's keyword arguments for this setting."""
        return {"amp": self.amp, "channels_last": self.channels_last}

    def model(self, model: torch.nn.Module, device: torch.device, compile_mode: str | None) -> torch.nn.Module:
        """``model`` moved (in place) to the device and layout; compiled in ``compile_mode`` if given (keep
        ``model`` itself for its state_dict: a compiled module prefixes every key)."""
        model = model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        return torch.compile(model, mode=compile_mode) if compile_mode else model


def compile_mode(trainer_cfg: TrainerConfig, device: torch.device) -> str | None:
    """torch.compile's mode for training: ``reduce-overhead`` (CUDA graphs) with ``trainer.cuda_graphs`` on CUDA,
    ``default`` with ``trainer.compile``; None: not compiled."""
    if trainer_cfg.cuda_graphs and device.type == "cuda":
        return "reduce-overhead"
    return "default" if trainer_cfg.compile else None
