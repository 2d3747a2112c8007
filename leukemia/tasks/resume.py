"""``python run.py resume=<run id>``: continue a training run from its last checkpoint, in the same MLflow run,
with the run's own config. Only settings that leave the experiment unchanged may be given: a higher
``trainer.epochs`` to train longer, and where things are (tracking, paths) or how they are shown and loaded.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from leukemia.checkpoint import load_checkpoint
from leukemia.config import Task
from leukemia.errors import UserError
from leukemia.tasks.common import RUN_KINDS, command_line_overrides, override_key, typed_again
from leukemia.tracking import Run, RunRecord, Store

log = logging.getLogger(__name__)

# Keys a resume may set: they change where and how the run goes on, not what it computes (the augmentation's
# draws do not depend on data.num_workers).
RESUME_KEYS = ("resume", "trainer.epochs", "trainer.progress", "data.num_workers", "tracking.", "paths.")
CHECKPOINT_TAG = "checkpoint"


@dataclass(frozen=True)
class ResumePoint:
    run: RunRecord
    cfg: DictConfig  # the run's own config, with the resume command's permitted settings
    state: dict[str, Any]  # the checkpoint

    @property
    def epoch(self) -> int:
        return self.state["epoch"]


def config_to_resume(stored: DictConfig, cfg: DictConfig, run_id: str) -> DictConfig:
    merged = typed_again(stored)
    OmegaConf.update(merged, "resume", cfg.resume, force_add=True)
    for override in command_line_overrides():
        key = override_key(override)
        if not key.startswith(RESUME_KEYS):
            raise UserError(
                f"{override}: resume continues run {run_id} with its own config; only trainer.epochs (to train "
                f"longer), trainer.progress, data.num_workers, tracking.* and paths.* may be given. Start a new run "
                f"to change anything else"
            )
        OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    return merged


def resume_point(cfg: DictConfig) -> ResumePoint:
    """The run named by ``resume``, its config and its last checkpoint, checked before anything is opened."""
    store = Store(cfg.tracking.uri)
    record = store.run(cfg.resume, key="resume")
    kind = record.tags.get("kind")
    if kind != RUN_KINDS[Task.train]:
        raise UserError(f"resume={record.id}: run {record.name} is a {kind} run; resume continues runs of task=train")
    with tempfile.TemporaryDirectory() as scratch:
        why = "resume continues runs made by task=train"
        stored = OmegaConf.load(store.download(record, "config/config.yaml", Path(scratch), why))
    run_cfg = config_to_resume(stored, cfg, record.id)
    if CHECKPOINT_TAG not in record.tags:
        raise UserError(f"resume={record.id}: run {record.name} has no checkpoint (it ran before checkpoints)")
    state = load_checkpoint(Path(record.tags[CHECKPOINT_TAG]))
    if state["run_id"] != record.id:
        raise UserError(f"{record.tags[CHECKPOINT_TAG]}: holds run {state['run_id']}, not {record.id}")
    done, epochs = state["epoch"], run_cfg.trainer.epochs
    if epochs < done or (epochs == done and record.status == "FINISHED"):
        raise UserError(
            f"trainer.epochs={epochs}: run {record.id} ({record.name}, {record.status}) has trained {done} epochs; "
            f"give trainer.epochs above {done} to train on"
        )
    if record.status == "RUNNING":
        log.warning("run %s is marked RUNNING (as a process killed with SIGKILL leaves it); if it is still "
                    "training somewhere, stop that first", record.id)  # fmt: skip
    log.info("resuming run %s (%s) after epoch %d of %d", record.id, record.name, done, epochs)
    return ResumePoint(record, run_cfg, state)


def log_unlogged_epochs(run: Run, uri: str, history: dict[str, list[float]]) -> None:
    """Log the checkpointed epochs whose metrics never reached MLflow (a run killed between writing an epoch's
    checkpoint and logging its metrics)."""
    logged = len(Store(uri).history(run.id, "train_loss"))
    for epoch in range(logged + 1, len(history["train_loss"]) + 1):
        run.log_metrics({key: values[epoch - 1] for key, values in history.items()}, step=epoch)
