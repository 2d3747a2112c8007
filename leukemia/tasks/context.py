"""What the tasks share about how they were launched: sweep or single run, the output folder, the command
line's overrides, and the run's name and tags; and the settings the data can refuse, checked before a run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from leukemia.config import Config, Task
from leukemia.data.manifest import Splits
from leukemia.errors import UserError
from leukemia.evaluation.calibration import check_threshold_fits
from leukemia.names import CLASS_NAMES
from leukemia.tracking.sweep_folder import sweep_run_of
from leukemia.training.schema import Monitor


def in_sweep() -> bool:
    """Whether this is a job of a sweep (``python run.py -m …``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_job_number() -> int:
    """This job's number in a sweep, 0 for a single run."""
    return HydraConfig.get().job.num if in_sweep() else 0


def default_run_name(cfg: Config) -> str:
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


def sweep_run_id() -> str | None:
    """In a sweep, the id of the sweep's own MLflow run, which its jobs' runs nest under."""
    return sweep_run_of(Path(HydraConfig.get().sweep.dir)) if in_sweep() else None


def output_dir() -> Path:
    """Where this job writes files: Hydra's output folder for the job, else the working directory."""
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def command_line_overrides() -> list[str]:
    """The command line's overrides as typed (``${…}`` in them unresolved)."""
    if not HydraConfig.initialized():
        return []
    return OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)


def override_key(override: str) -> str:
    """``+data.root=x`` -> ``data.root``."""
    return override.split("=", 1)[0].lstrip("+~")


def launch_context(cfg: Config) -> tuple[str, dict[str, str]]:
    """Run name and tags, from Hydra's runtime when launched through run.py."""
    task = Task(cfg.task)
    tags = {"model": cfg.model.name, "data": cfg.data.name, "task": task.value, "kind": task.value}  # or "sweep"
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


def check_fits_data(cfg: Config, splits: Splits) -> None:
    """Settings that the data can refuse, refused before the first epoch (or the evaluation run) rather than after
    it: a balanced threshold with a one-class validation split, a monitor the validation split leaves
    undefined."""
    labels = splits.valid.labels or []
    check_threshold_fits(cfg.eval.threshold, np.asarray(labels))
    monitor = Monitor(cfg.trainer.monitor)
    if monitor == Monitor.val_accuracy_normal and CLASS_NAMES.index("normal") not in labels:
        raise UserError(f"trainer.monitor={monitor.value}: the validation split ({splits.valid.source}) has no normal "
                        f"cells, so it is undefined; monitor another score (trainer.monitor=val_loss)")  # fmt: skip
