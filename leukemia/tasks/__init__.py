"""Tasks: what ``python run.py task=...`` does, wiring data, model, engine and tracking together.

Everything that can be checked before a task runs (value ranges, data paths, weights file, device) is checked
before an MLflow run is opened, so a typo costs seconds and leaves no run behind; a failure after that marks
the run FAILED.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from omegaconf import DictConfig

from leukemia.config import Task
from leukemia.errors import UserError
from leukemia.sweep import record_job_failure
from leukemia.tasks.common import in_sweep, output_dir
from leukemia.tasks.evaluate import evaluate
from leukemia.tasks.report import plot
from leukemia.tasks.train import train
from leukemia.tracking import check_reachable

TASKS: dict[Task, Any] = {Task.train: train, Task.eval: evaluate, Task.plot: plot}


def run_task(cfg: DictConfig) -> Any:
    """Entry point for run.py: dispatch on ``task``; a UserError ends the process with one line and exit 1 (in a
    sweep: ends the job, and the sweep exits 1 after the others), SIGINT (Ctrl-C) or SIGTERM with 128 + the
    signal's number (130, 143), as a shell reports them."""
    try:
        check_reachable(cfg.tracking.uri)
        return TASKS[Task(cfg.task)](cfg)
    except UserError as error:
        message = f"error: {error.one_line()}"
        if not in_sweep():
            sys.exit(message)
        # A sweep's other jobs go on (parallel ones could not mark their runs if this process ended the sweep);
        # the sweep ends with a summary and exit 1. No value tells a hyper-parameter search the trial failed.
        print(message, file=sys.stderr)
        record_job_failure(output_dir(), message)
        return None
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"stopped by {signal.Signals(signum).name} (an open MLflow run is marked KILLED)", file=sys.stderr)
        sys.exit(128 + signum)
