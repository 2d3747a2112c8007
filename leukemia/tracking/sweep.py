"""What a sweep (``python run.py -m …``) does once, in the launching process, around its jobs.

Hydra calls ``SweepCallback`` (named under ``hydra.callbacks`` in conf/config.yaml) before the launcher starts
any job and after the last one ends, whatever the launcher: the basic one, joblib's parallel processes, or
submitit's SLURM or local jobs.
"""

from __future__ import annotations

import atexit
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from leukemia.config import Monitor
from leukemia.errors import UserError

log = logging.getLogger(__name__)


JOB_FAILURE_FILE = "job_failed.txt"  # in a failed job's output folder: its one-line error
SWEEP_RUN_FILE = "mlflow_sweep_run.txt"  # in the sweep folder: the id of the sweep's own run


def record_job_failure(job_dir: Path, message: str) -> None:
    """Leave a failed sweep job's error where the launching process finds it, whatever process or machine
    (joblib, SLURM) ran the job."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / JOB_FAILURE_FILE).write_text(message + "\n")


def job_failures(sweep_dir: Path) -> list[Path]:
    """The sweep's failure files, the earliest first."""
    return sorted(sweep_dir.rglob(JOB_FAILURE_FILE), key=lambda path: path.stat().st_mtime)


def search_direction(monitor: str) -> str:
    """Which way a search must push ``trainer.monitor``, the value task=train returns."""
    return "minimize" if monitor == Monitor.val_loss else "maximize"


def check_search_direction(config: DictConfig) -> None:
    """An Optuna search must optimise the monitored metric the right way round."""
    direction = config.hydra.sweeper.get("direction")
    if direction is None:
        return
    monitor = Monitor(config.trainer.monitor).value
    wanted = search_direction(monitor)
    if str(direction).lower().removeprefix("direction.") != wanted:
        raise UserError(
            f"hydra.sweeper.direction={direction} with trainer.monitor={monitor}: each trial "
            f"returns that metric, which must be {wanted}d; set hydra.sweeper.direction={wanted}"
        )


def sweep_run_of(sweep_dir: Path) -> str | None:
    """The id of the sweep's own run, for a job of the sweep in ``sweep_dir``."""
    path = sweep_dir / SWEEP_RUN_FILE
    return path.read_text().strip() if path.is_file() else None


class SweepCallback(Callback):
    """Before any job: the tracking server answers, the MLflow experiment exists (so parallel jobs do not race
    to create it, or an empty sqlite store's tables), a search's direction fits ``trainer.monitor``, and the
    sweep's own run is open. After the last job: the best job named (an Optuna search's best trial tagged, with
    ``registry.name`` its version made ``champion``), the sweep's run closed, and exit 1 with the first error if
    any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from leukemia.tracking.store import prepare_store
        from leukemia.tracking.sweep_run import SweepRun  # mlflow, loaded once a sweep starts

        # Resolved once, now, and kept: ${now:} would give a later time at the end. Resolving it here also fixes
        # the time for the launcher, which works on copies of this config.
        self.sweep_dir = str(config.hydra.sweep.dir)
        try:
            check_search_direction(config)
            prepare_store(config.tracking.uri, config.tracking.experiment)
        except UserError as error:
            sys.exit(f"error: {error.one_line()}")
        self.run = SweepRun.open(config, self.sweep_dir)
        atexit.register(self.run.close, "KILLED")  # a sweep stopped before its end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.run.honour_best(config)
        failed = job_failures(Path(self.sweep_dir))
        self.run.close("FAILED" if failed else "FINISHED")
        if failed:
            first = failed[0].read_text().strip().removeprefix("error: ")
            sys.exit(f"error: {len(failed)} job(s) of the sweep failed, the first ({failed[0].parent}): {first}")
