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

from leukemia.errors import UserError
from leukemia.tracking.sweep_folder import job_failures
from leukemia.training.schema import Monitor

log = logging.getLogger(__name__)


def check_search_direction(config: DictConfig) -> None:
    """An Optuna search must optimise the monitored metric the right way round."""
    direction = config.hydra.sweeper.get("direction")
    if direction is None:
        return
    monitor = Monitor(config.trainer.monitor)
    wanted = monitor.direction
    if str(direction).lower().removeprefix("direction.") != wanted:
        raise UserError(
            f"hydra.sweeper.direction={direction} with trainer.monitor={monitor.value}: each trial "
            f"returns that metric, which must be {wanted}d; set hydra.sweeper.direction={wanted}"
        )


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
        try:
            self.run.honour_best(config)
        except Exception as error:  # the store refused a write or a read: the sweep's run ends FAILED, said why
            self.run.close("FAILED")
            atexit.unregister(self.run.close)
            sys.exit(f"error: the sweep's jobs ended, but naming its best job failed: {type(error).__name__}: "
                     f"{str(error).strip().splitlines()[0]}")  # fmt: skip
        failed = job_failures(Path(self.sweep_dir))
        self.run.close("FAILED" if failed else "FINISHED")
        atexit.unregister(self.run.close)  # closed: nothing left for the exit to do
        if failed:
            first = failed[0].read_text().strip().removeprefix("error: ")
            sys.exit(f"error: {len(failed)} job(s) of the sweep failed, the first ({failed[0].parent}): {first}")
