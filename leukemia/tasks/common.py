"""What every task shares: value checks, seeding, the device, and the run's name and tags."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from leukemia.config import Device, Task
from leukemia.errors import UserError


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


def in_sweep() -> bool:
    """Whether this is a job of a sweep (``python run.py -m …``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_job_number() -> int:
    """This job's number in a sweep, 0 for a single run."""
    return HydraConfig.get().job.num if in_sweep() else 0


def resolve_device(choice: Device) -> torch.device:
    """The CPU, or a GPU: in a sweep, job i takes GPU i mod the visible count, so parallel jobs spread over the
    GPUs that CUDA_VISIBLE_DEVICES shows (one GPU: they share it)."""
    if choice == Device.cuda and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if choice == Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", sweep_job_number() % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def default_run_name(cfg: DictConfig) -> str:
    return cfg.run_name or f"{cfg.model.name}-{cfg.optim.name}-lr{cfg.optim.lr:g}"


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


RUN_KINDS = {Task.train: "train", Task.eval: "eval", Task.plot: "report"}  # the runs' "kind" tag


def output_dir() -> Path:
    """Where this job writes files: Hydra's output folder for the job, else the working directory."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


@dataclass(frozen=True)
class Acceleration:
    """How the model runs on its device: bf16 autocast and channels-last on CUDA, cuDNN autotuning there."""

    amp: bool
    channels_last: bool

    @classmethod
    def for_device(cls, trainer_cfg: DictConfig, device: torch.device) -> Acceleration:
        on_cuda = device.type == "cuda"
        torch.backends.cudnn.benchmark = on_cuda and not trainer_cfg.deterministic
        return cls(amp=on_cuda and trainer_cfg.amp, channels_last=on_cuda and trainer_cfg.channels_last)

    @property
    def step(self) -> dict[str, bool]:
        """The engine's keyword arguments for this setting."""
        return {"amp": self.amp, "channels_last": self.channels_last}

    def model(self, model: torch.nn.Module, device: torch.device, compile_model: bool) -> torch.nn.Module:
        """``model`` moved (in place) to the device and layout; compiled if asked (keep ``model`` itself for
        its state_dict: a compiled module prefixes every key)."""
        model = model.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        return torch.compile(model) if compile_model else model


class Stopped(KeyboardInterrupt):
    """A stop asked for by a signal: Ctrl-C (SIGINT), a scheduler's or ``kill``'s SIGTERM, or SIGUSR2 (what a
    SLURM job gets before its time limit, as submitit asks for it). ``previous`` is the handler the signal had
    before the task's (a cluster job wrapper's, which may requeue the job); ``continue_with`` the command that
    resumes the run, once one is open."""

    def __init__(self, signum: int = signal.SIGINT, previous: Any = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.previous = previous
        self.continue_with: str | None = None


class StopRequest:
    """SIGINT, SIGTERM or SIGUSR2 while a task runs. The first is remembered, and raises ``Stopped`` (a
    KeyboardInterrupt) at once inside ``interruptible()`` (training and validating, where a long loader wait or
    batch ends now), else at the next ``check`` (called after every batch and as an epoch begins): a signal never
    breaks off a checkpoint or an MLflow write half-way. Later signals are ignored, so one sent twice, or to the
    whole process group, cannot cut short the cleanup that marks the run KILLED. Only the process that
    installed the handler acts on it: loader workers started by fork inherit it and ignore the signal (the main
    process shuts them down)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.owner = os.getpid()
        self._previous: dict[int, Any] = {}
        self._at_once = False

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.owner or self.signum is not None:
            return
        self.signum = signum
        if self._at_once:
            self.check()

    def check(self) -> bool:
        if self.signum is not None:
            raise Stopped(self.signum, self._previous.get(self.signum))
        return False

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def __enter__(self) -> StopRequest:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            # After a stop the process is on its way out: further signals are not to cut that short.
            signal.signal(signum, signal.SIG_IGN if self.signum is not None else previous)


def command_line_overrides() -> list[str]:
    """The command line's overrides as typed (``${…}`` in them unresolved)."""
    if not HydraConfig.initialized():
        return []
    return OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)


def override_key(override: str) -> str:
    """``+data.root=x`` -> ``data.root``."""
    return override.split("=", 1)[0].lstrip("+~")


def decode_cache_folder(cfg: DictConfig) -> Path:
    """Where the tensor pipeline keeps decoded splits (shared by every run and sweep job on this machine)."""
    return Path(cfg.paths.cache_dir) / "decoded"


def launch_context(cfg: DictConfig) -> tuple[str, dict[str, str]]:
    """Run name and tags, from Hydra's runtime when launched through run.py."""
    task = Task(cfg.task)
    tags = {"model": cfg.model.name, "data": cfg.data.name, "task": task.value, "kind": RUN_KINDS[task]}
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
    name = default_run_name(cfg)
    if cfg.data.folds is not None:  # a cross-validation fold: task=plot averages over the runs of all folds
        tags |= {"fold": str(cfg.data.fold), "folds": str(cfg.data.folds)}
        name = f"{name}-fold{cfg.data.fold}"
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        tags["overrides"] = " ".join(command_line_overrides())
        tags["output_dir"] = hydra_cfg.runtime.output_dir
        if hydra_cfg.mode == RunMode.MULTIRUN:
            tags["sweep_id"] = hydra_cfg.sweep.dir
            tags["sweep_job"] = str(hydra_cfg.job.num)
            name = f"{name}-job{hydra_cfg.job.num}"
            if "study_name" in hydra_cfg.sweeper:  # an Optuna search: its jobs are the study's trials
                tags["optuna_study"] = str(hydra_cfg.sweeper.study_name)
    return name, tags
