"""``python run.py resume=<run id>``: continue a training run from its last checkpoint, in the same MLflow run,
with the run's own config. Only settings that leave the experiment unchanged may be given: a higher
``trainer.epochs`` to train longer, and where things are (tracking, paths) or how they are shown and loaded.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leukemia.config import Task
from leukemia.errors import UserError
from leukemia.names import LOSS, TRAIN, of
from leukemia.tasks.context import command_line_overrides, override_key
from leukemia.tracking.runs import Run
from leukemia.tracking.store import RunRecord, Store
from leukemia.training.checkpoint import LOCK_FILE, claimed, load_checkpoint

log = logging.getLogger(__name__)

# Keys a resume may set: they change where and how the run goes on, not what it computes (the augmentation's
# draws do not depend on data.num_workers).
RESUME_KEYS = ("resume", "trainer.epochs", "trainer.progress", "data.num_workers", "tracking.", "paths.")
CHECKPOINT_TAG = "checkpoint"


@dataclass(frozen=True)
class ResumePoint:
    run: RunRecord
    cfg: DictConfig  # the run's own config, with the resume command's permitted settings
    state: dict[str, Any] | None  # the checkpoint; None for a run stopped before its first epoch ended
    checkpoint: Path  # where it is, and where the run goes on writing it

    @property
    def epoch(self) -> int:
        return self.state["epoch"] if self.state else 0


def _resolved(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def config_to_resume(merged: DictConfig, cfg: DictConfig, run_id: str) -> DictConfig:
    """The run's own config (as stored, typed again) with the command line's permitted settings; any other
    override must leave the run's value as it was (a requeued cluster job repeats its sweep's overrides)."""
    OmegaConf.update(merged, "resume", run_id, force_add=True)
    for override in command_line_overrides():
        key = override_key(override)
        if key.startswith(RESUME_KEYS):
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
        elif _resolved(cfg, key) != _resolved(merged, key):
            raise UserError(
                f"{override}: resume continues run {run_id} with its own config; only trainer.epochs (to train "
                f"longer), trainer.progress, data.num_workers, tracking.* and paths.* may be given. Start a new run "
                f"to change anything else"
            )
    return merged


def requeued_run(job_folder: Path) -> str | None:
    """In a job a cluster requeued (SLURM_RESTART_COUNT, as after a time limit or preemption), the run its
    earlier attempt opened: the newest checkpoint folder in the job's folder names it."""
    if os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
        return None
    found = sorted((job_folder / "checkpoints").glob(f"*/{LOCK_FILE}"), key=lambda path: path.stat().st_mtime)
    if not found:
        return None
    log.info("requeued job (restart %s): continuing its run %s", os.environ["SLURM_RESTART_COUNT"],
             found[-1].parent.name)  # fmt: skip
    return found[-1].parent.name


def _checkpoint_state(checkpoint: Path, store: Store, record: RunRecord) -> dict[str, Any] | None:
    """The run's checkpoint; None when the run was stopped before its first epoch ended (it then starts over,
    in the same MLflow run)."""
    if not checkpoint.exists() and checkpoint.parent.is_dir() and not store.history(record.id, of(TRAIN, LOSS)):
        return None
    state = load_checkpoint(checkpoint)
    if state["run_id"] != record.id:
        raise UserError(f"{checkpoint}: holds run {state['run_id']}, not {record.id}")
    return state


def resume_point(cfg: DictConfig, run_id: str, hold: ExitStack) -> ResumePoint:
    """The run ``run_id``, its config and its last checkpoint, checked before anything is opened. The run's
    checkpoint folder stays claimed (``hold``) for as long as it trains on: a run still training elsewhere is
    refused."""
    store = Store(cfg.tracking.uri)
    record = store.run(run_id, key="resume")
    kind = record.tags.get("kind")
    if kind != Task.train.value:
        raise UserError(f"resume={record.id}: run {record.name} is a {kind} run; resume continues runs of task=train")
    stored = store.stored_config(record, "resume continues runs made by task=train")
    run_cfg = config_to_resume(stored, cfg, record.id)
    if CHECKPOINT_TAG not in record.tags:
        raise UserError(f"resume={record.id}: run {record.name} has no checkpoint (it ran before checkpoints)")
    checkpoint = Path(record.tags[CHECKPOINT_TAG])
    if checkpoint.parent.is_dir():
        hold.enter_context(claimed(checkpoint.parent, record.id))
    state = _checkpoint_state(checkpoint, store, record)
    done, epochs = state["epoch"] if state else 0, run_cfg.trainer.epochs
    if epochs < done or (epochs == done and record.status == "FINISHED"):
        raise UserError(
            f"trainer.epochs={epochs}: run {record.id} ({record.name}, {record.status}) has trained {done} epochs; "
            f"give trainer.epochs above {done} to train on"
        )
    log.info("resuming run %s (%s, %s) after epoch %d of %d", record.id, record.name, record.status, done, epochs)
    return ResumePoint(record, run_cfg, state, checkpoint)


def log_unlogged_epochs(run: Run, uri: str, history: dict[str, list[float]]) -> None:
    """Log the checkpointed epochs whose metrics never reached MLflow (a run killed between writing an epoch's
    checkpoint and logging its metrics)."""
    logged = len(Store(uri).history(run.id, of(TRAIN, LOSS)))
    for epoch in range(logged + 1, len(history[of(TRAIN, LOSS)]) + 1):
        run.log_metrics({key: values[epoch - 1] for key, values in history.items()}, step=epoch)
